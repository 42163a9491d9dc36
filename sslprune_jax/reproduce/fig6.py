"""Fig. 6: natural sparsity, and the random baseline's adjustment for it.

  python -m sslprune_jax.reproduce --figure=6 --workdir=/tmp/repro

The natural sparsity of each objective's dense trained network (round 0 of
its IMP run: the share of prunable weights with |w| under
`pruning.natural_threshold`, 1e-3), and the paper's random baseline
re-trained on labels with and without its adjustment (section 4.3): the
adjusted masks remove the weights that converged near zero first, the
unadjusted ones draw every removed weight at random (the same baseline
with a threshold of 0). Shares the labels, RotNet and Exemplar IMP runs
and the adjusted baseline with Fig. 3 and NPID's run with Fig. 1.

Wall time on 2 cores: 53 minutes for its own runs (NPID's IMP, 29, and
the unadjusted baseline, 21, summed from their per-round times); the runs
it shares with Fig. 3 (labels, RotNet and Exemplar IMP, the adjusted
baseline) add about 2 hours when it runs alone.
"""

from __future__ import annotations

import sys

from etils import epath
import numpy as np

from sslprune_jax.evaluation import natural_sparsity
from sslprune_jax.reproduce import driver
from sslprune_jax.reproduce import verdicts as v

NUMBER = 6
METRIC = 'test_accuracy'
TITLE = 'Fig. 6: natural sparsity and the adjusted random baseline'
OBJECTIVES = ('labels', 'rotnet', 'exemplar', 'npid')
CURVES = ('random, adjusted', 'random, unadjusted')
# The paper calls the natural sparsity of its CIFAR-10 networks "a large
# proportion"; read here as at least 10% of the prunable weights.
LARGE = 0.10


def runs(workdir: str, seeds: int, **regime) -> dict[str, driver.Run]:
  prune = {o: driver.prune(workdir, o, seeds, **regime) for o in OBJECTIVES}
  out = {f'prune {o}': r for o, r in prune.items()}
  out['random, adjusted'] = driver.retrain(
      workdir, prune['labels'], 'reinit', 'random_global_natural'
  )
  out['random, unadjusted'] = driver.retrain(
      workdir,
      prune['labels'],
      'reinit',
      'random_global_natural',
      tag='unadjusted',
      overrides={'pruning.natural_threshold': 0.0},
  )
  return out


def sparsity(run: driver.Run) -> dict[int, float]:
  """Seed -> natural sparsity of its dense trained network."""
  out = {}
  for i, directory in enumerate(driver.seed_dirs(run)):
    out[run.config.seed + i] = natural_sparsity.of_run(directory, rounds=[0])[
        0
    ]['fraction']
  return out


def sparsity_table(values: dict[str, dict[int, float]]) -> str:
  lines = ['| objective | natural sparsity of the dense network |', '|---|---|']
  for objective, by_seed in values.items():
    x = np.array(list(by_seed.values()))
    sem = x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else float('nan')
    lines.append(
        f'| {objective} | {100 * x.mean():.3f}% ± ' f'{100 * sem:.3f}% |'
    )
  return '\n'.join(lines) + '\n'


def findings(
    values: dict[str, dict[int, float]], curves: dict[str, v.Curve]
) -> list[v.Verdict]:
  out = [
      v.at_least(
          'A large share of the weights converges to zero',
          values['labels'],
          LARGE,
          'natural sparsity, labels',
      )
  ]
  out.append(
      v.better(
          'Random pruning that removes non-zero weights first does worse (the '
          'adjustment matters)',
          curves,
          'random, adjusted',
          'random, unadjusted',
      )
  )
  return out


def make(
    workdir: str, out_dir: str, seeds: int = 3, **regime
) -> dict[str, str]:
  """Runs (or resumes) the figure and writes its report under `out_dir`,
  the natural sparsity table first."""
  figure = sys.modules[__name__]
  all_runs, wall = driver.run_all(figure, workdir, seeds, regime)
  values = {o: sparsity(all_runs[f'prune {o}']) for o in OBJECTIVES}
  loaded = {c: driver.load(all_runs[c]) for c in CURVES}
  found = findings(values, {c: driver.curve(loaded[c], METRIC) for c in CURVES})
  table = sparsity_table(values)
  epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
  (epath.Path(out_dir) / 'natural_sparsity.md').write_text(table)
  return driver.report(
      figure, out_dir, seeds, regime, wall, loaded, found, preface=table + '\n'
  )
