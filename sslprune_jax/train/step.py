"""The jitted, data-parallel train and eval steps, one seed or several.

Pure functions of (state, batch): the round loop (`train.loop`) drives them.
"""

from __future__ import annotations

from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from sslprune_jax import parallel
from sslprune_jax import xla_options as xla_options_lib
from sslprune_jax.train.state import seed_slice
from sslprune_jax.train.state import stack_trees
from sslprune_jax.train.state import TrainState

SEED_BATCHINGS = ('auto', 'vmap', 'unroll')


def _forward(state: TrainState, params, images, train: bool, rng=None):
  # `params` are zero where pruned (see `train.state`).
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
