"""N:M fine-grained sparsity: in every group of m consecutive weights along
a kernel's input dimension, at most n are kept.

A group is m weights that share every index but the input one (a conv
kernel's `[h, w, :, o]` is cut into groups of m input channels; a dense
kernel's `[:, o]` likewise), the layout sparse tensor cores read for 2:4.
The choice and why:

* Groups at the edge: when the input dimension C is not a multiple of m,
  the last group has r = C mod m weights and keeps min(n, r): padded with
  m - r zeros it is an n:m group, so the whole kernel is n:m once padded to
  a multiple of m (as a sparse kernel library pads it).
* Kernels whose input dimension is below m (a first conv over one or three
  image channels) have no whole group and stay dense, as the classifier
  does (`nm_prunable`).
* Within a group the n highest scores among the still-kept weights are
  kept; ties go by position, the earlier weight removed first, as in the
  global ranking (`ranking.keep_above_rank`). Weights already pruned stay
  pruned, so IMP that lowers n over rounds (4:8, 2:8, 1:8) nests its masks.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sslprune_jax.pruning import masks

PyTree = Any


def check_nm(n: int, m: int) -> None:
  """Refuses n, m that are no pattern (m >= 2, 1 <= n <= m)."""
  if not (isinstance(m, int) and m >= 2):
    raise ValueError(f'm must be an int >= 2, got {m!r}.')
  if not (isinstance(n, int) and 1 <= n <= m):
    raise ValueError(f'n must be an int in [1, m={m}], got {n!r}.')


def _groups(x: jax.Array, m: int, fill) -> jax.Array:
  """`x` with its input axis (-2) cut into groups: [..., G, m] with the
  other axes first; the last group padded with `fill`."""
  x = jnp.moveaxis(x, -2, -1)
  c = x.shape[-1]
  pad = -c % m
  x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)], constant_values=fill)
  return x.reshape(*x.shape[:-1], (c + pad) // m, m)


def _ungroup(groups: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """The inverse of `_groups` for a kernel of `shape`."""
  c = shape[-2]
  flat = groups.reshape(*groups.shape[:-2], -1)[..., :c]
  return jnp.moveaxis(flat, -1, -2)


def nm_keep(scores: jax.Array, mask: jax.Array, n: int, m: int) -> jax.Array:
  """One kernel's new mask: in each group, the n highest-scoring weights
  among those `mask` keeps (see the module docstring)."""
  check_nm(n, m)
  s = jnp.where(mask, scores.astype(jnp.float32), -jnp.inf)
  s = _groups(s, m, -jnp.inf)
  kept = _groups(mask, m, False)
  # Stable ascending order: among equal scores the earlier weight ranks
  # lower, so it goes first.
  rank = jnp.argsort(jnp.argsort(s, axis=-1, stable=True), axis=-1)
  return _ungroup(kept & (rank >= m - n), mask.shape)


def nm_prunable(params: PyTree, prunable: PyTree, m: int) -> PyTree:
  """The prunable leaves N:M prunes: those with a whole group (input
  dimension >= m)."""
  return jax.tree.map(
      lambda p, ok: bool(ok and np.ndim(p) >= 2 and np.shape(p)[-2] >= m),
      params,
      prunable,
  )


@functools.partial(jax.jit, static_argnames=('n', 'm', 'magnitude'))
def _prune_leaves(scores, leaves, n, m, magnitude):
  return [
      nm_keep(jnp.abs(s) if magnitude else s, k, n, m)
      for s, k in zip(scores, leaves)
  ]


def nm_prune(
    scores: PyTree,
    mask: PyTree,
    prunable: PyTree,
    n: int,
    m: int,
    magnitude: bool = True,
) -> PyTree:
  """The mask with every N:M-prunable leaf made n:m by `scores` (by
  |scores| if `magnitude`); other leaves unchanged.

  Args:
    scores: pytree like the mask (the weights for magnitude pruning).
    mask: the current mask.
    prunable: pytree of bools (`masks.prunable_tree`).
    n, m: the pattern.
    magnitude: score by the absolute value.
  """
  check_nm(n, m)
  grouped = jax.tree.leaves(nm_prunable(mask, prunable, m))
  leaves, treedef = jax.tree.flatten(mask)
  score_leaves = treedef.flatten_up_to(scores)
  new = iter(
      _prune_leaves(
          [s for s, ok in zip(score_leaves, grouped) if ok],
          [k for k, ok in zip(leaves, grouped) if ok],
          n=n,
          m=m,
          magnitude=magnitude,
      )
  )
  return jax.tree.unflatten(
      treedef, [next(new) if ok else k for k, ok in zip(leaves, grouped)]
  )


def random_nm_prune(
    rng: jax.Array, mask: PyTree, prunable: PyTree, n: int, m: int
) -> PyTree:
  """`nm_prune` by uniform random scores: a random n:m mask nested in
  `mask`."""
  leaves, treedef = jax.tree.flatten(mask)
  keys = jax.random.split(rng, len(leaves))
  scores = jax.tree.unflatten(
      treedef,
      [jax.random.uniform(k, jnp.shape(x)) for k, x in zip(keys, leaves)],
  )
  return nm_prune(scores, mask, prunable, n, m, magnitude=False)


def nm_kept(shape: tuple[int, ...], n: int, m: int) -> int:
  """How many weights of a dense kernel of `shape` an n:m mask keeps."""
  c = shape[-2]
  per_column = (c // m) * n + min(n, c % m)
  return per_column * int(np.prod(shape)) // c


def conformance(mask: PyTree, prunable: PyTree, n: int, m: int) -> dict:
  """How well each N:M-prunable leaf of `mask` follows n:m.

  Returns:
    {name: share of its groups keeping at most n weights} over the leaves
    `nm_prunable` selects, and 'all' over all their groups.
  """
  grouped = nm_prunable(mask, prunable, m)
  out, good, total = {}, 0, 0
  for name, k in masks.prunable_leaves(mask, grouped):
    per_group = jnp.sum(_groups(k, m, False), axis=-1)
    ok, size = int(jnp.sum(per_group <= n)), int(per_group.size)
    out[name] = ok / size
    good, total = good + ok, total + size
  out['all'] = good / total if total else 1.0
  return out


def round_pattern(pruning_config, round_idx: int) -> tuple[int, int] | None:
  """(n, m) of round `round_idx`'s mask under `granularity='nm'` (n is
  `pruning_config.n[round_idx - 1]`), else None; round 0 is dense."""
  if pruning_config.get('granularity', 'unstructured') != 'nm':
    return None
  if round_idx == 0:
    return None
  return tuple(pruning_config.n)[round_idx - 1], pruning_config.m
