"""A channel-pruned network as a smaller dense network.

Each removed channel (`pruning.channels`) is cut out of the arrays that
hold it: the producer kernel's output axis, its batch norm's scale, bias,
mean and variance, and the consumers' input axis (-2). The masked network's
removed channels output exactly 0 after their batch norm, so the smaller
network computes the same outputs (to float summation order). Its model is
the same config with `model.inner_widths` (`models.ResNet`). NumPy only.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

PyTree = Any


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _map_at(tree: dict, path: Sequence[str], fn) -> dict:
  head, *rest = path
  return {
      **tree,
      head: _map_at(tree[head], rest, fn) if rest else fn(tree[head]),
  }


def slim(
    variables: Mapping[str, PyTree],
    mask: PyTree,
    groups: Sequence[Mapping[str, Any]],
) -> tuple[dict, tuple[tuple[str, tuple[int, ...]], ...]]:
  """The smaller network's variables and its `inner_widths`.

  Args:
    variables: {'params', 'batch_stats'} of the masked network.
    mask: its mask.
    groups: its channel groups (`models.channel_groups`).

  Returns:
    (variables, inner_widths): the params masked and cut, the batch
    statistics cut; ((block, (channels of each inner layer)), ...) for
    `model.inner_widths`.
  """
  params = {k: v for k, v in variables['params'].items()}
  params = _masked(params, mask)
  stats = dict(variables.get('batch_stats', {}))
  widths: dict[str, list[int]] = {}
  for g in groups:
    keep = np.asarray(_get(mask, (*g['norm'], 'scale')), bool)
    params = _map_at(params, g['producer'], lambda k: k[..., keep])
    for leaf in ('scale', 'bias'):
      params = _map_at(params, (*g['norm'], leaf), lambda v: v[keep])
    for leaf in ('mean', 'var'):
      stats = _map_at(stats, (*g['norm'], leaf), lambda v: v[keep])
    for consumer in g['consumers']:
      params = _map_at(params, consumer, lambda k: k[..., keep, :])
    widths.setdefault(g['block'], []).append(int(keep.sum()))
  out = {'params': params, 'batch_stats': stats}
  return out, tuple((block, tuple(w)) for block, w in widths.items())


def _masked(params, mask):
  if isinstance(params, Mapping):
    return {k: _masked(v, mask[k]) for k, v in params.items()}
  values = np.asarray(params)
  return np.where(np.asarray(mask, bool), values, np.zeros_like(values))
