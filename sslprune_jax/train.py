"""One round of training: the train state, pure jitted steps, and the loop.

Pruned weights are exactly zero from `create_train_state` on, and stay so
with one masking pass a step: the gradients are masked before the optimiser,
and SGD's update of a weight whose gradient, momentum and value are zero is
zero (weight decay adds zero times the weight). So the forward pass sees
`params * mask` without multiplying by the mask.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import flax
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from sslprune_jax import parallel
from sslprune_jax import preemption
from sslprune_jax import pruning
from sslprune_jax import xla_options as xla_options_lib

PyTree = Any
Writer = metric_writers.MetricWriter
SCHEDULES = ('step', 'cosine', 'constant')
SEED_BATCHINGS = ('auto', 'vmap', 'unroll')


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


def _forward(state: TrainState, params, images, train: bool, rng=None):
  # `params` are zero where pruned (see the module docstring).
  variables = {'params': params, 'batch_stats': state.batch_stats}
  if not train:
    return state.apply_fn(variables, images, train=False), state.batch_stats
  outputs, updates = state.apply_fn(
      variables,
      images,
      train=True,
      mutable=['batch_stats'],
      rngs={'dropout': rng},
  )
  return outputs, updates.get('batch_stats', state.batch_stats)


def per_device_train_step(task, exact_reduction: bool = False) -> Callable:
  """The train step as one device runs it, collectives over axis 'data'.

  Batch norm uses the device's own batch; the gradients and the new
  batch-norm statistics are averaged over devices (with
  `parallel.exact_pmean` if `exact_reduction`), and metric sums are added
  over devices. The task updates its own state (identically on every
  device) from the step's outputs.
  """
  pmean = (
      parallel.exact_pmean
      if exact_reduction
      else lambda tree: jax.lax.pmean(tree, parallel.AXIS)
  )

  def step(state: TrainState, batch: dict):
    rng = jax.random.fold_in(
        jax.random.fold_in(state.rng, state.step),
        jax.lax.axis_index(parallel.AXIS),
    )
    prepare_rng, loss_rng, rng = jax.random.split(rng, 3)
    batch = task.prepare(batch, prepare_rng)

    def loss_fn(params):
      outputs, batch_stats = _forward(state, params, batch['image'], True, rng)
      loss, aux = task.loss(outputs, batch, state.task_state, loss_rng)
      return loss, (outputs, batch_stats, aux)

    # Differentiate with respect to a per-device view of the replicated
    # params: the gradients then stay per-device and are averaged explicitly
    # (as pmap and PyTorch DDP do), instead of being summed implicitly by
    # shard_map's transpose of the broadcast.
    params = jax.lax.pcast(state.params, parallel.AXIS, to='varying')
    (_, (outputs, batch_stats, aux)), grads = jax.value_and_grad(
        loss_fn, has_aux=True
    )(params)
    grads = pmean(grads)
    # Keeping one copy of the running statistics (their device average)
    # makes the state replicated and checkpointable as one tree.
    batch_stats = pmean(batch_stats)
    task_state = task.update_state(state.task_state, outputs, batch, aux)
    state = state.apply_gradients(
        grads=grads, batch_stats=batch_stats, task_state=task_state
    )
    metrics = task.train_metrics_of(outputs, batch, aux)
    return state, jax.lax.psum(metrics, parallel.AXIS)

  return step


def seed_batching_for(seed_batching: str, platform: str | None = None) -> str:
  """'vmap' or 'unroll': how one step trains several seeds.

  'auto' is 'unroll' on CPU and 'vmap' elsewhere. `jax.vmap` turns the
  seeds' convolutions into one grouped convolution: one kernel launch for
  all seeds on GPU and TPU, but on XLA:CPU 3-4x slower than the separate
  convolutions (`python -m sslprune_jax.bench --sections=seeds`), and
  adding in another order (equal to separate runs to rounding only).
  'unroll' traces the step once per seed into the same program: on CPU as
  fast as separate runs, and computing what they compute (bit for bit in
  the tests' runs; XLA may fuse the larger program differently).
  """
  if seed_batching not in SEED_BATCHINGS:
    raise ValueError(
        f'Unknown train.seed_batching {seed_batching!r}; '
        f'valid: {SEED_BATCHINGS}.'
    )
  if seed_batching != 'auto':
    return seed_batching
  platform = platform or jax.default_backend()
  return 'unroll' if platform == 'cpu' else 'vmap'


def make_train_step(
    task,
    mesh,
    exact_reduction: bool = False,
    num_seeds: int = 1,
    seed_batching: str = 'auto',
    xla_options: str = 'auto',
    conv_impl: str = 'xla',
) -> Callable:
  """The jitted data-parallel train step: (state, batch) -> (state, metrics).

  `per_device_train_step` under `shard_map` over the mesh; the batch is split
  along 'data', the state is replicated and donated.

  With `num_seeds` = k > 1 the step trains k independent networks at once:
  every leaf of the state has a leading axis of size k (`stack_trees`), every
  batch leaf has shape (k, global batch, ...) and is split along its second
  axis (`parallel.shard_batch(..., num_seeds=k)`), so that each device holds
  its share of every seed's batch, and the per-device step is `jax.vmap`ped
  over the seeds, or unrolled (`seed_batching_for`); the metrics get the
  leading seed axis too.

  `xla_options` names the compiler options of the program
  (`xla_options.CHOICES`; 'auto': the measured best for the mesh's
  platform and the network's convolutions, `conv_impl`: 'xla' or 'onednn',
  as `models.conv_impl_of` resolves the model config's).
  """
  step = per_device_train_step(task, exact_reduction)
  batch_spec = P(parallel.AXIS)
  if num_seeds > 1:
    batch_spec = P(None, parallel.AXIS)
    if (
        seed_batching_for(seed_batching, mesh.devices.flat[0].platform)
        == 'vmap'
    ):
      step = jax.vmap(step)
    else:
      step = _unrolled(step, num_seeds)
  sharded = jax.shard_map(
      step, mesh=mesh, in_specs=(P(), batch_spec), out_specs=(P(), P())
  )
  return jax.jit(
      sharded,
      donate_argnums=0,
      compiler_options=_compiler_options(xla_options, mesh, conv_impl),
  )


def _compiler_options(choice: str, mesh, conv_impl: str) -> dict | None:
  return xla_options_lib.compiler_options(
      choice, mesh.devices.flat[0].platform, conv_impl
  )


def _unrolled(step: Callable, num_seeds: int) -> Callable:
  """`step` over a stacked state and batch, seed after seed."""

  def unrolled(state, batch):
    outs = [
        step(seed_slice(state, i), seed_slice(batch, i))
        for i in range(num_seeds)
    ]
    return stack_trees(outs, jnp.stack)

  return unrolled


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


def make_eval_step(
    task, mesh, xla_options: str = 'auto', conv_impl: str = 'xla'
) -> Callable:
  """The data-parallel eval step: (state, batch) -> (metrics, outputs).

  `batch['mask']` marks real examples; padding does not count. `outputs`
  are the task's per-example `eval_outputs` (with the mask), sharded like
  the batch. `xla_options` and `conv_impl` as in `make_train_step`.
  """

  def step(state: TrainState, batch: dict):
    batch = task.prepare(batch, None)
    outputs, _ = _forward(state, state.params, batch['image'], False)
    metrics = task.eval_metrics_of(outputs, batch, state.task_state)
    kept = task.eval_outputs(outputs, batch)
    if kept:
      kept = {**kept, 'mask': batch['mask']}
    return jax.lax.psum(metrics, parallel.AXIS), kept

  return jax.jit(
      jax.shard_map(
          step,
          mesh=mesh,
          in_specs=(P(), P(parallel.AXIS)),
          out_specs=(P(), P(parallel.AXIS)),
      ),
      compiler_options=_compiler_options(xla_options, mesh, conv_impl),
  )


def evaluate(
    eval_step: Callable,
    state: TrainState,
    batches: Iterator[dict],
    mesh,
    task=None,
) -> dict[str, float]:
  """Runs `eval_step` over an eval iterator; returns the reduced metrics.

  With `task`, its `eval_summary` of the whole split's `eval_outputs` is
  added (metrics such as VOC's mAP that are not means over examples).
  """
  total, kept = None, []
  for batch in batches:
    m, outputs = eval_step(state, parallel.shard_batch(batch, mesh))
    total = m if total is None else total.merge(m)
    if outputs:
      kept.append(jax.tree.map(parallel.to_host, outputs))
  if total is None:
    raise ValueError('The eval split is empty.')
  result = {k: float(v) for k, v in total.compute().items()}
  if kept and task is not None:
    mask = np.concatenate([o['mask'] for o in kept]).astype(bool)
    collected = {
        k: np.concatenate([o[k] for o in kept])[mask]
        for k in kept[0]
        if k != 'mask'
    }
    result.update(
        {k: float(v) for k, v in task.eval_summary(collected).items()}
    )
  return result


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


@dataclasses.dataclass
class RoundResult:
  """A trained round: its final state and, seed by seed, its metrics.

  Attributes:
    state: the final (replicated) state; with several seeds, stacked.
    train_metrics: one dict per seed (one for an ordinary run) of the train
      metrics of the last logged steps.
    eval_metrics: one dict per seed of the metrics on the eval split.
    seconds: wall time of the round (training and evaluation).
  """

  state: TrainState
  train_metrics: list[dict[str, float]]
  eval_metrics: list[dict[str, float]]
  seconds: float


def train_round(
    state: TrainState,
    *,
    train_step: Callable,
    eval_step: Callable,
    train_batches: Iterator[dict],
    eval_batches: Callable[[], Iterator[dict]],
    mesh,
    num_steps: int,
    task=None,
    writer: Writer | Sequence[Writer],
    log_every_steps: int,
    checkpoint_every_steps: int,
    save_checkpoint: Callable[[TrainState], None],
    hooks: Mapping[int, Callable[[TrainState], None]] | None = None,
    description: str = '',
    progress=None,
) -> RoundResult:
  """Trains from `state.step` up to `num_steps`, then evaluates.

  Args:
    state: replicated train state (possibly restored mid-round).
    train_step: from `make_train_step`.
    eval_step: from `make_eval_step`.
    train_batches: this host's batches, starting at `state.step`.
    eval_batches: returns a fresh pass over the eval split.
    mesh: the data mesh.
    num_steps: the global step the round ends at (T: a round that starts
      at a rewind step k trains T - k steps).
    task: the task, for its whole-split eval metrics (`eval_summary`).
    writer: clu metric writer, written at the global step of the training
      run (with the learning rate, if the state has its schedule); for a
      stacked state of k seeds (`make_train_step(num_seeds=k)`), a list of
      k writers, one per seed, and the batches are stacked likewise.
    log_every_steps: how often train metrics are written.
    checkpoint_every_steps: how often `save_checkpoint(state)` is called.
    save_checkpoint: saves a resumable in-round checkpoint.
    hooks: step -> callback(state), called once the state has taken that many
      steps (the rewind point). A hook for step 0 runs before training.
    description: prefix of log lines.
    progress: a `progress.RoundProgress` told of every step and of the
      train metrics (the first seed's) when they are fetched.

  Returns:
    The final state and, per seed, its train and eval metrics.

  Raises:
    NonFiniteLossError: the loss (of any seed) became NaN/inf. The state
      that produced it
      is not checkpointed; earlier checkpoints are kept.
    preemption.Preempted: a preemption notice (SIGTERM) came; the state was
      passed to `save_checkpoint` first, so the caller must wait for that
      save to finish (closing the checkpoint managers does).
  """
  hooks = dict(hooks or {})
  writers = list(writer) if isinstance(writer, Sequence) else [writer]
  num_seeds = len(writers)
  start = int(np.asarray(state.step).reshape(-1)[0])
  t0 = time.time()
  report = periodic_actions.ReportProgress(
      num_train_steps=num_steps, writer=writers[0], every_steps=log_every_steps
  )
  if start == 0 and 0 in hooks:
    hooks[0](state)
  accumulated, last_train = None, [{} for _ in writers]
  with preemption.listening():
    for step in range(start + 1, num_steps + 1):
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        batch = parallel.shard_batch(
            next(train_batches), mesh, num_seeds=num_seeds
        )
        state, metrics = train_step(state, batch)
      accumulated = (
          metrics if accumulated is None else accumulated.merge(metrics)
      )
      report(step)
      if progress is not None:
        progress.update(step)
      preempted = preemption.reached()
      is_log = step % log_every_steps == 0 or step == num_steps
      is_ckpt = preempted or (
          checkpoint_every_steps and step % checkpoint_every_steps == 0
      )
      if is_log or is_ckpt or step in hooks:
        # Metrics are fetched (a host sync) only here; the NaN check
        # piggybacks on that so that a non-finite state is never saved.
        last_train = _per_seed(accumulated, num_seeds)
        accumulated = None
        for i, metrics in enumerate(last_train):
          if not math.isfinite(metrics['loss']):
            seed = f' (seed {i} of {num_seeds})' if num_seeds > 1 else ''
            raise NonFiniteLossError(
                f'{description}: training loss{seed} is {metrics["loss"]} '
                f'at step {step}. Stopped; the checkpoints written so far '
                'are kept. Lower the learning rate or check the data.'
            )
        if is_log:
          # Update `step` (1-based) used the schedule's rate at step - 1.
          rate_fn = getattr(state, 'learning_rate_fn', None)
          rate = (
              {}
              if rate_fn is None
              else {'learning_rate': float(rate_fn(step - 1))}
          )
          for w, metrics in zip(writers, last_train):
            w.write_scalars(
                step, {**{f'train_{k}': v for k, v in metrics.items()}, **rate}
            )
          logging.info(
              '%s step %d/%d: %s',
              description,
              step,
              num_steps,
              last_train[0] if num_seeds == 1 else last_train,
          )
          if progress is not None:
            progress.update(step, last_train[0])
      if step in hooks:
        hooks[step](state)
      if is_ckpt and (step < num_steps or preempted):
        save_checkpoint(state)
      if preempted:
        for w in writers:
          w.flush()
        raise preemption.Preempted(
            f'{description}: SIGTERM at step {step}/{num_steps}, '
            'checkpointed there.'
        )
  eval_metrics = []
  if progress is not None:
    progress.evaluating()
  with report.timed('eval'):
    for i, w in enumerate(writers):
      seed_state = state if num_seeds == 1 else seed_slice(state, i)
      eval_metrics.append(
          evaluate(eval_step, seed_state, eval_batches(), mesh, task)
      )
      # Named as in results.csv and the run's summary: one name per metric.
      w.write_scalars(
          num_steps, {f'test_{k}': v for k, v in eval_metrics[-1].items()}
      )
      w.flush()
  return RoundResult(
      state=state,
      train_metrics=last_train,
      eval_metrics=eval_metrics,
      seconds=time.time() - t0,
  )


def _per_seed(metrics, num_seeds: int) -> list[dict[str, float]]:
  """A clu metrics collection (stacked over seeds if several) computed, as a
  dict per seed."""
  per_seed = (
      [metrics]
      if num_seeds == 1
      else [seed_slice(metrics, i) for i in range(num_seeds)]
  )
  return [{k: float(v) for k, v in m.compute().items()} for m in per_seed]
