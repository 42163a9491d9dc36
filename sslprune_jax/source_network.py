"""The network of another run, to start from: its trunk, mask and (where
the tasks agree) head (`load_source`, for `init_from` and the evaluations'
`source`), and each seed's own source run (`own_seed_init`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from sslprune_jax import models
from sslprune_jax.rundir import sources

PyTree = Any


def load_source(
    config: ml_collections.ConfigDict,
    variables: PyTree,
    source_workdir: str,
    round_idx: int,
    *,
    point: str = 'final',
) -> tuple[dict, PyTree]:
  """A network of another run, to start this one from.

  The trunk (weights, batch-norm statistics and mask) comes from round
  `round_idx` of the run in `source_workdir`: its trained weights
  (`point='final'`), or the rewind point's weights under that round's mask
  (`point='rewind'`, the winning ticket). The head is the source's if the
  source was trained on the same task and data, classes included (a
  label-trained winning ticket keeps its classifier); otherwise it is this
  run's fresh, unpruned head from `variables` (RotNet's 4-way head gives
  way to a classifier).

  Args:
    config: this run's config (its model must be the source's).
    variables: this run's freshly initialised variables.
    source_workdir: a pruning run with round `round_idx` finished.
    round_idx: the source round.
    point: 'final' or 'rewind'.

  Returns:
    (variables, mask) for this run's model; the weights are not masked (a
    caller may draw another mask).
  """
  source, saved = sources.read_source_round(
      config, source_workdir, round_idx, point=point
  )
  params, mask = saved['params'], saved['mask']
  head = variables['params'][models.HEAD]
  shapes = lambda tree: jax.tree.map(jnp.shape, tree)
  classes = lambda c: tuple(c.data.get('classes', ()))
  same_task = (
      source.task.name == config.task.name
      and source.data.name == config.data.name
      and classes(source) == classes(config)
      and shapes(params[models.HEAD]) == shapes(head)
  )
  if not same_task:
    params, mask = models.with_head(params, mask, head)
  if shapes(params) != shapes(variables['params']):
    raise ValueError(
        f'The network saved in {source_workdir} does not fit this run '
        '(different image channels or layers); its parameter shapes differ.'
    )
  return {'params': params, 'batch_stats': saved['batch_stats']}, mask


def own_seed_init(
    config: ml_collections.ConfigDict,
) -> ml_collections.ConfigDict:
  """`config` starting from its own seed of `init_from.workdir`
  (`sources.seed_run`)."""
  if not config.init_from.workdir:
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  config.init_from.workdir = sources.seed_run(
      config.init_from.workdir, config.seed
  )
  return config
