"""Masks as pytrees, and the transforms applied between pruning rounds.

A mask has the structure of `params`: one boolean array per leaf, `True` where
the weight is kept. Leaves that may never be pruned (biases, batch-norm
parameters, the final classifier) keep an all-`True` mask, so that
`apply_mask(params, mask)` is one uniform tree-map. Which leaves are prunable
is a pytree of Python bools, `prunable`, computed once from the parameter
names (`prunable_tree`).

Every function here is pure: it takes arrays and returns new ones. None of
them knows how the network is trained.
"""

from __future__ import annotations

import fractions
import math
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Path = tuple[str, ...]

METHODS = ('magnitude', 'random', 'random_natural', 'random_like')


def _key_name(key) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_tuple(path) -> Path:
  """Turns a `jax.tree_util` key path into a tuple of plain strings."""
  return tuple(_key_name(k) for k in path)


def path_name(path: Path) -> str:
  """'/'-joined parameter name, e.g. 'ResNetBlock_0/Conv_1/kernel'."""
  return '/'.join(path)


def prunable_tree(params: PyTree,
                  exclude: Sequence[str] = ('classifier',),
                  min_ndim: int = 2) -> PyTree:
  """Marks the leaves that magnitude pruning may remove weights from.

  Args:
    params: the network's parameters.
    exclude: regular expressions; a leaf whose '/'-joined name matches any of
      them (`re.search`) is never pruned. The default keeps the final
      classifier dense.
    min_ndim: leaves with fewer dimensions are never pruned. The default of 2
      keeps biases and batch-norm scales and offsets, which are vectors, and
      prunes conv and dense kernels.

  Returns:
    A pytree with the structure of `params` whose leaves are Python bools.
  """
  patterns = [re.compile(p) for p in exclude]

  def is_prunable(path, leaf):
    name = path_name(path_tuple(path))
    return (np.ndim(leaf) >= min_ndim
            and not any(p.search(name) for p in patterns))

  prunable = jax.tree_util.tree_map_with_path(is_prunable, params)
  if not any(jax.tree.leaves(prunable)):
    raise ValueError(
        'No parameter is prunable: every leaf is excluded by '
        f'exclude={tuple(exclude)} or has fewer than {min_ndim} dimensions.')
  return prunable


def restrict_to_layers(prunable: PyTree, layers: Sequence[Path]) -> PyTree:
  """Keeps only the given leaves prunable (layerwise pruning).

  Args:
    prunable: pytree of bools from `prunable_tree`.
    layers: parameter paths (tuples of names) that stay prunable, e.g. the
      first k entries of `models.kernel_order`.

  Returns:
    A pytree of bools, True only where `prunable` was and the path is listed.
  """
  wanted = set(tuple(p) for p in layers)
  known = {path_tuple(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(prunable)[0]}
  missing = wanted - known
  if missing:
    raise ValueError(f'Unknown parameter paths: {sorted(missing)}')
  return jax.tree_util.tree_map_with_path(
      lambda p, ok: bool(ok) and path_tuple(p) in wanted, prunable)


def init_mask(params: PyTree) -> PyTree:
  """A mask keeping every weight."""
  return jax.tree.map(lambda p: jnp.ones(jnp.shape(p), dtype=jnp.bool_),
                      params)


def apply_mask(params: PyTree, mask: PyTree) -> PyTree:
  """`params * mask`, leaf by leaf; pruned weights become exactly zero."""
  return jax.tree.map(lambda p, m: p * m.astype(p.dtype), params, mask)


def count(mask: PyTree, prunable: PyTree) -> tuple[int, int]:
  """Kept and total weights over the prunable leaves.

  Returns:
    (remaining, total) as Python ints.
  """
  remaining = total = 0
  for m, ok in zip(jax.tree.leaves(mask), jax.tree.leaves(prunable)):
    if ok:
      remaining += int(jnp.sum(m))
      total += int(np.size(m))
  return remaining, total


def num_to_prune(fraction: float, remaining: int) -> int:
  """ceil(fraction * remaining), computed exactly.

  The fraction is read as the decimal the user wrote (0.2 is 1/5), so that
  e.g. 0.2 of 15 weights is 3, not the 4 that `ceil(0.2 * 15)` gives in
  floating point (0.2 * 15 == 3.0000000000000004).

  Args:
    fraction: share of the remaining weights to remove, in (0, 1).
    remaining: number of weights still kept.

  Returns:
    The number of weights to remove.
  """
  if not 0.0 < fraction < 1.0:
    raise ValueError(f'The pruning fraction must be in (0, 1), got {fraction}.')
  return math.ceil(fractions.Fraction(repr(float(fraction))) * remaining)


@jax.jit
def _keep_above_rank(scores: jax.Array, num_pruned: jax.Array) -> jax.Array:
  """Boolean keep-vector removing the `num_pruned` lowest scores.

  Ties at the threshold are broken by position (earlier entries go first), so
  exactly `num_pruned` entries are removed whatever the values.
  """
  threshold = jnp.sort(scores)[jnp.maximum(num_pruned - 1, 0)]
  below = scores < threshold
  tied = scores == threshold
  still_needed = num_pruned - jnp.sum(below)
  pruned = below | (tied & (jnp.cumsum(tied) <= still_needed))
  return jnp.where(num_pruned > 0, ~pruned, True)


def prune_by_score(scores: PyTree, mask: PyTree, prunable: PyTree,
                   fraction: float) -> PyTree:
  """Removes the lowest-scoring kept weights, over all prunable leaves at once.

  This is the shared core of every global pruning method: magnitude pruning
  scores a weight by |w|, random pruning by a uniform draw.

  Args:
    scores: pytree like `params` of float scores (only prunable leaves used).
    mask: the current mask.
    prunable: pytree of bools saying which leaves may be pruned.
    fraction: share of the still-kept prunable weights to remove, in (0, 1);
      `ceil(fraction * remaining)` of them are removed.

  Returns:
    The new mask. Already-pruned weights stay pruned; exactly
    `num_to_prune(fraction, remaining)` more are pruned.
  """
  remaining, total = count(mask, prunable)
  target = (total - remaining) + num_to_prune(fraction, remaining)
  leaves, treedef = jax.tree.flatten(mask)
  flags = jax.tree.leaves(prunable)
  score_leaves = treedef.flatten_up_to(scores)
  # Weights already pruned score -inf so that they are counted first in the
  # rank and stay pruned.
  flat = [jnp.where(m, s.astype(jnp.float32), -jnp.inf).ravel()
          for m, s, ok in zip(leaves, score_leaves, flags) if ok]
  keep = _keep_above_rank(jnp.concatenate(flat), jnp.asarray(target))
  new_leaves, offset = [], 0
  for m, ok in zip(leaves, flags):
    if ok:
      new_leaves.append(keep[offset:offset + m.size].reshape(m.shape))
      offset += m.size
    else:
      new_leaves.append(m)
  return jax.tree.unflatten(treedef, new_leaves)


def magnitude_prune(params: PyTree, mask: PyTree, prunable: PyTree,
                    fraction: float) -> PyTree:
  """Global magnitude pruning (Han et al.): removes the smallest |w|.

  The threshold is computed over all prunable tensors together, so layers
  lose different shares of their weights. For layerwise pruning pass a
  `prunable` restricted with `restrict_to_layers`.
  """
  return prune_by_score(jax.tree.map(jnp.abs, params), mask, prunable,
                        fraction)


def _uniform_scores(rng: jax.Array, tree: PyTree) -> PyTree:
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(rng, len(leaves))
  return jax.tree.unflatten(
      treedef, [jax.random.uniform(k, jnp.shape(x)) for k, x in
                zip(keys, leaves)])


def random_prune(rng: jax.Array, mask: PyTree, prunable: PyTree,
                 fraction: float) -> PyTree:
  """Global random pruning: removes kept weights uniformly at random."""
  return prune_by_score(_uniform_scores(rng, mask), mask, prunable, fraction)


def random_natural_prune(rng: jax.Array, params: PyTree, mask: PyTree,
                         prunable: PyTree, fraction: float,
                         threshold: float) -> PyTree:
  """Random pruning adjusted for natural sparsity.

  Weights whose magnitude converged below `threshold` are removed first
  (smallest first); the rest of the `ceil(fraction * remaining)` weights to
  remove are drawn uniformly at random among the others.

  Args:
    rng: PRNG key of the random draw.
    params: trained parameters.
    mask: current mask.
    prunable: pytree of bools.
    fraction: share of the kept prunable weights to remove.
    threshold: magnitude under which a weight counts as naturally zero.

  Returns:
    The new mask.
  """
  if threshold < 0:
    raise ValueError(f'threshold must be >= 0, got {threshold}.')
  uniform = _uniform_scores(rng, params)

  def score(p, u):
    # Near-zero weights score in [-1, 0), below every random score in [0, 1).
    a = jnp.abs(p).astype(jnp.float32)
    return jnp.where(a < threshold, a / max(threshold, 1e-30) - 1.0, u)

  return prune_by_score(jax.tree.map(score, params, uniform), mask, prunable,
                        fraction)


def random_prune_like(rng: jax.Array, reference_mask: PyTree,
                      prunable: PyTree, params: PyTree | None = None,
                      threshold: float = 0.0) -> PyTree:
  """A random mask with the per-layer sparsity of `reference_mask`.

  Each prunable leaf keeps exactly as many weights as the reference keeps in
  that leaf, chosen uniformly at random among all of the leaf's weights.
  Given trained `params` and a `threshold`, the draw is adjusted for natural
  sparsity: in each leaf the weights with |w| < threshold are removed first
  (smallest first), and only the rest of the leaf's quota is random.
  """
  if threshold < 0:
    raise ValueError(f'threshold must be >= 0, got {threshold}.')
  leaves, treedef = jax.tree.flatten(reference_mask)
  flags = jax.tree.leaves(prunable)
  weights = (jax.tree.leaves(params) if params is not None
             else [None] * len(leaves))
  keys = jax.random.split(rng, len(leaves))
  new_leaves = []
  for k, m, ok, p in zip(keys, leaves, flags, weights):
    if not ok:
      new_leaves.append(m)
      continue
    num_pruned = m.size - jnp.sum(m)
    scores = jax.random.uniform(k, (m.size,))
    if p is not None and threshold > 0:
      a = jnp.abs(p).astype(jnp.float32).reshape(-1)
      # Near-zero weights score in [-1, 0), below every random score.
      scores = jnp.where(a < threshold, a / threshold - 1.0, scores)
    keep = _keep_above_rank(scores, num_pruned)
    new_leaves.append(keep.reshape(m.shape))
  return jax.tree.unflatten(treedef, new_leaves)


def rewind(saved_params: PyTree, mask: PyTree) -> PyTree:
  """Late rewinding: the weights saved at the rewind point, under `mask`."""
  return apply_mask(saved_params, mask)


def reinit(init_fn: Callable[[jax.Array], PyTree], rng: jax.Array,
           mask: PyTree) -> PyTree:
  """Random re-initialisation: fresh weights from `init_fn(rng)`, masked."""
  return apply_mask(init_fn(rng), mask)


def sparsity_report(mask: PyTree, prunable: PyTree) -> dict:
  """Per-layer and global counts of kept weights.

  Returns:
    {'layers': [{'name', 'remaining', 'total', 'fraction_left'}, ...],
     'remaining', 'total', 'fraction_left'} over the prunable leaves, layers
    in tree order.
  """
  layers = []
  flat_mask = jax.tree_util.tree_flatten_with_path(mask)[0]
  for (path, m), ok in zip(flat_mask, jax.tree.leaves(prunable)):
    if ok:
      kept = int(jnp.sum(m))
      layers.append({'name': path_name(path_tuple(path)), 'remaining': kept,
                     'total': int(m.size), 'fraction_left': kept / m.size})
  remaining = sum(l['remaining'] for l in layers)
  total = sum(l['total'] for l in layers)
  return {'layers': layers, 'remaining': remaining, 'total': total,
          'fraction_left': remaining / total}


def format_report(report: dict) -> str:
  """The sparsity report as an aligned text table."""
  width = max([len(l['name']) for l in report['layers']] + [6])
  lines = [f"{'layer':<{width}} {'kept':>10} {'total':>10} {'left':>8}"]
  for l in report['layers'] + [dict(report, name='global')]:
    lines.append(f"{l['name']:<{width}} {l['remaining']:>10d} "
                 f"{l['total']:>10d} {100 * l['fraction_left']:>7.2f}%")
  return '\n'.join(lines)


def natural_sparsity(params: PyTree, prunable: PyTree, threshold: float,
                     mask: PyTree | None = None) -> dict:
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
  mask = init_mask(params) if mask is None else mask
  layers = []
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, p), m, ok in zip(flat, jax.tree.leaves(mask),
                              jax.tree.leaves(prunable)):
    if ok:
      small = int(jnp.sum((jnp.abs(p) < threshold) & m))
      kept = int(jnp.sum(m))
      layers.append({'name': path_name(path_tuple(path)), 'near_zero': small,
                     'total': kept, 'fraction': small / kept if kept else 0.0})
  near_zero = sum(l['near_zero'] for l in layers)
  total = sum(l['total'] for l in layers)
  return {'layers': layers, 'near_zero': near_zero, 'total': total,
          'fraction': near_zero / total if total else 0.0}
