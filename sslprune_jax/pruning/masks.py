"""Masks as pytrees: which leaves are prunable, applying, counting, resetting.

A mask has the structure of `params`: one boolean array per leaf, `True` where
the weight is kept. Leaves that may never be pruned (biases, batch-norm
parameters, the final classifier) keep an all-`True` mask, so that
`apply_mask(params, mask)` is one uniform tree-map. Which leaves are prunable
is a pytree of Python bools, `prunable`, computed once from the parameter
names (`prunable_tree`). `rewind` and `reinit` reset the survivors between
rounds.
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


def kept_counts(leaves: Sequence[Any]) -> list[int]:
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
  return sum(kept_counts(leaves)), sum(int(np.size(m)) for m in leaves)


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
