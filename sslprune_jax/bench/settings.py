"""The benchmark's sections, networks, performance targets and settings."""

from __future__ import annotations

import dataclasses

SECTIONS = (
    'step',
    'unmasked',
    'flops',
    'prune',
    'round',
    'pipeline',
    'seeds',
    'options',
    'startup',
    'kernels',
    'pytorch',
    'structured',
)
# The networks: CIFAR ResNet-18 at full and small width, ResNet-50, and
# the network of configs/labels.py:quick (which sections 5-7 use).
NETWORKS = ('resnet18', 'resnet18_small', 'resnet50', 'quick')
MODELS = NETWORKS

# The project's performance targets: name -> (comparison, target).
# The step targets are PyTorch's speed on the project's 2-core AVX-512 CPU
# (oneDNN, channels-last, weights masked every step): about 1.0 of the
# matmul peak at width 1 and 0.8 at width 1/4.
TARGETS = {
    'masked_over_unmasked': ('>=', 0.97),
    'fraction_of_peak_resnet18': ('>=', 0.95),
    'fraction_of_peak_resnet18_small': ('>=', 0.85),
    'fraction_of_peak_quick': ('>=', 0.85),
    'prune_seconds': ('<=', 1.0),
    'round_overhead_fraction': ('<=', 0.02),
    'pipeline_over_step': ('>=', 2.0),
    'jax_over_pytorch': ('>=', 1.0),
}


@dataclasses.dataclass
class Settings:
  """What to measure and how long (the command-line flags).

  Attributes:
    models: which of `NETWORKS` the step sections measure.
    sections: which of `SECTIONS` to run.
    cifar_batch_size: global batch of the CIFAR ResNet-18s.
    imagenet_batch_size: global batch of ResNet-50 (0: 8 on CPU, else 128).
    quick_batch_size: global batch of the quick network (0: its config's).
    small_width: width multiplier of 'resnet18_small'.
    steps: train steps per timed block (at least).
    min_block_s: more steps per block if needed for a block to last this
      long (estimated from one step), against the noise of a shared
      machine.
    warmup: untimed steps after compilation.
    repeats: timed blocks per step (masked and unmasked alternate); the
      fastest block counts.
    fraction_pruned: share of the prunable weights the masked state has
      pruned (by magnitude).
    matmul_size: n of the n x n float32 matmul measuring the peak.
    matmul_repeats: timed matmul blocks; the fastest counts.
    prune_model: whose parameter shapes the prune section prunes.
    prune_repeats: timed prunings and rewinds; the fastest counts.
    pipeline_batches: batches timed per input pipeline.
    pipeline_warmup: batches read before the timing starts.
    seeds: numbers of seeds trained together in the seeds section.
    data_dir: TFDS data dir holding Fashion-MNIST (None: TFDS's default).
    eval_repeats: timed eval steps in the round section.
    xla_options: compiler options of the timed steps and convolutions
      (`xla_options.CHOICES`).
    conv_impl: the networks' convolutions (`kernels.CONV_IMPLS`).
    dtype: the networks' computation dtype (`model.dtype`: 'float32',
      'bfloat16'); parameters stay float32.
  """

  models: tuple[str, ...] = MODELS
  sections: tuple[str, ...] = SECTIONS
  cifar_batch_size: int = 128
  imagenet_batch_size: int = 0
  quick_batch_size: int = 0
  small_width: float = 0.25
  steps: int = 3
  min_block_s: float = 2.0
  warmup: int = 1
  repeats: int = 3
  fraction_pruned: float = 0.8
  matmul_size: int = 4096
  matmul_repeats: int = 3
  prune_model: str = 'resnet50'
  prune_repeats: int = 3
  pipeline_batches: int = 300
  pipeline_warmup: int = 20
  seeds: tuple[int, ...] = (1, 2, 4)
  data_dir: str | None = None
  eval_repeats: int = 3
  xla_options: str = 'auto'
  conv_impl: str = 'auto'
  dtype: str = 'float32'


def parse_sections(names) -> tuple[str, ...]:
  """Section names (or their numbers, 1-based), checked."""
  out = []
  for name in names:
    name = str(name).strip()
    if name.isdigit() and 1 <= int(name) <= len(SECTIONS):
      name = SECTIONS[int(name) - 1]
    if name not in SECTIONS:
      raise ValueError(
          f'Unknown section {name!r}; valid: {SECTIONS} or '
          f'1-{len(SECTIONS)}.'
      )
    out.append(name)
  return tuple(out)
