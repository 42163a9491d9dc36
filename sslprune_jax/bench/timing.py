"""Timing: steps in alternating blocks, their FLOPs and the matmul peak.

The sections share the step measurements through `_Cache`, which times
each network's step once.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from sslprune_jax import parallel
from sslprune_jax import pruning
from sslprune_jax import tasks
from sslprune_jax import train
from sslprune_jax.bench.networks import _model
from sslprune_jax.bench.networks import _optimizer
from sslprune_jax.bench.networks import _pruned_variables
from sslprune_jax.bench.networks import get_spec
from sslprune_jax.bench.networks import random_batch
from sslprune_jax.bench.networks import Spec
from sslprune_jax.bench.settings import parse_sections
from sslprune_jax.bench.settings import Settings
from sslprune_jax.bench.unmasked import create_unmasked_state


class _Stepper:
  """A compiled step with its (donated, so carried along) state."""

  def __init__(self, step: Callable, state, batch: dict):
    self.step = step
    t0 = time.perf_counter()
    self.compiled = step.lower(state, batch).compile()
    self.compile_s = time.perf_counter() - t0
    self.state, self.batch = state, batch

  def run(self, n: int) -> float:
    """Seconds for `n` steps, the last one's results ready."""
    t0 = time.perf_counter()
    metrics = None
    for _ in range(n):
      self.state, metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))
    return time.perf_counter() - t0

  def flops(self) -> float | None:
    return compiled_flops(self.compiled)


def xla_conv_flops(step: Callable, state, batch) -> float | None:
  """FLOPs of `step` with XLA's convolutions in place of custom calls.

  XLA's cost analysis counts nothing for a custom call, so a step whose
  convolutions run through oneDNN is counted as the same step with
  XLA's (compiled, not run).
  """
  model = state.apply_fn.__self__
  xla_state = state.replace(apply_fn=model.clone(conv_impl='xla').apply)
  return compiled_flops(step.lower(xla_state, batch).compile())


def compiled_flops(compiled) -> float | None:
  """FLOPs of a compiled program by XLA's cost analysis, or None.

  `cost_analysis()` gives a dict, or in older JAX versions a list with one
  dict per program. For a `shard_map` (SPMD) program the module analysed is
  the per-device one, so the FLOPs are those of one device.
  """
  try:
    cost = compiled.cost_analysis()
  except Exception:  # Not every backend implements it.
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or not cost.get('flops'):
    return None
  return float(cost['flops'])


def _timed(
    steppers: dict[str, _Stepper],
    settings: Settings,
    peak: _MatmulPeak | None = None,
) -> dict:
  """Warms every stepper up, then times them in alternating blocks.

  Returns:
    Per stepper, the seconds per step of each block; 'steps_per_block';
    with `peak`, also 'peak': the matmul FLOP/s measured after each round
    of blocks (under the same load as the steps, on a machine shared with
    other work).
  """
  for s in steppers.values():
    s.run(max(settings.warmup, 0))
  steps = settings.steps
  if settings.min_block_s > 0:
    one = min(s.run(1) for s in steppers.values())
    steps = max(steps, math.ceil(settings.min_block_s / max(one, 1e-9)))
  blocks = {name: [] for name in steppers}
  peaks = []
  for _ in range(max(settings.repeats, 1)):
    for name, s in steppers.items():
      blocks[name].append(s.run(steps) / steps)
    if peak is not None:
      peaks.append(peak.measure())
  if peaks:
    blocks['peak'] = peaks
  blocks['steps_per_block'] = steps
  return blocks


def _step_stats(seconds: list[float], images: int, compile_s: float) -> dict:
  best = min(seconds)
  return {
      'step_s': best,
      'images_per_s': images / best,
      'step_s_median': statistics.median(seconds),
      'step_s_blocks': seconds,
      'compile_s': compile_s,
  }


class _Cache:
  """Step measurements shared between sections (measured at most once)."""

  def __init__(self, settings: Settings):
    self.settings = settings
    self.steps: dict[str, dict] = {}
    self.mesh = parallel.create_mesh()
    self.with_peak = 'flops' in parse_sections(settings.sections)
    self._peak: _MatmulPeak | None = None

  def step(self, name: str, unmasked: bool = False) -> dict:
    """Masked (and optionally unmasked) step results of network `name`."""
    have = self.steps.get(name)
    if have is None or (unmasked and 'unmasked' not in have):
      self.steps[name] = measure_step(
          get_spec(name, self.settings),
          self.settings,
          self.mesh,
          unmasked,
          self.peak()
          if self.with_peak and name in self.settings.models
          else None,
      )
    return self.steps[name]

  def peak(self) -> _MatmulPeak:
    if self._peak is None:
      self._peak = _MatmulPeak(self.settings.matmul_size)
    return self._peak


def measure_step(
    spec: Spec,
    settings: Settings,
    mesh,
    unmasked: bool = False,
    peak: _MatmulPeak | None = None,
) -> dict:
  """Times the masked train step of `spec` (and the unmasked one).

  Returns:
    {'network', 'fraction_pruned', 'masked': {step_s, images_per_s, ...},
     'flops_per_device'}; with `unmasked`, 'unmasked' and
    'masked_over_unmasked' (throughput ratio); with `peak`,
    'peak_flops_per_s_per_device', the best matmul rate measured between
    the step's timed blocks.
  """
  masked, model, variables, mask = _masked_stepper(spec, settings, mesh)
  batch = masked.batch
  steppers = {'masked': masked}
  if unmasked:
    steppers['unmasked'] = _Stepper(
        train.make_train_step(
            tasks.get_task('labels'),
            mesh,
            xla_options=settings.xla_options,
            conv_impl=model.conv_impl,
        ),
        parallel.replicate(
            create_unmasked_state(
                model, variables, _optimizer(spec), jax.random.PRNGKey(1)
            ),
            mesh,
        ),
        batch,
    )
  blocks = _timed(steppers, settings, peak)
  kept, total = pruning.count(mask, pruning.prunable_tree(variables['params']))
  out = {
      'network': spec.describe(),
      'steps_per_block': blocks['steps_per_block'],
      'fraction_pruned': 1 - kept / total,
      'num_params': int(
          sum(np.size(x) for x in jax.tree.leaves(variables['params']))
      ),
      'flops_per_device': (
          steppers['masked'].flops()
          if model.conv_impl == 'xla'
          else xla_conv_flops(
              steppers['masked'].step, steppers['masked'].state, batch
          )
      ),
  }
  for name, s in steppers.items():
    out[name] = _step_stats(blocks[name], spec.batch_size, s.compile_s)
  if 'peak' in blocks:
    out['peak_flops_per_s_per_device'] = max(blocks['peak'])
  if unmasked:
    out['unmasked']['flops_per_device'] = steppers['unmasked'].flops()
    out['masked_over_unmasked'] = (
        out['unmasked']['step_s'] / out['masked']['step_s']
    )
  del steppers
  return out


def _masked_stepper(spec: Spec, settings: Settings, mesh):
  """The masked train step of `spec` as training builds it, on one random
  batch, with `settings.fraction_pruned` of its weights pruned.

  Returns:
    (stepper, model, variables, mask).
  """
  model = _model(spec)
  variables, mask = _pruned_variables(spec, model, 0, settings.fraction_pruned)
  step = train.make_train_step(
      tasks.get_task('labels'),
      mesh,
      xla_options=settings.xla_options,
      conv_impl=model.conv_impl,
  )
  state = train.create_train_state(
      model, variables, mask, _optimizer(spec), jax.random.PRNGKey(1)
  )
  batch = parallel.shard_batch(random_batch(spec), mesh)
  return (
      _Stepper(step, parallel.replicate(state, mesh), batch),
      model,
      variables,
      mask,
  )


class _MatmulPeak:
  """The FLOP/s of an n x n @ n x n float32 matmul on one device.

  Each `measure` times a block of back-to-back matmuls lasting ~0.2 s or
  one matmul, counting 2 n^3 FLOPs each; the peak is the best block.
  """

  def __init__(self, n: int):
    self.n = n
    self.device = jax.devices()[0]
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    self.a = jax.device_put(jax.random.normal(ka, (n, n)), self.device)
    self.b = jax.device_put(jax.random.normal(kb, (n, n)), self.device)
    self.matmul = jax.jit(jnp.matmul)
    jax.block_until_ready(self.matmul(self.a, self.b))
    t0 = time.perf_counter()
    jax.block_until_ready(self.matmul(self.a, self.b))
    self.inner = max(1, int(0.2 / max(time.perf_counter() - t0, 1e-6)))
    self.rates: list[float] = []

  def measure(self) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(
        [self.matmul(self.a, self.b) for _ in range(self.inner)]
    )
    seconds = (time.perf_counter() - t0) / self.inner
    self.rates.append(2 * self.n**3 / seconds)
    return self.rates[-1]

  def result(self, repeats: int) -> dict:
    """The best rate so far, measured `repeats` more times first."""
    for _ in range(repeats):
      self.measure()
    best = max(self.rates)
    return {
        'n': self.n,
        'flops_per_s_per_device': best,
        'seconds': 2 * self.n**3 / best,
        'blocks': len(self.rates),
        'device': str(self.device),
    }


def _times(fn: Callable[[], Any], n: int) -> list[float]:
  """Seconds of `n` calls of `fn`, each waited for."""
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return times
