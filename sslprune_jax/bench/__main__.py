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
              and eval steps; and the whole `lottery.run` of a finished run
              (what resuming one costs when there is nothing left to do).
  10 kernels  the masked step of every model with each convolution
              implementation this platform can run (`model.conv_impl`:
              XLA's, oneDNN's), timed in alternating blocks: images/s and
              the speedup over XLA's; which one 'auto' picks.
  11 pytorch  the masked step of every BasicBlock CIFAR network against
              PyTorch's step of the same network (`torch_side`: channels-
              last, oneDNN, pruned weights zeroed after every update), in
              alternating blocks; skipped where PyTorch is not installed.
  12 structured  the eval forward pass of every model against the same
              model channel-pruned (20% of each block's inner channels a
              round, 4 rounds) and exported smaller (`export.slim`), in
              alternating blocks: channels and weights left, images/s and
              the speedup over dense.

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

FLAGS = flags.FLAGS
_DEFAULTS = Settings()

flags.DEFINE_list(
    'models',
    list(_DEFAULTS.models),
    f'Networks of the step sections, of {NETWORKS}.',
)
flags.DEFINE_list(
    'sections',
    list(_DEFAULTS.sections),
    f'Sections to run, by name {SECTIONS} or number 1-{len(SECTIONS)}.',
)
flags.DEFINE_integer(
    'batch_size',
    0,
    'If > 0, the batch of every model (overrides the '
    'per-model batch flags).',
)
flags.DEFINE_integer(
    'cifar_batch_size',
    _DEFAULTS.cifar_batch_size,
    'Global batch of the CIFAR ResNet-18s.',
)
flags.DEFINE_integer(
    'imagenet_batch_size',
    _DEFAULTS.imagenet_batch_size,
    'Global batch of ResNet-50 (0: 8 on CPU, else 128).',
)
flags.DEFINE_integer(
    'quick_batch_size',
    _DEFAULTS.quick_batch_size,
    "Global batch of the quick network (0: its config's).",
)
flags.DEFINE_float(
    'small_width',
    _DEFAULTS.small_width,
    "Width multiplier of 'resnet18_small'.",
)
flags.DEFINE_integer(
    'steps', _DEFAULTS.steps, 'Steps per timed block (at least).'
)
flags.DEFINE_float(
    'min_block_s',
    _DEFAULTS.min_block_s,
    'More steps per block if needed for it to last this long (0: exactly '
    '--steps).',
)
flags.DEFINE_integer(
    'warmup', _DEFAULTS.warmup, 'Untimed steps after compilation.'
)
flags.DEFINE_integer(
    'repeats', _DEFAULTS.repeats, 'Timed blocks per step; the fastest counts.'
)
flags.DEFINE_float(
    'fraction_pruned',
    _DEFAULTS.fraction_pruned,
    'Share of prunable weights pruned in the masked state.',
)
flags.DEFINE_integer(
    'matmul_size',
    _DEFAULTS.matmul_size,
    'n of the n x n float32 matmul of the peak.',
)
flags.DEFINE_integer(
    'matmul_repeats',
    _DEFAULTS.matmul_repeats,
    'Timed matmul blocks; the fastest counts.',
)
flags.DEFINE_enum(
    'prune_model',
    _DEFAULTS.prune_model,
    list(NETWORKS),
    'Whose parameter shapes the prune section prunes.',
)
flags.DEFINE_integer(
    'prune_repeats',
    _DEFAULTS.prune_repeats,
    'Timed prunings and rewinds; the fastest counts.',
)
flags.DEFINE_integer(
    'pipeline_batches',
    _DEFAULTS.pipeline_batches,
    'Batches timed per input pipeline.',
)
flags.DEFINE_integer(
    'pipeline_warmup',
    _DEFAULTS.pipeline_warmup,
    'Batches read before timing a pipeline.',
)
flags.DEFINE_list(
    'seeds',
    [str(k) for k in _DEFAULTS.seeds],
    'Numbers of seeds trained together (section seeds).',
)
flags.DEFINE_string(
    'data_dir',
    None,
    'TFDS data dir with Fashion-MNIST (default: '
    'TFDS_DATA_DIR or ~/tensorflow_datasets).',
)
flags.DEFINE_integer(
    'eval_repeats', _DEFAULTS.eval_repeats, 'Timed eval steps (section round).'
)
flags.DEFINE_enum(
    'xla_options',
    _DEFAULTS.xla_options,
    list(xla_options_lib.CHOICES),
    'Compiler options of the timed steps and convolutions.',
)
flags.DEFINE_enum(
    'conv_impl',
    _DEFAULTS.conv_impl,
    list(kernels.CONV_IMPLS),
    "The networks' convolutions (model.conv_impl).",
)
flags.DEFINE_enum(
    'dtype',
    _DEFAULTS.dtype,
    sorted(models.DTYPES),
    "The networks' computation dtype.",
)
flags.DEFINE_string('json_out', None, 'Also write the JSON here.')


def settings_from_flags() -> Settings:
  """The `Settings` the parsed flags ask for.

  Returns:
    The settings; --batch_size, where set, is every network's batch.
  """
  batch = FLAGS.batch_size
  return Settings(
      models=tuple(FLAGS.models),
      sections=tuple(FLAGS.sections),
      cifar_batch_size=batch or FLAGS.cifar_batch_size,
      imagenet_batch_size=batch or FLAGS.imagenet_batch_size,
      quick_batch_size=batch or FLAGS.quick_batch_size,
      small_width=FLAGS.small_width,
      steps=FLAGS.steps,
      min_block_s=FLAGS.min_block_s,
      warmup=FLAGS.warmup,
      repeats=FLAGS.repeats,
      fraction_pruned=FLAGS.fraction_pruned,
      matmul_size=FLAGS.matmul_size,
      matmul_repeats=FLAGS.matmul_repeats,
      prune_model=FLAGS.prune_model,
      prune_repeats=FLAGS.prune_repeats,
      pipeline_batches=FLAGS.pipeline_batches,
      pipeline_warmup=FLAGS.pipeline_warmup,
      seeds=tuple(int(k) for k in FLAGS.seeds),
      data_dir=FLAGS.data_dir,
      eval_repeats=FLAGS.eval_repeats,
      xla_options=FLAGS.xla_options,
      conv_impl=FLAGS.conv_impl,
      dtype=FLAGS.dtype,
  )


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  settings = settings_from_flags()
  if not FLAGS['verbosity'].present:
    # Orbax logs every save and restore at INFO.
    logging.set_verbosity(logging.WARNING)
  stdout = sys.stdout
  # Stdout carries only the JSON line; whatever libraries print goes to
  # stderr.
  with contextlib.redirect_stdout(sys.stderr):
    results = run(settings)
  text = json.dumps(results)
  if FLAGS.json_out:
    path = pathlib.Path(FLAGS.json_out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + '\n')
  stdout.write(text + '\n')
  stdout.flush()
  print(summary(results), file=sys.stderr)


if __name__ == '__main__':
  app.run(main)
