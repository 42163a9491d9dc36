"""The sections of a run's work outside its train step.

Pruning and rewinding a big tree (section 4), the between-round work of a
quick run (5) and its time to the first step (9).
"""

from __future__ import annotations

import functools
import math
import statistics
import tempfile
import time

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from sslprune_jax import checkpoint
from sslprune_jax import experiment
from sslprune_jax import lottery
from sslprune_jax import models
from sslprune_jax import parallel
from sslprune_jax import pruning
from sslprune_jax import round_state
from sslprune_jax import train
from sslprune_jax.bench.networks import _model
from sslprune_jax.bench.networks import get_spec
from sslprune_jax.bench.networks import quick_config
from sslprune_jax.bench.networks import random_batch
from sslprune_jax.bench.networks import Spec
from sslprune_jax.bench.settings import Settings
from sslprune_jax.bench.timing import _Cache
from sslprune_jax.bench.timing import _times


def _random_params(spec: Spec) -> dict:
  """The network's parameter shapes (no init computed), random normal."""
  model = _model(spec)
  shapes = jax.eval_shape(
      functools.partial(
          train.init_variables, model, image_shape=spec.image_shape
      ),
      jax.random.PRNGKey(0),
  )['params']
  rng = np.random.default_rng(0)
  return jax.tree.map(
      lambda x: jnp.asarray(rng.standard_normal(x.shape, np.float32), x.dtype),
      shapes,
  )


def section_prune(settings: Settings) -> dict:
  """Section 4: global magnitude pruning and rewinding of a big tree.

  The tree has the prune model's real parameter shapes with random normal
  values. JAX's caches are cleared first, so that the first pruning (of
  the full mask, 20%) compiles, as a run's first pruning does; it is
  reported apart. The timed ones prune 20% of what that left. Rewinding
  is timed likewise: its first call apart, then the fastest of the others.
  """
  jax.clear_caches()
  spec = get_spec(settings.prune_model, settings)
  params = _random_params(spec)
  saved = jax.tree.map(lambda x: x * 0.5, params)
  prunable = pruning.prunable_tree(params)
  full = pruning.init_mask(params)
  jax.block_until_ready((params, saved, full))
  [prune_first] = _times(
      lambda: pruning.magnitude_prune(params, full, prunable, 0.2), 1
  )
  mask = pruning.magnitude_prune(params, full, prunable, 0.2)
  remaining, total = pruning.count(mask, prunable)
  new_mask = pruning.magnitude_prune(params, mask, prunable, 0.2)
  repeats = max(settings.prune_repeats, 1)
  prune_all = _times(
      lambda: pruning.magnitude_prune(params, mask, prunable, 0.2), repeats
  )
  rewind_first, *rewind_all = _times(
      lambda: pruning.rewind(saved, new_mask), repeats + 1
  )
  return {
      'tree': settings.prune_model,
      'num_weights': int(sum(x.size for x in jax.tree.leaves(params))),
      'num_prunable': total,
      'remaining_before': remaining,
      'remaining_after': pruning.count(new_mask, prunable)[0],
      'prune_s': min(prune_all),
      'prune_s_all': prune_all,
      'prune_s_first_call': prune_first,
      'rewind_s': min(rewind_all),
      'rewind_s_all': rewind_all,
      'rewind_s_first_call': rewind_first,
  }


def section_round(cache: _Cache) -> dict:
  """Section 5: the per-round overhead of a quick run.

  A quick run's between-round work done for real on its network (in a
  temporary workdir, through `lottery.round_start` as `lottery.run` does it): save
  the end-of-round checkpoint and the compact export, then start the next
  round (restore that checkpoint, prune, restore the rewind point, rewind,
  build and replicate the state). JAX's caches are cleared first, so that
  the first round transition compiles what a fresh run compiles. The
  round's time is the measured step time x the round's steps + the
  measured eval step time x the eval batches.
  """
  settings = cache.settings
  step = cache.step('quick')
  config = quick_config(settings.data_dir, settings.conv_impl)
  config.train.batch_size = step['network']['batch_size']
  jax.clear_caches()
  exp = experiment.build(config)
  num_steps, _ = experiment.round_schedule(config, exp.info.num_train_examples)
  eval_batch = config.train.eval_batch_size
  num_eval_batches = math.ceil(exp.info.num_eval_examples / eval_batch)
  transitions = []
  with tempfile.TemporaryDirectory() as workdir:
    ckpts = checkpoint.RunCheckpoints(workdir)
    try:
      state = lottery.round_start(exp, ckpts, 0)
      pruning.count(state.mask, exp.prunable)
      ckpts.save_rewind(
          exp.rewind_step,
          {
              'params': state.params,
              'batch_stats': state.batch_stats,
              'task_state': state.task_state,
          },
      )
      for r in range(config.pruning.num_rounds):
        t0 = time.perf_counter()
        round_state.save_round_end(
            ckpts,
            epath.Path(workdir),
            r,
            state,
            {'round': r, 'test_accuracy': 0.0},
        )
        t1 = time.perf_counter()
        state = jax.block_until_ready(lottery.round_start(exp, ckpts, r + 1))
        t2 = time.perf_counter()
        transitions.append(
            {
                'save_round_s': t1 - t0,
                'round_start_s': t2 - t1,
                'total_s': t2 - t0,
            }
        )
      pieces = _round_pieces(exp, ckpts, config, settings.prune_repeats)
    finally:
      ckpts.close()
    eval_s = _eval_step_seconds(exp, state, eval_batch, settings)
  overhead = statistics.mean(t['total_s'] for t in transitions)
  train_s = step['masked']['step_s'] * num_steps
  round_s = train_s + eval_s * num_eval_batches
  return {
      'network': step['network'],
      'num_steps': num_steps,
      'train_examples': exp.info.num_train_examples,
      'step_s': step['masked']['step_s'],
      'eval_step_s': eval_s,
      'eval_batch_size': eval_batch,
      'num_eval_batches': num_eval_batches,
      'round_s': round_s,
      'transitions': transitions,
      'overhead_s': overhead,
      'overhead_fraction': overhead / round_s,
      'pieces_warm': pieces,
      'note': (
          "overhead_s: mean over the quick run's round transitions "
          '(the first compiles the pruning program); not counted: '
          'in-round checkpoints (asynchronous) and the one-off rewind '
          'point save.'
      ),
  }


def _round_pieces(exp, ckpts, config, repeats: int) -> dict:
  """Warm times of the parts of a round transition (best of `repeats`)."""
  r = config.pruning.num_rounds
  target = exp.round_target()
  prev = ckpts.restore_round(r - 1, target)
  rewind_target = {
      'params': target['params'],
      'batch_stats': target['batch_stats'],
      'task_state': exp.task_state,
  }
  mask = pruning.magnitude_prune(
      prev['params'], prev['mask'], exp.prunable, config.pruning.fraction
  )
  saved = ckpts.restore_rewind(rewind_target)
  parts = {
      'restore_round_s': lambda: ckpts.restore_round(r - 1, target),
      'prune_s': lambda: pruning.magnitude_prune(
          prev['params'], prev['mask'], exp.prunable, config.pruning.fraction
      ),
      'restore_rewind_s': lambda: ckpts.restore_rewind(rewind_target),
      'rewind_s': lambda: pruning.rewind(saved['params'], mask),
  }
  return {name: min(_times(fn, max(repeats, 1))) for name, fn in parts.items()}


def _eval_step_seconds(
    exp, state, eval_batch: int, settings: Settings
) -> float:
  """Best time of one eval step on a random batch (after compiling)."""
  spec = get_spec('quick', settings)
  eval_step = train.make_eval_step(
      exp.task,
      exp.mesh,
      settings.xla_options,
      models.conv_impl_of(exp.config.model),
  )
  batch = parallel.shard_batch(
      random_batch(spec, batch_size=eval_batch, eval_mask=True), exp.mesh
  )
  fn = lambda: eval_step(state, batch)[0]
  jax.block_until_ready(fn())
  return min(_times(fn, max(settings.eval_repeats, 1)))


def section_startup(cache: _Cache) -> dict:
  """Section 9: time to the first step, and a finished run's whole cost.

  On the `configs/labels.py:quick` config, with JAX's caches cleared
  before each part so that everything compiles as in a fresh process:
  `experiment.build` (config checks, dataset metadata, model, shapes), compiling
  the train step and the eval step (`.lower().compile()` on the first
  round's state), and `lottery.run` over a run whose every round is finished
  (it restores each round's metrics and trains nothing).
  """
  settings = cache.settings
  spec = get_spec('quick', settings)
  config = spec.config
  out = {}
  jax.clear_caches()
  t0 = time.perf_counter()
  exp = experiment.build(config)
  out['build_s'] = time.perf_counter() - t0
  with tempfile.TemporaryDirectory() as workdir:
    checkpoint.check_or_write_config(workdir, config)
    ckpts = checkpoint.RunCheckpoints(workdir)
    try:
      t0 = time.perf_counter()
      state = jax.block_until_ready(lottery.round_start(exp, ckpts, 0))
      out['first_state_s'] = time.perf_counter() - t0
      batch = parallel.shard_batch(random_batch(spec), exp.mesh)
      eval_batch = parallel.shard_batch(
          random_batch(
              spec, batch_size=config.train.eval_batch_size, eval_mask=True
          ),
          exp.mesh,
      )
      for name, make, b in (
          ('train_step_compile_s', train.make_train_step, batch),
          ('eval_step_compile_s', train.make_eval_step, eval_batch),
      ):
        step = make(
            exp.task,
            exp.mesh,
            xla_options=settings.xla_options,
            conv_impl=models.conv_impl_of(config.model),
        )
        t0 = time.perf_counter()
        step.lower(state, b).compile()
        out[name] = time.perf_counter() - t0
      for r in range(config.pruning.num_rounds + 1):
        round_state.save_round_end(
            ckpts,
            epath.Path(workdir),
            r,
            state,
            {'round': r, 'test_accuracy': 0.0},
        )
    finally:
      ckpts.close()
    jax.clear_caches()
    t0 = time.perf_counter()
    lottery.run(config, workdir)
    out['finished_run_s'] = time.perf_counter() - t0
  out['to_first_step_s'] = (
      out['build_s'] + out['first_state_s'] + out['train_step_compile_s']
  )
  return out
