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
import functools
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


def prunable_tree(
    params: PyTree, exclude: Sequence[str] = ('classifier',), min_ndim: int = 2
) -> PyTree:
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
    return np.ndim(leaf) >= min_ndim and not any(
        p.search(name) for p in patterns
    )

  prunable = jax.tree_util.tree_map_with_path(is_prunable, params)
  if not any(jax.tree.leaves(prunable)):
    raise ValueError(
        'No parameter is prunable: every leaf is excluded by '
        f'exclude={tuple(exclude)} or has fewer than {min_ndim} dimensions.'
    )
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
  known = {
      path_tuple(p)
      for p, _ in jax.tree_util.tree_flatten_with_path(prunable)[0]
  }
  missing = wanted - known
  if missing:
    raise ValueError(f'Unknown parameter paths: {sorted(missing)}')
  return jax.tree_util.tree_map_with_path(
      lambda p, ok: bool(ok) and path_tuple(p) in wanted, prunable
  )


def init_mask(params: PyTree) -> PyTree:
  """A mask keeping every weight."""
  # Built on the host and transferred: `jnp.ones` would compile a program
  # per leaf shape.
  return jax.tree.map(
      lambda p: jnp.asarray(np.ones(jnp.shape(p), dtype=np.bool_)), params
  )


def apply_mask(params: PyTree, mask: PyTree) -> PyTree:
  """`params * mask`, leaf by leaf; pruned weights become exactly zero."""
  return jax.tree.map(lambda p, m: p * m.astype(p.dtype), params, mask)


def _kept_counts(leaves: Sequence[Any]) -> list[int]:
  """The number of True entries of each boolean mask leaf, as Python ints.

  Leaves readable from this host are counted there (no program to compile
  per leaf shape, no sync per leaf); others, e.g. sharded over several
  hosts, on device, with a single transfer for all of them.
  """
  counts: list[Any] = []
  for m in leaves:
    local = not isinstance(m, jax.Array) or (
        m.is_fully_addressable or m.is_fully_replicated
    )
    dtype = m.dtype if hasattr(m, 'dtype') else np.asarray(m).dtype
    if local and dtype == np.bool_:
      counts.append(np.count_nonzero(np.asarray(m)))
    else:
      counts.append(jnp.sum(m))
  return [int(c) for c in jax.device_get(counts)]


def count(mask: PyTree, prunable: PyTree) -> tuple[int, int]:
  """Kept and total weights over the prunable leaves.

  Returns:
    (remaining, total) as Python ints.
  """
  leaves = [
      m for m, ok in zip(jax.tree.leaves(mask), jax.tree.leaves(prunable)) if ok
  ]
  return sum(_kept_counts(leaves)), sum(int(np.size(m)) for m in leaves)


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


# Scores are ranked through uint32 keys that order as the float32 scores do
# (`_order_keys`). On CPU the k-th smallest key is found by a two-pass radix
# selection (16-bit histograms), ~30x faster than XLA's CPU sort of a
# ResNet-50's 25M scores; elsewhere by sorting, which GPUs and TPUs do fast
# and which avoids scatters (slow on TPU).
_SIGN_BIT = 0x80000000
_RADIX_BITS = 16
# Ties at the threshold are resolved block by block (`_first_true`).
_TIE_BLOCK = 4096


def _order_keys(x: jax.Array) -> jax.Array:
  """uint32 keys of float32 `x`, ordered as `jnp.sort` orders `x`.

  Non-negative floats get their bits with the sign bit set, negative ones
  their bits inverted, so that unsigned comparison of keys is numeric
  comparison of values; every NaN gets the largest key (sorted last).
  """
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  sign = jnp.uint32(_SIGN_BIT)
  keys = jnp.where(bits >= sign, ~bits, bits | sign)
  return jnp.where(jnp.isnan(x), jnp.uint32(0xFFFFFFFF), keys)


def _from_order_key(key: jax.Array) -> jax.Array:
  """The float32 value of an `_order_keys` key (a NaN for the NaN key)."""
  sign = jnp.uint32(_SIGN_BIT)
  bits = jnp.where(key >= sign, key ^ sign, ~key)
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _kth_smallest_by_radix(scores: jax.Array, k: jax.Array) -> jax.Array:
  """The k-th smallest (1-based, 1 <= k <= size) of float32 `scores`.

  Radix selection on the order keys: a histogram of the top 16 bits finds
  the bucket holding the k-th key, a histogram of the low 16 bits within
  that bucket finds the key. Two passes over the data whatever its values.
  """
  keys = _order_keys(scores)
  buckets = 1 << _RADIX_BITS
  high = (keys >> _RADIX_BITS).astype(jnp.int32)
  counts = jnp.zeros(buckets, jnp.int32).at[high].add(1)
  cumulative = jnp.cumsum(counts)
  top = jnp.searchsorted(cumulative, k, side='left')
  rank_in_bucket = k - (cumulative[top] - counts[top])
  low = jnp.where(
      high == top, (keys & (buckets - 1)).astype(jnp.int32), buckets
  )
  counts = jnp.zeros(buckets, jnp.int32).at[low].add(1, mode='drop')
  bottom = jnp.searchsorted(jnp.cumsum(counts), rank_in_bucket, side='left')
  key = (top.astype(jnp.uint32) << _RADIX_BITS) | bottom.astype(jnp.uint32)
  return _from_order_key(key)


def _kth_smallest_by_sort(scores: jax.Array, k: jax.Array) -> jax.Array:
  """The k-th smallest (1-based) of `scores`, by sorting them."""
  return jnp.sort(scores)[k - 1]


def _first_true(flags: jax.Array, n: jax.Array) -> jax.Array:
  """`flags & (cumsum(flags) <= n)`: only the first `n` True entries.

  Without a cumulative sum over the whole vector (slow on CPU): per-block
  counts locate the block holding the n-th True entry, and only that block
  is summed cumulatively.
  """
  size = flags.shape[0]
  block = min(size, _TIE_BLOCK)
  num_blocks = -(-size // block)
  blocks = jnp.pad(flags, (0, num_blocks * block - size)).reshape(
      num_blocks, block
  )
  per_block = jnp.sum(blocks, axis=1, dtype=jnp.int32)
  cumulative = jnp.cumsum(per_block)
  b = jnp.minimum(jnp.searchsorted(cumulative, n, side='left'), num_blocks - 1)
  before = cumulative[b] - per_block[b]
  row = jax.lax.dynamic_index_in_dim(blocks, b, keepdims=False)
  j = jnp.searchsorted(
      jnp.cumsum(row, dtype=jnp.int32), n - before, side='left'
  )
  # Index of the n-th True entry (or past the end if there are fewer).
  last = b * block + j
  return flags & (jnp.arange(size) <= last) & (n > 0)


def _keep_above_rank_impl(
    scores: jax.Array, num_pruned: jax.Array
) -> jax.Array:
  """See `_keep_above_rank` (unjitted, to be fused into a larger jit)."""
  size = scores.shape[0]
  k = jnp.clip(num_pruned, 1, size).astype(jnp.int32)
  scores = scores.astype(jnp.float32)
  threshold = jax.lax.platform_dependent(
      scores, k, cpu=_kth_smallest_by_radix, default=_kth_smallest_by_sort
  )
  below = scores < threshold
  tied = scores == threshold
  still_needed = num_pruned - jnp.sum(below, dtype=jnp.int32)
  pruned = below | _first_true(tied, still_needed)
  return jnp.where(num_pruned > 0, ~pruned, True)


@jax.jit
def _keep_above_rank(scores: jax.Array, num_pruned: jax.Array) -> jax.Array:
  """Boolean keep-vector removing the `num_pruned` lowest scores.

  Ties at the threshold are broken by position (earlier entries go first), so
  exactly `num_pruned` entries are removed whatever the values. The
  threshold is the `num_pruned`-th smallest score (as `jnp.sort` orders
  them: NaNs last, -0.0 equal to 0.0); scores below it are removed, then
  the first entries equal to it until `num_pruned` are.
  """
  return _keep_above_rank_impl(scores, num_pruned)


@functools.partial(jax.jit, static_argnames=('magnitude',))
def _prune_leaves(
    scores: list[jax.Array],
    masks: list[jax.Array],
    target: jax.Array,
    magnitude: bool,
) -> list[jax.Array]:
  """The new masks of the prunable leaves, in one compiled program.

  Args:
    scores: score leaves (weights if `magnitude`, scored by |w|).
    masks: their current masks.
    target: how many of their weights are pruned afterwards in total.
    magnitude: score by the absolute value of `scores`.

  Returns:
    One boolean mask per leaf.
  """
  # Weights already pruned score -inf so that they are counted first in the
  # rank and stay pruned.
  flat = jnp.concatenate(
      [
          jnp.where(
              m, (jnp.abs(s) if magnitude else s).astype(jnp.float32), -jnp.inf
          ).ravel()
          for m, s in zip(masks, scores)
      ]
  )
  keep = _keep_above_rank_impl(flat, target)
  out, offset = [], 0
  for m in masks:
    out.append(keep[offset : offset + m.size].reshape(m.shape))
    offset += m.size
  return out


def _prune(
    scores: PyTree,
    mask: PyTree,
    prunable: PyTree,
    fraction: float,
    magnitude: bool,
) -> PyTree:
  """`prune_by_score`, scoring by |scores| if `magnitude`."""
  remaining, total = count(mask, prunable)
  target = (total - remaining) + num_to_prune(fraction, remaining)
  return _prune_to(scores, mask, prunable, target, magnitude)


def _prune_to(
    scores: PyTree, mask: PyTree, prunable: PyTree, target: int, magnitude: bool
) -> PyTree:
  """The mask with exactly `target` prunable weights pruned in all: those
  already pruned, then the lowest-scoring kept ones."""
  leaves, treedef = jax.tree.flatten(mask)
  flags = jax.tree.leaves(prunable)
  score_leaves = treedef.flatten_up_to(scores)
  new = iter(
      _prune_leaves(
          [s for s, ok in zip(score_leaves, flags) if ok],
          [m for m, ok in zip(leaves, flags) if ok],
          jnp.asarray(target, jnp.int32),
          magnitude=magnitude,
      )
  )
  return jax.tree.unflatten(
      treedef, [next(new) if ok else m for m, ok in zip(leaves, flags)]
  )


def prune_by_score(
    scores: PyTree, mask: PyTree, prunable: PyTree, fraction: float
) -> PyTree:
  """Removes the lowest-scoring kept weights, over all prunable leaves at once.

  This is the shared core of every global pruning method: magnitude pruning
  scores a weight by |w|, random pruning by a uniform draw. The prunable
  leaves are ranked together, in tree order; ties are broken by position
  (see `_keep_above_rank`).

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
  return _prune(scores, mask, prunable, fraction, magnitude=False)


def magnitude_prune(
    params: PyTree, mask: PyTree, prunable: PyTree, fraction: float
) -> PyTree:
  """Global magnitude pruning (Han et al.): removes the smallest |w|.

  The threshold is computed over all prunable tensors together, so layers
  lose different shares of their weights. For layerwise pruning pass a
  `prunable` restricted with `restrict_to_layers`.
  """
  # |w| is taken inside the compiled program (one pass, no copy of |params|).
  return _prune(params, mask, prunable, fraction, magnitude=True)


def _uniform_scores(rng: jax.Array, tree: PyTree) -> PyTree:
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(rng, len(leaves))
  return jax.tree.unflatten(
      treedef,
      [jax.random.uniform(k, jnp.shape(x)) for k, x in zip(keys, leaves)],
  )


def random_prune(
    rng: jax.Array, mask: PyTree, prunable: PyTree, fraction: float
) -> PyTree:
  """Global random pruning: removes kept weights uniformly at random."""
  return prune_by_score(_uniform_scores(rng, mask), mask, prunable, fraction)


def random_natural_prune(
    rng: jax.Array,
    params: PyTree,
    mask: PyTree,
    prunable: PyTree,
    fraction: float,
    threshold: float,
) -> PyTree:
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
  return prune_by_score(
      _natural_scores(rng, params, threshold), mask, prunable, fraction
  )


def _natural_scores(rng: jax.Array, params: PyTree, threshold: float) -> PyTree:
  """Random scores that rank naturally-zero weights first.

  A weight with |w| < threshold scores |w| / threshold - 1, in [-1, 0) and
  increasing with |w|; any other weight a uniform draw in [0, 1).
  """
  if threshold < 0:
    raise ValueError(f'threshold must be >= 0, got {threshold}.')
  uniform = _uniform_scores(rng, params)

  def score(p, u):
    a = jnp.abs(p).astype(jnp.float32)
    return jnp.where(a < threshold, a / max(threshold, 1e-30) - 1.0, u)

  return jax.tree.map(score, params, uniform)


def random_natural_oneshot(
    rng: jax.Array,
    params: PyTree,
    prunable: PyTree,
    num_kept: int,
    threshold: float,
) -> PyTree:
  """The paper's random baseline (Caron et al. 2020, section 4.3, Fig. 3).

  One global mask, in one shot, from a dense trained network: the weights
  that converged to |w| < `threshold` are removed first (smallest first),
  then weights drawn uniformly at random from all the other prunable
  weights of every layer together, until exactly `num_kept` prunable
  weights are left. ("We remove this effect by first pruning the weights
  that naturally converge to zero after training. Then, we randomly mask
  the remaining non-zeroed weights to get different final desired pruning
  rates.") The survivors are then re-initialised by the caller.

  Args:
    rng: PRNG key of the random draw.
    params: the dense network's trained weights (round 0's end).
    prunable: pytree of bools.
    num_kept: how many prunable weights the mask keeps.
    threshold: magnitude under which a weight counts as naturally zero.

  Returns:
    The mask; non-prunable leaves keep everything.
  """
  mask = init_mask(params)
  _, total = count(mask, prunable)
  if not 0 <= num_kept <= total:
    raise ValueError(f'num_kept must be in [0, {total}], got {num_kept}.')
  return _prune_to(
      _natural_scores(rng, params, threshold),
      mask,
      prunable,
      total - num_kept,
      magnitude=False,
  )


def random_prune_like(
    rng: jax.Array,
    reference_mask: PyTree,
    prunable: PyTree,
    params: PyTree | None = None,
    threshold: float = 0.0,
) -> PyTree:
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
  weights = (
      jax.tree.leaves(params) if params is not None else [None] * len(leaves)
  )
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


def reinit(
    init_fn: Callable[[jax.Array], PyTree], rng: jax.Array, mask: PyTree
) -> PyTree:
  """Random re-initialisation: fresh weights from `init_fn(rng)`, masked."""
  return apply_mask(init_fn(rng), mask)


def prunable_leaves(tree: PyTree, prunable: PyTree) -> list[tuple[str, Any]]:
  """(name, leaf) of each prunable leaf of `tree` (`path_name`), in tree
  order."""
  return [
      (path_name(path_tuple(path)), leaf)
      for (path, leaf), ok in zip(
          jax.tree_util.tree_flatten_with_path(tree)[0],
          jax.tree.leaves(prunable),
      )
      if ok
  ]


def sparsity_report(mask: PyTree, prunable: PyTree) -> dict:
  """Per-layer and global counts of kept weights.

  Returns:
    {'layers': [{'name', 'remaining', 'total', 'fraction_left'}, ...],
     'remaining', 'total', 'fraction_left'} over the prunable leaves, layers
    in tree order.
  """
  flat_mask = prunable_leaves(mask, prunable)
  layers = []
  for (name, m), kept in zip(
      flat_mask, _kept_counts([m for _, m in flat_mask])
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
  return {
      'layers': layers,
      'remaining': remaining,
      'total': total,
      'fraction_left': remaining / total,
  }


def format_report(report: dict) -> str:
  """The sparsity report as an aligned text table."""
  width = max([len(l['name']) for l in report['layers']] + [6])
  lines = [f"{'layer':<{width}} {'kept':>10} {'total':>10} {'left':>8}"]
  for l in report['layers'] + [dict(report, name='global')]:
    lines.append(
        f"{l['name']:<{width}} {l['remaining']:>10d} "
        f"{l['total']:>10d} {100 * l['fraction_left']:>7.2f}%"
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
  mask = init_mask(params) if mask is None else mask
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
              'name': path_name(path_tuple(path)),
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
