"""Fig. 1: linear probes of pruned self-supervised trunks.

  python -m sslprune_jax.reproduce --figure=1 --workdir=/tmp/repro

IMP with RotNet, Exemplar and NPID (and labels, for reference) under the
reproduction's regime; then for every round of every seed, the round's
trained trunk is frozen and a linear classifier on its pooled features is
trained on the regime's labelled training images and tested on its test
images (`configs/linear_eval.py:quick`: cached features, 10 epochs of SGD
with a cosine rate). Fashion-MNIST stands in for the paper's VOC07,
Places and ImageNet probes. Shares its IMP runs with Figs. 3 and 6.

Wall time on 2 cores: 8 minutes for the 108 probes; the four IMP runs it
probes (labels 15, RotNet about 66, Exemplar 25, NPID 29 minutes, shared
with Figs. 3 and 6) add about 2¼ hours when it runs alone.
"""

from __future__ import annotations

import sys

from etils import epath

from sslprune_jax import config_lib
from sslprune_jax.reproduce import driver
from sslprune_jax.reproduce import settings
from sslprune_jax.reproduce import verdicts as v

NUMBER = 1
METRIC = 'test_accuracy'
TITLE = 'Fig. 1: linear probes of pruned trunks'
SSL = ('rotnet', 'exemplar', 'npid')
OBJECTIVES = (*SSL, 'labels')
CURVES = OBJECTIVES


def probe(workdir: str, source: driver.Run, seed: int) -> driver.Run:
  """The linear probes of one seed of `source`, round by round."""
  config = settings.apply(config_lib.load('linear_eval', 'quick'), seeds=1)
  config.seed = seed
  config.source.workdir = driver.seed_dirs(source)[seed - source.config.seed]
  name = epath.Path(source.directory).name
  return driver.Run(
      f'probe {name}, seed {seed}',
      config,
      str(epath.Path(workdir) / 'linear' / f'{name}_seed{seed}'),
  )


def runs(workdir: str, seeds: int, **regime) -> dict:
  """Curve name -> its runs (the IMP run, then one probe run per seed)."""
  out = {}
  for objective in OBJECTIVES:
    source = driver.prune(workdir, objective, seeds, **regime)
    out[f'prune {objective}'] = source
    out[objective] = [probe(workdir, source, s) for s in range(seeds)]
  return out


def dense(curve: v.Curve) -> v.Curve:
  """Each seed's dense (100%) value at every level of its curve."""
  return {s: {f: c[1.0] for f in c} for s, c in curve.items() if 1.0 in c}


def findings(curves: dict[str, v.Curve]) -> list[v.Verdict]:
  """The paper's findings of Fig. 1 (section 4.1)."""
  curves = {**curves, **{f'{o} dense': dense(curves[o]) for o in OBJECTIVES}}
  out = []
  for o in SSL:
    out.append(
        v.similar(
            "Moderate pruning (5-50% left) keeps the features' quality",
            curves,
            o,
            f'{o} dense',
            v.moderate,
        )
    )
  for o in ('rotnet', 'exemplar'):
    out.append(
        v.better(
            'RotNet and Exemplar: moderate pruning even improves the features '
            'slightly',
            curves,
            o,
            f'{o} dense',
            v.moderate,
        )
    )
  for o in SSL:
    out.append(
        v.better(
            'Severely pruned (2% or less left), the features lose quality',
            curves,
            f'{o} dense',
            o,
            v.severe,
        )
    )
  return out


def make(
    workdir: str, out_dir: str, seeds: int = 3, **regime
) -> dict[str, str]:
  """Runs (or resumes) the figure and writes its report under `out_dir`."""
  return driver.make(sys.modules[__name__], workdir, out_dir, seeds, regime)
