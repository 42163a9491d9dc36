"""The checks of an experiment config, all made before any compute.

`validate_config` gathers every problem of a config (unknown names, values
out of range, fields that contradict each other) into one error, so that a
run that would fail in its third hour is refused in its first second.
"""

from __future__ import annotations

import math

import jax
import ml_collections

from sslprune_jax import data
from sslprune_jax import kernels
from sslprune_jax import models
from sslprune_jax import pruning
from sslprune_jax import tasks
from sslprune_jax import train
from sslprune_jax import xla_options

RESETS = ('rewind', 'reinit', 'lr_rewind', 'finetune')


# Resets that start a round from the previous round's final state.
KEEPS_FINAL = ('lr_rewind', 'finetune')


DATA_ORDERS = ('per_round', 'same')


GRANULARITIES = ('unstructured', 'nm', 'channel')
# The methods N:M and channel pruning have: by magnitude (or channel
# score), or at random (their random baselines).
STRUCTURED_METHODS = ('magnitude', 'random')


def _granularity_problems(p: ml_collections.ConfigDict) -> list[str]:
  granularity = p.get('granularity', 'unstructured')
  if granularity not in GRANULARITIES:
    return [
        f'Unknown pruning.granularity {granularity!r}; valid: '
        f'{GRANULARITIES}.'
    ]
  if granularity == 'unstructured':
    return []
  problems = []
  if p.method not in STRUCTURED_METHODS:
    problems.append(
        f'pruning.granularity={granularity!r} prunes by '
        f'{STRUCTURED_METHODS}, not pruning.method={p.method!r}.'
    )
  if granularity == 'channel':
    if p.channel_score not in pruning.channels.SCORES:
      problems.append(
          f'Unknown pruning.channel_score {p.channel_score!r}; valid: '
          f'{pruning.channels.SCORES}.'
      )
    if p.channel_scope not in pruning.channels.SCOPES:
      problems.append(
          f'Unknown pruning.channel_scope {p.channel_scope!r}; valid: '
          f'{pruning.channels.SCOPES}.'
      )
    return problems
  n, m = tuple(p.n), p.m
  if not isinstance(m, int) or m < 2:
    return problems + [f'pruning.m must be an int >= 2, got {m!r}.']
  if not all(isinstance(v, int) and 1 <= v <= m for v in n):
    problems.append(f'pruning.n must hold ints in [1, m={m}], got {n}.')
  elif any(b > a for a, b in zip(n, n[1:])):
    problems.append(f'pruning.n={n}: masks nest over rounds, so n cannot grow.')
  if len(n) != p.num_rounds:
    problems.append(
        f'pruning.n gives the n of each round 1..pruning.num_rounds: '
        f'{len(n)} values for num_rounds={p.num_rounds} (e.g. n=(4, 2, 1) '
        'with m=8 and 3 rounds, or n=(2,) with m=4 and 1 round).'
    )
  return problems


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Rejects bad values before any data is read or any step is compiled."""
  p, t = config.pruning, config.train
  problems = []
  if not 0.0 < p.fraction < 1.0:
    problems.append(f'pruning.fraction must be in (0, 1), got {p.fraction}.')
  # 0 trains the dense network (round 0) and prunes nothing.
  if not isinstance(p.num_rounds, int) or p.num_rounds < 0:
    problems.append(
        'pruning.num_rounds must be an int >= 0 (0: the dense network '
        f'only), got {p.num_rounds!r}.'
    )
  if not 0.0 <= p.target_fraction_left < 1.0:
    problems.append(
        'pruning.target_fraction_left must be in [0, 1) '
        f'(0 = no target), got {p.target_fraction_left}.'
    )
  if p.method not in pruning.METHODS:
    problems.append(
        f'Unknown pruning.method {p.method!r}; valid: ' f'{pruning.METHODS}.'
    )
  if p.reset not in RESETS:
    problems.append(f'Unknown pruning.reset {p.reset!r}; valid: {RESETS}.')
  if p.rewind_samples < 0:
    problems.append(
        f'pruning.rewind_samples must be >= 0, got {p.rewind_samples}.'
    )
  if p.get('data_order', 'per_round') not in DATA_ORDERS:
    problems.append(
        f'Unknown pruning.data_order {p.data_order!r}; valid: '
        f'{DATA_ORDERS}.'
    )
  problems.extend(_granularity_problems(p))
  if p.layers < 0:
    problems.append(f'pruning.layers must be >= 0 (0 = all), got {p.layers}.')
  if p.natural_threshold < 0:
    problems.append(
        'pruning.natural_threshold must be >= 0, got ' f'{p.natural_threshold}.'
    )
  if p.method == 'random_like' and not p.reference_workdir:
    problems.append(
        "pruning.method='random_like' needs "
        'pruning.reference_workdir (a finished pruning run).'
    )
  if p.method == 'random_like' and config.init_from.workdir:
    problems.append(
        "pruning.method='random_like' draws its masks afresh "
        'and cannot start from init_from.workdir.'
    )
  if config.init_from.round < 0:
    problems.append(
        f'init_from.round must be >= 0, got {config.init_from.round}.'
    )
  if (
      p.get('granularity', 'unstructured') == 'channel'
      and config.model.name not in models.CHANNEL_MODELS
  ):
    problems.append(
        "pruning.granularity='channel' is defined for "
        f'{models.CHANNEL_MODELS}, not model.name={config.model.name!r}.'
    )
  if config.model.name not in models.MODELS:
    problems.append(
        f'Unknown model.name {config.model.name!r}; valid: ' f'{models.MODELS}.'
    )
  try:
    conv_problem = kernels.check_conv_impl(
        config.model.get('conv_impl', 'auto'),
        jax.default_backend(),
        models.parse_dtype(config.model.get('dtype', None)),
    )
  except ValueError as e:  # An unknown dtype.
    conv_problem = str(e)
  if conv_problem is not None:
    problems.append(conv_problem)
  task_problems = tasks.check_fields(config.task)
  problems.extend(task_problems)
  mixed = not task_problems and tasks.TASKS[config.task.name].stream == 'mixed'
  if mixed and t.get('labelled_batch_size', 0) <= 0:
    problems.append(
        f'task {config.task.name!r} needs '
        'train.labelled_batch_size > 0 (labelled images per step, '
        'on top of train.batch_size images without labels).'
    )
  if config.data.name not in data.DATASETS:
    problems.append(
        f'Unknown data.name {config.data.name!r}; valid: ' f'{data.DATASETS}.'
    )
  if t.get('seed_batching', 'auto') not in train.SEED_BATCHINGS:
    problems.append(
        f'Unknown train.seed_batching {t.seed_batching!r}; '
        f'valid: {train.SEED_BATCHINGS}.'
    )
  try:
    xla_options.preset_for(t.get('xla_options', 'auto'), jax.default_backend())
  except ValueError as e:
    problems.append(str(e))
  if t.schedule not in train.SCHEDULES:
    problems.append(
        f'Unknown train.schedule {t.schedule!r}; valid: ' f'{train.SCHEDULES}.'
    )
  problems.extend(_range_problems(config))
  if not all(_is_number(e) and e >= 0 for e in _as_tuple(t.decay_epochs)):
    problems.append(
        'train.decay_epochs must be epochs (numbers >= 0) at '
        'which the step schedule decays, e.g. 80,120; got '
        f'{t.decay_epochs!r}.'
    )
  if t.batch_size <= 0 or t.eval_batch_size <= 0:
    problems.append('train.batch_size and train.eval_batch_size must be > 0.')
  if config.log_every_steps <= 0 or config.checkpoint_every_steps < 0:
    problems.append(
        'log_every_steps must be > 0 and checkpoint_every_steps '
        '>= 0 (0 = only at the end of rounds).'
    )
  if problems:
    raise ValueError('Invalid config:\n  ' + '\n  '.join(problems))


# Numeric fields and the values they take: (name, lowest, highest, whether
# the lowest is allowed, whether only integers are).
RANGES = (
    ('seed', 0, None, True, True),
    ('model.width', 0, None, False, False),
    ('train.num_epochs', 0, None, False, False),
    ('train.learning_rate', 0, None, False, False),
    ('train.warmup_epochs', 0, None, True, False),
    ('train.momentum', 0, 1, True, False),
    ('train.weight_decay', 0, None, True, False),
    ('train.decay_factor', 0, None, False, False),
)


def _is_number(value) -> bool:
  return (
      isinstance(value, (int, float))
      and not isinstance(value, bool)
      and math.isfinite(value)
  )


def _as_tuple(value) -> tuple:
  return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _range_problems(config: ml_collections.ConfigDict) -> list[str]:
  """Numbers out of their ranges (NaN and infinities included)."""
  problems = []
  for name, low, high, low_ok, integer in RANGES:
    value = config
    for part in name.split('.'):
      value = value.get(part) if value is not None else None
    if value is None:
      continue
    ok = _is_number(value) and (not integer or float(value).is_integer())
    if ok:
      ok = (value >= low if low_ok else value > low) and (
          high is None or value < high
      )
    if not ok:
      kind = 'an integer' if integer else 'a finite number'
      bounds = f'{">=" if low_ok else ">"} {low}'
      if high is not None:
        bounds += f' and < {high}'
      problems.append(f'{name} must be {kind} {bounds}, got {value!r}.')
  return problems
