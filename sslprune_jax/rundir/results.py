"""A run's results.csv: one row per finished round, written and read here.

Every row has the round, the share of prunable weights left and their
number, the test and train accuracy and loss (NaN where a task reports
none), the size of the round's export and its training time; any other
`test_*` or `train_*` metric of the task gets a column of its own.
"""

from __future__ import annotations

import csv
import io
import math

from sslprune_jax import rundir

FIELDS = (
    'round',
    'fraction_left',
    'remaining',
    'test_accuracy',
    'test_loss',
    'train_accuracy',
    'train_loss',
    'export_bytes',
    'seconds',
)
# Columns that hold counts; every other column holds a float.
INTEGER_FIELDS = ('round', 'remaining', 'export_bytes')
MISSING = 'nan'


def fields(rows: list[dict]) -> list[str]:
  """The CSV columns: the common ones, then any other metric of the task."""
  extra = sorted(
      {k for row in rows for k in row if k.startswith(('test_', 'train_'))}
      - set(FIELDS)
  )
  return [*FIELDS[:-1], *extra, FIELDS[-1]]


def write(workdir, rows: list[dict], *, is_writer: bool = True) -> None:
  """Writes results.csv atomically (only where `is_writer`: process 0);
  a missing value is written 'nan'."""
  if not is_writer:
    return
  out = io.StringIO()
  writer = csv.DictWriter(
      out, fieldnames=fields(rows), extrasaction='ignore', restval=MISSING
  )
  writer.writeheader()
  writer.writerows(rows)
  path = rundir.results_path(workdir)
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(out.getvalue())
  tmp.replace(path)


def _value(path, line: int, key: str, text: str):
  if text == MISSING:  # What `write` puts where a row has no value.
    return math.nan
  try:
    if key in INTEGER_FIELDS:
      return int(text)
    return float(text)
  except (TypeError, ValueError):
    raise ValueError(
        f'{path} is damaged: line {line} has {key}={text!r}, not a number. '
        'It is written again from the checkpoints when the run resumes.'
    ) from None


def read(workdir) -> list[dict]:
  """The rows of `workdir`'s results.csv, typed: counts as ints, the rest
  as floats (NaN where missing); [] if the run has finished no round.

  Raises:
    ValueError: a value that is not a number, naming the file and line.
  """
  path = rundir.results_path(workdir)
  if not path.exists():
    return []
  rows = csv.DictReader(io.StringIO(path.read_text()))
  return [
      {k: _value(path, line, k, v) for k, v in row.items()}
      for line, row in enumerate(rows, start=2)
  ]


def table(rows: list[dict]) -> str:
  """The rows as the console's table (one line per round)."""
  # The headline metric: VOC07's mAP where there is one, else accuracy.
  key, name = (
      ('test_mAP', 'test mAP')
      if 'test_mAP' in rows[-1]
      else ('test_accuracy', 'test acc')
  )
  lines = [
      f"{'round':>5} {'left %':>8} {'weights':>10} {name:>9} "
      f"{'test loss':>9} {'time s':>7}"
  ]
  for r in rows:
    lines.append(
        f"{r['round']:>5d} {100 * r['fraction_left']:>8.3f} "
        f"{r['remaining']:>10d} {r[key]:>9.4f} "
        f"{r['test_loss']:>9.4f} {r['seconds']:>7.1f}"
    )
  return '\n'.join(lines)
