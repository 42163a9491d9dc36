"""Global ranking: exactly k of the kept prunable weights removed by score.

Every global method is one ranking of scores over all prunable leaves at
once (`prune_by_score`); what differs is the score (`pruning.methods`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from sslprune_jax.pruning import masks

PyTree = Any


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
  """See `keep_above_rank` (unjitted, to be fused into a larger jit)."""
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
def keep_above_rank(scores: jax.Array, num_pruned: jax.Array) -> jax.Array:
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


def prune_fraction(
    scores: PyTree,
    mask: PyTree,
    prunable: PyTree,
    fraction: float,
    magnitude: bool,
) -> PyTree:
  """`prune_by_score`, scoring by |scores| if `magnitude`."""
  remaining, total = masks.count(mask, prunable)
  target = (total - remaining) + masks.num_to_prune(fraction, remaining)
  return prune_to(scores, mask, prunable, target, magnitude)


def prune_to(
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
  (see `keep_above_rank`).

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
  return prune_fraction(scores, mask, prunable, fraction, magnitude=False)
