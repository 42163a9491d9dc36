"""The pruning methods: magnitude, random, random adjusted for natural
sparsity, and random with another mask's per-layer counts.

Each is a score handed to the global ranking (`pruning.ranking`), or a
count per layer.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from sslprune_jax.pruning import masks
from sslprune_jax.pruning import ranking

PyTree = Any


METHODS = ('magnitude', 'random', 'random_natural', 'random_like')


def magnitude_prune(
    params: PyTree, mask: PyTree, prunable: PyTree, fraction: float
) -> PyTree:
  """Global magnitude pruning (Han et al.): removes the smallest |w|.

  The threshold is computed over all prunable tensors together, so layers
  lose different shares of their weights. For layerwise pruning pass a
  `prunable` restricted with `restrict_to_layers`.
  """
  # |w| is taken inside the compiled program (one pass, no copy of |params|).
  return ranking.prune_fraction(
      params, mask, prunable, fraction, magnitude=True
  )


# The random scores and masks below are drawn in one compiled program per
# network rather than op by op: eagerly, every leaf's shape compiled its own
# uniform draw and selection (in a new process on 2 CPU cores, a
# `random_like` mask of a ResNet-10's 12 layers took 6.6 s that way and
# 4.9 s so, most of it compiling). The draws are the same bits either way.


@jax.jit
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
  return ranking.prune_by_score(
      _uniform_scores(rng, mask), mask, prunable, fraction
  )


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
  return ranking.prune_by_score(
      _natural_scores(rng, params, threshold), mask, prunable, fraction
  )


def _natural_scores(rng: jax.Array, params: PyTree, threshold: float) -> PyTree:
  """Random scores that rank naturally-zero weights first.

  A weight with |w| < threshold scores |w| / threshold - 1, in [-1, 0) and
  increasing with |w|; any other weight a uniform draw in [0, 1).
  """
  if threshold < 0:
    raise ValueError(f'threshold must be >= 0, got {threshold}.')
  return _natural_scores_of(rng, params, float(threshold))


@functools.partial(jax.jit, static_argnames='threshold')
def _natural_scores_of(rng: jax.Array, params: PyTree, threshold: float):
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
  mask = masks.init_mask(params)
  _, total = masks.count(mask, prunable)
  if not 0 <= num_kept <= total:
    raise ValueError(f'num_kept must be in [0, {total}], got {num_kept}.')
  return ranking.prune_to(
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
  picked = lambda xs: [x for x, ok in zip(xs, flags) if ok]
  drawn = iter(
      _random_keep_like(
          picked(keys), picked(leaves), picked(weights), float(threshold)
      )
  )
  return jax.tree.unflatten(
      treedef, [next(drawn) if ok else m for m, ok in zip(leaves, flags)]
  )


@functools.partial(jax.jit, static_argnames='threshold')
def _random_keep_like(keys, reference, weights, threshold: float):
  """Per leaf, a random mask keeping as many weights as `reference` does
  (see `random_prune_like`)."""
  out = []
  for k, m, p in zip(keys, reference, weights):
    num_pruned = m.size - jnp.sum(m)
    scores = jax.random.uniform(k, (m.size,))
    if p is not None and threshold > 0:
      a = jnp.abs(p).astype(jnp.float32).reshape(-1)
      # Near-zero weights score in [-1, 0), below every random score.
      scores = jnp.where(a < threshold, a / threshold - 1.0, scores)
    out.append(ranking.keep_above_rank(scores, num_pruned).reshape(m.shape))
  return out
