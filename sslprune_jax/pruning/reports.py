"""What a mask leaves: sparsity per layer and overall, and natural sparsity
(the share of kept weights that converged to about zero)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from sslprune_jax.pruning import channels
from sslprune_jax.pruning import masks
from sslprune_jax.pruning import nm

PyTree = Any


def sparsity_report(
    mask: PyTree,
    prunable: PyTree,
    pattern: tuple[int, int] | None = None,
    channel_groups: Sequence[Mapping[str, Any]] = (),
) -> dict:
  """Per-layer and global counts of kept weights.

  Args:
    mask: the mask.
    prunable: pytree of bools.
    pattern: (n, m) of an N:M mask, to report how well it follows it.
    channel_groups: the groups of a channel-pruned network, to report its
      channels left (`channels.channel_report`) under 'channels'.

  Returns:
    {'layers': [{'name', 'remaining', 'total', 'fraction_left'}, ...],
     'remaining', 'total', 'fraction_left'} over the prunable leaves, layers
    in tree order; with `pattern`, also 'pattern' ('n:m') and
    'conformance' (the share of groups keeping at most n weights, over the
    leaves N:M prunes), and each of those layers its own 'conformance'.
  """
  flat_mask = masks.prunable_leaves(mask, prunable)
  layers = []
  for (name, m), kept in zip(
      flat_mask, masks.kept_counts([m for _, m in flat_mask])
  ):
    layers.append(
        {
            'name': name,
            'remaining': kept,
            'total': int(m.size),
            'fraction_left': kept / m.size,
        }
    )
  remaining = sum(l['remaining'] for l in layers)
  total = sum(l['total'] for l in layers)
  report = {
      'layers': layers,
      'remaining': remaining,
      'total': total,
      'fraction_left': remaining / total,
  }
  if pattern is not None:
    n, m = pattern
    shares = nm.conformance(mask, prunable, n, m)
    for layer in layers:
      if layer['name'] in shares:
        layer['conformance'] = shares[layer['name']]
    report.update(pattern=f'{n}:{m}', conformance=shares['all'])
  if channel_groups:
    report['channels'] = channels.channel_report(mask, channel_groups)
  return report


def format_report(report: dict) -> str:
  """The sparsity report as an aligned text table (with an n:m column,
  the share of conforming groups, for an N:M report)."""
  width = max([len(l['name']) for l in report['layers']] + [6])
  pattern = report.get('pattern')
  lines = [
      f"{'layer':<{width}} {'kept':>10} {'total':>10} {'left':>8}"
      + (f' {pattern:>8}' if pattern else '')
  ]
  for l in report['layers'] + [dict(report, name='global')]:
    share = l.get('conformance')
    lines.append(
        f"{l['name']:<{width}} {l['remaining']:>10d} "
        f"{l['total']:>10d} {100 * l['fraction_left']:>7.2f}%"
        + (
            (
                f' {100 * share:>7.2f}%'
                if share is not None
                else f" {'dense':>8}"
            )
            if pattern
            else ''
        )
    )
  return '\n'.join(lines)


def natural_sparsity(
    params: PyTree,
    prunable: PyTree,
    threshold: float,
    mask: PyTree | None = None,
) -> dict:
  """How many prunable weights a trained network has left near zero itself.

  Args:
    params: the trained weights.
    prunable: which leaves count (the final classifier, biases and batch
      norm are not prunable and so not counted).
    threshold: a weight with |w| < threshold counts as naturally zero.
    mask: if given, only the kept weights count (pruned ones are zero by
      construction, not naturally).

  Returns:
    {'layers': [{'name', 'near_zero', 'total', 'fraction'}, ...],
     'near_zero', 'total', 'fraction'}: per prunable leaf (tree order) and
    over all of them, `fraction` = near_zero / total.
  """
  if threshold < 0:
    raise ValueError(f'threshold must be >= 0, got {threshold}.')
  mask = masks.init_mask(params) if mask is None else mask
  layers = []
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, p), m, ok in zip(
      flat, jax.tree.leaves(mask), jax.tree.leaves(prunable)
  ):
    if ok:
      small = int(jnp.sum((jnp.abs(p) < threshold) & m))
      kept = int(jnp.sum(m))
      layers.append(
          {
              'name': masks.path_name(masks.path_tuple(path)),
              'near_zero': small,
              'total': kept,
              'fraction': small / kept if kept else 0.0,
          }
      )
  near_zero = sum(l['near_zero'] for l in layers)
  total = sum(l['total'] for l in layers)
  return {
      'layers': layers,
      'near_zero': near_zero,
      'total': total,
      'fraction': near_zero / total if total else 0.0,
  }
