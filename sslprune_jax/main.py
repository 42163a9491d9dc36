"""Entry point: `python -m sslprune_jax.main --config=configs/labels.py:quick`.

The config's `run` says what it runs: a pruning run ('prune'), or an
evaluation of one ('retrain', 'linear', 'layerwise'; see
`sslprune_jax.runner`).

Multi-host runs start one such process per host (or per GPU), each calling
`jax.distributed.initialize`: with `--distributed`, or on its own under
`srun` with several tasks or when `JAX_COORDINATOR_ADDRESS` is set. On TPU
pods and SLURM, JAX finds the coordinator and the process ids itself;
elsewhere give `--coordinator_address`, `--num_processes` and `--process_id`.

Exit codes: 0 done; 1 an error (the message says what to change);
`preemption.EXIT_CODE` (75) stopped by SIGTERM after saving a checkpoint:
run the same command again to resume.
"""

import ast
import os
import signal
import sys

# TensorFlow serves only tf.data here; keep its C++ start-up chatter out.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')


def _stopped_while_starting(signum, frame):
  del signum, frame
  # At once, not by SystemExit: raised inside a half-done import of
  # TensorFlow, that can leave the interpreter waiting at exit on the
  # threads the import started. Nothing has been written yet.
  os.write(
      2,
      b'Stopped by SIGTERM while starting, before any work was '
      b'done: run the same command again.\n',
  )
  os._exit(1)  # pylint: disable=protected-access


# Until `preemption.install` takes SIGTERM over, in `main`: the imports
# below take seconds, and a scheduler's SIGTERM then would end the process
# with no word.
signal.signal(signal.SIGTERM, _stopped_while_starting)

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from sslprune_jax import checkpoint
from sslprune_jax import config_lib
from sslprune_jax import console
from sslprune_jax import data
from sslprune_jax import lock
from sslprune_jax import preemption
from sslprune_jax import runner
from sslprune_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config',
    None,
    'Experiment config file, e.g. configs/labels.py:quick.',
    lock_config=True,
)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints and results.')
flags.DEFINE_bool(
    'distributed',
    None,
    'Call jax.distributed.initialize() (multi-host runs). Default: only when '
    'the environment is a multi-task srun, or sets JAX_COORDINATOR_ADDRESS, '
    'or --num_processes is given.',
)
flags.DEFINE_string(
    'coordinator_address',
    None,
    'host:port of process 0, where not found automatically.',
)
flags.DEFINE_integer('num_processes', None, 'Number of processes in all.')
flags.DEFINE_integer('process_id', None, "This process's id, 0 first.")
flags.mark_flags_as_required(['config', 'workdir'])

# Errors whose message says what to do: shown without a traceback.
USER_ERRORS = (
    ValueError,
    data.DatasetNotFoundError,
    checkpoint.CorruptCheckpointError,
    train.NonFiniteLossError,
    lock.WorkdirInUseError,
)


def _wants_distributed() -> bool:
  """`--distributed`, or what the environment says when it is not given."""
  if FLAGS.distributed is not None:
    return FLAGS.distributed
  srun_tasks = int(os.environ.get('SLURM_STEP_NUM_TASKS', '1') or 1)
  return (
      srun_tasks > 1
      or FLAGS.num_processes is not None
      or 'JAX_COORDINATOR_ADDRESS' in os.environ
  )


def initialize_distributed() -> None:
  """Joins the other processes of a multi-host run."""
  # Collectives between CPU processes (used on CPU-only hosts and tests).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
      coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id,
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _wants_distributed():
    initialize_distributed()
  console.route(FLAGS.workdir)
  preemption.install()
  # Keep TensorFlow (used only by tf.data) off the accelerators.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  tf.config.set_visible_devices([], 'GPU')
  logging.info(
      'JAX process %d/%d, %d local / %d global devices.',
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
  )
  finished_before = runner.is_complete(FLAGS.workdir)
  try:
    runner.run(FLAGS.config, FLAGS.workdir)
    if finished_before and jax.process_index() == 0:
      # Otherwise a finished run's command, given again, prints nothing.
      print(
          f'{FLAGS.workdir} holds this run, finished: nothing left to do. '
          f'Its results are in {FLAGS.workdir}/results.csv; another '
          '--workdir starts it anew.',
          flush=True,
      )
  except preemption.Preempted as e:
    print(
        f'Preempted: {e} Run the same command again to resume from '
        f'{FLAGS.workdir}.',
        file=sys.stderr,
        flush=True,
    )
    sys.exit(preemption.EXIT_CODE)
  except data.DatasetNotFoundError as e:
    if FLAGS.config.data.name == 'fashion_mnist':
      sys.exit(f'error: {e}')
    config_file = config_flags.get_config_filename(FLAGS['config'])
    sys.exit(
        f'error: {e}\nTo run the same experiment small on real '
        'Fashion-MNIST, which needs no download: '
        f'--config={config_file.partition(":")[0]}:quick'
    )
  except USER_ERRORS as e:
    sys.exit(f'error: {e}')


def packaged_configs(argv: list[str]) -> list[str]:
  """argv with `--config=configs/...` found in the package when there is
  no configs/ here (`config_lib.packaged_path`)."""
  out = list(argv)
  for i, a in enumerate(out):
    if a.startswith('--config='):
      out[i] = '--config=' + config_lib.packaged_path(a[len('--config=') :])
    elif a == '--config' and i + 1 < len(out):
      out[i + 1] = config_lib.packaged_path(out[i + 1])
  return out


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad `--config` said in a line or two.

  The config file runs while the flags are parsed, so its errors (a
  missing file, an unknown variant, a misspelt field) would otherwise
  come out as a traceback.
  """
  try:
    rest = FLAGS(argv)
    # A config file that failed to load raises only when the config is used.
    FLAGS.config.get('run')
  except Exception as e:  # pylint: disable=broad-except
    sys.exit(
        f'error: {flag_error(e, argv)}\nSee --helpshort for the flags; '
        f'the configs are in {config_lib.CONFIGS}.'
    )
  return rest


def flag_error(e: Exception, argv: list[str]) -> str:
  """What a flag-parsing failure says, without the traceback around it."""
  text = str(e).strip()
  if text[:1] in '"\'':  # A KeyError's repr, escapes and all.
    try:
      text = str(ast.literal_eval(text))
    except (ValueError, SyntaxError):
      pass
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  if isinstance(e, (AttributeError, KeyError)):
    # A misspelt field of a --config.<field>=... override; ml_collections
    # suggests the nearest.
    field = lines[0].strip('\'"') if lines else '?'
    override = next(
        (
            a.split('=')[0]
            for a in argv
            if a.startswith('--config.') and field in a
        ),
        field,
    )
    hint = ' '.join(lines[1:])
    return f'{override}: the config has no field {field!r}. {hint}'.strip()
  if not lines:
    return type(e).__name__
  if isinstance(e, OSError) and 'No such file' in lines[-1]:
    return f'--config: {lines[-1].split("] ", 1)[-1]}.'
  # A config file's own error, whose message ends the traceback absl
  # embeds: 'ValueError: Unknown variant ...'.
  last = lines[-1]
  kind, sep, message = last.partition(': ')
  return message if sep and kind.isidentifier() else last


if __name__ == '__main__':
  app.run(main, argv=packaged_configs(sys.argv), flags_parser=parse_flags)
