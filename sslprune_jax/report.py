"""Results of several pruning runs, side by side: mean ± standard error.

Runs are grouped into curves (one per pruning objective / initialisation,
e.g. 'rotnet, winning ticket'), each curve holding the runs of several seeds.
Within a curve the runs must share their config except for the seed (and
the logging cadence); a curve mixing configs is refused. For each round, a
curve gets the mean of a metric over its runs and the standard error of that
mean, s / sqrt(n) with s the sample standard deviation (undefined, NaN, for
a single run), against the fraction of the prunable weights left.

From the command line, one `--curve name=workdir,workdir,...` per curve:

  python -m sslprune_jax.report --metric=test_accuracy --out=/tmp/fig \
      --curve=labels=/w/labels_s0,/w/labels_s1,/w/labels_s2 \
      --curve=rotnet=/w/rotnet_s0,/w/rotnet_s1,/w/rotnet_s2

writes /tmp/fig/test_accuracy.csv, .md and .png.
"""

import csv
import dataclasses
import io
import json
import math

from etils import epath
from absl import app
from absl import flags
import numpy as np

from sslprune_jax import checkpoint

# Config fields that may differ between the seeds of one curve (dotted for
# nested ones: each seed's evaluation reads its own seed's pruning run).
SEED_FIELDS = ('seed', *checkpoint.RESTART_MAY_CHANGE, 'source.workdir',
               'init_from.workdir')


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

  def strip(config, prefix=''):
    return {k: strip(v, f'{prefix}{k}.') if isinstance(v, dict) else v
            for k, v in config.items() if f'{prefix}{k}' not in allowed}

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


def plot(curves: dict[str, list[Run]], metric: str, path: str,
         title: str = '') -> None:
  """The paper's figure: `metric` against the fraction of weights left.

  The x axis is logarithmic and decreasing (dense on the left), one curve
  per entry of `curves` with standard-error bars.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(6, 4))
  for name, runs in curves.items():
    rows = summarize(runs, metric)
    left = [100 * r['fraction_left'] for r in rows]
    sem = [0.0 if math.isnan(r['sem']) else r['sem'] for r in rows]
    ax.errorbar(left, [r['mean'] for r in rows], yerr=sem, label=name,
                marker='o', markersize=3, capsize=2)
  ax.set_xscale('log')
  ax.invert_xaxis()
  plain = ticker.FuncFormatter(lambda x, _: f'{x:g}')
  ax.xaxis.set_major_formatter(plain)
  low, high = ax.get_xlim()
  # Within one decade there are no major ticks to speak of: label the minor.
  ax.xaxis.set_minor_formatter(plain if max(low, high) / min(low, high) < 10
                               else ticker.NullFormatter())
  ax.set_xlabel('% of weights left')
  ax.set_ylabel(metric)
  if title:
    ax.set_title(title)
  ax.grid(True, which='both', alpha=0.3)
  ax.legend()
  fig.tight_layout()
  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=150)
  plt.close(fig)


def write(curves: dict[str, list[Run]], metric: str, out_dir: str) -> dict:
  """Writes <metric>.csv, .md and .png into `out_dir`; returns their paths."""
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  csv_text, markdown = tables(curves, metric)
  paths = {ext: out / f'{metric}.{ext}' for ext in ('csv', 'md', 'png')}
  paths['csv'].write_text(csv_text)
  paths['md'].write_text(markdown)
  plot(curves, metric, str(paths['png']))
  return {k: str(v) for k, v in paths.items()}


def parse_curves(specs: list[str]) -> dict[str, list[Run]]:
  """'name=workdir,workdir,...' strings -> curve name -> runs."""
  curves = {}
  for spec in specs:
    name, sep, dirs = spec.partition('=')
    if not sep or not name or not dirs:
      raise ValueError(f'--curve takes name=workdir[,workdir...], got '
                       f'{spec!r}.')
    curves[name] = [load_run(d) for d in dirs.split(',') if d]
  if not curves:
    raise ValueError('Give at least one --curve.')
  return curves


_CURVES = flags.DEFINE_multi_string(
    'curve', [], 'name=workdir,workdir,...: the runs (seeds) of one curve.')
_METRIC = flags.DEFINE_string('metric', 'test_accuracy',
                              'A column of the runs\' results.csv.')
_OUT = flags.DEFINE_string('out', None, 'Where the table and plot go.')


def main(argv):
  del argv
  if not _OUT.value:
    raise app.UsageError('--out is required.')
  try:
    paths = write(parse_curves(_CURVES.value), _METRIC.value, _OUT.value)
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f'error: {e}') from None
  print(epath.Path(paths['md']).read_text())
  print('\n'.join(paths.values()))


if __name__ == '__main__':
  app.run(main)
