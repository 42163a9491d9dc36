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

import os
import shlex
import sys

from absl import app
from absl import flags

from sslprune_jax.sweep import checks
from sslprune_jax.sweep import modes
from sslprune_jax.sweep.runs import Spec
from sslprune_jax.sweep.runs import SweepError

MODES = ('print', 'write', 'local')


def define_flags(values: flags.FlagValues) -> None:
  """The command line's flags, in `values` (see the module docstring)."""
  define = dict(flag_values=values)
  flags.DEFINE_string(
      'config',
      None,
      "The config, as main.py takes it (e.g. 'configs/{objective}.py:quick').",
      required=True,
      **define,
  )
  flags.DEFINE_string(
      'workdir',
      None,
      'ROOT: each run goes to ROOT/NAME.',
      required=True,
      **define,
  )
  # Strings, not lists: values may hold commas within brackets.
  flags.DEFINE_string(
      'objectives', None, 'Values of {objective}: labels,rotnet.', **define
  )
  flags.DEFINE_string('seeds', None, 'config.seed: 0,1,2.', **define)
  flags.DEFINE_string(
      'inits', None, 'source.init: winning_ticket,reinit.', **define
  )
  flags.DEFINE_string(
      'rounds', None, 'One run per source round: 0,3,5.', **define
  )
  flags.DEFINE_multi_string(
      'grid', [], "FIELD=V1,V2: a field's values.", **define
  )
  flags.DEFINE_multi_string(
      'set',
      [],
      'FIELD=VALUE: a fixed override, may use placeholders.',
      **define,
  )
  flags.DEFINE_bool('print', False, 'Print the commands (default).', **define)
  flags.DEFINE_string(
      'write', None, 'Write the arguments of each run to do to FILE.', **define
  )
  flags.DEFINE_bool(
      'local', False, 'Run them here, one after another.', **define
  )
  flags.DEFINE_string(
      'launcher', None, f'The command in place of `{modes.MAIN}`.', **define
  )
  flags.register_multi_flags_validator(
      MODES,
      lambda given: sum(map(bool, given.values())) <= 1,
      message='--print, --write and --local: give at most one.',
      flag_values=values,
  )


def spec_of(values: flags.FlagValues) -> Spec:
  """The sweep that parsed flags give."""
  return Spec(
      config=values.config,
      workdir=values.workdir,
      objectives=values.objectives,
      seeds=values.seeds,
      inits=values.inits,
      rounds=values.rounds,
      grid=tuple(values.grid),
      sets=tuple(values.set),
  )


def parse(argv: list[str]) -> flags.FlagValues:
  """The flags of `argv` (without the program's name), parsed apart from
  absl's global FLAGS, as tests and other programs call the sweep.

  Raises:
    flags.Error: a flag that is unknown, missing or malformed.
  """
  values = flags.FlagValues()
  define_flags(values)
  values(['sweep', *argv])
  return values


def sweep(
    values: flags.FlagValues,
    execute=modes.run_command,
) -> int:
  """Plans the sweep of parsed flags and does what they ask; returns the
  exit code.

  Args:
    values: the parsed flags.
    execute: what runs each command of `--local` (a list of words) and
      returns its exit code.
  """
  try:
    if (
        values.write
        and values.launcher
        and (os.path.basename(shlex.split(values.launcher)[0]) != 'sbatch')
    ):
      raise SweepError(
          '--write makes a SLURM array job: --launcher must '
          'be an sbatch command (sbatch [options] SCRIPT).'
      )
    runs = checks.plan(spec_of(values))
  except SweepError as e:
    print(f'sweep: error: {e}', file=sys.stderr)
    return 2
  done = {run.name for run in runs if modes.is_complete(run)}
  if values.local:
    return modes.run_here(runs, done, values.launcher, execute)
  if values.write:
    return modes.write_runs(runs, done, values.write, values.launcher)
  return modes.print_runs(runs, done, values.launcher or modes.MAIN)


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  return sweep(flags.FLAGS)


define_flags(flags.FLAGS)

if __name__ == '__main__':
  app.run(main)
