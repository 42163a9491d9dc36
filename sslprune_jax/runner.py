"""Runs a config: the function behind `main.py`, `launch/sweep.py` and the
Colab notebook.

`config.run` says what a config runs: a pruning run ('prune'), or an
evaluation of one ('retrain', 'linear', 'layerwise'; see
`sslprune_jax.evaluation`). A run that returns marks its workdir complete
(`is_complete`), which is how sweeps skip what is done.
"""

from __future__ import annotations

import jax
import ml_collections

from sslprune_jax import lock
from sslprune_jax import lottery
from sslprune_jax import rundir
from sslprune_jax.evaluation import layerwise
from sslprune_jax.evaluation import linear
from sslprune_jax.evaluation import retrain


def prune(
    config: ml_collections.ConfigDict, workdir: str
) -> list[dict] | list[list[dict]]:
  """A pruning run's rows (`lottery.run`): one run's, or with several
  seeds one list per seed."""
  results = lottery.run(config, workdir)
  return results[0] if len(results) == 1 else results


RUNS = {
    'prune': prune,
    'retrain': retrain.run,
    'linear': linear.run,
    'layerwise': layerwise.run,
}

# Written into the workdir when a run has finished all it was asked to do.
COMPLETE = rundir.COMPLETE


def run(config: ml_collections.ConfigDict, workdir: str):
  """Runs (or resumes) `config` in `workdir`; returns what the runner does.

  Raises:
    ValueError: an unknown `config.run`, or anything the runner refuses.
    lock.WorkdirInUseError: another process runs in `workdir`.
    preemption.Preempted: stopped by SIGTERM after saving a checkpoint.
  """
  kind = config.get('run', 'prune')
  if kind not in RUNS:
    raise ValueError(f'Unknown config.run {kind!r}; valid: {sorted(RUNS)}.')
  with lock.held(workdir):
    result = RUNS[kind](config, workdir)
    if jax.process_index() == 0:
      rundir.mark_complete(workdir, kind)
  return result


is_complete = rundir.is_complete
