"""Iterative magnitude pruning: train -> prune -> reset, round after round.

Round 0 trains the dense network for T steps. Every later round starts from
a mask made by pruning the previous round's final weights, and from weights
reset under that mask (`pruning.reset`):

  rewind     the training state of round 0 at step k (after
             `pruning.rewind_samples` samples): weights, batch-norm statistics
             and task state; the round continues that training run from step
             k to T, its learning-rate schedule included (late rewinding,
             Frankle et al. 2020; as open_lth's `lottery/runner.py`, which
             trains every level from the rewind step to the end).
  reinit     fresh weights; the round trains T steps from step 0.
  lr_rewind  the previous round's final weights (and statistics and task
             state); the schedule is replayed from step k to T (learning-rate
             rewinding, Renda et al. 2020).
  finetune   the previous round's final weights; T - k steps at the
             schedule's final learning rate (Renda et al. 2020's
             fine-tuning).

Every round starts with fresh optimiser momentum, as open_lth's levels do.

Everything a round needs is recomputed from the checkpoints of the rounds
before it, so a run killed at any point and started again with the same
command resumes where it stopped and ends with the same masks. This module
is the policy alone; the loop is `rounds`, the assembly `experiment`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import ml_collections

from sslprune_jax import checkpoint
from sslprune_jax import models
from sslprune_jax import pruning
from sslprune_jax import round_state
from sslprune_jax import rounds
from sslprune_jax import rundir
from sslprune_jax import train
from sslprune_jax import validation
from sslprune_jax.experiment import Experiment
from sslprune_jax.experiment import build
from sslprune_jax.source_network import own_seed_init
from sslprune_jax.experiment import seed_configs
from sslprune_jax.rundir import sources

PyTree = Any


def run(config: ml_collections.ConfigDict, workdir: str) -> list[list[dict]]:
  """Runs (or resumes) the pruning rounds of `config` in `workdir`.

  The `config.num_seeds` = k seeds `config.seed`, ..., `config.seed + k - 1`
  are trained together, in one step over all seeds (`train.seed_batching`);
  with k > 1, seed s keeps its checkpoints and results in
  `workdir/seed_<s>/`.

  Args:
    config: an experiment config (see configs/labels.py).
    workdir: where checkpoints, metrics and results.csv go.

  Returns:
    For each seed, one dict per round: round, fraction_left (of the
    prunable weights), remaining, test/train accuracy and loss, seconds,
    sparsity.
  """
  exps = [build(own_seed_init(c)) for c in seed_configs(config)]
  return rounds.run_rounds(
      exps,
      workdir,
      rounds=range(config.pruning.num_rounds + 1),
      start=round_start,
      save_rewind=config.pruning.reset == 'rewind',
      stop=functools.partial(_target_reached, config),
  )


def _target_reached(config, row: dict) -> bool:
  target = config.pruning.target_fraction_left
  return bool(target) and row['fraction_left'] <= target


def round_start(
    exp: Experiment, ckpts: checkpoint.RunCheckpoints, round_idx: int
) -> train.TrainState:
  """The replicated state round `round_idx` trains from.

  Round 0 starts from the initial variables at step 0. A later round prunes
  the end of the previous round and resets the survivors
  (`pruning.reset`, see the module docstring), at step 0 (`reinit`) or k.
  Either way, an in-round checkpoint of this round, if any, takes over
  (resumption).
  """
  reset = exp.config.pruning.reset
  if round_idx == 0:
    mask, variables = exp.start_mask, exp.variables
    task_state = exp.task_state
  else:
    prev = sources.restore(
        lambda: ckpts.restore_round(round_idx - 1, exp.round_target()),
        f'end of round {round_idx - 1}',
        rundir.round_end_dir(ckpts.workdir, round_idx - 1),
    )
    mask = next_mask(
        exp.config,
        prev,
        exp.prunable,
        jax.random.fold_in(exp.rngs['prune'], round_idx),
        round_idx,
    )
    variables, task_state = _reset(
        exp,
        ckpts,
        prev,
        mask,
        jax.random.fold_in(exp.rngs['reinit'], round_idx),
        round_idx,
    )
  later = round_idx > 0 and reset != 'reinit'
  return round_state.start_state(
      exp,
      ckpts,
      round_idx,
      variables,
      mask,
      task_state,
      step=exp.rewind_step if later else 0,
      optimizer=(
          exp.final_rate_optimizer if later and reset == 'finetune' else None
      ),
  )


def next_mask(
    config, prev: dict, prunable: PyTree, rng: jax.Array, round_idx: int
) -> PyTree:
  """The mask of round `round_idx` > 0, by the configured method.

  'magnitude', 'random' and 'random_natural' prune the previous round's final
  weights and mask; 'random_like' draws a random mask with, layer by layer,
  the sparsity of the same round of the run in `pruning.reference_workdir`.
  Under `pruning.granularity='nm'`, 'magnitude' and 'random' make round
  `round_idx`'s n:m mask within the previous one (`pruning.nm`); under
  'channel', they remove whole channels by score or at random
  (`pruning.channels`).
  """
  p = config.pruning
  if p.get('granularity', 'unstructured') == 'channel':
    groups = models.channel_groups(config.model, prev['params'])
    scores = (
        pruning.channels.random_scores(rng, groups, prev['mask'])
        if p.method == 'random'
        else pruning.channels.channel_scores(
            prev['params'], prev['mask'], groups, p.channel_score
        )
    )
    return pruning.channels.prune_channels(
        scores, prev['mask'], groups, p.fraction, p.channel_scope
    )
  if p.get('granularity', 'unstructured') == 'nm':
    n, m = pruning.nm.round_pattern(p, round_idx)
    if p.method == 'random':
      return pruning.random_nm_prune(rng, prev['mask'], prunable, n, m)
    return pruning.nm_prune(prev['params'], prev['mask'], prunable, n, m)
  if p.method == 'random_like':
    return pruning.random_prune_like(
        rng,
        sources.reference_mask(p.reference_workdir, round_idx, prev['mask']),
        prunable,
    )
  if p.method == 'magnitude':
    return pruning.magnitude_prune(
        prev['params'], prev['mask'], prunable, p.fraction
    )
  if p.method == 'random':
    return pruning.random_prune(rng, prev['mask'], prunable, p.fraction)
  return pruning.random_natural_prune(
      rng,
      prev['params'],
      prev['mask'],
      prunable,
      p.fraction,
      p.natural_threshold,
  )


def _reset(
    exp: Experiment,
    ckpts: checkpoint.RunCheckpoints,
    prev: dict,
    mask: PyTree,
    rng: jax.Array,
    round_idx: int,
) -> tuple[dict, PyTree]:
  """Variables and task state a round > 0 starts from, under its new mask.

  Rewinding restores the whole training state of the rewind point (the
  weights, batch-norm statistics and the task's state, such as NPID's
  memory bank); `lr_rewind` and `finetune` keep those the previous round
  (`prev`) ended with; re-initialising draws them afresh.
  """
  if exp.config.pruning.reset in validation.KEEPS_FINAL:
    return (
        {
            'params': pruning.apply_mask(prev['params'], mask),
            'batch_stats': prev['batch_stats'],
        },
        prev.get('task_state', exp.task_state),
    )
  if exp.config.pruning.reset == 'rewind':
    initial = exp.round_target()
    saved = sources.restore(
        lambda: ckpts.restore_rewind(
            {
                'params': initial['params'],
                'batch_stats': initial['batch_stats'],
                'task_state': exp.task_state,
            }
        ),
        'rewind point',
        rundir.rewind_dir(ckpts.workdir),
        advice=sources.REWIND_ADVICE.format(workdir=ckpts.workdir),
    )
    return (
        {
            'params': pruning.rewind(saved['params'], mask),
            'batch_stats': saved['batch_stats'],
        },
        saved['task_state'],
    )
  # Batch-norm statistics start at their initial values either way.
  return (
      {
          'params': pruning.reinit(
              lambda k: exp.init_fn(k)['params'], rng, mask
          ),
          'batch_stats': exp.variables.get('batch_stats', {}),
      },
      exp.task.init_state(jax.random.fold_in(exp.rngs['task'], round_idx)),
  )
