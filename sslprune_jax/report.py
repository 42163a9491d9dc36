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

writes /tmp/fig/test_accuracy.csv, .md and .png. A workdir may be a glob
(`--curve='rotnet=/w/rotnet_s*'`, quoted for the shell). Runs of a curve
with the same seed are one run split by rounds (an evaluation re-training
each source round in its own workdir, `launch/sweep.py --rounds`): their
rows are put together, and a round found twice is refused.
"""

import csv
import dataclasses
import io
import json
import math
import re

from etils import epath
from absl import app
from absl import flags
import numpy as np

from sslprune_jax import checkpoint
from sslprune_jax import rundir
from sslprune_jax import summaries
from sslprune_jax.rundir import results

# Config fields that may differ between the seeds of one curve (dotted for
# nested ones: each seed's evaluation reads its own seed's pruning run, and
# may have re-trained other source rounds: rounds are matched by number).
SEED_FIELDS = (
    'seed',
    *checkpoint.RESTART_MAY_CHANGE,
    'source.workdir',
    'init_from.workdir',
    'source.rounds',
)
# Fields in which the runs of one seed, split by rounds, may differ.
SPLIT_FIELDS = (*checkpoint.RESTART_MAY_CHANGE, 'source.rounds')


@dataclasses.dataclass(frozen=True)
class Run:
  """A finished (or partly finished) pruning run, read from its workdir."""

  workdir: str
  config: dict
  rows: list[dict]


def load_run(workdir: str) -> Run:
  """Reads a workdir's config.json and results.csv (typed rows:
  `rundir.results.read`)."""
  for path in (rundir.config_path(workdir), rundir.results_path(workdir)):
    if not path.exists():
      raise FileNotFoundError(
          f'{path} does not exist: is {workdir} a '
          'pruning run with at least one finished '
          'round?'
      )
  config = checkpoint.read_config_json(rundir.config_path(workdir))
  return Run(workdir=str(workdir), config=config, rows=results.read(workdir))


def check_same_config(
    runs: list[Run],
    allowed=SEED_FIELDS,
    why='the seed, so they cannot be averaged',
) -> None:
  """Raises ValueError, naming the fields, if the runs' configs differ in
  more than the `allowed` fields (`why`: what those are, for the message)."""

  def strip(config, prefix=''):
    return {
        k: strip(v, f'{prefix}{k}.') if isinstance(v, dict) else v
        for k, v in config.items()
        if f'{prefix}{k}' not in allowed
    }

  first = runs[0]
  for run in runs[1:]:
    diffs = checkpoint.config_diff(strip(first.config), strip(run.config))
    if diffs:
      raise ValueError(
          f'Runs {first.workdir} and {run.workdir} differ in more than '
          f'{why}:\n  ' + '\n  '.join(diffs)
      )


def _by_round(run: Run) -> dict[int, dict]:
  """A run's rows by their round number."""
  return {int(row['round']): row for row in run.rows}


def merge_split_run(runs: list[Run]) -> Run:
  """One run of a seed that was split by rounds, from its parts.

  Args:
    runs: runs with one config but for the source rounds they re-trained
      (`source.rounds`), e.g. one per round.

  Returns:
    A run holding all their rows, by round; its workdir names the parts
    (comma-separated) and its config's `source.rounds` lists the rounds.

  Raises:
    ValueError: the configs differ in more than that, or two runs have a
      round in common.
  """
  if len(runs) == 1:
    return runs[0]
  check_same_config(
      runs,
      allowed=SPLIT_FIELDS,
      why='their rounds, so they are not one split run',
  )
  rows, where = {}, {}
  for run in runs:
    for r, row in _by_round(run).items():
      if r in rows:
        raise ValueError(
            f'Round {r} of seed {run.config.get("seed")} is in '
            f'both {where[r]} and {run.workdir}; a curve takes '
            'one run per seed and round.'
        )
      rows[r], where[r] = row, run.workdir
  config = json.loads(json.dumps(runs[0].config))
  if 'source' in config:
    config['source']['rounds'] = sorted(rows)
  return Run(
      workdir=','.join(run.workdir for run in runs),
      config=config,
      rows=[rows[r] for r in sorted(rows)],
  )


def merge_by_seed(runs: list[Run]) -> list[Run]:
  """The runs of a curve, one per seed: runs of a seed split by rounds
  are merged (`merge_split_run`), in the order the seeds first appear."""
  check_same_config(runs)
  seeds: dict = {}
  for run in runs:
    seeds.setdefault(run.config.get('seed'), []).append(run)
  return [merge_split_run(parts) for parts in seeds.values()]


def summarize(runs: list[Run], metric: str) -> list[dict]:
  """Mean and standard error of `metric` per round over the runs.

  Returns:
    One dict per round that every run has finished, by round number:
    round, fraction_left, mean, sem, n.
  """
  check_same_config(runs)
  for run in runs:
    if run.rows and metric not in run.rows[0]:
      raise ValueError(
          f'{run.workdir}/results.csv has no column {metric!r}; '
          f'it has {sorted(run.rows[0])}.'
      )
  by_round = [_by_round(run) for run in runs]
  rounds = sorted(set.intersection(*(set(rows) for rows in by_round)))
  out = []
  for r in rounds:
    values = np.array([float(rows[r][metric]) for rows in by_round])
    n = len(values)
    out.append(
        {
            'round': r,
            'fraction_left': float(by_round[0][r]['fraction_left']),
            'mean': float(values.mean()),
            'sem': (
                float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
            ),
            'n': n,
        }
    )
  return out


def _left_key(fraction: float) -> float:
  """A fraction of weights left, rounded so that equal counts compare
  equal across runs."""
  return round(float(fraction), 9)


def tables(curves: dict[str, list[Run]], metric: str) -> tuple[str, str]:
  """A CSV and a markdown table of `metric` for every curve.

  Args:
    curves: curve name -> its runs (one per seed).
    metric: a column of results.csv, e.g. 'test_accuracy'.

  Returns:
    (csv text with columns curve, round, fraction_left, mean, sem, n;
     markdown with one row per fraction of weights left, densest first,
     and a 'mean ± s.e.' column per curve).
  """
  summaries = {name: summarize(runs, metric) for name, runs in curves.items()}
  out = io.StringIO()
  writer = csv.DictWriter(
      out, fieldnames=['curve', 'round', 'fraction_left', 'mean', 'sem', 'n']
  )
  writer.writeheader()
  for name, rows in summaries.items():
    writer.writerows({'curve': name, **row} for row in rows)
  # Rows are fractions of weights left, not rounds: curves that prune at
  # different rates (layerwise pruning, another step) then share a row only
  # where they have as many weights left, and leave the other rows blank.
  by_left = [
      {_left_key(row['fraction_left']): row for row in rows}
      for rows in summaries.values()
  ]
  lines = [
      '| weights left | ' + ' | '.join(summaries) + ' |',
      '|---' * (len(summaries) + 1) + '|',
  ]
  for left in sorted(set().union(*by_left), reverse=True):
    cells = []
    for rows in by_left:
      row = rows.get(left)
      if row is None:
        cells.append('')
      elif math.isnan(row['sem']):
        cells.append(f"{row['mean']:.4f}")
      else:
        cells.append(f"{row['mean']:.4f} ± {row['sem']:.4f}")
    lines.append(f'| {100 * left:.2f}% | ' + ' | '.join(cells) + ' |')
  return out.getvalue(), '\n'.join(lines) + '\n'


def plot(
    curves: dict[str, list[Run]], metric: str, path: str, title: str = ''
) -> None:
  """The paper's figure: `metric` against the fraction of weights left.

  The x axis is logarithmic and decreasing (dense on the left), one curve
  per entry of `curves` with standard-error bars.
  """
  # pylint: disable-next=g-import-not-at-top
  from matplotlib import ticker

  fig, ax = summaries.figure(figsize=(6, 4))
  for name, runs in curves.items():
    rows = summarize(runs, metric)
    left = [100 * r['fraction_left'] for r in rows]
    sem = [0.0 if math.isnan(r['sem']) else r['sem'] for r in rows]
    ax.errorbar(
        left,
        [r['mean'] for r in rows],
        yerr=sem,
        label=name,
        marker='o',
        markersize=3,
        capsize=2,
    )
  ax.set_xscale('log')
  ax.invert_xaxis()
  plain = ticker.FuncFormatter(lambda x, _: f'{x:g}')
  ax.xaxis.set_major_formatter(plain)
  low, high = ax.get_xlim()
  # Within one decade there are no major ticks to speak of: label the minor.
  ax.xaxis.set_minor_formatter(
      plain if max(low, high) / min(low, high) < 10 else ticker.NullFormatter()
  )
  ax.set_xlabel('% of weights left')
  ax.set_ylabel(metric)
  if title:
    ax.set_title(title)
  ax.grid(True, which='both', alpha=0.3)
  ax.legend()
  fig.tight_layout()
  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=150)


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


def expand_workdirs(pattern: str) -> list[str]:
  """The workdirs a glob (`*`, `?`, `[...]`) matches, sorted; a workdir
  without wildcards is itself."""
  parts = pattern.split('/')
  wild = next(
      (i for i, part in enumerate(parts) if re.search(r'[*?[]', part)), None
  )
  if wild is None:
    return [pattern]
  base = epath.Path(
      '/'.join(parts[:wild]) or ('/' if pattern.startswith('/') else '.')
  )
  found = sorted(
      str(p) for p in base.glob('/'.join(parts[wild:])) if p.is_dir()
  )
  if not found:
    raise FileNotFoundError(f'{pattern} matches no directory.')
  return found


def parse_curves(specs: list[str]) -> dict[str, list[Run]]:
  """'name=workdir,workdir,...' strings -> curve name -> runs, one per seed
  (workdirs may be globs; see the module docstring)."""
  curves = {}
  for spec in specs:
    name, sep, dirs = spec.partition('=')
    if not sep or not name or not dirs:
      raise ValueError(
          f'--curve takes name=workdir[,workdir...], got ' f'{spec!r}.'
      )
    curves[name] = merge_by_seed(
        [
            load_run(d)
            for pattern in dirs.split(',')
            if pattern
            for d in expand_workdirs(pattern)
        ]
    )
  if not curves:
    raise ValueError('Give at least one --curve.')
  return curves


def main(argv):
  del argv
  values = flags.FLAGS
  if not values.out:
    raise app.UsageError('--out is required.')
  try:
    paths = write(parse_curves(values.curve), values.metric, values.out)
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f'error: {e}') from None
  print(epath.Path(paths['md']).read_text())
  print('\n'.join(paths.values()))


if __name__ == '__main__':
  # Defined here, not on import: the modules that import this one define
  # --out and --workdir of their own.
  flags.DEFINE_multi_string(
      'curve',
      [],
      'name=workdir,workdir,...: the runs (seeds) of one curve; '
      'workdirs may be globs.',
  )
  flags.DEFINE_string(
      'metric', 'test_accuracy', "A column of the runs' results.csv."
  )
  flags.DEFINE_string('out', None, 'Where the table and plot go.')
  app.run(main)
