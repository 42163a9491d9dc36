"""Channel pruning: whole output channels removed, with what depends on them.

A channel group (given by the model: `models.channel_groups`) is a conv
kernel whose output channels may go, the batch norm after it and the
kernels that read those channels on their input axis (-2). Removing
channel c masks the producer's `[..., c]`, the norm's scale and bias `[c]`
and every consumer's `[..., c, :]`: the channel's batch-norm output is then
exactly 0 whatever its statistics, so the masked network computes what a
network without the channel computes (`export.slim`).

Which channels go, the choices and why:

* Score: 'l1', the L1 norm of the channel's (masked) filter, or
  'bn_scale', |gamma| of its batch norm (network slimming, Liu et al.
  2017); the 'random' method draws scores uniformly.
* Scope: 'global' ranks the channels of every group together and removes
  `ceil(fraction * remaining channels)` of them; 'layer' removes
  `ceil(fraction * remaining)` in each group. Ties go by position, the
  earlier channel first (`ranking.keep_above_rank`).
* Each group keeps its highest-scoring channel, so no layer is emptied (a
  block without inner channels would pass only its batch norm's bias):
  fewer channels go where the count would take a layer's last, and a
  configuration whose rounds would need that is refused before training
  (`rounds_problem`).

The channel state is the norm's scale mask: a channel is kept where it is
True.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from sslprune_jax.pruning import masks
from sslprune_jax.pruning import ranking

PyTree = Any
Group = Mapping[str, Any]

SCORES = ('l1', 'bn_scale')
SCOPES = ('global', 'layer')


def _get(tree: PyTree, path: Sequence[str]):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path: Sequence[str], value) -> dict:
  """A copy of nested dict `tree` with `value` at `path` (only the dicts on
  the path are copied)."""
  head, *rest = path
  return {**tree, head: _set(tree[head], rest, value) if rest else value}


def kept_channels(mask: PyTree, groups: Sequence[Group]) -> list[jax.Array]:
  """Each group's boolean vector of kept channels."""
  return [_get(mask, (*g['norm'], 'scale')) for g in groups]


def channel_scores(
    params: PyTree, mask: PyTree, groups: Sequence[Group], score: str
) -> list[jax.Array]:
  """Each group's channel scores: the L1 norm of each (masked) filter of
  the producer, or |batch-norm scale|."""
  if score not in SCORES:
    raise ValueError(f'Unknown channel score {score!r}; valid: {SCORES}.')
  out = []
  for g in groups:
    if score == 'bn_scale':
      out.append(jnp.abs(_get(params, (*g['norm'], 'scale'))))
    else:
      kernel = _get(params, g['producer']) * _get(mask, g['producer'])
      axes = tuple(range(kernel.ndim - 1))
      out.append(jnp.sum(jnp.abs(kernel.astype(jnp.float32)), axis=axes))
  return out


def with_channels(
    mask: PyTree, groups: Sequence[Group], keeps: Sequence[jax.Array]
) -> PyTree:
  """`mask` with each group's channels not in `keeps` removed: from the
  producer's outputs, the norm's scale and bias and the consumers'
  inputs."""
  for g, keep in zip(groups, keeps):
    producer = _get(mask, g['producer'])
    mask = _set(mask, g['producer'], producer & keep)
    for leaf in ('scale', 'bias'):
      path = (*g['norm'], leaf)
      mask = _set(mask, path, _get(mask, path) & keep)
    for consumer in g['consumers']:
      kernel = _get(mask, consumer)
      mask = _set(mask, consumer, kernel & keep[:, None])
  return mask


def _protect_best(scores: jax.Array, keep: jax.Array) -> jax.Array:
  """Scores with the removed channels at -inf (they stay removed) and the
  best kept one at +inf (it stays)."""
  s = jnp.where(keep, scores.astype(jnp.float32), -jnp.inf)
  best = jnp.argmax(s)
  return s.at[best].set(jnp.inf)


def prune_channels(
    scores: Sequence[jax.Array],
    mask: PyTree,
    groups: Sequence[Group],
    fraction: float,
    scope: str,
) -> PyTree:
  """The mask with `ceil(fraction * remaining)` more channels removed,
  over all groups (`scope='global'`) or in each (`'layer'`), the lowest
  scores first.

  Args:
    scores: each group's channel scores (`channel_scores`, or random).
    mask: the current mask.
    groups: the channel groups.
    fraction: share of the remaining channels to remove, in (0, 1).
    scope: 'global' or 'layer'.
  """
  if scope not in SCOPES:
    raise ValueError(f'Unknown channel scope {scope!r}; valid: {SCOPES}.')
  keeps = kept_channels(mask, groups)
  ranked = [_protect_best(s, k) for s, k in zip(scores, keeps)]
  counts = [int(jnp.sum(k)) for k in keeps]
  if scope == 'layer':
    new = [
        ranking.keep_above_rank(
            s, min(k.size - c + masks.num_to_prune(fraction, c), k.size - 1)
        )
        for s, k, c in zip(ranked, keeps, counts)
    ]
  else:
    total = sum(k.size for k in keeps)
    remaining = sum(counts)
    target = min(
        total - remaining + masks.num_to_prune(fraction, remaining),
        total - len(keeps),
    )
    flat = ranking.keep_above_rank(jnp.concatenate(ranked), target)
    offsets = [0]
    for k in keeps:
      offsets.append(offsets[-1] + k.size)
    new = [flat[a:b] for a, b in zip(offsets, offsets[1:])]
  return with_channels(mask, groups, new)


def random_scores(rng: jax.Array, groups: Sequence[Group], mask) -> list:
  """Uniform scores for every group's channels (the random baseline)."""
  keeps = kept_channels(mask, groups)
  keys = jax.random.split(rng, len(keeps))
  return [jax.random.uniform(k, c.shape) for k, c in zip(keys, keeps)]


def random_like(
    rng: jax.Array, reference: PyTree, groups: Sequence[Group]
) -> PyTree:
  """A random channel mask with, in every group, as many channels as
  `reference` keeps there (the random baseline of a channel-pruned
  round)."""
  dense = jax.tree.map(lambda m: jnp.ones(jnp.shape(m), bool), reference)
  counts = [int(jnp.sum(k)) for k in kept_channels(reference, groups)]
  scores = random_scores(rng, groups, dense)
  keeps = [
      ranking.keep_above_rank(s, s.size - c) for s, c in zip(scores, counts)
  ]
  return with_channels(dense, groups, keeps)


def rounds_problem(
    widths: Sequence[int], fraction: float, num_rounds: int, scope: str
) -> str | None:
  """Why `num_rounds` rounds of channel pruning at `fraction` cannot keep
  a channel in every group of these `widths`, or None if they can."""
  if scope == 'layer':
    for width in widths:
      left = width
      for r in range(num_rounds):
        left -= masks.num_to_prune(fraction, left)
        if left < 1:
          return (
              f'a layer of {width} channels loses its last in round '
              f'{r + 1} at pruning.fraction={fraction}'
          )
    return None
  left = sum(widths)
  for r in range(num_rounds):
    left -= masks.num_to_prune(fraction, left)
    if left < len(widths):
      return (
          f'round {r + 1} leaves {left} of {sum(widths)} channels, fewer '
          f'than the {len(widths)} layers must keep (one each)'
      )
  return None


def channel_report(mask: PyTree, groups: Sequence[Group]) -> dict:
  """{'channels_left': kept / total over all groups, 'layers': {producer
  name: [kept, total]}}."""
  keeps = kept_channels(mask, groups)
  layers = {
      masks.path_name(g['producer'][:-1]): [int(jnp.sum(k)), int(k.size)]
      for g, k in zip(groups, keeps)
  }
  kept = sum(v[0] for v in layers.values())
  total = sum(v[1] for v in layers.values())
  return {
      'channels_left': kept / total if total else math.nan,
      'layers': layers,
  }
