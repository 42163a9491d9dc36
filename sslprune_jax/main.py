"""Entry point: `python -m sslprune_jax.main --config=configs/labels.py:quick`.

The config's `run` says what it runs: a pruning run ('prune'), or an
evaluation of one ('retrain', 'linear', 'layerwise'; see
`sslprune_jax.evaluation`).

Wires the config to the round loop; everything else lives in the modules.
"""

import logging as pylogging
import os
import sys

# TensorFlow serves only tf.data here; keep its C++ start-up chatter out.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from sslprune_jax import checkpoint
from sslprune_jax import data
from sslprune_jax import imp
from sslprune_jax import train
from sslprune_jax.evaluation import layerwise
from sslprune_jax.evaluation import linear
from sslprune_jax.evaluation import retrain

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, e.g. configs/labels.py:quick.',
    lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints and results.')
flags.DEFINE_bool('distributed', False,
                  'Call jax.distributed.initialize() (multi-host runs).')
flags.mark_flags_as_required(['config', 'workdir'])

# What a config runs (`config.run`): a pruning run, or an evaluation of one.
RUNS = {'prune': imp.run, 'retrain': retrain.run, 'linear': linear.run,
        'layerwise': layerwise.run}

# Errors whose message says what to do: shown without a traceback.
USER_ERRORS = (ValueError, data.DatasetNotFoundError,
               checkpoint.CorruptCheckpointError, train.NonFiniteLossError)


class _OnlyWarningsFrom(pylogging.Filter):
  """Drops INFO lines logged from the given libraries (Orbax is chatty)."""

  def __init__(self, *libraries):
    super().__init__()
    self._libraries = libraries

  def filter(self, record):
    return record.levelno >= pylogging.WARNING or not any(
        f'/{lib}/' in record.pathname for lib in self._libraries)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_OnlyWarningsFrom('orbax'))
  if FLAGS.distributed:
    jax.distributed.initialize()
  # Keep TensorFlow (used only by tf.data) off the accelerators.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  logging.info('JAX process %d/%d, %d local / %d global devices.',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  kind = FLAGS.config.get('run', 'prune')
  if kind not in RUNS:
    sys.exit(f'error: unknown config.run {kind!r}; valid: {sorted(RUNS)}.')
  try:
    RUNS[kind](FLAGS.config, FLAGS.workdir)
  except data.DatasetNotFoundError as e:
    config_file = config_flags.get_config_filename(FLAGS['config'])
    sys.exit(f'error: {e}\nTo run the same experiment small on real '
             'Fashion-MNIST, which needs no download: '
             f'--config={config_file}:quick')
  except USER_ERRORS as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
