"""Natural sparsity of a pruning run's networks (the paper's Fig. 6).

For each finished round of a run, the fraction of its kept prunable weights
whose magnitude is below a threshold, per layer and overall (the final
classifier, biases and batch norm are not prunable and are left out).
Results go to `<workdir>/natural_sparsity.json`:

  python -m sslprune_jax.evaluation.natural_sparsity --workdir=/tmp/run \\
      [--rounds=0,3] [--threshold=1e-3]
"""

import json

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
import numpy as np

from sslprune_jax import checkpoint
from sslprune_jax import pruning
from sslprune_jax import rundir


def of_run(
    workdir: str,
    rounds: list[int] | None = None,
    threshold: float | None = None,
) -> dict[int, dict]:
  """Natural sparsity of the given (default: all finished) rounds.

  Args:
    workdir: a pruning run's workdir.
    rounds: which rounds; None for every finished one.
    threshold: None for the run's `pruning.natural_threshold`.

  Returns:
    round -> `pruning.natural_sparsity` report (with 'threshold' added).
  """
  path = rundir.config_path(workdir)
  if not path.exists():
    raise FileNotFoundError(
        f'{path} does not exist: is {workdir} a pruning ' 'run?'
    )
  config = checkpoint.read_config_json(path)['pruning']
  threshold = config['natural_threshold'] if threshold is None else threshold
  with checkpoint.RunCheckpoints(workdir) as ckpts:
    finished = ckpts.completed_rounds()
    rounds = finished if rounds is None else rounds
    missing = sorted(set(rounds) - set(finished))
    if missing:
      raise ValueError(
          f'{workdir} has no finished round {missing}; it has ' f'{finished}.'
      )
    out = {}
    for r in rounds:
      saved = jax.tree.map(np.asarray, ckpts.load_round(r))
      prunable = pruning.prunable_tree(
          saved['params'],
          exclude=tuple(config['exclude']),
          min_ndim=config['min_ndim'],
      )
      mask = jax.tree.map(lambda m: m.astype(bool), saved['mask'])
      out[r] = {
          'threshold': threshold,
          **pruning.natural_sparsity(
              saved['params'], prunable, threshold, mask
          ),
      }
  return out


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  values = flags.FLAGS
  if not values.workdir:
    raise app.UsageError('--workdir is required.')
  try:
    reports = of_run(
        values.workdir,
        None if values.rounds is None else [int(r) for r in values.rounds],
        values.threshold,
    )
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f'error: {e}') from None
  out = epath.Path(values.workdir) / 'natural_sparsity.json'
  out.write_text(json.dumps({str(r): v for r, v in reports.items()}, indent=2))
  for r, report in reports.items():
    print(
        f"round {r}: {100 * report['fraction']:.2f}% of "
        f"{report['total']} kept prunable weights below "
        f"{report['threshold']:g}"
    )
  print(out)


if __name__ == '__main__':
  # Defined here, not on import: other commands import this module and
  # define --workdir themselves.
  flags.DEFINE_string('workdir', None, 'A pruning run.')
  flags.DEFINE_list('rounds', None, 'Rounds (default: all finished).')
  flags.DEFINE_float('threshold', None, "Default: the run's natural_threshold.")
  app.run(main)
