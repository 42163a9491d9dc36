"""Runs a config: the function behind `main.py`, `launch/sweep.py` and the
Colab notebook.

`config.run` says what a config runs: a pruning run ('prune'), or an
evaluation of one ('retrain', 'linear', 'layerwise'; see
`sslprune_jax.evaluation`). A run that returns marks its workdir complete
(`is_complete`), which is how sweeps skip what is done.
"""

from __future__ import annotations

import json
import time

from etils import epath
import jax
import ml_collections

from sslprune_jax import imp
from sslprune_jax import lock
from sslprune_jax.evaluation import layerwise
from sslprune_jax.evaluation import linear
from sslprune_jax.evaluation import retrain

RUNS = {'prune': imp.run, 'retrain': retrain.run, 'linear': linear.run,
        'layerwise': layerwise.run}

# Written into the workdir when a run has finished all it was asked to do.
COMPLETE = 'COMPLETE'


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
      (epath.Path(workdir) / COMPLETE).write_text(
          json.dumps({'run': kind, 'finished': time.strftime('%FT%T%z')})
          + '\n')
  return result


def is_complete(workdir: str) -> bool:
  """Whether a run finished in `workdir` (it wrote `COMPLETE`)."""
  return (epath.Path(workdir) / COMPLETE).exists()
