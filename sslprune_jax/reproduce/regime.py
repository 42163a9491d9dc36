"""The small-scale reproduction's training regime, chosen once for every
objective from learning curves of the dense networks.

  python -m sslprune_jax.reproduce --figure=regime --workdir=/tmp/repro \
      --train_images=2000 --epochs=4,8,16,32

Each round of a reproduction should train its network until the dense
network's test metric has plateaued. This trains the dense network of each
objective (round 0 only: `pruning.num_rounds=0`) for each number
of epochs in `--epochs`, from the same `:quick` config family, on the
same `--train_images` Fashion-MNIST training images and 5,000 test
images, and reports the round's test metric (each task's own: class
accuracy for labels, rotation accuracy for RotNet, exemplar retrieval for
Exemplar, kNN class accuracy for NPID) and its gain per doubling of the
epochs. The regime is the fewest epochs after which doubling them adds
under 0.3 points for every objective. Runs resume; the table goes to
`<workdir>/regime/` (`regime.csv`, `regime.md`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from etils import epath
import ml_collections

from sslprune_jax import config_lib
from sslprune_jax import report
from sslprune_jax import runner
from sslprune_jax.reproduce import settings

# A plateau: doubling the epochs adds less than this to the test metric.
PLATEAU_GAIN = 0.003


def dense_config(
    objective: str, epochs: float, train_images: int, seed: int = 0
) -> ml_collections.ConfigDict:
  """The dense network of `objective`'s `:quick` config, trained once for
  `epochs` on the first `train_images` training images."""
  config = config_lib.load(objective, 'quick')
  config.data.train_split = f'train[:{train_images}]'
  config.data.eval_split = 'test[:5000]'
  config.train.num_epochs = float(epochs)
  config.pruning.num_rounds = 0
  config.checkpoint_every_steps = 0
  config.seed = seed
  settings.small_bank(config)
  return config


def run_dir(workdir: str, objective: str, epochs: float) -> str:
  return str(epath.Path(workdir) / 'regime' / f'{objective}_epochs{epochs:g}')


def learning_curves(
    workdir: str,
    objectives: Sequence[str] = settings.CURVE_OBJECTIVES,
    epochs: Sequence[float] = settings.CURVE_EPOCHS,
    train_images: int = 6000,
    seed: int = 0,
) -> dict[str, dict[float, float]]:
  """Runs (or resumes) every dense run; objective -> epochs -> test
  metric of round 0."""
  curves: dict[str, dict[float, float]] = {}
  for objective in objectives:
    for e in epochs:
      directory = run_dir(workdir, objective, e)
      print(f'\n== {objective}, {e:g} epochs: {directory}', flush=True)
      runner.run(dense_config(objective, e, train_images, seed), directory)
      row = report.load_run(directory).rows[0]
      curves.setdefault(objective, {})[e] = float(row['test_accuracy'])
  return curves


def plateau(
    curve: dict[float, float], gain: float = PLATEAU_GAIN
) -> float | None:
  """The fewest epochs after which the next (doubled) count adds less than
  `gain`; None if every step adds more."""
  epochs = sorted(curve)
  for e, more in zip(epochs, epochs[1:]):
    if curve[more] - curve[e] < gain:
      return e
  return None


def choose(
    curves: dict[str, dict[float, float]], gain: float = PLATEAU_GAIN
) -> float | None:
  """The regime's epochs: the largest objective's plateau (None if one has
  not plateaued within the curve)."""
  points = [plateau(c, gain) for c in curves.values()]
  return None if any(p is None for p in points) else max(points)


def table(curves: dict[str, dict[float, float]]) -> str:
  """A markdown table: test metric per objective and epochs, with the gain
  over the previous count."""
  epochs = sorted({e for c in curves.values() for e in c})
  lines = [
      '| epochs | ' + ' | '.join(curves) + ' |',
      '|---|' + '---|' * len(curves),
  ]
  for i, e in enumerate(epochs):
    cells = []
    for curve in curves.values():
      if e not in curve:
        cells.append('')
        continue
      cell = f'{curve[e]:.4f}'
      if i and epochs[i - 1] in curve:
        cell += f' ({100 * (curve[e] - curve[epochs[i - 1]]):+.2f})'
      cells.append(cell)
    lines.append(f'| {e:g} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def write(curves: dict[str, dict[float, float]], out_dir: str) -> dict:
  """Writes regime.csv and regime.md under `out_dir`; returns their paths."""
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  buf = io.StringIO()
  writer = csv.writer(buf)
  writer.writerow(['objective', 'epochs', 'test_accuracy'])
  for objective, curve in curves.items():
    for e, acc in sorted(curve.items()):
      writer.writerow([objective, f'{e:g}', f'{acc:.4f}'])
  (out / 'regime.csv').write_text(buf.getvalue())
  chosen = choose(curves)
  verdict = (
      f'Chosen: {chosen:g} epochs per round (the first count after '
      f'which doubling adds under {100 * PLATEAU_GAIN:.1f} points, '
      'for every objective).'
      if chosen is not None
      else 'No objective-wide plateau within these epochs.'
  )
  (out / 'regime.md').write_text(
      'Test metric of the dense network after round 0 (in brackets: points '
      'gained over the previous count).\n\n'
      + table(curves)
      + '\n\n'
      + verdict
      + '\n'
  )
  return {'csv': str(out / 'regime.csv'), 'md': str(out / 'regime.md')}
