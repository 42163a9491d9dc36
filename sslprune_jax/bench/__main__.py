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
              PyTorch's step of the same network (`torch_side`: channels-
              last, oneDNN, pruned weights zeroed after every update), in
              alternating blocks; skipped where PyTorch is not installed.

The JSON's keys: 'environment' (backend, device kind and count, versions),
'settings', one key per section run ('step' holds sections 1-2, per
network), 'targets' (every project target the run measured: its value,
the target, the comparison and whether it is met) and 'seconds'.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging

from sslprune_jax import kernels
from sslprune_jax import models
from sslprune_jax import xla_options as xla_options_lib
from sslprune_jax.bench.settings import NETWORKS
from sslprune_jax.bench.settings import SECTIONS
from sslprune_jax.bench.settings import Settings
from sslprune_jax.bench.suite import run
from sslprune_jax.bench.suite import summary

_DEFAULTS = Settings()

_MODELS = flags.DEFINE_list(
    'models', list(_DEFAULTS.models),
    f'Networks of the step sections, of {NETWORKS}.')
_SECTIONS = flags.DEFINE_list(
    'sections', list(_DEFAULTS.sections),
    f'Sections to run, by name {SECTIONS} or number 1-{len(SECTIONS)}.')
_BATCH_SIZE = flags.DEFINE_integer(
    'batch_size', 0, 'If > 0, the batch of every model (overrides the '
    'per-model batch flags).')
_CIFAR_BATCH_SIZE = flags.DEFINE_integer(
    'cifar_batch_size', _DEFAULTS.cifar_batch_size,
    'Global batch of the CIFAR ResNet-18s.')
_IMAGENET_BATCH_SIZE = flags.DEFINE_integer(
    'imagenet_batch_size', _DEFAULTS.imagenet_batch_size,
    'Global batch of ResNet-50 (0: 8 on CPU, else 128).')
_QUICK_BATCH_SIZE = flags.DEFINE_integer(
    'quick_batch_size', _DEFAULTS.quick_batch_size,
    "Global batch of the quick network (0: its config's).")
_SMALL_WIDTH = flags.DEFINE_float(
    'small_width', _DEFAULTS.small_width,
    "Width multiplier of 'resnet18_small'.")
_STEPS = flags.DEFINE_integer(
    'steps', _DEFAULTS.steps, 'Steps per timed block (at least).')
_MIN_BLOCK_S = flags.DEFINE_float(
    'min_block_s', _DEFAULTS.min_block_s,
    'More steps per block if needed for it to last this long (0: exactly '
    '--steps).')
_WARMUP = flags.DEFINE_integer(
    'warmup', _DEFAULTS.warmup, 'Untimed steps after compilation.')
_REPEATS = flags.DEFINE_integer(
    'repeats', _DEFAULTS.repeats,
    'Timed blocks per step; the fastest counts.')
_FRACTION_PRUNED = flags.DEFINE_float(
    'fraction_pruned', _DEFAULTS.fraction_pruned,
    'Share of prunable weights pruned in the masked state.')
_MATMUL_SIZE = flags.DEFINE_integer(
    'matmul_size', _DEFAULTS.matmul_size,
    'n of the n x n float32 matmul of the peak.')
_MATMUL_REPEATS = flags.DEFINE_integer(
    'matmul_repeats', _DEFAULTS.matmul_repeats,
    'Timed matmul blocks; the fastest counts.')
_PRUNE_MODEL = flags.DEFINE_enum(
    'prune_model', _DEFAULTS.prune_model, list(NETWORKS),
    'Whose parameter shapes the prune section prunes.')
_PRUNE_REPEATS = flags.DEFINE_integer(
    'prune_repeats', _DEFAULTS.prune_repeats,
    'Timed prunings and rewinds; the fastest counts.')
_PIPELINE_BATCHES = flags.DEFINE_integer(
    'pipeline_batches', _DEFAULTS.pipeline_batches,
    'Batches timed per input pipeline.')
_PIPELINE_WARMUP = flags.DEFINE_integer(
    'pipeline_warmup', _DEFAULTS.pipeline_warmup,
    'Batches read before timing a pipeline.')
_SEEDS = flags.DEFINE_list(
    'seeds', [str(k) for k in _DEFAULTS.seeds],
    'Numbers of seeds trained together (section seeds).')
_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, 'TFDS data dir with Fashion-MNIST (default: '
    'TFDS_DATA_DIR or ~/tensorflow_datasets).')
_EVAL_REPEATS = flags.DEFINE_integer(
    'eval_repeats', _DEFAULTS.eval_repeats,
    'Timed eval steps (section round).')
_XLA_OPTIONS = flags.DEFINE_enum(
    'xla_options', _DEFAULTS.xla_options, list(xla_options_lib.CHOICES),
    'Compiler options of the timed steps and convolutions.')
_CONV_IMPL = flags.DEFINE_enum(
    'conv_impl', _DEFAULTS.conv_impl, list(kernels.CONV_IMPLS),
    "The networks' convolutions (model.conv_impl).")
_DTYPE = flags.DEFINE_enum(
    'dtype', _DEFAULTS.dtype, sorted(models.DTYPES),
    "The networks' computation dtype.")
_JSON_OUT = flags.DEFINE_string('json_out', None, 'Also write the JSON here.')


def settings_from_flags() -> Settings:
  """The `Settings` the parsed flags ask for.

  Returns:
    The settings; --batch_size, where set, is every network's batch.
  """
  batch = _BATCH_SIZE.value
  return Settings(
      models=tuple(_MODELS.value), sections=tuple(_SECTIONS.value),
      cifar_batch_size=batch or _CIFAR_BATCH_SIZE.value,
      imagenet_batch_size=batch or _IMAGENET_BATCH_SIZE.value,
      quick_batch_size=batch or _QUICK_BATCH_SIZE.value,
      small_width=_SMALL_WIDTH.value, steps=_STEPS.value,
      min_block_s=_MIN_BLOCK_S.value,
      warmup=_WARMUP.value, repeats=_REPEATS.value,
      fraction_pruned=_FRACTION_PRUNED.value,
      matmul_size=_MATMUL_SIZE.value, matmul_repeats=_MATMUL_REPEATS.value,
      prune_model=_PRUNE_MODEL.value, prune_repeats=_PRUNE_REPEATS.value,
      pipeline_batches=_PIPELINE_BATCHES.value,
      pipeline_warmup=_PIPELINE_WARMUP.value,
      seeds=tuple(int(k) for k in _SEEDS.value), data_dir=_DATA_DIR.value,
      eval_repeats=_EVAL_REPEATS.value, xla_options=_XLA_OPTIONS.value,
      conv_impl=_CONV_IMPL.value, dtype=_DTYPE.value)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  settings = settings_from_flags()
  if not flags.FLAGS['verbosity'].present:
    # Orbax logs every save and restore at INFO.
    logging.set_verbosity(logging.WARNING)
  stdout = sys.stdout
  # Stdout carries only the JSON line; whatever libraries print goes to
  # stderr.
  with contextlib.redirect_stdout(sys.stderr):
    results = run(settings)
  text = json.dumps(results)
  if _JSON_OUT.value:
    path = pathlib.Path(_JSON_OUT.value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + '\n')
  stdout.write(text + '\n')
  stdout.flush()
  print(summary(results), file=sys.stderr)


if __name__ == '__main__':
  app.run(main)
