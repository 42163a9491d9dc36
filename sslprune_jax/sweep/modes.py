"""What a sweep does with its runs: prints their commands, writes them for a
SLURM array job, or runs them here one after another; runs that finished
are skipped in every mode."""

import shlex
import signal
import subprocess
import sys
from typing import Callable

from sslprune_jax import rundir
from sslprune_jax.sweep.runs import Run

MAIN = 'python -m sslprune_jax.main'
# Exit code of a run stopped by SIGTERM after saving a checkpoint
# (sslprune_jax.preemption.EXIT_CODE).
PREEMPTED = 75


def is_complete(run: Run) -> bool:
  """Whether the run finished (it wrote `rundir.COMPLETE`)."""
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


def print_runs(runs: list[Run], done: set[str], launcher: str) -> int:
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


def write_runs(
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


def run_here(
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
