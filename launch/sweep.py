"""Many runs of one config: over seeds, objectives, initialisations, source
rounds and any field's values; printed, written for a SLURM array job, or
run here one after another.

Each run is `python -m sslprune_jax.main --config=... --workdir=ROOT/NAME
--config.FIELD=VALUE ...`, where NAME joins the run's value on every axis
given, in the order below (`labels_seed0_reinit_round3`). Before anything
is printed or run, every override of every run is checked against its
config as main.py will parse it: the field must exist and the value parse
to the field's type. Runs whose workdir is complete (it holds COMPLETE, see
sslprune_jax/runner.py) are skipped, so a sweep started again goes on
where it stopped.

Axes (the runs are their product, in this order):
  --objectives=labels,rotnet      fills {objective}, which --config or a
                                  --set value must contain
  --seeds=0,1,2                   config.seed
  --inits=winning_ticket,reinit   source.init (evaluation configs)
  --rounds=0,3,5                  one run per source round, source.rounds=
                                  (r,), to re-train the rounds of a pruning
                                  run side by side (evaluation configs)
  --grid=FIELD=v1,v2              any field; repeatable; tuples as
                                  --grid='train.decay_epochs=(80,120),(40,60)'
Fixed overrides: --set=FIELD=VALUE, repeatable. The --config and --set
values may hold {objective}, {seed}, {init}, {round} (the run's value on
that axis) and {root} (--workdir); a value starting with {root} is a path,
normalised (`..` resolved) so that `{root}/../prune/...` also works on
gs://.

What it does with the runs:
  --print (default)  prints one command per run, complete runs as comments;
                     --launcher='sbatch launch/slurm.sbatch' in place of
                     `python -m sslprune_jax.main`
  --write=FILE       writes one line per run still to do: the arguments to
                     main.py, shell-quoted; prints the command that submits
                     them as an array job, `sbatch --array=1-N
                     launch/slurm.sbatch --args-file=FILE` (or
                     --launcher='sbatch [options] SCRIPT')
  --local            runs them here, one after another (through --launcher
                     if given); stops at the first that fails and exits with
                     its code: 75 is a run preempted after saving a
                     checkpoint, and the same sweep command resumes it

Figure 3 at small scale (the runs of sslprune_jax/figure3.py:
prune with labels and with RotNet, re-train every round's mask on labels
from the winning ticket and re-initialised, the paper's random baseline
(re-initialised) and random masks of the label masks' per-layer sparsity;
3 seeds, about an hour on 2 CPU cores), from the repository root, each
sweep after the one before:

  python launch/sweep.py --config='configs/{objective}.py:figure3' \\
      --objectives=labels,rotnet --seeds=0,1,2 --workdir=/tmp/fig3/prune \\
      --local
  python launch/sweep.py --config=configs/retrain.py:figure3 \\
      --objectives=labels,rotnet --seeds=0,1,2 \\
      --inits=winning_ticket,reinit \\
      --set='source.workdir={root}/../prune/{objective}_seed{seed}' \\
      --workdir=/tmp/fig3/retrain --local
  python launch/sweep.py --config=configs/retrain.py:figure3 \\
      --seeds=0,1,2 --inits=reinit \\
      --set=source.mask=random_global_natural \\
      --set='source.workdir={root}/../prune/labels_seed{seed}' \\
      --workdir=/tmp/fig3/random --local
  python launch/sweep.py --config=configs/retrain.py:figure3 \\
      --seeds=0,1,2 --inits=winning_ticket,reinit \\
      --set=source.mask=random_like \\
      --set='source.workdir={root}/../prune/labels_seed{seed}' \\
      --workdir=/tmp/fig3/random_per_layer --local
  (cd /tmp/fig3 && python -m sslprune_jax.report --out=report \\
      --curve='labels, winning ticket=retrain/labels_seed*_winning_ticket' \\
      --curve='labels, reinit=retrain/labels_seed*_reinit' \\
      --curve='rotnet, winning ticket=retrain/rotnet_seed*_winning_ticket' \\
      --curve='rotnet, reinit=retrain/rotnet_seed*_reinit' \\
      --curve='random, reinit=random/seed*_reinit' \\
      --curve='random per-layer, winning ticket=random_per_layer/seed*_winning_ticket' \\
      --curve='random per-layer, reinit=random_per_layer/seed*_reinit')

The last writes /tmp/fig3/report/test_accuracy.{csv,md,png}. On a cluster,
`--write=FILE` in place of `--local` and the sbatch command it prints, one
sweep's jobs finished before the next sweep. With `--rounds=0,1,2,3,4,5`
added, the re-training sweeps make one run per source round
(`labels_seed0_reinit_round3`, ...) for a cluster to run side by side; the
report then takes `--curve='labels, reinit=retrain/labels_seed*_reinit_round*'`
and so on, and puts the rounds of each seed together.
"""

import argparse
import dataclasses
import difflib
import itertools
import os
import posixpath
import re
import shlex
import signal
import subprocess
import sys
from typing import Callable

# TensorFlow (imported by the configs, for tf.data) prints less.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
import ml_collections
from ml_collections import config_flags

MAIN = 'python -m sslprune_jax.main'
# The {placeholders} of --config and --set, and the flags that give them.
PLACEHOLDERS = {
    'objective': '--objectives',
    'seed': '--seeds',
    'init': '--inits',
    'round': '--rounds',
    'root': '--workdir',
}
# Exit code of a run stopped by SIGTERM after saving a checkpoint
# (sslprune_jax.preemption.EXIT_CODE).
PREEMPTED = 75


class SweepError(ValueError):
  """A sweep that cannot run; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class Axis:
  """One dimension of the sweep.

  Attributes:
    flag: the command-line flag it came from, for messages.
    values: its values, as given.
    field: the config field it sets (None: only a placeholder).
    placeholder: the {name} its value fills in --config and --set.
    label: value -> the run name's part.
    to_value: value -> the override's value.
  """

  flag: str
  values: tuple[str, ...]
  field: str | None
  placeholder: str | None
  label: Callable[[str], str]
  to_value: Callable[[str], str] = lambda v: v


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of the sweep."""

  name: str
  workdir: str
  config: str
  # (field, value as on the command line), in order.
  overrides: tuple[tuple[str, str], ...]

  def args(self) -> list[str]:
    """The arguments to `python -m sslprune_jax.main`."""
    return [
        f'--config={self.config}',
        f'--workdir={self.workdir}',
        *(f'--config.{f}={v}' for f, v in self.overrides),
    ]


def split_values(text: str) -> list[str]:
  """Splits at the commas outside brackets and quotes: '1,(2,3)' -> ['1',
  '(2,3)']."""
  values, current, depth, quote = [], '', 0, None
  for c in text:
    if quote:
      quote = None if c == quote else quote
    elif c in '\'"':
      quote = c
    elif c in '([{':
      depth += 1
    elif c in ')]}':
      depth -= 1
    elif c == ',' and depth == 0:
      values.append(current.strip())
      current = ''
      continue
    current += c
  values.append(current.strip())
  return values


def _field_and_value(text: str, flag: str) -> tuple[str, str]:
  field, sep, value = text.partition('=')
  if not sep or not re.fullmatch(r'[A-Za-z_]\w*(\.[A-Za-z_]\w*)*', field):
    raise SweepError(
        f'{flag} takes FIELD=VALUE (e.g. {flag}=train.'
        f'num_epochs=4), got {text!r}.'
    )
  return field, value


def _list(text: str, flag: str, numbers: bool = False) -> tuple[str, ...]:
  """A comma-separated list of values (of integers >= 0 if `numbers`)."""
  values = tuple(split_values(text))
  if not all(values):
    raise SweepError(f'{flag} has an empty value: {text!r}.')
  if numbers and not all(re.fullmatch(r'\d+', v) for v in values):
    raise SweepError(f'{flag} takes integers >= 0, got {text!r}.')
  return tuple(str(int(v)) for v in values) if numbers else values


def _safe(text: str) -> str:
  """`text` as part of a directory name: runs of other characters than
  letters, digits and ._+- become '-'."""
  return re.sub(r'[^\w.+-]+', '-', text).strip('-') or '-'


def _grid_label(name: str) -> Callable[[str], str]:
  def label(value):
    value = _safe(value)
    return name + ('' if re.match(r'[\d.-]', value) else '-') + value

  return label


def axes(args: argparse.Namespace) -> list[Axis]:
  """The sweep's axes, in the order that names the runs."""
  out = []
  if args.objectives is not None:
    out.append(
        Axis(
            '--objectives',
            _list(args.objectives, '--objectives'),
            None,
            'objective',
            _safe,
        )
    )
  if args.seeds is not None:
    out.append(
        Axis(
            '--seeds',
            _list(args.seeds, '--seeds', True),
            'seed',
            'seed',
            lambda v: f'seed{v}',
        )
    )
  if args.inits is not None:
    out.append(
        Axis(
            '--inits',
            _list(args.inits, '--inits'),
            'source.init',
            'init',
            _safe,
        )
    )
  if args.rounds is not None:
    out.append(
        Axis(
            '--rounds',
            _list(args.rounds, '--rounds', True),
            'source.rounds',
            'round',
            lambda v: f'round{v}',
            lambda v: f'({v},)',
        )
    )
  grid = [_field_and_value(text, '--grid') for text in args.grid]
  leaves = [field.rsplit('.', 1)[-1] for field, _ in grid]
  for (field, values), leaf in zip(grid, leaves):
    # The last part of the field's name, unless two grid fields share it.
    name = leaf if leaves.count(leaf) == 1 else field
    out.append(
        Axis(
            '--grid',
            _list(values, f'--grid {field}'),
            field,
            None,
            _grid_label(name),
        )
    )
  return out


def _fill(template: str, values: dict[str, str], where: str) -> str:
  """`template` with its {placeholders} replaced by `values`."""

  def replace(match):
    name = match.group(1)
    if name not in PLACEHOLDERS:
      raise SweepError(
          f'Unknown placeholder {{{name}}} in {where}; known: '
          + ', '.join(f'{{{p}}}' for p in PLACEHOLDERS)
          + '.'
      )
    if name not in values:
      raise SweepError(f'{{{name}}} in {where} needs {PLACEHOLDERS[name]}.')
    return values[name]

  filled = re.sub(r'\{([A-Za-z_]\w*)\}', replace, template)
  if template.startswith('{root}'):
    scheme, sep, path = filled.rpartition('://')
    filled = scheme + sep + posixpath.normpath(path)
  return filled


def expand(args: argparse.Namespace) -> list[Run]:
  """The runs of the sweep, in order (not yet checked against configs).

  Raises:
    SweepError: a malformed flag, a placeholder without its axis, a field
      given twice, or two runs with one workdir.
  """
  sweep_axes = axes(args)
  sets = [_field_and_value(text, '--set') for text in args.set]
  given: dict[str, str] = {}
  for flag, field in [(a.flag, a.field) for a in sweep_axes if a.field] + [
      ('--set', field) for field, _ in sets
  ]:
    if field in given:
      raise SweepError(f'{field} is given by both {given[field]} and {flag}.')
    given[field] = flag
  if args.objectives is not None and not any(
      '{objective}' in t for t in [args.config, *(v for _, v in sets)]
  ):
    raise SweepError(
        '--objectives fills {objective}, but neither --config nor a --set '
        "value has it (e.g. --config='configs/{objective}.py:quick')."
    )
  root = args.workdir.rstrip('/') or '/'
  default_name = _safe(os.path.basename(args.config).replace('.py', ''))
  runs = []
  for combo in itertools.product(*(a.values for a in sweep_axes)):
    values = {'root': root}
    values.update(
        (a.placeholder, v) for a, v in zip(sweep_axes, combo) if a.placeholder
    )
    overrides = [
        (a.field, a.to_value(v)) for a, v in zip(sweep_axes, combo) if a.field
    ]
    overrides += [
        (field, _fill(value, values, f'--set {field}')) for field, value in sets
    ]
    name = '_'.join(a.label(v) for a, v in zip(sweep_axes, combo))
    name = name or default_name
    runs.append(
        Run(
            name=name,
            workdir=posixpath.join(root, name),
            config=_fill(args.config, values, '--config'),
            overrides=tuple(overrides),
        )
    )
  names = [run.name for run in runs]
  shared = sorted({n for n in names if names.count(n) > 1})
  if shared:
    raise SweepError(
        'Several runs would share a workdir (' + ', '.join(shared) + '): '
        'give each axis distinct values.'
    )
  return runs


def parse_config(config: str, overrides=()) -> ml_collections.ConfigDict:
  """The config `--config=<config> --config.<field>=<value> ...` gives
  main.py: parsed by ml_collections' config_flags, as main.py does.

  Raises:
    SweepError: the config cannot be loaded, or a value does not parse.
  """
  path = config.split(':', 1)[0]
  if not os.path.isfile(path):
    raise SweepError(
        f'No config file {path} (--config={config}); paths are '
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


def check(runs: list[Run], args: argparse.Namespace) -> None:
  """Checks every override of every run against its config.

  Raises:
    SweepError: listing every unknown field, misplaced axis and value that
      does not parse, before anything runs.
  """
  problems = []
  flag_of = {a.field: a.flag for a in axes(args)}
  flag_of.update(
      (_field_and_value(text, '--set')[0], '--set') for text in args.set
  )
  for spec in dict.fromkeys(run.config for run in runs):
    try:
      known = set(_fields(parse_config(spec)))
    except SweepError as e:
      problems.append(str(e))
      continue
    fields = dict.fromkeys(
        f for run in runs if run.config == spec for f, _ in run.overrides
    )
    if args.rounds is not None and 'source.rounds' not in known:
      problems.append(
          '--rounds makes one run per round of the pruning run that an '
          f'evaluation reads (source.rounds), and {spec} has no source: '
          'for the number of rounds of a pruning run, use --grid '
          'pruning.num_rounds=3,5.'
      )
      fields.pop('source.rounds')
    if args.inits is not None and 'source.init' not in known:
      problems.append(
          f'--inits sets source.init, which {spec} has not: it is for the '
          "evaluations that re-train a pruning run's masks (configs/"
          'retrain.py, configs/voc07.py).'
      )
      fields.pop('source.init')
    for field in fields:
      if field not in known:
        close = difflib.get_close_matches(field, sorted(known), n=1)
        problems.append(
            f'{spec} has no field {field} ({flag_of[field]}'
            + (f'; did you mean {close[0]}?)' if close else ')')
            + '.'
        )
  if args.inits is not None:
    # Imported here, as is runner below: --help and flag errors come without
    # loading JAX.
    from sslprune_jax.evaluation import retrain

    bad = [i for i in _list(args.inits, '--inits') if i not in retrain.INITS]
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


def plan(args: argparse.Namespace) -> list[Run]:
  """The runs of the sweep, checked (see `expand` and `check`)."""
  runs = expand(args)
  check(runs, args)
  return runs


def is_complete(run: Run) -> bool:
  """Whether the run finished (it wrote `rundir.COMPLETE`)."""
  from sslprune_jax import rundir

  return rundir.is_complete(run.workdir)


def run_command(argv: list[str]) -> int:
  """Runs a command to its end and returns its exit code; a SIGTERM to the
  sweep is passed on to it, so that a preempted run saves its checkpoint."""
  process = subprocess.Popen(argv)
  previous = signal.signal(
      signal.SIGTERM, lambda signum, _: process.send_signal(signum)
  )
  try:
    code = process.wait()
  except KeyboardInterrupt:
    # The run had the Ctrl-C too: let it stop, then stop.
    process.wait()
    raise
  finally:
    signal.signal(signal.SIGTERM, previous)
  # Killed by signal N: exit 128 + N, as a shell reports it.
  return 128 - code if code < 0 else code


def _print(runs: list[Run], done: set[str], launcher: str) -> int:
  """--print: a command per run to do, a comment per complete run."""
  print(f'# {len(runs)} runs, {len(done)} complete (skipped).')
  for run in runs:
    if run.name in done:
      print(f'# complete, skipped: {run.workdir}')
    else:
      print(f'{launcher} {shlex.join(run.args())}')
  return 0


def _array_command(launcher: str | None, count: int, path: str) -> str:
  """The sbatch command that runs the `count` lines of `path`."""
  words = shlex.split(launcher or 'sbatch launch/slurm.sbatch')
  return shlex.join(
      [words[0], f'--array=1-{count}', *words[1:], f'--args-file={path}']
  )


def _write(
    runs: list[Run], done: set[str], path: str, launcher: str | None
) -> int:
  """--write: the arguments of each run to do, a line each, into `path`."""
  todo = [run for run in runs if run.name not in done]
  with open(path, 'w') as f:
    f.writelines(shlex.join(run.args()) + '\n' for run in todo)
  for run in runs:
    if run.name in done:
      print(f'# complete, skipped: {run.workdir}')
  print(f'Wrote {len(todo)} runs to {path} ({len(done)} complete, ' 'skipped).')
  if todo:
    print('Submit them with:\n  ' + _array_command(launcher, len(todo), path))
  else:
    print('Nothing to submit.')
  return 0


def _local(
    runs: list[Run],
    done: set[str],
    launcher: str | None,
    execute: Callable[[list[str]], int],
) -> int:
  """--local: runs the runs to do in order, until one fails; returns the
  exit code of the failed run, or 0."""
  prefix = (
      shlex.split(launcher)
      if launcher
      else [sys.executable, '-m', 'sslprune_jax.main']
  )
  todo = [run for run in runs if run.name not in done]
  skipped = len(runs) - len(todo)
  for run in runs:
    if run.name in done:
      print(f'# complete, skipped: {run.workdir}', flush=True)
  for i, run in enumerate(todo):
    print(
        f'\n== [{i + 1}/{len(todo)}] {shlex.join(prefix + run.args())}',
        flush=True,
    )
    code = execute(prefix + run.args())
    if code:
      left = len(todo) - i - 1
      what = (
          'was preempted after saving a checkpoint'
          if code == PREEMPTED
          else 'failed'
      )
      print(
          f'\nSweep stopped: {run.workdir} {what} (exit code {code}); '
          f'{i} runs finished, {skipped} were complete, {left} not '
          'started. The same sweep command goes on from there.',
          flush=True,
      )
      return code
  print(
      f'\nSweep done: {len(todo)} runs finished, {skipped} were complete.',
      flush=True,
  )
  return 0


def parser() -> argparse.ArgumentParser:
  """The command line (see the module docstring)."""
  p = argparse.ArgumentParser(
      prog='python launch/sweep.py',
      description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
      '--config',
      required=True,
      help='the config, as main.py takes it '
      "(e.g. 'configs/{objective}.py:quick')",
  )
  p.add_argument(
      '--workdir', required=True, help='ROOT: each run goes to ROOT/NAME'
  )
  p.add_argument('--objectives', help='values of {objective}: labels,rotnet')
  p.add_argument('--seeds', help='config.seed: 0,1,2')
  p.add_argument('--inits', help='source.init: winning_ticket,reinit')
  p.add_argument('--rounds', help='one run per source round: 0,3,5')
  p.add_argument(
      '--grid',
      action='append',
      default=[],
      metavar='FIELD=V1,V2',
      help="a field's values (repeatable)",
  )
  p.add_argument(
      '--set',
      action='append',
      default=[],
      metavar='FIELD=VALUE',
      help='a fixed override, may use placeholders (repeatable)',
  )
  mode = p.add_mutually_exclusive_group()
  mode.add_argument(
      '--print', action='store_true', help='print the commands (default)'
  )
  mode.add_argument(
      '--write',
      metavar='FILE',
      help='write the arguments of each run to do to FILE',
  )
  mode.add_argument(
      '--local', action='store_true', help='run them here, one after another'
  )
  p.add_argument('--launcher', help=f'the command in place of `{MAIN}`')
  return p


def main(
    argv: list[str] | None = None,
    execute: Callable[[list[str]], int] = run_command,
) -> int:
  """Runs the command line `argv`; returns the exit code.

  Args:
    argv: the arguments (default: sys.argv[1:]).
    execute: what runs each command of `--local` (a list of words) and
      returns its exit code.
  """
  args = parser().parse_args(argv)
  try:
    if (
        args.write
        and args.launcher
        and (os.path.basename(shlex.split(args.launcher)[0]) != 'sbatch')
    ):
      raise SweepError(
          '--write makes a SLURM array job: --launcher must '
          'be an sbatch command (sbatch [options] SCRIPT).'
      )
    runs = plan(args)
  except SweepError as e:
    print(f'sweep.py: error: {e}', file=sys.stderr)
    return 2
  done = {run.name for run in runs if is_complete(run)}
  if args.local:
    return _local(runs, done, args.launcher, execute)
  if args.write:
    return _write(runs, done, args.write, args.launcher)
  return _print(runs, done, args.launcher or MAIN)


if __name__ == '__main__':
  sys.exit(main())
