"""Results of several pruning runs, side by side: mean ± standard error.

Runs are grouped into curves (one per pruning objective / initialisation,
e.g. 'rotnet, winning ticket'), each curve holding the runs of several seeds.
Within a curve the runs must share their config except for the seed (and
the logging cadence); a curve mixing configs is refused. For each round, a
curve gets the mean of a metric over its runs and the standard error of that
mean, s / sqrt(n) with s the sample standard deviation (undefined, NaN, for
a single run), against the fraction of the prunable weights left.
"""

import csv
import dataclasses
import io
import json
import math

from etils import epath
import numpy as np

from sslprune_jax import checkpoint

# Config fields that may differ between the seeds of one curve.
SEED_FIELDS = ('seed', *checkpoint.RESTART_MAY_CHANGE)


@dataclasses.dataclass(frozen=True)
class Run:
  """A finished (or partly finished) pruning run, read from its workdir."""
  workdir: str
  config: dict
  rows: list[dict]


def load_run(workdir: str) -> Run:
  """Reads a workdir's config.json and results.csv."""
  path = epath.Path(workdir)
  for name in ('config.json', 'results.csv'):
    if not (path / name).exists():
      raise FileNotFoundError(f'{path / name} does not exist: is {workdir} '
                              'a pruning run with at least one finished '
                              'round?')
  config = json.loads((path / 'config.json').read_text())
  rows = list(csv.DictReader(io.StringIO((path / 'results.csv').read_text())))
  return Run(workdir=str(workdir), config=config, rows=rows)


def check_same_config(runs: list[Run], allowed=SEED_FIELDS) -> None:
  """Raises ValueError, naming the fields, if the runs' configs differ."""
  strip = lambda c: {k: v for k, v in c.items() if k not in allowed}
  first = runs[0]
  for run in runs[1:]:
    diffs = checkpoint.config_diff(strip(first.config), strip(run.config))
    if diffs:
      raise ValueError(
          f'Runs {first.workdir} and {run.workdir} differ in more than the '
          'seed, so they cannot be averaged:\n  ' + '\n  '.join(diffs))


def summarize(runs: list[Run], metric: str) -> list[dict]:
  """Mean and standard error of `metric` per round over the runs.

  Returns:
    One dict per round that every run has finished: round, fraction_left,
    mean, sem, n.
  """
  check_same_config(runs)
  for run in runs:
    if run.rows and metric not in run.rows[0]:
      raise ValueError(f'{run.workdir}/results.csv has no column {metric!r}; '
                       f'it has {sorted(run.rows[0])}.')
  num_rounds = min(len(run.rows) for run in runs)
  out = []
  for r in range(num_rounds):
    values = np.array([float(run.rows[r][metric]) for run in runs])
    n = len(values)
    out.append({
        'round': r,
        'fraction_left': float(runs[0].rows[r]['fraction_left']),
        'mean': float(values.mean()),
        'sem': (float(values.std(ddof=1) / math.sqrt(n)) if n > 1
                else math.nan),
        'n': n,
    })
  return out


def tables(curves: dict[str, list[Run]], metric: str) -> tuple[str, str]:
  """A CSV and a markdown table of `metric` for every curve.

  Args:
    curves: curve name -> its runs (one per seed).
    metric: a column of results.csv, e.g. 'test_accuracy'.

  Returns:
    (csv text with columns curve, round, fraction_left, mean, sem, n;
     markdown with one row per round and a 'mean ± s.e.' column per curve).
  """
  summaries = {name: summarize(runs, metric) for name, runs in curves.items()}
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=['curve', 'round', 'fraction_left',
                                           'mean', 'sem', 'n'])
  writer.writeheader()
  for name, rows in summaries.items():
    writer.writerows({'curve': name, **row} for row in rows)
  num_rounds = max(len(rows) for rows in summaries.values())
  lines = ['| weights left | ' + ' | '.join(summaries) + ' |',
           '|---' * (len(summaries) + 1) + '|']
  for r in range(num_rounds):
    left = next(rows[r]['fraction_left'] for rows in summaries.values()
                if len(rows) > r)
    cells = []
    for rows in summaries.values():
      if len(rows) <= r:
        cells.append('')
      elif math.isnan(rows[r]['sem']):
        cells.append(f"{rows[r]['mean']:.4f}")
      else:
        cells.append(f"{rows[r]['mean']:.4f} ± {rows[r]['sem']:.4f}")
    lines.append(f'| {100 * left:.2f}% | ' + ' | '.join(cells) + ' |')
  return out.getvalue(), '\n'.join(lines) + '\n'
