"""The generic round loop: train round after round, each resumable, and
record each (checkpoint, export, results.csv row, TensorBoard summaries).

What a round starts from is the caller's (`lottery` prunes and rewinds,
`evaluation.retrain` loads another run's masks); this module owns the rest:
opening every seed's checkpoints and writers, the training of a round with
its progress display and preemption, and writing each round's end. Seeds
are always a list, trained together in one step.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

from clu import metric_writers
from etils import epath
import jax
import ml_collections
import numpy as np

from sslprune_jax import checkpoint
from sslprune_jax import data
from sslprune_jax import models
from sslprune_jax import parallel
from sslprune_jax import preemption
from sslprune_jax import progress
from sslprune_jax import pruning
from sslprune_jax import round_state
from sslprune_jax import rundir
from sslprune_jax import summaries
from sslprune_jax import train
from sslprune_jax.experiment import Experiment
from sslprune_jax.experiment import channel_groups_of
from sslprune_jax.experiment import images_per_step
from sslprune_jax.experiment import saves_task_state
from sslprune_jax.experiment import train_batches
from sslprune_jax.rundir import results as results_csv
from sslprune_jax.rundir import sources


def run_rounds(
    exps: list[Experiment],
    workdir: str,
    *,
    rounds,
    start: Callable[
        [Experiment, checkpoint.RunCheckpoints, int], train.TrainState
    ],
    save_rewind: bool = False,
    stop: Callable[[dict], bool] = lambda row: False,
) -> list[list[dict]]:
  """Trains one round after another, each resumable, and records them.

  The round loop of a pruning run, and of the evaluations that train a
  pruning run's subnetworks again (`evaluation.retrain`): only where each
  round starts from differs.

  Args:
    exps: the experiments of the seeds to train together in one step
      (`experiment.seed_configs`; vmapped or unrolled:
      `train.seed_batching`). One seed keeps its state in `workdir`; with
      several, each keeps it in `rundir.seed_dir(workdir, seed)`.
    workdir: where checkpoints, metrics and results.csv go.
    rounds: the round numbers, in order.
    start: (experiment, its checkpoints, round) -> the replicated state the
      round trains from (resuming from an in-round checkpoint if there is
      one).
    save_rewind: whether round 0 saves the rewind point.
    stop: row -> whether no further round is needed (asked of the first
      seed; every seed has the same pruning schedule).

  Returns:
    For each seed, one dict per round (see `lottery.run`).
  """
  config, lead = exps[0].config, exps[0]
  is_main = jax.process_index() == 0
  with contextlib.ExitStack() as stack:
    # Seeds save one after another: each keeps its previous in-round
    # checkpoint too (`round_state.start_states`).
    members = [
        _open_member(stack, e, where, in_round_keep=min(len(exps), 2))
        for e, where in zip(exps, _member_dirs(exps, workdir))
    ]
    options = config.train.get('xla_options', 'auto')
    conv_impl = models.conv_impl_of(config.model)
    train_step = train.make_train_step(
        lead.task,
        lead.mesh,
        config.train.get('exact_reduction', False),
        num_seeds=len(exps),
        seed_batching=config.train.get('seed_batching', 'auto'),
        xla_options=options,
        conv_impl=conv_impl,
    )
    eval_step = train.make_eval_step(lead.task, lead.mesh, options, conv_impl)
    rounds = list(rounds)
    shown = progress.Progress(
        len(rounds),
        steps_per_round=lead.num_steps - lead.rewind_step,
        images_per_step=images_per_step(config) * len(exps),
        enabled=is_main,
    )
    for position, r in enumerate(rounds):
      if all(r in m.completed for m in members):
        for m in members:
          m.results.append(
              sources.restore(
                  lambda: m.ckpts.round_metrics(r),
                  f'end of round {r}',
                  rundir.round_end_dir(m.workdir, r),
              )
          )
          round_state.rebuild_round_files(m, r)
        row = members[0].results[-1]
      else:
        row = _train_round(
            members,
            r,
            start,
            train_step,
            eval_step,
            save_rewind,
            shown,
            position,
        )
      if stop(row):
        break
    # Written again from the checkpoints' rows, in case a run was killed
    # between a round's checkpoint and its row.
    for m in members:
      results_csv.write(m.workdir, m.results, is_writer=is_main)
  return [m.results for m in members]


def _member_dirs(exps: list[Experiment], workdir: str) -> list[epath.Path]:
  """Where each seed keeps its state; with several seeds, the top directory
  records the whole config (num_seeds included), so that resuming it with
  other seeds is refused too."""
  top = rundir.path(workdir)
  top.mkdir(parents=True, exist_ok=True)
  if len(exps) == 1:
    return [top]
  config = exps[0].config
  checkpoint.check_or_write_config(
      str(top),
      ml_collections.ConfigDict(
          {**config.to_dict(), 'seed': config.seed, 'num_seeds': len(exps)}
      ),
  )
  return [rundir.seed_dir(workdir, e.config.seed) for e in exps]


def _open_member(
    stack: contextlib.ExitStack,
    exp: Experiment,
    where: epath.Path,
    in_round_keep: int,
) -> round_state.Member:
  """One seed's checkpoints and round-by-round writer, closed by `stack`."""
  where.mkdir(parents=True, exist_ok=True)
  checkpoint.check_or_write_config(str(where), exp.config)
  ckpts = stack.enter_context(
      checkpoint.RunCheckpoints(str(where), in_round_keep=in_round_keep)
  )
  writer = metric_writers.create_default_writer(
      str(rundir.rounds_events_dir(where)),
      just_logging=jax.process_index() != 0,
  )
  stack.callback(writer.close)
  return round_state.Member(
      exp=exp,
      workdir=where,
      ckpts=ckpts,
      summary_writer=writer,
      completed=ckpts.completed_rounds(),
  )


def _train_round(
    members: list[round_state.Member],
    r: int,
    start,
    train_step,
    eval_step,
    save_rewind: bool,
    shown: progress.Progress,
    position: int,
) -> dict:
  """Trains round `r` of every member at once; returns the first's row."""
  num_seeds = len(members)
  lead = members[0].exp
  config = lead.config
  is_main = jax.process_index() == 0
  states = round_state.start_states(members, r, start)
  counts = [
      pruning.count(s.mask, m.exp.prunable) for s, m in zip(states, members)
  ]
  start_step = int(
      states[0].step
  )  # Every member's (`round_state.start_states`).
  state = (
      states[0]
      if num_seeds == 1
      else parallel.replicate(train.stack_trees(states), lead.mesh)
  )
  del states
  seed_state = (lambda s, i: s) if num_seeds == 1 else train.seed_slice
  hooks = {}
  if r == 0 and save_rewind:

    def save_rewind_point(s):
      for i, m in enumerate(members):
        own = seed_state(s, i)
        m.ckpts.save_rewind(
            lead.rewind_step,
            {
                'params': own.params,
                'batch_stats': own.batch_stats,
                'task_state': own.task_state,
            },
        )

    hooks[lead.rewind_step] = save_rewind_point

  def save_in_round(s):
    for i, m in enumerate(members):
      m.ckpts.save_in_round(r, seed_state(s, i))

  writers = [
      metric_writers.create_default_writer(
          str(rundir.round_events_dir(m.workdir, r)), just_logging=not is_main
      )
      for m in members
  ]
  batches = [
      train_batches(
          m.exp.config,
          m.exp.task,
          seed=_data_seed(m.exp.config, r),
          start_step=start_step,
      )
      for m in members
  ]
  remaining, total = counts[0]
  seeds = f', {num_seeds} seeds' if num_seeds > 1 else ''
  bar = shown.round(
      position,
      f'round {r} ({position + 1} of {shown.num_rounds}, '
      f'{100 * remaining / total:.3g}% left)',
      start_step=start_step,
      num_steps=lead.num_steps,
  )
  try:
    result = train.train_round(
        state,
        train_step=train_step,
        eval_step=eval_step,
        train_batches=(
            batches[0] if num_seeds == 1 else _stacked_batches(batches)
        ),
        eval_batches=lambda: data.eval_iterator(
            config.data, global_batch_size=config.train.eval_batch_size
        ),
        mesh=lead.mesh,
        num_steps=lead.num_steps,
        task=lead.task,
        writer=writers[0] if num_seeds == 1 else writers,
        log_every_steps=config.log_every_steps,
        checkpoint_every_steps=config.checkpoint_every_steps,
        save_checkpoint=save_in_round,
        hooks=hooks,
        description=f'round {r} ({100 * remaining / total:.2f}% left{seeds})',
        progress=bar,
    )
  finally:
    bar.close()
    for w in writers:
      w.close()
  for i, m in enumerate(members):
    final = seed_state(result.state, i)
    remaining, total = counts[i]
    if r in m.completed:  # Trained again only alongside the other seeds.
      row = sources.restore(
          lambda: m.ckpts.round_metrics(r),
          f'end of round {r}',
          rundir.round_end_dir(m.workdir, r),
      )
    else:
      row = {
          'round': r,
          'fraction_left': remaining / total,
          'remaining': remaining,
          # Every task reports an accuracy or a loss or both; NaN if not.
          **{f'test_{k}': math.nan for k in ('accuracy', 'loss')},
          **{f'test_{k}': v for k, v in result.eval_metrics[i].items()},
          **{f'train_{k}': math.nan for k in ('accuracy', 'loss')},
          **{f'train_{k}': v for k, v in result.train_metrics[i].items()},
          'seconds': result.seconds,
          'sparsity': pruning.sparsity_report(
              final.mask,
              m.exp.prunable,
              pruning.nm.round_pattern(m.exp.config.pruning, r),
              channel_groups_of(m.exp.config, final.params),
          ),
      }
      row = round_state.save_round_end(
          m.ckpts,
          m.workdir,
          r,
          final,
          row,
          with_task_state=saves_task_state(m.exp.config, m.exp.task_state),
          pattern=pruning.nm.round_pattern(m.exp.config.pruning, r),
      )
      preemption.kill_point(f'round_saved:{r}')
    m.ckpts.clear_in_round(r)
    m.results.append(row)
    summaries.write_round(
        m.summary_writer,
        r,
        m.results,
        final.mask,
        m.exp.prunable,
        {k: row[k] for k in results_csv.fields([row])[1:]},
    )
    results_csv.write(m.workdir, m.results, is_writer=is_main)
    if is_main:
      seed = (
          f' (seed {m.exp.config.seed}, {m.workdir})' if num_seeds > 1 else ''
      )
      print(
          f'\nRound {r} done{seed}.\n' + results_csv.table(m.results),
          flush=True,
      )
  return members[0].results[-1]


def _stacked_batches(iterators):
  """One batch of every seed's iterator per step, stacked along axis 0."""
  for batches in zip(*iterators):
    yield train.stack_trees(batches)


def _data_seed(config, round_idx: int) -> int:
  """The seed of round `round_idx`'s data order and augmentation.

  `pruning.data_order='per_round'` (the default): each round draws its own
  order, as open_lth does unless a `data_order_seed` is set (its
  `training/train.py`), but reproducibly, so that resumption is exact.
  'same': every round reads round 0's stream, as open_lth with a
  `data_order_seed`, so a rewound round sees at steps k..T-1 the batches
  round 0 saw there. Either way a round that starts at step k reads its
  stream from position k, so epochs end where they ended in round 0.
  """
  if config.pruning.get('data_order', 'per_round') == 'same':
    round_idx = 0
  return int(
      np.random.SeedSequence([config.seed, round_idx]).generate_state(1)[0]
  )
