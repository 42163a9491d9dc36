"""The train state of a round: parameters, mask, optimiser and schedule.

Pruned weights are exactly zero from `create_train_state` on, and stay so
with one masking pass a step: the gradients are masked before the optimiser,
and SGD's update of a weight whose gradient, momentum and value are zero is
zero (weight decay adds zero times the weight). So the forward pass sees
`params * mask` without multiplying by the mask.

Several seeds trained together are one state stacked along a leading axis
(`stack_trees`, `seed_slice`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sslprune_jax import pruning

PyTree = Any
SCHEDULES = ('step', 'cosine', 'constant')


class TrainState(train_state.TrainState):
  """Everything that changes during a round.

  Attributes:
    batch_stats: batch-norm running statistics.
    mask: boolean pytree like `params` (see `pruning`).
    rng: PRNG key of the round (dropout, task randomness); folded with the
      step and the device index inside the step.
    task_state: the task's own state (NPID's memory bank; usually empty),
      replicated like the rest.
  """

  batch_stats: PyTree
  mask: PyTree
  rng: jax.Array
  task_state: PyTree = flax.struct.field(default_factory=dict)
  # The schedule `tx` follows (step -> learning rate), for logging; static,
  # like `tx`.
  learning_rate_fn: Callable[[int], Any] | None = flax.struct.field(
      pytree_node=False, default=None
  )

  def apply_gradients(self, *, grads, **kwargs):
    # Pruned weights get no gradient, hence no momentum and no update.
    return super().apply_gradients(
        grads=pruning.apply_mask(grads, self.mask), **kwargs
    )


def create_learning_rate_fn(
    train_config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule:
  """The paper's learning-rate schedules, in steps.

  Args:
    train_config: `schedule` ('step' | 'cosine' | 'constant'),
      `learning_rate`, `num_epochs`, `warmup_epochs` (linear warm-up from 0),
      and for 'step': `decay_epochs` (epochs at which the rate is multiplied
      by `decay_factor`).
    steps_per_epoch: optimiser steps per epoch.

  Returns:
    An optax schedule: step -> learning rate.
  """
  c = train_config
  if c.schedule not in SCHEDULES:
    raise ValueError(f'Unknown schedule {c.schedule!r}; valid: {SCHEDULES}.')
  total = int(round(c.num_epochs * steps_per_epoch))
  warmup = int(round(c.warmup_epochs * steps_per_epoch))
  if c.schedule == 'step':
    main = optax.piecewise_constant_schedule(
        c.learning_rate,
        {
            int(round(e * steps_per_epoch)) - warmup: c.decay_factor
            for e in c.decay_epochs
        },
    )
  elif c.schedule == 'cosine':
    main = optax.cosine_decay_schedule(c.learning_rate, max(total - warmup, 1))
  else:
    main = optax.constant_schedule(c.learning_rate)
  if warmup == 0:
    return main
  ramp = optax.linear_schedule(0.0, c.learning_rate, warmup)
  return optax.join_schedules([ramp, main], [warmup])


class Optimizer(NamedTuple):
  """An optimiser and the learning-rate schedule it follows."""

  tx: optax.GradientTransformation
  learning_rate_fn: optax.Schedule


def create_optimizer(
    train_config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
  """SGD with momentum and (PyTorch-style, coupled) weight decay."""
  return optax.chain(
      optax.add_decayed_weights(train_config.weight_decay),
      optax.sgd(
          learning_rate_fn,
          momentum=train_config.momentum,
          nesterov=train_config.nesterov,
      ),
  )


def init_variables(model, rng: jax.Array, image_shape) -> dict:
  """Fresh model variables for one (unbatched) image shape."""
  dummy = jnp.zeros((1, *image_shape), jnp.float32)
  params_rng, dropout_rng = jax.random.split(rng)
  return model.init(
      {'params': params_rng, 'dropout': dropout_rng}, dummy, train=False
  )


def create_train_state(
    model,
    variables: dict,
    mask: PyTree,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    task_state: PyTree | None = None,
    *,
    step: int = 0,
    learning_rate_fn: optax.Schedule | None = None,
) -> TrainState:
  """A fresh optimiser state (no momentum) at global step `step`.

  Starting at `step` > 0 continues a training run from there, as
  open_lth's `training/train.py` does for a rewound level: the
  learning-rate schedule resumes at `step` (the next update uses
  `learning_rate_fn(step)`), and the data stream, the step's random keys
  and the logs count from `step` too.

  Args:
    model: the network.
    variables: its 'params' (and 'batch_stats').
    mask: boolean pytree like the params; the params are masked.
    tx: the optimiser.
    rng: the key of the run (folded with the step inside the step).
    task_state: the task's own state.
    step: the global step the state starts at.
    learning_rate_fn: the schedule inside `tx`, kept for logging.
  """
  state = TrainState.create(
      apply_fn=model.apply,
      params=_apply_mask(variables['params'], mask),
      batch_stats=variables.get('batch_stats', {}),
      mask=mask,
      rng=rng,
      tx=tx,
      learning_rate_fn=learning_rate_fn,
      task_state={} if task_state is None else task_state,
  )
  return at_step(state, step) if step else state


# One program for the whole tree: leaf by leaf, eager multiplications
# compile one program per leaf shape (38 for the :quick network, 1.3 s).
_apply_mask = jax.jit(pruning.apply_mask)


def at_step(state: TrainState, step: int) -> TrainState:
  """`state` moved to global step `step`, its schedule's counters too.

  optax's schedules count their own steps in the optimiser state
  (`ScaleByScheduleState.count`); each such counter is set to `step`.
  """
  opt_state = state.opt_state
  if optax.tree_utils.tree_get_all_with_path(opt_state, 'count'):
    opt_state = optax.tree_utils.tree_set(
        opt_state, count=jnp.asarray(step, jnp.int32)
    )
  return state.replace(
      step=jnp.asarray(step, jnp.asarray(state.step).dtype), opt_state=opt_state
  )


def stack_trees(trees, stack: Callable = np.stack) -> PyTree:
  """Pytrees of one structure stacked leaf by leaf along a new axis 0.

  The state of k seeds trained by one `make_train_step(num_seeds=k)` is the
  stack of their k states (`np.stack`: on the host; `jnp.stack` in a jitted
  function); static fields (a state's model and optimiser) are the first
  tree's.
  """
  treedef = jax.tree.structure(trees[0])
  leaves = [jax.tree.leaves(t) for t in trees]
  if any(len(ls) != len(leaves[0]) for ls in leaves):
    raise ValueError('The trees to stack differ in structure.')
  return jax.tree.unflatten(treedef, [stack(xs) for xs in zip(*leaves)])


def seed_slice(tree: PyTree, i: int) -> PyTree:
  """Seed `i`'s tree out of a stacked one (`stack_trees`)."""
  return jax.tree.map(lambda x: x[i], tree)
