"""Benchmarks: train-step speed, masking cost, FLOP/s, pruning, IO, seeds.

  python -m sslprune_jax.bench                    # everything, defaults
  python -m sslprune_jax.bench | head -1          # only the JSON line
  python -m sslprune_jax.bench --sections=step,unmasked --models=resnet18 \\
      --steps=10 --json_out=/tmp/bench.json

Stdout gets exactly one line, the JSON object of the results; a readable
summary goes to stderr (and everything libraries print goes there too).
Everything runs on the machine's devices (CPU, GPU or TPU), all of them, on
the data mesh of `parallel.create_mesh()`.

Sections (`--sections`, by name or number):

  1 step      the masked train step, built as training builds it
              (`train.make_train_step`, labels task, a state whose mask has
              `--fraction_pruned` of the prunable weights pruned by
              magnitude), fed one random batch already on the devices, so
              that the step alone is timed: images/s per model.
  2 unmasked  the same step without masks (the gradients are not masked;
              `UnmaskedTrainState`), timed in
              blocks alternating with the masked one; the ratio masked /
              unmasked throughput.
  3 flops     FLOPs of the compiled step from XLA's cost analysis, divided by
              the step time, as a fraction of the measured peak of a large
              float32 matmul on one device (timed between the step's
              blocks). Where the step's convolutions are custom calls
              (oneDNN), the FLOPs are those of the same step with XLA's
              convolutions.
  4 prune     global magnitude pruning of a ResNet-50-sized tree (its real
              parameter shapes, random values) and rewinding it.
  5 round     the between-round work of a `configs/labels.py:quick` run
              (end-of-round checkpoint, restoring it and the rewind point,
              pruning, rewinding) against the round's estimated time.
  6 pipeline  the input pipelines alone, against the step they feed.
  7 seeds     k seeds trained by one program (`make_train_step(...,
              num_seeds=k)`), images/s summed over seeds and per seed.
  8 options   the masked step of every model compiled with each of
              `xla_options.PRESETS`, timed in alternating blocks: images/s
              and the speedup over XLA's defaults ('none'); which preset
              'auto' picks on this platform; and 3x3 convolutions written
              as matmuls against XLA's own (`conv_forms`).
  9 startup   time to the first step of a `configs/labels.py:quick` run,
              caches cleared: building the experiment, compiling the train
              and eval steps; and the whole `imp.run` of a finished run
              (what resuming one costs when there is nothing left to do).
  10 kernels  the masked step of every model with each convolution
              implementation this platform can run (`model.conv_impl`:
              XLA's, oneDNN's), timed in alternating blocks: images/s and
              the speedup over XLA's; which one 'auto' picks.
  11 pytorch  the masked step of every BasicBlock CIFAR network against
              PyTorch's step of the same network (`bench_torch`: channels-
              last, oneDNN, pruned weights zeroed after every update), in
              alternating blocks; skipped where PyTorch is not installed.

The JSON's keys: 'environment' (backend, device kind and count, versions),
'settings', one key per section run ('step' holds sections 1-2, per
network), 'targets' (every project target the run measured: its value,
the target, the comparison and whether it is met) and 'seconds'.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging
from etils import epath
import flax
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf

from sslprune_jax import bench_torch
from sslprune_jax import checkpoint
from sslprune_jax import config_lib
from sslprune_jax import data
from sslprune_jax import host_memory
from sslprune_jax import imp
from sslprune_jax import kernels
from sslprune_jax import models
from sslprune_jax import parallel
from sslprune_jax import pruning
from sslprune_jax import tasks
from sslprune_jax import train
from sslprune_jax import xla_options as xla_options_lib
from sslprune_jax.data import augment as augment_lib
from sslprune_jax.kernels import onednn_conv
from sslprune_jax.models.resnet import BASE_WIDTHS
from sslprune_jax.models.resnet import scale_width

PyTree = Any

SECTIONS = ('step', 'unmasked', 'flops', 'prune', 'round', 'pipeline',
            'seeds', 'options', 'startup', 'kernels', 'pytorch')
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


# ---------------------------------------------------------------------------
# Configs and networks.


def quick_config(data_dir: str | None = None,
                 conv_impl: str = 'auto') -> ml_collections.ConfigDict:
  """The `configs/labels.py:quick` config, with `conv_impl`'s convolutions."""
  config = config_lib.load('labels', 'quick')
  if data_dir:
    config.data.data_dir = data_dir
  config.model.conv_impl = conv_impl
  return config


@dataclasses.dataclass(frozen=True)
class Spec:
  """A network to benchmark and the config its optimiser comes from."""
  name: str
  model: dict
  image_shape: tuple[int, int, int]
  num_classes: int
  batch_size: int
  config: ml_collections.ConfigDict

  def describe(self) -> dict:
    return {'model': dict(self.model), 'image_shape': list(self.image_shape),
            'num_classes': self.num_classes, 'batch_size': self.batch_size}


def get_spec(name: str, settings: Settings) -> Spec:
  """The network `name` ('resnet18', 'resnet18_small', 'resnet50', 'quick').

  Raises:
    ValueError: unknown name, or a batch the devices do not divide.
  """
  cifar = config_lib.base('labels')
  if name in ('resnet18', 'resnet18_small'):
    width = 1.0 if name == 'resnet18' else settings.small_width
    spec = Spec(name, dict(name='resnet_cifar', depth=18, width=width),
                (32, 32, 3), 10, settings.cifar_batch_size, cifar)
  elif name == 'resnet50':
    batch = settings.imagenet_batch_size or (
        8 if jax.default_backend() == 'cpu' else 128)
    spec = Spec(name, dict(name='resnet', depth=50, width=1.0),
                (224, 224, 3), 1000, batch, config_lib.imagenet(cifar))
  elif name == 'quick':
    config = quick_config(settings.data_dir, settings.conv_impl)
    if settings.quick_batch_size:
      config.train.batch_size = settings.quick_batch_size
    spec = Spec(name, {k: config.model[k] for k in ('name', 'depth',
                                                   'width')},
                (28, 28, 1), 10, config.train.batch_size, config)
  else:
    raise ValueError(f'Unknown model {name!r}; valid: {NETWORKS}.')
  parallel.check_batch_size(spec.batch_size, parallel.create_mesh())
  model = {**spec.model, 'dtype': settings.dtype,
           'conv_impl': settings.conv_impl}
  model['conv_impl'] = models.conv_impl_of(model)
  return dataclasses.replace(spec, model=model)


def _model(spec: Spec):
  return models.create_model(ml_collections.ConfigDict(spec.model),
                             spec.num_classes)


def _optimizer(spec: Spec):
  train_config = spec.config.train
  return train.create_optimizer(
      train_config, train.create_learning_rate_fn(train_config, 1000))


# Jitted initialisations, one per network (compiled once).
_INIT_FNS: dict[str, Callable] = {}


def _pruned_variables(spec: Spec, model, seed: int, fraction: float
                      ) -> tuple[dict, PyTree]:
  """Fresh variables of the network and a mask pruning `fraction` of its
  prunable weights by magnitude (in one go)."""
  key = json.dumps([spec.model, spec.image_shape, spec.num_classes])
  if key not in _INIT_FNS:
    _INIT_FNS[key] = jax.jit(functools.partial(
        train.init_variables, model, image_shape=spec.image_shape))
  variables = _INIT_FNS[key](jax.random.PRNGKey(seed))
  params = variables['params']
  prunable = pruning.prunable_tree(params)
  mask = pruning.init_mask(params)
  if fraction > 0:
    mask = pruning.magnitude_prune(params, mask, prunable, fraction)
  return variables, mask


def random_batch(spec: Spec, seed: int = 0, num_seeds: int = 1,
                 batch_size: int | None = None, eval_mask: bool = False
                 ) -> dict:
  """This host's share of a random batch, as numpy (see `train_iterator`).

  With `num_seeds` > 1 every array gets a leading seed axis.
  """
  rng = np.random.default_rng(seed)
  batch = (batch_size or spec.batch_size) // jax.process_count()
  lead = (num_seeds,) if num_seeds > 1 else ()
  out = {
      'image': rng.standard_normal((*lead, batch, *spec.image_shape),
                                   np.float32),
      'label': rng.integers(0, spec.num_classes, (*lead, batch), np.int32),
  }
  if eval_mask:
    out['mask'] = np.ones((*lead, batch), bool)
  else:
    out['index'] = np.broadcast_to(np.arange(batch, dtype=np.int32),
                                   (*lead, batch)).copy()
    out['labelled'] = np.ones((*lead, batch), bool)
  return out


# ---------------------------------------------------------------------------
# The step without masks.


class UnmaskedTrainState(train.TrainState):
  """A train state without masks: flax's plain `apply_gradients`.

  `train.TrainState` differs from it only in masking the gradients, so
  `train.make_train_step` over this state is the step without masks.
  """

  def apply_gradients(self, *, grads, **kwargs):
    return train_state.TrainState.apply_gradients(self, grads=grads,
                                                  **kwargs)


def create_unmasked_state(model, variables: dict, tx, rng: jax.Array
                          ) -> UnmaskedTrainState:
  """A fresh `UnmaskedTrainState` (empty mask) at step 0."""
  return UnmaskedTrainState.create(
      apply_fn=model.apply, params=variables['params'],
      batch_stats=variables.get('batch_stats', {}), mask={}, rng=rng, tx=tx,
      task_state={})


# ---------------------------------------------------------------------------
# Timing.


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


def _timed(steppers: dict[str, _Stepper], settings: Settings,
           peak: _MatmulPeak | None = None) -> dict:
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


def _step_stats(seconds: list[float], images: int, compile_s: float
                ) -> dict:
  best = min(seconds)
  return {'step_s': best, 'images_per_s': images / best,
          'step_s_median': statistics.median(seconds),
          'step_s_blocks': seconds, 'compile_s': compile_s}


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
          get_spec(name, self.settings), self.settings, self.mesh, unmasked,
          self.peak() if self.with_peak and name in self.settings.models
          else None)
    return self.steps[name]

  def peak(self) -> _MatmulPeak:
    if self._peak is None:
      self._peak = _MatmulPeak(self.settings.matmul_size)
    return self._peak


def measure_step(spec: Spec, settings: Settings, mesh,
                 unmasked: bool = False, peak: _MatmulPeak | None = None
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
        train.make_train_step(tasks.get_task('labels'), mesh,
                              xla_options=settings.xla_options,
                              conv_impl=model.conv_impl),
        parallel.replicate(create_unmasked_state(
            model, variables, _optimizer(spec), jax.random.PRNGKey(1)),
                           mesh), batch)
  blocks = _timed(steppers, settings, peak)
  kept, total = pruning.count(mask, pruning.prunable_tree(variables['params']))
  out = {'network': spec.describe(),
         'steps_per_block': blocks['steps_per_block'],
         'fraction_pruned': 1 - kept / total,
         'num_params': int(sum(np.size(x) for x in
                               jax.tree.leaves(variables['params']))),
         'flops_per_device': (
             steppers['masked'].flops() if model.conv_impl == 'xla' else
             xla_conv_flops(steppers['masked'].step, steppers['masked'].state,
                            batch))}
  for name, s in steppers.items():
    out[name] = _step_stats(blocks[name], spec.batch_size, s.compile_s)
  if 'peak' in blocks:
    out['peak_flops_per_s_per_device'] = max(blocks['peak'])
  if unmasked:
    out['unmasked']['flops_per_device'] = steppers['unmasked'].flops()
    out['masked_over_unmasked'] = (out['unmasked']['step_s']
                                   / out['masked']['step_s'])
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
  step = train.make_train_step(tasks.get_task('labels'), mesh,
                               xla_options=settings.xla_options,
                               conv_impl=model.conv_impl)
  state = train.create_train_state(model, variables, mask, _optimizer(spec),
                                   jax.random.PRNGKey(1))
  batch = parallel.shard_batch(random_batch(spec), mesh)
  return (_Stepper(step, parallel.replicate(state, mesh), batch), model,
          variables, mask)


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
    jax.block_until_ready([self.matmul(self.a, self.b)
                           for _ in range(self.inner)])
    seconds = (time.perf_counter() - t0) / self.inner
    self.rates.append(2 * self.n ** 3 / seconds)
    return self.rates[-1]

  def result(self, repeats: int) -> dict:
    """The best rate so far, measured `repeats` more times first."""
    for _ in range(repeats):
      self.measure()
    best = max(self.rates)
    return {'n': self.n, 'flops_per_s_per_device': best,
            'seconds': 2 * self.n ** 3 / best,
            'blocks': len(self.rates), 'device': str(self.device)}


# ---------------------------------------------------------------------------
# Sections.


def section_step(cache: _Cache, unmasked: bool) -> dict:
  """Sections 1 and 2: the masked (and unmasked) step of every model."""
  return {name: cache.step(name, unmasked) for name in cache.settings.models}


def section_flops(cache: _Cache) -> dict:
  """Section 3: achieved FLOP/s of the masked step against a matmul's.

  FLOPs are the per-device program's (see `compiled_flops`) and the peak
  is one device's, so the fraction compares one device with itself; the
  totals over the mesh are both `num_devices` times larger. The peak of
  `fraction_of_peak` is the best matmul timed between the model's step
  blocks (the same load, on a machine shared with other work);
  `fraction_of_best_peak` uses the best matmul of the whole run.
  """
  n = jax.device_count()
  out = {'models': {}}
  for name in cache.settings.models:
    step = cache.step(name)
    flops = step['flops_per_device']
    seconds = step['masked']['step_s']
    if flops is None:
      out['models'][name] = {'flops_per_device': None,
                             'note': 'no cost analysis on this backend'}
      continue
    achieved = flops / seconds
    peak = step['peak_flops_per_s_per_device']
    out['models'][name] = {
        'flops_per_device': flops,
        'flops_per_step': flops * n,
        'flops_per_image': flops * n / step['network']['batch_size'],
        'flops_per_s_per_device': achieved,
        'flops_per_s': achieved * n,
        'peak_flops_per_s_per_device': peak,
        'fraction_of_peak': achieved / peak,
    }
  out['matmul_peak'] = cache.peak().result(cache.settings.matmul_repeats)
  peak = out['matmul_peak']['flops_per_s_per_device']
  for f in out['models'].values():
    if f.get('flops_per_device'):
      f['fraction_of_best_peak'] = f['flops_per_s_per_device'] / peak
  for name in ('resnet18', 'resnet18_small'):
    if name in cache.settings.models:
      step = cache.step(name)
      out[f'{name}_convs'] = conv_profile(
          step['network']['batch_size'] // n, peak,
          width=step['network']['model']['width'],
          xla_options=cache.settings.xla_options,
          conv_impl=step['network']['model']['conv_impl'])
  return out


# CIFAR ResNet-18's 3x3 convolutions at width 1, stage by stage:
# (side, channels).
_RESNET18_CONVS = ((32, 64), (16, 128), (8, 256), (4, 512))


def conv_profile(batch_size: int, peak: float, repeats: int = 3,
                 width: float = 1.0, xla_options: str = 'auto',
                 conv_impl: str = 'xla') -> dict:
  """FLOP/s of CIFAR ResNet-18's 3x3 convolutions, alone, on one device.

  For each stage's convolution (stride 1, 'SAME', float32, NHWC) at the
  per-device batch and the network's `width`: the forward pass, the input
  gradient and the weight gradient, each jitted alone with the step's
  compiler options and convolution implementation (`conv_impl`, 'xla' or
  'onednn') and timed (best of `repeats`), as GFLOP/s and as a fraction of
  the matmul `peak`. Where the train step falls short of the peak, this
  says which convolutions hold it back: the step cannot beat its
  convolutions.
  """
  jit = _jit_with(xla_options, conv_impl)
  conv = CONV_FORMS['conv' if conv_impl == 'xla' else conv_impl]
  programs = {
      'forward': jit(lambda x, w, g: conv(x, w)),
      'input_grad': jit(
          lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]),
      'weight_grad': jit(
          lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0]),
  }
  out = {}
  for side, base in _RESNET18_CONVS:
    channels = scale_width(base, width)
    keys = jax.random.split(jax.random.PRNGKey(side), 3)
    x = jax.random.normal(keys[0], (batch_size, side, side, channels))
    w = jax.random.normal(keys[1], (3, 3, channels, channels))
    g = jax.random.normal(keys[2], (batch_size, side, side, channels))
    flops = 2 * batch_size * side * side * 9 * channels * channels
    row = {'flops': flops}
    for name, program in programs.items():
      jax.block_until_ready(program(x, w, g))  # Compiles.
      best = min(_times(functools.partial(program, x, w, g), repeats))
      row[f'{name}_flops_per_s'] = flops / best
      row[f'{name}_fraction_of_peak'] = flops / best / peak
    out[f'{side}x{side}x{channels}'] = row
  return out


def _random_params(spec: Spec) -> dict:
  """The network's parameter shapes (no init computed), random normal."""
  model = _model(spec)
  shapes = jax.eval_shape(functools.partial(
      train.init_variables, model, image_shape=spec.image_shape),
                          jax.random.PRNGKey(0))['params']
  rng = np.random.default_rng(0)
  return jax.tree.map(
      lambda x: jnp.asarray(rng.standard_normal(x.shape, np.float32),
                            x.dtype), shapes)


def _times(fn: Callable[[], Any], n: int) -> list[float]:
  """Seconds of `n` calls of `fn`, each waited for."""
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return times


def section_prune(settings: Settings) -> dict:
  """Section 4: global magnitude pruning and rewinding of a big tree.

  The tree has the prune model's real parameter shapes with random normal
  values. JAX's caches are cleared first, so that the first pruning (of
  the full mask, 20%) compiles, as a run's first pruning does; it is
  reported apart. The timed ones prune 20% of what that left. Rewinding
  is timed likewise: its first call apart, then the fastest of the others.
  """
  jax.clear_caches()
  spec = get_spec(settings.prune_model, settings)
  params = _random_params(spec)
  saved = jax.tree.map(lambda x: x * 0.5, params)
  prunable = pruning.prunable_tree(params)
  full = pruning.init_mask(params)
  jax.block_until_ready((params, saved, full))
  [prune_first] = _times(
      lambda: pruning.magnitude_prune(params, full, prunable, 0.2), 1)
  mask = pruning.magnitude_prune(params, full, prunable, 0.2)
  remaining, total = pruning.count(mask, prunable)
  new_mask = pruning.magnitude_prune(params, mask, prunable, 0.2)
  repeats = max(settings.prune_repeats, 1)
  prune_all = _times(
      lambda: pruning.magnitude_prune(params, mask, prunable, 0.2), repeats)
  rewind_first, *rewind_all = _times(
      lambda: pruning.rewind(saved, new_mask), repeats + 1)
  return {
      'tree': settings.prune_model,
      'num_weights': int(sum(x.size for x in jax.tree.leaves(params))),
      'num_prunable': total, 'remaining_before': remaining,
      'remaining_after': pruning.count(new_mask, prunable)[0],
      'prune_s': min(prune_all), 'prune_s_all': prune_all,
      'prune_s_first_call': prune_first,
      'rewind_s': min(rewind_all), 'rewind_s_all': rewind_all,
      'rewind_s_first_call': rewind_first,
  }


def section_round(cache: _Cache) -> dict:
  """Section 5: the per-round overhead of a quick run.

  A quick run's between-round work done for real on its network (in a
  temporary workdir, through `imp.round_start` as `imp.run` does it): save
  the end-of-round checkpoint and the compact export, then start the next
  round (restore that checkpoint, prune, restore the rewind point, rewind,
  build and replicate the state). JAX's caches are cleared first, so that
  the first round transition compiles what a fresh run compiles. The
  round's time is the measured step time x the round's steps + the
  measured eval step time x the eval batches.
  """
  settings = cache.settings
  step = cache.step('quick')
  config = quick_config(settings.data_dir, settings.conv_impl)
  config.train.batch_size = step['network']['batch_size']
  jax.clear_caches()
  exp = imp.build(config)
  num_steps, _ = imp.round_schedule(config, exp.info.num_train_examples)
  eval_batch = config.train.eval_batch_size
  num_eval_batches = math.ceil(exp.info.num_eval_examples / eval_batch)
  transitions = []
  with tempfile.TemporaryDirectory() as workdir:
    ckpts = checkpoint.RunCheckpoints(workdir)
    try:
      state = imp.round_start(exp, ckpts, 0)
      pruning.count(state.mask, exp.prunable)
      ckpts.save_rewind(exp.rewind_step, {
          'params': state.params, 'batch_stats': state.batch_stats,
          'task_state': state.task_state})
      for r in range(config.pruning.num_rounds):
        t0 = time.perf_counter()
        imp.save_round_end(ckpts, epath.Path(workdir), r, state,
                           {'round': r, 'test_accuracy': 0.0})
        t1 = time.perf_counter()
        state = jax.block_until_ready(imp.round_start(exp, ckpts, r + 1))
        t2 = time.perf_counter()
        transitions.append({'save_round_s': t1 - t0,
                            'round_start_s': t2 - t1,
                            'total_s': t2 - t0})
      pieces = _round_pieces(exp, ckpts, config, settings.prune_repeats)
    finally:
      ckpts.close()
    eval_s = _eval_step_seconds(exp, state, eval_batch, settings)
  overhead = statistics.mean(t['total_s'] for t in transitions)
  train_s = step['masked']['step_s'] * num_steps
  round_s = train_s + eval_s * num_eval_batches
  return {
      'network': step['network'],
      'num_steps': num_steps, 'train_examples': exp.info.num_train_examples,
      'step_s': step['masked']['step_s'],
      'eval_step_s': eval_s, 'eval_batch_size': eval_batch,
      'num_eval_batches': num_eval_batches,
      'round_s': round_s,
      'transitions': transitions,
      'overhead_s': overhead,
      'overhead_fraction': overhead / round_s,
      'pieces_warm': pieces,
      'note': ('overhead_s: mean over the quick run\'s round transitions '
               '(the first compiles the pruning program); not counted: '
               'in-round checkpoints (asynchronous) and the one-off rewind '
               'point save.'),
  }


def _round_pieces(exp, ckpts, config, repeats: int) -> dict:
  """Warm times of the parts of a round transition (best of `repeats`)."""
  r = config.pruning.num_rounds
  target = exp.round_target()
  prev = ckpts.restore_round(r - 1, target)
  rewind_target = {'params': target['params'],
                   'batch_stats': target['batch_stats'],
                   'task_state': exp.task_state}
  mask = pruning.magnitude_prune(prev['params'], prev['mask'], exp.prunable,
                                 config.pruning.fraction)
  saved = ckpts.restore_rewind(rewind_target)
  parts = {
      'restore_round_s': lambda: ckpts.restore_round(r - 1, target),
      'prune_s': lambda: pruning.magnitude_prune(
          prev['params'], prev['mask'], exp.prunable,
          config.pruning.fraction),
      'restore_rewind_s': lambda: ckpts.restore_rewind(rewind_target),
      'rewind_s': lambda: pruning.rewind(saved['params'], mask),
  }
  return {name: min(_times(fn, max(repeats, 1)))
          for name, fn in parts.items()}


def _eval_step_seconds(exp, state, eval_batch: int, settings: Settings
                       ) -> float:
  """Best time of one eval step on a random batch (after compiling)."""
  spec = get_spec('quick', settings)
  eval_step = train.make_eval_step(
      exp.task, exp.mesh, settings.xla_options,
      models.conv_impl_of(exp.config.model))
  batch = parallel.shard_batch(
      random_batch(spec, batch_size=eval_batch, eval_mask=True), exp.mesh)
  fn = lambda: eval_step(state, batch)[0]
  jax.block_until_ready(fn())
  return min(_times(fn, max(settings.eval_repeats, 1)))


def _time_iterator(iterator, warmup: int, batches: int) -> dict:
  t0 = time.perf_counter()
  first = next(iterator)
  first_s = time.perf_counter() - t0
  for _ in range(max(warmup - 1, 0)):
    next(iterator)
  t0 = time.perf_counter()
  images = 0
  for _ in range(batches):
    images += len(next(iterator)['image'])
  seconds = time.perf_counter() - t0
  return {'images_per_s': images / seconds, 'seconds': seconds,
          'images': images, 'first_batch_s': first_s,
          'batch_shape': list(first['image'].shape)}


def cifar_like_batches(batch_size: int, seed: int = 0,
                       num_images: int = 50_000):
  """CIFAR-10's training pipeline over synthetic 32x32x3 uint8 images.

  The structure of `data.train_iterator` for a cached dataset (shuffle,
  per-example stateless seeds, the project's 'cifar' augmentation: pad 4,
  random crop, random flip; normalisation; batching, prefetching; its
  tf.data options), on random images in memory, since CIFAR-10 cannot be
  downloaded here.
  """
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (num_images, 32, 32, 3), np.uint8)
  labels = rng.integers(0, 10, num_images, np.int64)
  mean, std = augment_lib.MEAN_STD['cifar10']
  key = tf.constant([seed, 1], tf.int64)

  def prepare(position, example):
    example_seed = tf.random.experimental.stateless_fold_in(
        key, position, alg='philox')
    image = augment_lib.preprocess_train(
        example['image'], example_seed, augment='cifar', image_size=32,
        channels=3, shape=(32, 32, 3))
    return {'image': augment_lib.normalize(image, mean, std),
            'label': tf.cast(example['label'], tf.int32)}

  ds = tf.data.Dataset.from_tensor_slices({'image': images,
                                           'label': labels})
  ds = ds.shuffle(num_images, seed=seed).repeat().enumerate()
  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return iter(ds.with_options(data.pipeline_options()).as_numpy_iterator())


def section_pipeline(cache: _Cache) -> dict:
  """Section 6: input pipelines alone against the steps they feed.

  Fashion-MNIST: the real `data.train_iterator` of the quick config (its
  data config; unaugmented) against the quick network's step. CIFAR-like:
  `cifar_like_batches` (the 'cifar' augmentation on synthetic images)
  against CIFAR ResNet-18's step (or the first CIFAR model measured).
  """
  settings = cache.settings
  quick = cache.step('quick')
  config = quick_config(settings.data_dir, settings.conv_impl)
  batch = quick['network']['batch_size']
  fmnist = _time_iterator(
      data.train_iterator(config.data, global_batch_size=batch, seed=0),
      settings.pipeline_warmup, settings.pipeline_batches)
  fmnist.update(source='data.train_iterator, configs/labels.py:quick data',
                step='quick', step_images_per_s=quick['masked']
                ['images_per_s'])
  cifar_models = [m for m in settings.models if m.startswith('resnet18')]
  step_name = ('resnet18' if 'resnet18' in cifar_models or not cifar_models
               else cifar_models[0])
  step = cache.step(step_name)
  cifar = _time_iterator(
      cifar_like_batches(step['network']['batch_size']),
      settings.pipeline_warmup, settings.pipeline_batches)
  cifar.update(source=('synthetic uint8 32x32x3 images through '
                       "augment.preprocess_train(augment='cifar') "
                       '(CIFAR-10 is not on disk)'),
               step=step_name,
               step_images_per_s=step['masked']['images_per_s'])
  for result in (fmnist, cifar):
    result['pipeline_over_step'] = (result['images_per_s']
                                    / result['step_images_per_s'])
  return {'fashion_mnist': fmnist, 'cifar_like': cifar}


def section_seeds(cache: _Cache) -> dict:
  """Section 7: k seeds in one program, on the quick network.

  Each k > 1 is timed with both ways the step trains several seeds
  (`train.seed_batching_for`): 'vmap' and 'unroll'; 'auto' says which one
  runs do on this backend.
  """
  settings = cache.settings
  spec = get_spec('quick', settings)
  mesh = cache.mesh
  model, tx, task = _model(spec), _optimizer(spec), tasks.get_task('labels')
  auto = train.seed_batching_for('auto', mesh.devices.flat[0].platform)
  out = {'network': spec.describe(), 'auto': auto, 'by_seeds': {}}
  one = dict(cache.step('quick')['masked'])
  base = one['images_per_s']
  for k in settings.seeds:
    if k == 1:
      # The quick network's masked step: one seed, the usual program.
      out['by_seeds']['1'] = dict(one, images_per_s_per_seed=base,
                                  speedup_over_one_seed=1.0)
      continue
    states = []
    for i in range(k):
      variables, mask = _pruned_variables(spec, model, i,
                                          settings.fraction_pruned)
      states.append(train.create_train_state(
          model, variables, mask, tx, jax.random.PRNGKey(100 + i)))
    by_batching = {}
    for batching in ('vmap', 'unroll'):
      step = train.make_train_step(task, mesh, num_seeds=k,
                                   seed_batching=batching,
                                   xla_options=settings.xla_options,
                                   conv_impl=model.conv_impl)
      state = parallel.replicate(train.stack_trees(states), mesh)
      batch = parallel.shard_batch(random_batch(spec, num_seeds=k), mesh,
                                   num_seeds=k)
      stepper = _Stepper(step, state, batch)
      timed = _timed({'s': stepper}, settings)
      result = _step_stats(timed['s'], k * spec.batch_size,
                           stepper.compile_s)
      result['steps_per_block'] = timed['steps_per_block']
      result['images_per_s_per_seed'] = result['images_per_s'] / k
      result['speedup_over_one_seed'] = result['images_per_s'] / base
      by_batching[batching] = result
      del stepper
    out['by_seeds'][str(k)] = by_batching
  return out


# ---------------------------------------------------------------------------
# The whole benchmark.


def section_options(cache: _Cache) -> dict:
  """Section 8: the masked step under each preset of compiler options.

  Per model, one program per `xla_options.PRESETS` entry that applies to
  this platform, all from the same state and batch, timed in alternating
  blocks (so that the machine's load falls on each alike).
  """
  settings, mesh = cache.settings, cache.mesh
  platform = mesh.devices.flat[0].platform
  presets = xla_options_lib.presets_for(platform)
  conv_impl = kernels.resolve_conv_impl(settings.conv_impl)
  out = {'platform': platform, 'presets': list(presets),
         'conv_impl': conv_impl,
         'auto': xla_options_lib.preset_for('auto', platform, conv_impl),
         'models': {}}
  task = tasks.get_task('labels')
  for name in settings.models:
    out['models'][name] = _time_variants(cache, name, 'none', {
        preset: lambda model, state, preset=preset: (
            train.make_train_step(task, mesh, xla_options=preset,
                                  conv_impl=model.conv_impl), state)
        for preset in presets})
  batch = get_spec('resnet18', settings).batch_size // jax.device_count()
  out['conv_forms_fraction_of_peak'] = conv_forms(
      batch, ((32, 16), (32, 64), (16, 128)),
      cache.peak().result(settings.matmul_repeats)['flops_per_s_per_device'],
      settings.xla_options)
  return out


def section_kernels(cache: _Cache) -> dict:
  """Section 10: the masked step with each convolution implementation.

  Per model, one program per implementation this platform can run
  (`kernels.CONV_IMPLS` less 'auto'), from the same state and batch, timed
  in alternating blocks.
  """
  settings, mesh = cache.settings, cache.mesh
  impls = [impl for impl in kernels.CONV_IMPLS[1:]
           if kernels.check_conv_impl(impl) is None]
  out = {'impls': impls, 'auto': kernels.resolve_conv_impl('auto'),
         'unavailable': {impl: kernels.check_conv_impl(impl)
                         for impl in kernels.CONV_IMPLS[1:]
                         if impl not in impls},
         'models': {}}
  task = tasks.get_task('labels')
  for name in settings.models:
    out['models'][name] = _time_variants(cache, name, 'xla', {
        impl: lambda model, state, impl=impl: (
            train.make_train_step(task, mesh,
                                  xla_options=settings.xla_options,
                                  conv_impl=impl),
            state.replace(apply_fn=model.clone(conv_impl=impl).apply))
        for impl in impls})
  return out


def section_pytorch(cache: _Cache) -> dict:
  """Section 11: the masked step against PyTorch's (`bench_torch`).

  Per BasicBlock CIFAR network among the models (the others are skipped),
  the project's masked step as training builds it and PyTorch's, timed in
  alternating blocks. PyTorch runs twice: as installed ('pytorch_system',
  glibc's malloc defaults) and with the project's malloc policy
  ('pytorch_retain', `host_memory`), which speeds it up too.
  'jax_over_pytorch' is the project's images/s over the faster of the two.
  Without PyTorch installed the section says so.
  """
  why = bench_torch.available()
  if why:
    return {'skipped': why}
  settings = cache.settings
  out: dict[str, Any] = {'models': {}}
  for name in settings.models:
    spec = get_spec(name, settings)
    model = _model(spec)
    if not (isinstance(model, models.ResNet) and model.cifar_stem and
            model.block_cls is models.BasicBlock):
      out['models'][name] = {'skipped': 'not a BasicBlock CIFAR ResNet'}
      continue
    masked = _masked_stepper(spec, settings, cache.mesh)[0]
    torch_steps = {
        f'pytorch_{policy}': bench_torch.Remote(
            model.stage_sizes,
            [scale_width(w, model.width) for w in BASE_WIDTHS],
            spec.image_shape, spec.num_classes, spec.batch_size,
            spec.config.train, settings.fraction_pruned, host_malloc=policy)
        for policy in host_memory.POLICIES}
    out['torch_version'] = torch_steps['pytorch_system'].version()
    blocks = _timed({'jax': masked, **torch_steps}, settings)
    row = {'network': spec.describe(),
           'steps_per_block': blocks['steps_per_block'],
           'jax': _step_stats(blocks['jax'], spec.batch_size, masked.compile_s)}
    for variant, torch_step in torch_steps.items():
      row[variant] = _step_stats(blocks[variant], spec.batch_size,
                                 torch_step.compile_s)
      torch_step.close()
    row['jax_over_pytorch'] = min(row[v]['step_s'] for v in torch_steps) / (
        row['jax']['step_s'])
    out['models'][name] = row
    del masked
  return out


def _time_variants(cache: _Cache, name: str, baseline: str,
                   variants: dict[str, Callable]) -> dict:
  """The masked step of network `name` built several ways, timed in
  alternating blocks (so that the machine's load falls on each alike).

  Args:
    cache: the run's shared settings and mesh.
    name: the network.
    baseline: the variant the others' speedups are over.
    variants: per name, (model, state) -> (step, state): how that variant
      builds its step and state from the network's model and a fresh state
      (the same mask and batch for all).

  Returns:
    {'network', 'steps_per_block', variant: {step_s, images_per_s, ...,
     'speedup_over_<baseline>'}}.
  """
  settings, mesh = cache.settings, cache.mesh
  spec = get_spec(name, settings)
  model = _model(spec)
  variables, mask = _pruned_variables(spec, model, 0,
                                      settings.fraction_pruned)
  batch = parallel.shard_batch(random_batch(spec), mesh)
  state = train.create_train_state(model, variables, mask, _optimizer(spec),
                                   jax.random.PRNGKey(1))
  steppers = {}
  for variant, build in variants.items():
    step, start = build(model, state)
    steppers[variant] = _Stepper(step, parallel.replicate(start, mesh), batch)
  blocks = _timed(steppers, settings)
  rows = {variant: _step_stats(blocks[variant], spec.batch_size, s.compile_s)
          for variant, s in steppers.items()}
  for row in rows.values():
    row[f'speedup_over_{baseline}'] = (rows[baseline]['step_s']
                                       / row['step_s'])
  return {'network': spec.describe(),
          'steps_per_block': blocks['steps_per_block'], **rows}


def _jit_with(xla_options: str, conv_impl: str = 'xla') -> Callable:
  """`jax.jit` with the compiler options `xla_options` names here for a
  program whose convolutions are `conv_impl`'s."""
  return functools.partial(jax.jit, compiler_options=(
      xla_options_lib.compiler_options(xla_options, jax.default_backend(),
                                       conv_impl)))


def _shifted_windows(x: jnp.ndarray) -> list[jnp.ndarray]:
  """The nine 3x3-window shifts of an NHWC batch, zero-padded by one."""
  h, w = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return [padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)]


# A 3x3 stride-1 convolution written four ways (x NHWC, w HWIO).
CONV_FORMS = {
    # oneDNN's direct convolution (`kernels.onednn_conv`; CPU only).
    'onednn': lambda x, w: onednn_conv.conv_general_dilated(
        x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')),
    'conv': lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')),
    # Patches (im2col), then one matmul of depth 9 C.
    'im2col_matmul': lambda x, w: jnp.einsum(
        'nhwk,ko->nhwo', jnp.concatenate(_shifted_windows(x), axis=-1),
        w.reshape(-1, w.shape[-1])),
    # Nine 1x1 convolutions (matmuls of depth C) of shifted inputs, summed.
    'shifted_matmuls': lambda x, w: sum(
        jnp.einsum('nhwc,co->nhwo', s, w.reshape(9, *w.shape[2:])[k])
        for k, s in enumerate(_shifted_windows(x))),
}


def conv_forms(batch_size: int, shapes, peak: float,
               xla_options: str = 'auto', repeats: int = 3) -> dict:
  """Forward + backward FLOP/s of each of `CONV_FORMS`, as fractions of
  `peak`, for (side, channels) in `shapes`: whether a convolution written
  as matmuls beats XLA's own on this backend (their backward passes are
  matmuls too, the weight gradient included), and whether oneDNN's
  beats both."""
  out = {}
  for side, channels in shapes:
    keys = jax.random.split(jax.random.PRNGKey(side + channels), 3)
    x = jax.random.normal(keys[0], (batch_size, side, side, channels))
    w = jax.random.normal(keys[1], (3, 3, channels, channels))
    g = jax.random.normal(keys[2], (batch_size, side, side, channels))
    # Forward, input gradient and weight gradient: 3 x the forward's FLOPs.
    flops = 3 * 2 * batch_size * side * side * 9 * channels * channels
    row = {}
    for name, form in CONV_FORMS.items():
      if name == 'onednn' and kernels.check_conv_impl(name) is not None:
        continue
      jit = _jit_with(xla_options, 'onednn' if name == 'onednn' else 'xla')
      program = jit(lambda x, w, g, form=form: jax.vjp(form, x, w)[1](g))
      jax.block_until_ready(program(x, w, g))  # Compiles.
      best = min(_times(functools.partial(program, x, w, g), repeats))
      row[name] = flops / best / peak
    out[f'{side}x{side}x{channels}'] = row
  return out


def section_startup(cache: _Cache) -> dict:
  """Section 9: time to the first step, and a finished run's whole cost.

  On the `configs/labels.py:quick` config, with JAX's caches cleared
  before each part so that everything compiles as in a fresh process:
  `imp.build` (config checks, dataset metadata, model, shapes), compiling
  the train step and the eval step (`.lower().compile()` on the first
  round's state), and `imp.run` over a run whose every round is finished
  (it restores each round's metrics and trains nothing).
  """
  settings = cache.settings
  spec = get_spec('quick', settings)
  config = spec.config
  out = {}
  jax.clear_caches()
  t0 = time.perf_counter()
  exp = imp.build(config)
  out['build_s'] = time.perf_counter() - t0
  with tempfile.TemporaryDirectory() as workdir:
    checkpoint.check_or_write_config(workdir, config)
    ckpts = checkpoint.RunCheckpoints(workdir)
    try:
      t0 = time.perf_counter()
      state = jax.block_until_ready(imp.round_start(exp, ckpts, 0))
      out['first_state_s'] = time.perf_counter() - t0
      batch = parallel.shard_batch(random_batch(spec), exp.mesh)
      eval_batch = parallel.shard_batch(
          random_batch(spec, batch_size=config.train.eval_batch_size,
                       eval_mask=True), exp.mesh)
      for name, make, b in (
          ('train_step_compile_s', train.make_train_step, batch),
          ('eval_step_compile_s', train.make_eval_step, eval_batch)):
        step = make(exp.task, exp.mesh, xla_options=settings.xla_options,
                    conv_impl=models.conv_impl_of(config.model))
        t0 = time.perf_counter()
        step.lower(state, b).compile()
        out[name] = time.perf_counter() - t0
      for r in range(config.pruning.num_rounds + 1):
        imp.save_round_end(ckpts, epath.Path(workdir), r, state,
                           {'round': r, 'test_accuracy': 0.0})
    finally:
      ckpts.close()
    jax.clear_caches()
    t0 = time.perf_counter()
    imp.run(config, workdir)
    out['finished_run_s'] = time.perf_counter() - t0
  out['to_first_step_s'] = (out['build_s'] + out['first_state_s']
                            + out['train_step_compile_s'])
  return out


def environment() -> dict:
  devices = jax.devices()
  return {
      'backend': jax.default_backend(),
      'device_kind': devices[0].device_kind,
      'num_devices': len(devices),
      'num_processes': jax.process_count(),
      'jax_version': jax.__version__,
      'flax_version': flax.__version__,
      'python': platform.python_version(),
      'host_cpus': os.cpu_count(),
      'host_malloc': host_memory.applied(),
  }


def _target(value: float | None, key: str, **extra) -> dict:
  comparison, target = TARGETS[key]
  met = None
  if value is not None:
    met = value >= target if comparison == '>=' else value <= target
  return {'value': value, 'target': target, 'comparison': comparison,
          'met': met, **extra}


def targets_of(results: dict) -> dict:
  """Every project target the results say something about."""
  out = {}
  for name, step in results.get('step', {}).items():
    if 'masked_over_unmasked' in step:
      out[f'masked_over_unmasked_{name}'] = _target(
          step['masked_over_unmasked'], 'masked_over_unmasked')
  flops = results.get('flops', {}).get('models', {})
  for name in ('resnet18', 'resnet18_small', 'quick'):
    if name in flops:
      out[f'fraction_of_peak_{name}'] = _target(
          flops[name].get('fraction_of_peak'), f'fraction_of_peak_{name}')
  if 'prune' in results:
    out['prune_seconds'] = _target(
        results['prune']['prune_s'], 'prune_seconds',
        tree=results['prune']['tree'],
        note='the target is for a ResNet-50 tree on a 2-core CPU')
  if 'overhead_fraction' in results.get('round', {}):
    out['round_overhead_fraction'] = _target(
        results['round']['overhead_fraction'], 'round_overhead_fraction')
  for name, row in results.get('pytorch', {}).get('models', {}).items():
    if 'jax_over_pytorch' in row:
      out[f'jax_over_pytorch_{name}'] = _target(row['jax_over_pytorch'],
                                                'jax_over_pytorch')
  for name, result in results.get('pipeline', {}).items():
    if isinstance(result, dict) and 'pipeline_over_step' in result:
      out[f'pipeline_over_step_{name}'] = _target(
          result['pipeline_over_step'], 'pipeline_over_step')
  return out


def parse_sections(names) -> tuple[str, ...]:
  """Section names (or their numbers, 1-based), checked."""
  out = []
  for name in names:
    name = str(name).strip()
    if name.isdigit() and 1 <= int(name) <= len(SECTIONS):
      name = SECTIONS[int(name) - 1]
    if name not in SECTIONS:
      raise ValueError(f'Unknown section {name!r}; valid: {SECTIONS} or '
                       f'1-{len(SECTIONS)}.')
    out.append(name)
  return tuple(out)


def run(settings: Settings) -> dict:
  """Runs the selected sections; returns the JSON-able results."""
  sections = parse_sections(settings.sections)
  for name in (*settings.models, settings.prune_model):
    if name not in NETWORKS:
      raise ValueError(f'Unknown network {name!r}; valid: {NETWORKS}.')
  if not 0 <= settings.fraction_pruned < 1:
    raise ValueError('fraction_pruned must be in [0, 1), got '
                     f'{settings.fraction_pruned}.')
  if settings.steps < 1:
    raise ValueError(f'steps must be >= 1, got {settings.steps}.')
  t0 = time.perf_counter()
  cache = _Cache(settings)
  results: dict[str, Any] = {'environment': environment(),
                             'settings': _jsonable(
                                 dataclasses.asdict(settings))}
  if 'step' in sections or 'unmasked' in sections:
    results['step'] = section_step(cache, 'unmasked' in sections)
  if 'flops' in sections:
    results['flops'] = section_flops(cache)
  if 'prune' in sections:
    # It clears JAX's caches: steps measured later compile again.
    results['prune'] = section_prune(settings)
  if 'pipeline' in sections:
    results['pipeline'] = _unless_no_data(section_pipeline, cache)
  if 'seeds' in sections:
    results['seeds'] = section_seeds(cache)
  if 'options' in sections:
    results['options'] = section_options(cache)
  if 'round' in sections:
    # Near the end: it clears JAX's caches.
    results['round'] = _unless_no_data(section_round, cache)
  if 'startup' in sections:
    results['startup'] = _unless_no_data(section_startup, cache)
  if 'kernels' in sections:
    results['kernels'] = section_kernels(cache)
  if 'pytorch' in sections:
    results['pytorch'] = section_pytorch(cache)
  if 'quick' in cache.steps and 'quick' not in results.get('step', {}):
    results.setdefault('step', {})['quick'] = cache.steps['quick']
  results['targets'] = targets_of(results)
  results['seconds'] = time.perf_counter() - t0
  return _jsonable(results)


def _unless_no_data(section: Callable[[_Cache], dict], cache: _Cache
                    ) -> dict:
  """The section's results, or why it could not run without the data."""
  try:
    return section(cache)
  except data.DatasetNotFoundError as e:
    return {'available': False, 'reason': str(e)}


def _jsonable(tree):
  if isinstance(tree, dict):
    return {str(k): _jsonable(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_jsonable(v) for v in tree]
  if isinstance(tree, (np.integer,)):
    return int(tree)
  if isinstance(tree, (np.floating, float)):
    return None if not math.isfinite(float(tree)) else float(tree)
  return tree


def _variants_line(section: str, name: str, by: dict, variants, baseline: str,
                   auto: str) -> str:
  """One network's row of a `_time_variants` section."""
  return f'  {section} {name}: ' + ', '.join(
      f"{v} {by[v]['images_per_s']:.1f} img/s "
      f"({by[v][f'speedup_over_{baseline}']:.2f} x)"
      for v in variants) + f' (auto: {auto})'


def summary(results: dict) -> str:
  """A readable table of the headline numbers."""
  lines = [f"{results['environment']['device_kind']} x "
           f"{results['environment']['num_devices']} "
           f"({results['environment']['backend']}, jax "
           f"{results['environment']['jax_version']})"]
  for name, step in results.get('step', {}).items():
    line = (f"  step {name:<15} batch {step['network']['batch_size']:>4} "
            f"masked {step['masked']['step_s'] * 1e3:9.1f} ms "
            f"{step['masked']['images_per_s']:9.1f} img/s")
    if 'unmasked' in step:
      line += (f" | unmasked {step['unmasked']['images_per_s']:9.1f} img/s"
               f" ratio {step['masked_over_unmasked']:.3f}")
    lines.append(line)
  flops = results.get('flops')
  if flops:
    lines.append(f"  matmul peak "
                 f"{flops['matmul_peak']['flops_per_s_per_device'] / 1e9:.1f}"
                 ' GFLOP/s per device')
    for name, f in flops['models'].items():
      if f.get('flops_per_device'):
        lines.append(f"  flops {name:<14} "
                     f"{f['flops_per_s_per_device'] / 1e9:8.1f} GFLOP/s per "
                     f"device, {f['fraction_of_peak']:.2f} of peak")
    for model in ('resnet18', 'resnet18_small'):
      for shape, c in flops.get(f'{model}_convs', {}).items():
        lines.append(f"    {model} conv {shape:<12} of peak: " + ', '.join(
            f"{name} {c[f'{name}_fraction_of_peak']:.2f}"
            for name in ('forward', 'input_grad', 'weight_grad')))
  if 'prune' in results:
    p = results['prune']
    lines.append(f"  prune {p['tree']} ({p['num_prunable']} prunable): "
                 f"{p['prune_s']:.3f} s, rewind {p['rewind_s']:.3f} s")
  if 'overhead_fraction' in results.get('round', {}):
    r = results['round']
    lines.append(f"  round: {r['round_s']:.1f} s, overhead "
                 f"{r['overhead_s']:.3f} s = "
                 f"{100 * r['overhead_fraction']:.2f}%")
  for name, p in results.get('pipeline', {}).items():
    if not isinstance(p, dict) or 'pipeline_over_step' not in p:
      continue
    lines.append(f"  pipeline {name}: {p['images_per_s']:.0f} img/s = "
                 f"{p['pipeline_over_step']:.1f} x the {p['step']} step")
  for name in ('round', 'pipeline'):
    if results.get(name, {}).get('available') is False:
      lines.append(f"  {name}: unavailable ({results[name]['reason']})")
  seeds = results.get('seeds')
  if seeds:
    for k, by in seeds['by_seeds'].items():
      if k == '1':
        lines.append(f"  seeds 1: {by['images_per_s']:.1f} img/s")
        continue
      lines.append(f'  seeds {k}: ' + ', '.join(
          f"{name} {r['images_per_s']:.1f} img/s "
          f"({r['speedup_over_one_seed']:.2f} x one seed)"
          for name, r in by.items()) + f" (auto: {seeds['auto']})")
  options = results.get('options')
  if options:
    for name, by in options['models'].items():
      lines.append(_variants_line('options', name, by, options['presets'],
                                  'none', options['auto']))
    for shape, row in options['conv_forms_fraction_of_peak'].items():
      lines.append(f'    conv {shape:<10} fwd+bwd of peak: ' + ', '.join(
          f'{form} {v:.2f}' for form, v in row.items()))
  startup = results.get('startup')
  if startup and 'build_s' in startup:
    lines.append(
        f"  startup quick: build {startup['build_s']:.1f} s, first state "
        f"{startup['first_state_s']:.1f} s, train step compile "
        f"{startup['train_step_compile_s']:.1f} s, eval step compile "
        f"{startup['eval_step_compile_s']:.1f} s; a finished run "
        f"{startup['finished_run_s']:.1f} s")
  kernel_rows = results.get('kernels')
  if kernel_rows:
    for name, by in kernel_rows['models'].items():
      lines.append(_variants_line('kernels', name, by, kernel_rows['impls'],
                                  'xla', kernel_rows['auto']))
  torch_rows = results.get('pytorch')
  if torch_rows and 'skipped' in torch_rows:
    lines.append(f"  pytorch: skipped ({torch_rows['skipped']})")
  for name, row in (torch_rows or {}).get('models', {}).items():
    if 'skipped' in row:
      continue
    lines.append(f"  pytorch {name}: jax {row['jax']['images_per_s']:.1f} "
                 f"img/s; pytorch {torch_rows['torch_version']} "
                 f"{row['pytorch_system']['images_per_s']:.1f} img/s, with "
                 f"malloc 'retain' {row['pytorch_retain']['images_per_s']:.1f}"
                 f" img/s; jax / fastest {row['jax_over_pytorch']:.2f}")
  lines.append('  targets:')
  for name, t in results['targets'].items():
    value = 'n/a' if t['value'] is None else f"{t['value']:.4g}"
    met = {True: 'met', False: 'NOT met', None: 'n/a'}[t['met']]
    lines.append(f"    {name:<40} {value:>10} {t['comparison']} "
                 f"{t['target']:<6} {met}")
  lines.append(f"  total {results['seconds']:.0f} s")
  return '\n'.join(lines)


# ---------------------------------------------------------------------------
# Command line.


def _define_flags() -> None:
  defaults = Settings()
  flags.DEFINE_list('models', list(defaults.models),
                    f'Networks of the step sections, of {NETWORKS}.')
  flags.DEFINE_list('sections', list(defaults.sections),
                    f'Sections to run, by name {SECTIONS} or number '
                    f'1-{len(SECTIONS)}.')
  flags.DEFINE_integer('batch_size', 0, 'If > 0, the batch of every model '
                       '(overrides the per-model batch flags).')
  flags.DEFINE_integer('cifar_batch_size', defaults.cifar_batch_size,
                       'Global batch of the CIFAR ResNet-18s.')
  flags.DEFINE_integer('imagenet_batch_size', defaults.imagenet_batch_size,
                       'Global batch of ResNet-50 (0: 8 on CPU, else 128).')
  flags.DEFINE_integer('quick_batch_size', defaults.quick_batch_size,
                       "Global batch of the quick network (0: its config's).")
  flags.DEFINE_float('small_width', defaults.small_width,
                     "Width multiplier of 'resnet18_small'.")
  flags.DEFINE_integer('steps', defaults.steps,
                       'Steps per timed block (at least).')
  flags.DEFINE_float('min_block_s', defaults.min_block_s,
                     'More steps per block if needed for it to last this '
                     'long (0: exactly --steps).')
  flags.DEFINE_integer('warmup', defaults.warmup,
                       'Untimed steps after compilation.')
  flags.DEFINE_integer('repeats', defaults.repeats,
                       'Timed blocks per step; the fastest counts.')
  flags.DEFINE_float('fraction_pruned', defaults.fraction_pruned,
                     'Share of prunable weights pruned in the masked state.')
  flags.DEFINE_integer('matmul_size', defaults.matmul_size,
                       'n of the n x n float32 matmul of the peak.')
  flags.DEFINE_integer('matmul_repeats', defaults.matmul_repeats,
                       'Timed matmul blocks; the fastest counts.')
  flags.DEFINE_enum('prune_model', defaults.prune_model, list(NETWORKS),
                    'Whose parameter shapes the prune section prunes.')
  flags.DEFINE_integer('prune_repeats', defaults.prune_repeats,
                       'Timed prunings and rewinds; the fastest counts.')
  flags.DEFINE_integer('pipeline_batches', defaults.pipeline_batches,
                       'Batches timed per input pipeline.')
  flags.DEFINE_integer('pipeline_warmup', defaults.pipeline_warmup,
                       'Batches read before timing a pipeline.')
  flags.DEFINE_list('seeds', [str(k) for k in defaults.seeds],
                    'Numbers of seeds trained together (section seeds).')
  flags.DEFINE_string('data_dir', None, 'TFDS data dir with Fashion-MNIST '
                      '(default: TFDS_DATA_DIR or ~/tensorflow_datasets).')
  flags.DEFINE_integer('eval_repeats', defaults.eval_repeats,
                       'Timed eval steps (section round).')
  flags.DEFINE_enum('xla_options', defaults.xla_options,
                    list(xla_options_lib.CHOICES),
                    'Compiler options of the timed steps and convolutions.')
  flags.DEFINE_enum('conv_impl', defaults.conv_impl, list(kernels.CONV_IMPLS),
                    "The networks' convolutions (model.conv_impl).")
  flags.DEFINE_enum('dtype', defaults.dtype, sorted(models.DTYPES),
                    "The networks' computation dtype.")
  flags.DEFINE_string('json_out', None, 'Also write the JSON here.')


def settings_from_flags(values) -> Settings:
  batch = values.batch_size
  return Settings(
      models=tuple(values.models), sections=tuple(values.sections),
      cifar_batch_size=batch or values.cifar_batch_size,
      imagenet_batch_size=batch or values.imagenet_batch_size,
      quick_batch_size=batch or values.quick_batch_size,
      small_width=values.small_width, steps=values.steps,
      min_block_s=values.min_block_s,
      warmup=values.warmup, repeats=values.repeats,
      fraction_pruned=values.fraction_pruned,
      matmul_size=values.matmul_size, matmul_repeats=values.matmul_repeats,
      prune_model=values.prune_model, prune_repeats=values.prune_repeats,
      pipeline_batches=values.pipeline_batches,
      pipeline_warmup=values.pipeline_warmup,
      seeds=tuple(int(k) for k in values.seeds), data_dir=values.data_dir,
      eval_repeats=values.eval_repeats, xla_options=values.xla_options,
      conv_impl=values.conv_impl, dtype=values.dtype)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  settings = settings_from_flags(flags.FLAGS)
  if not flags.FLAGS['verbosity'].present:
    # Orbax logs every save and restore at INFO.
    logging.set_verbosity(logging.WARNING)
  stdout = sys.stdout
  # Stdout carries only the JSON line; whatever libraries print goes to
  # stderr.
  with contextlib.redirect_stdout(sys.stderr):
    results = run(settings)
  text = json.dumps(results)
  if flags.FLAGS.json_out:
    path = pathlib.Path(flags.FLAGS.json_out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + '\n')
  stdout.write(text + '\n')
  stdout.flush()
  print(summary(results), file=sys.stderr)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
