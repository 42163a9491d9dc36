"""Where a round starts and how it ends, on disk (`rounds.run_rounds`).

A round starts from the state its caller builds (`start_state`) unless its
in-round checkpoint holds a later one; the seeds trained together resume at
the latest step they all saved (`start_states`). A round ends with its
compact export, then its checkpoint (`save_round_end`); a run killed in
between gets its export written again from that checkpoint
(`rebuild_round_files`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from absl import logging
from etils import epath
import jax

from sslprune_jax import checkpoint
from sslprune_jax import export
from sslprune_jax import parallel
from sslprune_jax import pruning
from sslprune_jax import rundir
from sslprune_jax import train
from sslprune_jax.experiment import Experiment
from sslprune_jax.rundir import sources

PyTree = Any


@dataclasses.dataclass
class Member:
  """One seed of the runs that `rounds.run_rounds` trains together."""

  exp: Experiment
  workdir: epath.Path
  ckpts: checkpoint.RunCheckpoints
  summary_writer: Any
  completed: list[int]
  results: list[dict] = dataclasses.field(default_factory=list)


def rebuild_round_files(member: Member, r: int) -> None:
  """Makes what a finished round derives from its checkpoint whole again.

  A run killed after round `r`'s end-of-round checkpoint may have left its
  in-round checkpoints behind, and its export unwritten or cut short.
  """
  member.ckpts.clear_in_round(r)
  where = rundir.export_dir(member.workdir, r)
  try:
    export.load(str(where))
    return
  except (FileNotFoundError, ValueError) as e:
    logging.warning(
        'Round %d: writing its export again (%s).', r, str(e).split('. ')[0]
    )
  saved = sources.restore(
      lambda: member.ckpts.load_round(r),
      f'end of round {r}',
      rundir.round_end_dir(member.workdir, r),
  )
  export.save(
      str(where),
      {'params': saved['params'], 'batch_stats': saved['batch_stats']},
      saved['mask'],
      pruning.nm.round_pattern(member.exp.config.pruning, r),
  )


def save_round_end(
    ckpts: checkpoint.RunCheckpoints,
    workdir: epath.Path,
    round_idx: int,
    state: train.TrainState,
    row: dict,
    *,
    with_task_state: bool = False,
    pattern: tuple[int, int] | None = None,
) -> dict:
  """Saves a finished round: its compact export, then its checkpoint.

  With `with_task_state`, the checkpoint keeps the task's state too (for a
  next round that starts from it: `saves_task_state`); with an N:M
  `pattern`, the export stores the kernels that follow it as N:M.

  Returns:
    `row` with 'export_bytes', the size of the export (only the weights
    left; see `sslprune_jax.export`), as saved with the checkpoint.
  """
  network = {'params': state.params, 'batch_stats': state.batch_stats}
  row = {
      **row,
      'export_bytes': export.save(
          str(rundir.export_dir(workdir, round_idx)),
          network,
          state.mask,
          pattern,
      ),
  }
  saved = {**network, 'mask': state.mask}
  if with_task_state:
    saved['task_state'] = state.task_state
  ckpts.save_round(round_idx, saved, row)
  return row


def start_states(
    members: list[Member], r: int, start
) -> list[train.TrainState]:
  """Every member's start of round `r`, resumed at one common step.

  Seeds save their in-round checkpoints one after another, so a run killed
  in between leaves some a checkpoint ahead; each keeps its previous one
  too, and all resume from the latest step they share.
  """
  states = [start(m.exp, m.ckpts, r) for m in members]
  steps = [int(s.step) for s in states]
  if len(set(steps)) == 1:
    return states
  common = min(steps)
  if common and all(common in m.ckpts.in_round_steps(r) for m in members):
    logging.info(
        'Round %d: seeds saved up to steps %s; resuming all at ' 'step %d.',
        r,
        steps,
        common,
    )
    return [
        s
        if step == common
        else sources.restore(
            lambda m=m, s=s: m.ckpts.restore_in_round(r, s, common),
            f'in-round state of round {r}',
            rundir.in_round_dir(m.workdir, r),
        )
        for s, step, m in zip(states, steps, members)
    ]
  logging.warning(
      "Round %d: the seeds' in-round checkpoints (steps %s) "
      'share no step; restarting the round.',
      r,
      steps,
  )
  for m in members:
    m.ckpts.clear_in_round(r)
  return [start(m.exp, m.ckpts, r) for m in members]


def start_state(
    exp: Experiment,
    ckpts: checkpoint.RunCheckpoints,
    round_idx: int,
    variables: dict,
    mask: PyTree,
    task_state: PyTree,
    *,
    step: int = 0,
    optimizer: train.Optimizer | None = None,
) -> train.TrainState:
  """The replicated train state of a round that starts from `variables`
  under `mask` at global step `step`, or the round's in-round checkpoint if
  it has one.

  Args:
    exp: the experiment.
    ckpts: its checkpoints.
    round_idx: the round.
    variables: 'params' and 'batch_stats' to start from.
    mask: the round's mask.
    task_state: the task's state to start from.
    step: the global step the round starts at (its schedule's too).
    optimizer: the round's optimiser (default: `exp.optimizer`).
  """
  optimizer = optimizer or exp.optimizer
  state = parallel.replicate(
      train.create_train_state(
          exp.model,
          variables,
          mask,
          optimizer.tx,
          jax.random.fold_in(exp.rngs['state'], round_idx),
          task_state,
          step=step,
          learning_rate_fn=optimizer.learning_rate_fn,
      ),
      exp.mesh,
  )
  restored = sources.restore(
      lambda: ckpts.restore_in_round(round_idx, state),
      f'in-round state of round {round_idx}',
      rundir.in_round_dir(ckpts.workdir, round_idx),
  )
  if restored is None:
    return state
  logging.info('Round %d: resuming at step %d.', round_idx, int(restored.step))
  return restored
