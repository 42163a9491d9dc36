"""One round of training: steps, logging, preemption and evaluation."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Iterator, Mapping, Sequence

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import jax
import numpy as np

from sslprune_jax import parallel
from sslprune_jax import preemption
from sslprune_jax.train.state import seed_slice
from sslprune_jax.train.state import TrainState
from sslprune_jax.train.step import evaluate

Writer = metric_writers.MetricWriter


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
