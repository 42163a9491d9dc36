"""A sweep checked against its configs before anything runs: every
override's field must exist and its value parse to the field's type, as
main.py will parse it."""

import difflib
import os

from absl import flags
import ml_collections
from ml_collections import config_flags

from sslprune_jax import config_lib
from sslprune_jax.sweep.runs import Run
from sslprune_jax.sweep.runs import Spec
from sslprune_jax.sweep.runs import SweepError
from sslprune_jax.sweep.runs import axes
from sslprune_jax.sweep.runs import expand
from sslprune_jax.sweep.runs import field_and_value
from sslprune_jax.sweep.runs import values_of


def parse_config(config: str, overrides=()) -> ml_collections.ConfigDict:
  """The config `--config=<config> --config.<field>=<value> ...` gives
  main.py: parsed by ml_collections' config_flags, as main.py does, with
  `configs/...` read from the package where the working directory has no
  configs/ (`config_lib.packaged_path`).

  Raises:
    SweepError: the config cannot be loaded, or a value does not parse.
  """
  given = config
  config = config_lib.packaged_path(config)
  path = config.split(':', 1)[0]
  if not os.path.isfile(path):
    raise SweepError(
        f'No config file {path} (--config={given}); paths are '
        'relative to the current directory, the repository '
        'root.'
    )
  argv = [
      'sweep',
      f'--config={config}',
      *(f'--config.{f}={v}' for f, v in overrides),
  ]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file(
      'config', flag_values=flag_values, lock_config=True, sys_argv=argv
  )
  try:
    flag_values(argv)
  except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as e:
    # Errors from within the config file come with a traceback: keep its
    # last line.
    lines = [line for line in str(e).splitlines() if line.strip()]
    message = (
        lines[0] if 'Traceback' not in str(e) else (f'{lines[0]} {lines[-1]}')
    )
    raise SweepError(message) from None
  if not isinstance(flag_values.config, ml_collections.ConfigDict):
    raise SweepError(f'Could not load --config={config}.')
  return flag_values.config


def _fields(config, prefix='') -> list[str]:
  """Every field of a config, dotted."""
  out = []
  for key, value in config.items():
    out.append(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      out += _fields(value, f'{prefix}{key}.')
  return out


def _bad_values(items) -> list[str]:
  """What is wrong with each (config, overrides) that does not parse."""
  problems = []
  for config, overrides in items:
    try:
      parse_config(config, overrides)
    except SweepError as e:
      problems.append(f'Bad value: {e}')
  return problems


def check(runs: list[Run], spec: Spec) -> None:
  """Checks every override of every run against its config.

  Raises:
    SweepError: listing every unknown field, misplaced axis and value that
      does not parse, before anything runs.
  """
  problems = []
  flag_of = {a.field: a.flag for a in axes(spec)}
  flag_of.update(
      (field_and_value(text, '--set')[0], '--set') for text in spec.sets
  )
  for config in dict.fromkeys(run.config for run in runs):
    try:
      known = set(_fields(parse_config(config)))
    except SweepError as e:
      problems.append(str(e))
      continue
    fields = dict.fromkeys(
        f for run in runs if run.config == config for f, _ in run.overrides
    )
    if spec.rounds is not None and 'source.rounds' not in known:
      problems.append(
          '--rounds makes one run per round of the pruning run that an '
          f'evaluation reads (source.rounds), and {config} has no source: '
          'for the number of rounds of a pruning run, use --grid '
          'pruning.num_rounds=3,5.'
      )
      fields.pop('source.rounds')
    if spec.inits is not None and 'source.init' not in known:
      problems.append(
          f'--inits sets source.init, which {config} has not: it is for the '
          "evaluations that re-train a pruning run's masks (configs/"
          'retrain.py, configs/voc07.py).'
      )
      fields.pop('source.init')
    for field in fields:
      if field not in known:
        close = difflib.get_close_matches(field, sorted(known), n=1)
        problems.append(
            f'{config} has no field {field} ({flag_of[field]}'
            + (f'; did you mean {close[0]}?)' if close else ')')
            + '.'
        )
  if spec.inits is not None and not problems:
    # Imported here, as is runner below: --help and flag errors (the ones
    # above too) come without loading JAX.
    from sslprune_jax.evaluation import retrain

    bad = [
        i for i in values_of(spec.inits, '--inits') if i not in retrain.INITS
    ]
    if bad:
      problems.append(f'Unknown --inits {bad}; valid: {retrain.INITS}.')
  if not problems:
    # Each value alone first, so that every bad one is named (a parse stops
    # at the first), then each run's values together.
    problems = _bad_values(
        dict.fromkeys(
            (run.config, (override,))
            for run in runs
            for override in run.overrides
        )
    )
  if not problems:
    problems = _bad_values((run.config, run.overrides) for run in runs)
  if problems:
    raise SweepError(
        '\n  '.join(['The sweep cannot run:', *dict.fromkeys(problems)])
    )


def plan(spec: Spec) -> list[Run]:
  """The runs of the sweep, checked (see `expand` and `check`)."""
  runs = expand(spec)
  check(runs, spec)
  return runs
