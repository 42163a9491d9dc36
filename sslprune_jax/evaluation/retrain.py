"""Training a pruning run's subnetworks again, round by round.

For each finished round r of the pruning run in `config.source.workdir`,
the subnetwork (a mask, and the weights it starts from) is trained from
scratch with this config's task, data and schedule, and evaluated; the mask
stays fixed. `results.csv` then has one line per source round, in the same
form as a pruning run's, so `report` plots it against the fraction of
weights left.

What the subnetwork is made of (`config.source`):

  init   'winning_ticket': the source's rewind-point weights under the mask
         (late rewinding); the run continues from the rewind step, as a
         rewound pruning round does (see `sslprune_jax.lottery`): it starts at
         the step k after which this config has seen the source's
         `pruning.rewind_samples` samples, with the schedule's rate of step
         k, and trains steps k..T-1. 'reinit': a fresh random
         initialisation under the mask, trained from step 0; 'final': the
         weights round r ended with (finetuning a pruned network on another
         task, e.g. VOC07), from step 0.
  mask   'source': round r's mask; 'random_global_natural': the paper's
         random baseline (section 4.3, Fig. 3): one global mask drawn in one
         shot from the source's dense trained network (round 0) with round
         r's number of weights, the weights that converged to |w| <
         `pruning.natural_threshold` removed first and the rest at random
         across all layers (`pruning.random_natural_oneshot`);
         'random_like': random, with round r's number of weights in every
         layer (for an N:M source, a random mask of round r's n:m; for a
         channel-pruned one, round r's number of channels in every
         layer, drawn at random); 'random_natural': the same, but each layer first loses the
         weights that converged to |w| < `pruning.natural_threshold` in the
         source's dense network, the rest of its quota being random.

The head is the source's when the source was trained on the same task and
data (a label-trained winning ticket keeps its classifier), otherwise a
fresh, unpruned one (see `source_network.load_source`). Re-training on
labels (paper Fig. 3 and 5) is this with the labels task; finetuning on
VOC07 (Fig. 2) is this with `init='final'` and the multi-label task on
`voc2007`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from sslprune_jax import checkpoint
from sslprune_jax import config_lib
from sslprune_jax import experiment
from sslprune_jax import models
from sslprune_jax import pruning
from sslprune_jax import round_state
from sslprune_jax import rounds
from sslprune_jax import source_network
from sslprune_jax.rundir import sources

INITS = ('winning_ticket', 'reinit', 'final')
MASKS = ('source', 'random_global_natural', 'random_like', 'random_natural')


def validate(config: ml_collections.ConfigDict) -> None:
  """Refuses a bad `config.source` before anything is read."""
  s = config.get('source')
  problems = []
  if s is None or not s.get('workdir'):
    problems.append('source.workdir must name a finished pruning run.')
  else:
    if s.init not in INITS:
      problems.append(f'Unknown source.init {s.init!r}; valid: {INITS}.')
    if s.mask not in MASKS:
      problems.append(f'Unknown source.mask {s.mask!r}; valid: {MASKS}.')
    if any(not isinstance(r, int) or r < 0 for r in s.rounds):
      problems.append(f'source.rounds must be rounds >= 0, got {s.rounds}.')
  if config.init_from.workdir:
    problems.append(
        'init_from is for pruning runs; a re-training run '
        'starts from source.workdir.'
    )
  if problems:
    raise ValueError('Invalid config:\n  ' + '\n  '.join(problems))


def round_start(
    exp: experiment.Experiment, ckpts: checkpoint.RunCheckpoints, round_idx: int
) -> tuple:
  """Variables, mask and task state of source round `round_idx`'s
  subnetwork, as `config.source` defines it."""
  config, s = exp.config, exp.config.source
  point = {'winning_ticket': 'rewind', 'final': 'final', 'reinit': 'final'}[
      s.init
  ]
  variables, mask = source_network.load_source(
      config, exp.variables, s.workdir, round_idx, point=point
  )
  if s.mask != 'source':
    mask = _random_mask(exp, mask, round_idx)
  if s.init == 'reinit':
    variables = {
        'params': pruning.reinit(
            lambda k: exp.init_fn(k)['params'],
            jax.random.fold_in(exp.rngs['reinit'], round_idx),
            mask,
        ),
        'batch_stats': exp.variables.get('batch_stats', {}),
    }
  variables = {
      **variables,
      'params': pruning.apply_mask(variables['params'], mask),
  }
  return variables, mask, exp.task_state


def _random_mask(exp: experiment.Experiment, source_mask, round_idx: int):
  """The random baseline `config.source.mask` draws for a source round
  whose mask is `source_mask` (see the module docstring)."""
  config, s = exp.config, exp.config.source
  rng = jax.random.fold_in(exp.rngs['prune'], round_idx)
  if s.mask == 'random_like':
    return _random_like(exp, rng, source_mask, round_idx)
  # The other baselines start from the source's dense trained network.
  dense = source_network.load_source(config, exp.variables, s.workdir, 0)[0][
      'params'
  ]
  threshold = config.pruning.natural_threshold
  if s.mask == 'random_natural':
    return pruning.random_prune_like(
        rng, source_mask, exp.prunable, params=dense, threshold=threshold
    )
  return pruning.random_natural_oneshot(
      rng,
      dense,
      exp.prunable,
      pruning.count(source_mask, exp.prunable)[0],
      threshold,
  )


def _random_like(exp, rng, source_mask, round_idx: int):
  """'random_like' in the source's granularity: round r's per-layer
  counts drawn at random weight by weight, its n:m pattern drawn at
  random, or its per-layer channel counts drawn at random."""
  source = sources.source_config(exp.config.source.workdir).pruning
  granularity = source.get('granularity', 'unstructured')
  if granularity == 'nm':
    pattern = pruning.nm.round_pattern(source, round_idx)
    if pattern is None:
      return source_mask
    dense = jax.tree.map(lambda m: jnp.ones(jnp.shape(m), bool), source_mask)
    return pruning.random_nm_prune(rng, dense, exp.prunable, *pattern)
  if granularity == 'channel':
    groups = models.channel_groups(exp.config.model, source_mask)
    return pruning.channels.random_like(rng, source_mask, groups)
  return pruning.random_prune_like(rng, source_mask, exp.prunable)


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Trains each chosen source round's subnetwork; resumable.

  Args:
    config: a training config (task, data, model, train as for a pruning
      run; the model must be the source's) with `config.source`.
    workdir: where checkpoints, metrics and results.csv go.

  Returns:
    One row per source round (see `lottery.run`); with several seeds, one
    such list per seed.
  """
  validate(config)
  configs = [seed_source(c) for c in experiment.seed_configs(config)]
  source_rounds = sources.source_rounds(
      configs[0].source.workdir, config.source.rounds
  )

  exps = [experiment.build(c) for c in configs]
  step = start_step(exps[0])

  def start(exp, ckpts, r):
    return round_state.start_state(
        exp, ckpts, r, *round_start(exp, ckpts, r), step=step
    )

  results = rounds.run_rounds(exps, workdir, rounds=source_rounds, start=start)
  return results[0] if len(results) == 1 else results


def seed_source(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` reading its own seed of the source run (`sources.seed_run`):
  re-training seed s re-trains seed s's subnetworks of a source that
  trained several seeds together."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.source.workdir = sources.seed_run(config.source.workdir, config.seed)
  return config


def start_step(exp: experiment.Experiment) -> int:
  """The global step the re-training rounds start at: the source's rewind
  step under this config for a winning ticket, else 0."""
  s = exp.config.source
  if s.init != 'winning_ticket':
    return 0
  source = sources.source_config(s.workdir)
  step = experiment.rewind_step_of(exp.config, source.pruning.rewind_samples)
  if step >= exp.num_steps:
    raise ValueError(
        f'The winning ticket of {s.workdir} was saved after '
        f'{source.pruning.rewind_samples} samples, step {step} of this '
        f'config, which trains only {exp.num_steps} steps.'
    )
  return step


# Also importable from here, as before.
add_source = config_lib.add_source
