"""Whether a finding of the paper holds in a reproduction's numbers.

Every finding is one of three claims about two curves A and B (a metric
against the fraction of weights left, one run per seed), read over chosen
levels of pruning:

  better     A is above B;
  similar    A and B are within `MARGIN` of each other;
  gap_grows  A - B is larger at severe levels than at moderate ones.

Seeds pair the curves (seed s of a re-training curve re-trains seed s's
masks), so the statistic is the per-seed difference, averaged over the
levels, then its mean over seeds, its standard error and a two-sided 95%
Student-t interval. The verdict is

  better:    holds if the interval lies above 0; does not hold if it lies
             below MARGIN (no gain worth a point is possible);
  similar:   holds if it lies within (-MARGIN, MARGIN); does not hold if it
             lies wholly outside it;
  gap_grows: `better` of (severe difference - moderate difference) vs 0;
  gap_wider: `better` of (difference of one pair of curves - difference
             of another pair) vs 0;
  at_least:  a per-seed quantity (not a difference) is at least a stated
             level: holds if the interval lies above it, does not hold if
             it lies below;

and inconclusive otherwise, always with a single seed. MARGIN is one
point of accuracy, fixed before any figure was run, for every figure.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

HOLDS = 'holds'
FAILS = 'does not hold'
INCONCLUSIVE = 'inconclusive'
# A difference of metric smaller than this (one point) is no difference.
MARGIN = 0.01
# Levels by fraction of weights left: the paper reads its figures mostly in
# the severe regime, where "very few weights remain".
SEVERE = 0.02
MODERATE = (0.05, 1.0)

# A curve: seed -> fraction of weights left -> metric.
Curve = dict[int, dict[float, float]]
Levels = Callable[[float], bool]


def pruned(fraction: float) -> bool:
  return fraction < 1.0


def severe(fraction: float) -> bool:
  return fraction <= SEVERE


def moderate(fraction: float) -> bool:
  return MODERATE[0] < fraction < MODERATE[1]


@dataclasses.dataclass(frozen=True)
class Estimate:
  """Mean over seeds of a per-seed difference, with its uncertainty."""

  mean: float
  sem: float
  low: float
  high: float
  n: int


@dataclasses.dataclass(frozen=True)
class Verdict:
  finding: str
  claim: str
  a: str
  b: str
  estimate: Estimate
  verdict: str


def estimate(differences: Sequence[float]) -> Estimate:
  """Mean, standard error and 95% t interval of per-seed differences."""
  d = np.asarray(differences, dtype=float)
  n = len(d)
  if n == 0:  # Neither curve has reached these levels yet.
    return Estimate(math.nan, math.nan, -math.inf, math.inf, 0)
  if n == 1:
    return Estimate(float(d[0]), math.nan, -math.inf, math.inf, 1)
  sem = float(d.std(ddof=1) / math.sqrt(n))
  half = float(stats.t.ppf(0.975, n - 1)) * sem
  return Estimate(
      float(d.mean()), sem, float(d.mean()) - half, float(d.mean()) + half, n
  )


def _common_levels(
    a: dict[float, float], b: dict[float, float], levels: Levels
) -> list[float]:
  return sorted(f for f in set(a) & set(b) if levels(f))


def differences(a: Curve, b: Curve, levels: Levels) -> dict[int, float]:
  """Seed -> the mean of A - B over the levels both curves have for it;
  seeds without such a level are left out."""
  out = {}
  for seed in sorted(set(a) & set(b)):
    common = _common_levels(a[seed], b[seed], levels)
    if common:
      out[seed] = float(np.mean([a[seed][f] - b[seed][f] for f in common]))
  return out


def _better(e: Estimate) -> str:
  if e.n > 1 and e.low > 0:
    return HOLDS
  if e.n > 1 and e.high < MARGIN:
    return FAILS
  return INCONCLUSIVE


def _similar(e: Estimate) -> str:
  if e.n > 1 and -MARGIN < e.low and e.high < MARGIN:
    return HOLDS
  if e.n > 1 and (e.low >= MARGIN or e.high <= -MARGIN):
    return FAILS
  return INCONCLUSIVE


def better(
    finding: str,
    curves: dict[str, Curve],
    a: str,
    b: str,
    levels: Levels = pruned,
) -> Verdict:
  """A above B at the levels."""
  e = estimate(list(differences(curves[a], curves[b], levels).values()))
  return Verdict(finding, 'better', a, b, e, _better(e))


def similar(
    finding: str,
    curves: dict[str, Curve],
    a: str,
    b: str,
    levels: Levels = pruned,
) -> Verdict:
  """A within MARGIN of B at the levels."""
  e = estimate(list(differences(curves[a], curves[b], levels).values()))
  return Verdict(finding, 'similar', a, b, e, _similar(e))


def gap_grows(
    finding: str,
    curves: dict[str, Curve],
    a: str,
    b: str,
    high: Levels = severe,
    low: Levels = moderate,
) -> Verdict:
  """A - B larger at the `high` levels (severe pruning) than at `low`."""
  at_high = differences(curves[a], curves[b], high)
  at_low = differences(curves[a], curves[b], low)
  e = estimate([at_high[s] - at_low[s] for s in at_high if s in at_low])
  return Verdict(finding, 'gap_grows', a, b, e, _better(e))


def gap_wider(
    finding: str,
    curves: dict[str, Curve],
    wide: tuple[str, str],
    narrow: tuple[str, str],
    levels: Levels = pruned,
) -> Verdict:
  """wide[0] - wide[1] larger than narrow[0] - narrow[1] at the levels."""
  d_wide = differences(curves[wide[0]], curves[wide[1]], levels)
  d_narrow = differences(curves[narrow[0]], curves[narrow[1]], levels)
  e = estimate([d_wide[s] - d_narrow[s] for s in d_wide if s in d_narrow])
  return Verdict(
      finding,
      'gap_wider',
      f'{wide[0]} - {wide[1]}',
      f'{narrow[0]} - {narrow[1]}',
      e,
      _better(e),
  )


def at_least(
    finding: str, values: dict[int, float], level: float, what: str
) -> Verdict:
  """A per-seed quantity `what` (seed -> value) is at least `level`."""
  e = estimate([x - level for x in values.values()])
  verdict = (
      HOLDS
      if e.n > 1 and e.low >= 0
      else FAILS
      if e.n > 1 and e.high < 0
      else INCONCLUSIVE
  )
  return Verdict(finding, 'at_least', what, f'{100 * level:g}%', e, verdict)


def _points(x: float) -> str:
  return f'{100 * x:+.2f}'


def table(verdicts: Sequence[Verdict]) -> str:
  """A markdown table: finding, comparison, difference in points (mean ±
  s.e. [95% interval], seeds) and verdict."""
  lines = [
      '| finding | comparison | A - B, points | verdict |',
      '|---|---|---|---|',
  ]
  what = {
      'better': '{a} > {b}',
      'similar': '{a} ≈ {b}',
      'gap_grows': '{a} - {b}: severe > moderate',
      'gap_wider': '({a}) > ({b})',
      'at_least': '{a} - {b}',
  }
  for v in verdicts:
    e = v.estimate
    if e.n > 1:
      diff = (
          f'{_points(e.mean)} ± {100 * e.sem:.2f} '
          f'[{_points(e.low)}, {_points(e.high)}], {e.n} seeds'
      )
    elif e.n == 1:
      diff = f'{_points(e.mean)}, 1 seed'
    else:
      diff = 'no levels in common'
    lines.append(
        f'| {v.finding} | {what[v.claim].format(a=v.a, b=v.b)} '
        f'| {diff} | **{v.verdict}** |'
    )
  return '\n'.join(lines) + '\n'
