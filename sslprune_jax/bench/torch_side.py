"""PyTorch's masked train step of the bench's CIFAR networks, as a yardstick.

The bench's `pytorch` section times this step in blocks alternating with
the project's own (`python -m sslprune_jax.bench --sections=pytorch`), so
that both see the same load on a shared machine. It is the step a PyTorch
user would write for the same network: torchvision's BasicBlock ResNet
with the CIFAR stem (the project's `resnet_cifar`), channels-last tensors
(PyTorch's fast CPU layout, through oneDNN), SGD with momentum and weight
decay, and the pruned weights zeroed again after every update. PyTorch is
not a dependency: without it the section says so and is skipped.

PyTorch runs in a process of its own (`Remote`, which drives this module's
`main` over a pipe): in the bench's process it would bring a second OpenMP
runtime and a second oneDNN next to the project's, and the two thread
pools slowed the project's step 2.8x (measured).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import types

from sslprune_jax import host_memory


def available() -> str | None:
  """Why PyTorch's step cannot run here (None where it can)."""
  if importlib.util.find_spec('torch') is None:
    return (
        'PyTorch is not installed (pip install torch --index-url '
        'https://download.pytorch.org/whl/cpu).'
    )
  return None


def _resnet(stage_sizes, widths, in_channels: int, num_classes: int):
  import torch.nn as tnn  # pylint: disable=g-import-not-at-top

  def bn(c):
    return tnn.BatchNorm2d(c, eps=1e-5, momentum=0.1)

  def conv(cin, cout, k, stride):
    return tnn.Conv2d(cin, cout, k, stride, k // 2, bias=False)

  class Block(tnn.Module):

    def __init__(self, cin, cout, stride):
      super().__init__()
      self.body = tnn.Sequential(
          conv(cin, cout, 3, stride),
          bn(cout),
          tnn.ReLU(inplace=True),
          conv(cout, cout, 3, 1),
          bn(cout),
      )
      self.shortcut = (
          tnn.Identity()
          if stride == 1 and cin == cout
          else tnn.Sequential(conv(cin, cout, 1, stride), bn(cout))
      )

    def forward(self, x):
      return tnn.functional.relu(self.body(x) + self.shortcut(x))

  layers = [
      conv(in_channels, widths[0], 3, 1),
      bn(widths[0]),
      tnn.ReLU(inplace=True),
  ]
  cin = widths[0]
  for stage, (blocks, width) in enumerate(zip(stage_sizes, widths)):
    for block in range(blocks):
      layers.append(Block(cin, width, 2 if stage and not block else 1))
      cin = width
  layers += [
      tnn.AdaptiveAvgPool2d(1),
      tnn.Flatten(),
      tnn.Linear(cin, num_classes),
  ]
  return tnn.Sequential(*layers)


class Stepper:
  """PyTorch's masked SGD step of a BasicBlock CIFAR ResNet on one batch.

  Has the bench's stepper interface: `run(n)` returns the seconds of `n`
  steps, `compile_s` the time to build the model.
  """

  def __init__(
      self,
      stage_sizes,
      widths,
      image_shape,
      num_classes: int,
      batch_size: int,
      train_config,
      fraction_pruned: float,
      seed: int = 0,
  ):
    import torch  # pylint: disable=g-import-not-at-top

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    height, width, channels = image_shape
    self.model = _resnet(stage_sizes, widths, channels, num_classes).to(
        memory_format=torch.channels_last
    )
    self.optimizer = torch.optim.SGD(
        self.model.parameters(),
        lr=0.01,
        momentum=train_config.momentum,
        nesterov=train_config.nesterov,
        weight_decay=train_config.weight_decay,
    )
    # Convolution and classifier weights are the prunable ones, as in the
    # project; which ones are zero does not change a dense step's time.
    self.weights = [p for p in self.model.parameters() if p.dim() > 1]
    self.masks = [
        (torch.rand_like(p) >= fraction_pruned).float() for p in self.weights
    ]
    with torch.no_grad():
      torch._foreach_mul_(self.weights, self.masks)  # pylint: disable=protected-access
    self.images = torch.randn(batch_size, channels, height, width).to(
        memory_format=torch.channels_last
    )
    self.labels = torch.randint(0, num_classes, (batch_size,))
    self.loss = torch.nn.CrossEntropyLoss()
    self.torch = torch
    self.compile_s = time.perf_counter() - t0

  def step(self) -> None:
    self.optimizer.zero_grad(set_to_none=True)
    self.loss(self.model(self.images), self.labels).backward()
    self.optimizer.step()
    with self.torch.no_grad():
      self.torch._foreach_mul_(self.weights, self.masks)  # pylint: disable=protected-access

  def run(self, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
      self.step()
    return time.perf_counter() - t0

  def version(self) -> str:
    return self.torch.__version__


def main() -> None:
  """Serves one `Stepper`: reads its arguments as a JSON line, then one
  number of steps per line, answering each with the seconds they took."""
  args = json.loads(sys.stdin.readline())
  args['train_config'] = types.SimpleNamespace(**args['train_config'])
  stepper = Stepper(**args)
  print(
      json.dumps(
          {'compile_s': stepper.compile_s, 'version': stepper.version()}
      ),
      flush=True,
  )
  for line in sys.stdin:
    print(json.dumps(stepper.run(int(line))), flush=True)


class Remote:
  """A `Stepper` in a child process, with the same interface."""

  def __init__(
      self,
      stage_sizes,
      widths,
      image_shape,
      num_classes: int,
      batch_size: int,
      train_config,
      fraction_pruned: float,
      seed: int = 0,
      host_malloc: str = 'system',
  ):
    self.process = subprocess.Popen(
        [sys.executable, '-m', 'sslprune_jax.bench.torch_side'],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, host_memory.ENV: host_malloc},
    )
    self._send(
        json.dumps(
            {
                'stage_sizes': list(stage_sizes),
                'widths': list(widths),
                'image_shape': list(image_shape),
                'num_classes': num_classes,
                'batch_size': batch_size,
                'fraction_pruned': fraction_pruned,
                'seed': seed,
                'train_config': {
                    'momentum': train_config.momentum,
                    'nesterov': train_config.nesterov,
                    'weight_decay': train_config.weight_decay,
                },
            }
        )
    )
    ready = self._receive()
    self.compile_s, self._version = ready['compile_s'], ready['version']

  def _send(self, line: str) -> None:
    self.process.stdin.write(line + '\n')
    self.process.stdin.flush()

  def _receive(self):
    line = self.process.stdout.readline()
    if not line:
      raise RuntimeError(
          "PyTorch's step process ended (exit code "
          f'{self.process.wait()}); its errors are above.'
      )
    return json.loads(line)

  def run(self, n: int) -> float:
    self._send(str(n))
    return self._receive()

  def version(self) -> str:
    return self._version

  def close(self) -> None:
    self.process.stdin.close()
    self.process.wait()


if __name__ == '__main__':
  main()
