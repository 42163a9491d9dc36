"""Fig. 7: winning tickets against the rewind point.

  python -m sslprune_jax.reproduce --figure=7 --workdir=/tmp/repro

IMP with labels under the reproduction's regime, rewinding each round to
the weights after `REWINDS` samples: 0 (the initialisation), a quarter of
an epoch, one epoch (the regime's choice, Fig. 3's run) and four epochs
(a quarter of the training). The paper's Fig. 7 compares rewind points
that keep one criterion (epochs, samples, updates or share of training)
fixed between ImageNet and a tenth of it; on one training set these
criteria coincide, so this sweeps the rewind point itself.

Wall time on 2 cores: about 69 minutes (summed from its runs' per-round
times, the machine shared with other work), 15 of them the labels run it
shares with Fig. 3.
"""

from __future__ import annotations

import sys

from sslprune_jax.reproduce import driver
from sslprune_jax.reproduce import settings
from sslprune_jax.reproduce import verdicts as v

NUMBER = 7
METRIC = 'test_accuracy'
TITLE = 'Fig. 7: label winning tickets by rewind point'
# Every curve `runs` makes.
CURVES = ()


def _rewinds() -> tuple[int, ...]:
  n = settings.REWIND_SAMPLES
  return (0, n // 4, n, 4 * n)


def _name(samples: int) -> str:
  return f'rewind {samples} samples'


def runs(workdir: str, seeds: int, **regime) -> dict[str, driver.Run]:
  out = {}
  for samples in _rewinds():
    extra = (
        {}
        if samples == settings.REWIND_SAMPLES
        else dict(
            tag=f'rewind{samples}',
            overrides={'pruning.rewind_samples': samples},
        )
    )
    out[_name(samples)] = driver.prune(
        workdir, 'labels', seeds, **extra, **regime
    )
  return out


def findings(curves: dict[str, v.Curve]) -> list[v.Verdict]:
  """Late rewinding (Frankle et al., which the paper follows) and how much
  the rewind point matters once it is past the initialisation."""
  zero, quarter, one, four = (_name(s) for s in _rewinds())
  return [
      v.better(
          'Rewinding early in training beats rewinding to the '
          'initialisation',
          curves,
          one,
          zero,
      ),
      v.similar(
          'Past the initialisation, the rewind point changes little',
          curves,
          quarter,
          one,
      ),
      v.similar(
          'Past the initialisation, the rewind point changes little',
          curves,
          four,
          one,
      ),
  ]


def make(
    workdir: str, out_dir: str, seeds: int = 3, **regime
) -> dict[str, str]:
  """Runs (or resumes) the figure and writes its report under `out_dir`."""
  return driver.make(sys.modules[__name__], workdir, out_dir, seeds, regime)
