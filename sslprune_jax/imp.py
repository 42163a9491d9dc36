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
command resumes where it stopped and ends with the same masks.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import math
from typing import Any, Callable

from absl import logging
from clu import metric_writers
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sslprune_jax import checkpoint
from sslprune_jax import data
from sslprune_jax import export
from sslprune_jax import kernels
from sslprune_jax import models
from sslprune_jax import parallel
from sslprune_jax import progress
from sslprune_jax import preemption
from sslprune_jax import pruning
from sslprune_jax import summaries
from sslprune_jax import tasks
from sslprune_jax import train
from sslprune_jax import xla_options

PyTree = Any
RESETS = ('rewind', 'reinit', 'lr_rewind', 'finetune')
# Resets that start a round from the previous round's final state.
KEEPS_FINAL = ('lr_rewind', 'finetune')
DATA_ORDERS = ('per_round', 'same')
RESULT_FIELDS = ('round', 'fraction_left', 'remaining', 'test_accuracy',
                 'test_loss', 'train_accuracy', 'train_loss', 'export_bytes',
                 'seconds')


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
        f'only), got {p.num_rounds!r}.')
  if not 0.0 <= p.target_fraction_left < 1.0:
    problems.append('pruning.target_fraction_left must be in [0, 1) '
                    f'(0 = no target), got {p.target_fraction_left}.')
  if p.method not in pruning.METHODS:
    problems.append(f'Unknown pruning.method {p.method!r}; valid: '
                    f'{pruning.METHODS}.')
  if p.reset not in RESETS:
    problems.append(f'Unknown pruning.reset {p.reset!r}; valid: {RESETS}.')
  if p.rewind_samples < 0:
    problems.append(
        f'pruning.rewind_samples must be >= 0, got {p.rewind_samples}.')
  if p.get('data_order', 'per_round') not in DATA_ORDERS:
    problems.append(f'Unknown pruning.data_order {p.data_order!r}; valid: '
                    f'{DATA_ORDERS}.')
  if p.layers < 0:
    problems.append(f'pruning.layers must be >= 0 (0 = all), got {p.layers}.')
  if p.natural_threshold < 0:
    problems.append('pruning.natural_threshold must be >= 0, got '
                    f'{p.natural_threshold}.')
  if p.method == 'random_like' and not p.reference_workdir:
    problems.append("pruning.method='random_like' needs "
                    'pruning.reference_workdir (a finished pruning run).')
  if p.method == 'random_like' and config.init_from.workdir:
    problems.append("pruning.method='random_like' draws its masks afresh "
                    'and cannot start from init_from.workdir.')
  if config.init_from.round < 0:
    problems.append(
        f'init_from.round must be >= 0, got {config.init_from.round}.')
  if config.model.name not in models.MODELS:
    problems.append(f'Unknown model.name {config.model.name!r}; valid: '
                    f'{models.MODELS}.')
  try:
    conv_problem = kernels.check_conv_impl(
        config.model.get('conv_impl', 'auto'), jax.default_backend(),
        models.parse_dtype(config.model.get('dtype', None)))
  except ValueError as e:  # An unknown dtype.
    conv_problem = str(e)
  if conv_problem is not None:
    problems.append(conv_problem)
  task_problems = tasks.check_fields(config.task)
  problems.extend(task_problems)
  mixed = (not task_problems
           and tasks.TASKS[config.task.name].stream == 'mixed')
  if mixed and t.get('labelled_batch_size', 0) <= 0:
    problems.append(f'task {config.task.name!r} needs '
                    'train.labelled_batch_size > 0 (labelled images per step, '
                    'on top of train.batch_size images without labels).')
  if config.data.name not in data.DATASETS:
    problems.append(f'Unknown data.name {config.data.name!r}; valid: '
                    f'{data.DATASETS}.')
  if t.get('seed_batching', 'auto') not in train.SEED_BATCHINGS:
    problems.append(f'Unknown train.seed_batching {t.seed_batching!r}; '
                    f'valid: {train.SEED_BATCHINGS}.')
  try:
    xla_options.preset_for(t.get('xla_options', 'auto'),
                           jax.default_backend())
  except ValueError as e:
    problems.append(str(e))
  if t.schedule not in train.SCHEDULES:
    problems.append(f'Unknown train.schedule {t.schedule!r}; valid: '
                    f'{train.SCHEDULES}.')
  problems.extend(_range_problems(config))
  if not all(_is_number(e) and e >= 0 for e in _as_tuple(t.decay_epochs)):
    problems.append('train.decay_epochs must be epochs (numbers >= 0) at '
                    'which the step schedule decays, e.g. 80,120; got '
                    f'{t.decay_epochs!r}.')
  if t.batch_size <= 0 or t.eval_batch_size <= 0:
    problems.append('train.batch_size and train.eval_batch_size must be > 0.')
  if config.log_every_steps <= 0 or config.checkpoint_every_steps < 0:
    problems.append('log_every_steps must be > 0 and checkpoint_every_steps '
                    '>= 0 (0 = only at the end of rounds).')
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
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


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
          high is None or value < high)
    if not ok:
      kind = 'an integer' if integer else 'a finite number'
      bounds = f'{">=" if low_ok else ">"} {low}'
      if high is not None:
        bounds += f' and < {high}'
      problems.append(f'{name} must be {kind} {bounds}, got {value!r}.')
  return problems


def _check_rounds_leave_weights(pruning_config, params, prunable) -> None:
  """Refuses more rounds than the prunable weights last."""
  total = sum(math.prod(p.shape) for p, keep in zip(
      jax.tree.leaves(params), jax.tree.leaves(prunable)) if keep)
  remaining, rounds = total, 0
  while rounds < pruning_config.num_rounds:
    remaining -= pruning.num_to_prune(pruning_config.fraction, remaining)
    if remaining < 1:
      raise ValueError(
          f'pruning.num_rounds={pruning_config.num_rounds}: at '
          f'pruning.fraction={pruning_config.fraction}, round {rounds + 1} '
          f'prunes the last of the model\'s {total} prunable weights; at '
          f'most {rounds} rounds leave any.')
    rounds += 1


def images_per_step(config) -> int:
  """The samples one step sees, as the rewind point counts them.

  A sample is a dataset image: RotNet's four rotations and Exemplar's
  augmented copies are made inside the step and count once, as does NPID's
  one augmented view of an image; S4L's
  step sees `train.labelled_batch_size` labelled images on top of
  `train.batch_size` unlabelled ones, and counts both.
  """
  images = config.train.batch_size
  if tasks.TASKS[config.task.name].stream == 'mixed':
    images += config.train.labelled_batch_size
  return images


def rewind_step_of(config, rewind_samples: int) -> int:
  """The step after which `rewind_samples` samples have been seen (rounded
  down), with `config`'s images per step."""
  return rewind_samples // images_per_step(config)


def round_schedule(config, num_train_examples: int) -> tuple[int, int]:
  """Steps of a training run and the rewind step, checked together.

  Args:
    config: the experiment config.
    num_train_examples: examples of an epoch (of the task's stream).

  Returns:
    (num_steps, rewind_step): T, the step every round ends at, and k, the
    step after which `pruning.rewind_samples` samples have been seen
    (`rewind_step_of`), where rewound rounds start.
  """
  steps_per_epoch = num_train_examples // config.train.batch_size
  if steps_per_epoch == 0:
    raise ValueError(
        f'train.batch_size {config.train.batch_size} exceeds the '
        f'{num_train_examples} training examples.')
  num_steps = max(1, int(round(config.train.num_epochs * steps_per_epoch)))
  rewind_step = rewind_step_of(config, config.pruning.rewind_samples)
  if (config.pruning.reset != 'reinit' and config.pruning.num_rounds > 0
      and rewind_step >= num_steps):
    raise ValueError(
        f'pruning.rewind_samples={config.pruning.rewind_samples} is step '
        f'{rewind_step} ({images_per_step(config)} images a step), not '
        f'before the end of the run (step {num_steps}): rounds after the '
        f'first would not train (pruning.reset={config.pruning.reset!r}).')
  return num_steps, rewind_step


def next_mask(config, prev: dict, prunable: PyTree, rng: jax.Array,
              round_idx: int) -> PyTree:
  """The mask of round `round_idx` > 0, by the configured method.

  'magnitude', 'random' and 'random_natural' prune the previous round's final
  weights and mask; 'random_like' draws a random mask with, layer by layer,
  the sparsity of the same round of the run in `pruning.reference_workdir`.
  """
  p = config.pruning
  if p.method == 'random_like':
    return pruning.random_prune_like(
        rng, _reference_mask(p.reference_workdir, round_idx, prev['mask']),
        prunable)
  if p.method == 'magnitude':
    return pruning.magnitude_prune(prev['params'], prev['mask'], prunable,
                                   p.fraction)
  if p.method == 'random':
    return pruning.random_prune(rng, prev['mask'], prunable, p.fraction)
  return pruning.random_natural_prune(rng, prev['params'], prev['mask'],
                                      prunable, p.fraction,
                                      p.natural_threshold)


def _results_table(rows: list[dict]) -> str:
  # The headline metric: VOC07's mAP where there is one, else accuracy.
  key, name = (('test_mAP', 'test mAP') if 'test_mAP' in rows[-1]
               else ('test_accuracy', 'test acc'))
  lines = [f"{'round':>5} {'left %':>8} {'weights':>10} {name:>9} "
           f"{'test loss':>9} {'time s':>7}"]
  for r in rows:
    lines.append(f"{r['round']:>5d} {100 * r['fraction_left']:>8.3f} "
                 f"{r['remaining']:>10d} {r[key]:>9.4f} "
                 f"{r['test_loss']:>9.4f} {r['seconds']:>7.1f}")
  return '\n'.join(lines)


def _result_fields(rows: list[dict]) -> list[str]:
  """The CSV columns: the common ones, then any other metric of the task."""
  extra = sorted({k for row in rows for k in row
                  if k.startswith(('test_', 'train_'))} - set(RESULT_FIELDS))
  return [*RESULT_FIELDS[:-1], *extra, RESULT_FIELDS[-1]]


def write_results_csv(workdir: epath.Path, rows: list[dict]) -> None:
  """Writes results.csv (atomically, from process 0); missing: 'nan'."""
  if jax.process_index() != 0:
    return
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=_result_fields(rows),
                          extrasaction='ignore', restval='nan')
  writer.writeheader()
  writer.writerows(rows)
  tmp = workdir / 'results.csv.tmp'
  tmp.write_text(out.getvalue())
  tmp.replace(workdir / 'results.csv')


@dataclasses.dataclass(frozen=True)
class Experiment:
  """What every round of a run shares, built once from the config.

  Attributes:
    config: the experiment config.
    mesh: the data mesh.
    info: the dataset's sizes and image shape.
    model: the network (trunk + the task's head).
    task: the training objective.
    init_fn: rng -> fresh variables (jitted).
    init_rng: the key of round 0's initial variables (`variables`).
    source_variables: round 0's starting point when `init_from` names
      another run's network (else None: `init_fn(init_rng)`).
    start_mask: round 0's mask (all ones, unless `init_from` starts the run
      from a pruned network).
    task_state: the task's initial state (round 0's starting point).
    prunable: pytree of bools, the leaves pruning may touch.
    optimizer: the config's optimiser and its learning-rate schedule.
    final_rate_optimizer: the same optimiser at the schedule's final rate
      (rounds after the first under `pruning.reset='finetune'`).
    num_steps: T, the step every round ends at.
    rewind_step: k, the step of round 0 whose state `rewind` restores and
      where `rewind`, `lr_rewind` and `finetune` rounds start.
    rngs: keys for the train state, pruning and re-initialisation.
  """
  config: ml_collections.ConfigDict
  mesh: Any
  info: data.DatasetInfo
  model: Any
  task: Any
  init_fn: Callable[[jax.Array], PyTree]
  init_rng: jax.Array
  source_variables: PyTree | None
  start_mask: PyTree
  task_state: PyTree
  prunable: PyTree
  optimizer: train.Optimizer
  final_rate_optimizer: train.Optimizer
  num_steps: int
  rewind_step: int
  rngs: dict[str, jax.Array]

  @functools.cached_property
  def variables(self) -> PyTree:
    """The initial variables (round 0's starting point).

    Computed on first use: a resumed or finished run restores everything
    from its checkpoints and never compiles `init_fn`.
    """
    if self.source_variables is not None:
      return self.source_variables
    return self.init_fn(self.init_rng)

  @functools.cached_property
  def variable_shapes(self) -> PyTree:
    """Shapes, dtypes and placement of `variables`, without computing
    them (what restoring a checkpoint needs)."""
    if self.source_variables is not None:
      return self.source_variables
    # Where `init_fn`'s outputs land: this process's first device.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
        jax.eval_shape(self.init_fn, self.init_rng))

  def round_target(self) -> PyTree:
    """Structure (and placement) of an end-of-round checkpoint."""
    target = {'params': self.variable_shapes['params'],
              'batch_stats': self.variable_shapes.get('batch_stats', {}),
              'mask': self.start_mask}
    if saves_task_state(self.config, self.task_state):
      target['task_state'] = self.task_state
    return target


def saves_task_state(config, task_state: PyTree) -> bool:
  """Whether ends of rounds keep the task's state: only where the next
  round starts from it (`KEEPS_FINAL`) and there is one (NPID's memory
  bank, 0.6 GB on ImageNet, is not saved 30 times otherwise)."""
  return (config.pruning.reset in KEEPS_FINAL
          and bool(jax.tree.leaves(task_state)))


def build(config: ml_collections.ConfigDict) -> Experiment:
  """Checks the config, reads the dataset's metadata, builds the model.

  Everything here is cheap; bad input is refused before any training.
  """
  validate_config(config)
  mesh = parallel.create_mesh()
  parallel.check_batch_size(config.train.batch_size, mesh)
  parallel.check_batch_size(config.train.eval_batch_size, mesh)
  if tasks.TASKS[config.task.name].stream == 'mixed':
    parallel.check_batch_size(config.train.labelled_batch_size, mesh)
  info = data.get_info(config.data)
  task = tasks.get_task(config.task, info)
  epoch_examples = (info.num_labelled_examples if task.stream == 'labelled'
                    else info.num_train_examples)
  num_steps, rewind_step = round_schedule(config, epoch_examples)
  model = models.create_model(config.model,
                              task.num_outputs(info.num_classes))
  init_rng, state_rng, prune_rng, reinit_rng, task_rng = jax.random.split(
      jax.random.PRNGKey(config.seed), 5)
  init_fn = jax.jit(
      functools.partial(train.init_variables, model,
                        image_shape=info.image_shape),
      compiler_options=xla_options.one_off_options(jax.default_backend()))
  # Shapes only: nothing is compiled or computed that a resumed run does
  # not need (`Experiment.variables`).
  variables = jax.eval_shape(init_fn, init_rng)
  prunable = pruning.prunable_tree(variables['params'],
                                   exclude=tuple(config.pruning.exclude),
                                   min_ndim=config.pruning.min_ndim)
  if config.pruning.layers:
    order = [path for path in models.kernel_order(
        model, jnp.zeros((1, *info.image_shape))) if _get(prunable, path)]
    if config.pruning.layers > len(order):
      raise ValueError(f'pruning.layers={config.pruning.layers} but the '
                       f'model has only {len(order)} prunable layers.')
    prunable = pruning.restrict_to_layers(prunable,
                                          order[:config.pruning.layers])
  _check_rounds_leave_weights(config.pruning, variables['params'], prunable)
  start_mask = pruning.init_mask(variables['params'])
  source_variables = None
  if config.init_from.workdir:
    source_variables, start_mask = load_source(
        config, init_fn(init_rng), config.init_from.workdir,
        config.init_from.round)
    source_variables = {
        **source_variables,
        'params': pruning.apply_mask(source_variables['params'],
                                     start_mask)}
  steps_per_epoch = epoch_examples // config.train.batch_size
  learning_rate_fn = train.create_learning_rate_fn(config.train,
                                                   steps_per_epoch)
  final_rate = optax.constant_schedule(
      float(learning_rate_fn(num_steps - 1)))
  return Experiment(
      config=config, mesh=mesh, info=info, model=model, task=task,
      init_fn=init_fn, init_rng=init_rng, source_variables=source_variables,
      start_mask=start_mask,
      task_state=task.init_state(task_rng), prunable=prunable,
      optimizer=train.Optimizer(
          train.create_optimizer(config.train, learning_rate_fn),
          learning_rate_fn),
      final_rate_optimizer=train.Optimizer(
          train.create_optimizer(config.train, final_rate), final_rate),
      num_steps=num_steps, rewind_step=rewind_step,
      rngs={'state': state_rng, 'prune': prune_rng, 'reinit': reinit_rng,
            'task': task_rng})


def round_start(exp: Experiment, ckpts: checkpoint.RunCheckpoints,
                round_idx: int) -> train.TrainState:
  """The replicated state round `round_idx` trains from.

  Round 0 starts from the initial variables at step 0. A later round prunes
  the end of the previous round and resets the survivors
  (`pruning.reset`, see the module docstring), at step 0 (`reinit`) or k.
  Either way, an in-round checkpoint of this round, if any, takes over
  (resumption).
  """
  workdir = ckpts.workdir
  reset = exp.config.pruning.reset
  if round_idx == 0:
    mask, variables = exp.start_mask, exp.variables
    task_state = exp.task_state
  else:
    prev = restore(
        lambda: ckpts.restore_round(round_idx - 1, exp.round_target()),
        f'end of round {round_idx - 1}',
        workdir / 'rounds' / str(round_idx - 1))
    mask = next_mask(exp.config, prev, exp.prunable,
                     jax.random.fold_in(exp.rngs['prune'], round_idx),
                     round_idx)
    variables, task_state = _reset(
        exp, ckpts, prev, mask,
        jax.random.fold_in(exp.rngs['reinit'], round_idx), round_idx)
  later = round_idx > 0 and reset != 'reinit'
  return start_state(
      exp, ckpts, round_idx, variables, mask, task_state,
      step=exp.rewind_step if later else 0,
      optimizer=(exp.final_rate_optimizer
                 if later and reset == 'finetune' else None))


def start_state(exp: Experiment, ckpts: checkpoint.RunCheckpoints,
                round_idx: int, variables: dict, mask: PyTree,
                task_state: PyTree, *, step: int = 0,
                optimizer: train.Optimizer | None = None
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
          exp.model, variables, mask, optimizer.tx,
          jax.random.fold_in(exp.rngs['state'], round_idx), task_state,
          step=step, learning_rate_fn=optimizer.learning_rate_fn),
      exp.mesh)
  workdir = ckpts.workdir
  restored = restore(lambda: ckpts.restore_in_round(round_idx, state),
                     f'in-round state of round {round_idx}',
                     workdir / f'round_{round_idx:02d}')
  if restored is None:
    return state
  logging.info('Round %d: resuming at step %d.', round_idx,
               int(restored.step))
  return restored


def train_batches(config: ml_collections.ConfigDict, task, *, seed: int,
                  start_step: int):
  """This host's training batches for the task's stream, from `start_step`.

  'all' streams every training example, 'labelled' only the labelled subset
  (`data.labelled`), 'mixed' puts `train.labelled_batch_size` labelled
  images and `train.batch_size` images without labels in every step, each
  device getting its share of both.
  """
  if task.stream == 'mixed':
    return data.mixed_train_iterator(
        config.data, labelled_batch_size=config.train.labelled_batch_size,
        unlabelled_batch_size=config.train.batch_size, seed=seed,
        start_step=start_step, num_shards=jax.local_device_count())
  return data.train_iterator(
      config.data, global_batch_size=config.train.batch_size, seed=seed,
      start_step=start_step, only_labelled=task.stream == 'labelled')


def seed_configs(config: ml_collections.ConfigDict
                 ) -> list[ml_collections.ConfigDict]:
  """The configs of the `num_seeds` runs that one config trains together.

  Seed i's config is `config` with `seed = config.seed + i` and
  `num_seeds = 1`: exactly the config of a separate run of that seed, so
  that its workdir (`seed_workdir`) can be read, resumed or evaluated like
  any other run's.
  """
  num_seeds = config.get('num_seeds', 1)
  if not isinstance(num_seeds, int) or num_seeds < 1:
    raise ValueError(
        f'Invalid config: num_seeds must be a positive int, got {num_seeds!r}.')
  if num_seeds == 1:
    return [config]
  configs = []
  for i in range(num_seeds):
    c = ml_collections.ConfigDict(config.to_dict())
    c.seed = config.seed + i
    c.num_seeds = 1
    configs.append(c)
  return configs


def seed_workdir(workdir: str, seed: int) -> str:
  """Where seed `seed` of a run with several seeds keeps its state."""
  return str(epath.Path(workdir) / f'seed_{seed}')


def run(config: ml_collections.ConfigDict, workdir: str
        ) -> list[dict] | list[list[dict]]:
  """Runs (or resumes) the pruning rounds of `config` in `workdir`.

  With `config.num_seeds` = k > 1, the k seeds `config.seed`, ...,
  `config.seed + k - 1` are trained together, in one step over all seeds
  (`train.seed_batching`); seed s keeps its checkpoints and results in
  `workdir/seed_<s>/`.

  Args:
    config: an experiment config (see configs/labels.py).
    workdir: where checkpoints, metrics and results.csv go.

  Returns:
    One dict per round: round, fraction_left (of the prunable weights),
    remaining, test/train accuracy and loss, seconds, sparsity; with
    several seeds, one such list per seed.
  """
  exps = [build(_own_seed_init(c)) for c in seed_configs(config)]
  return run_rounds(
      exps if len(exps) > 1 else exps[0], workdir,
      rounds=range(config.pruning.num_rounds + 1), start=round_start,
      save_rewind=config.pruning.reset == 'rewind',
      stop=functools.partial(_target_reached, config))


def _own_seed_init(config: ml_collections.ConfigDict
                   ) -> ml_collections.ConfigDict:
  """`config` starting from its own seed of `init_from.workdir` (`seed_run`)."""
  if not config.init_from.workdir:
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  config.init_from.workdir = seed_run(config.init_from.workdir, config.seed)
  return config


@dataclasses.dataclass
class _Member:
  """One seed of the runs that `run_rounds` trains together."""
  exp: Experiment
  workdir: epath.Path
  ckpts: checkpoint.RunCheckpoints
  summary_writer: Any
  completed: list[int]
  results: list[dict] = dataclasses.field(default_factory=list)


def run_rounds(exp: Experiment | list[Experiment], workdir: str, *, rounds,
               start: Callable[[Experiment, checkpoint.RunCheckpoints, int],
                               train.TrainState],
               save_rewind: bool = False,
               stop: Callable[[dict], bool] = lambda row: False
               ) -> list[dict] | list[list[dict]]:
  """Trains one round after another, each resumable, and records them.

  The round loop of a pruning run, and of the evaluations that train a
  pruning run's subnetworks again (`evaluation.retrain`): only where each
  round starts from differs.

  Args:
    exp: the experiment, or the experiments of several seeds
      (`seed_configs`) to train together in one step (vmapped or unrolled:
      `train.seed_batching`); each keeps its state in
      `seed_workdir(workdir, seed)`.
    workdir: where checkpoints, metrics and results.csv go.
    rounds: the round numbers, in order.
    start: (experiment, its checkpoints, round) -> the replicated state the
      round trains from (resuming from an in-round checkpoint if there is
      one).
    save_rewind: whether round 0 saves the rewind point.
    stop: row -> whether no further round is needed (asked of the first
      seed; every seed has the same pruning schedule).

  Returns:
    One dict per round (see `run`); with several seeds, a list per seed.
  """
  exps = exp if isinstance(exp, list) else [exp]
  num_seeds = len(exps)
  config, lead = exps[0].config, exps[0]
  top = epath.Path(workdir)
  top.mkdir(parents=True, exist_ok=True)
  if num_seeds > 1:
    # The top directory records the whole config (num_seeds included), so
    # that resuming it with other seeds is refused too.
    checkpoint.check_or_write_config(
        str(top), ml_collections.ConfigDict(
            {**config.to_dict(), 'seed': exps[0].config.seed,
             'num_seeds': num_seeds}))
  is_main = jax.process_index() == 0
  members = []
  try:
    for e in exps:
      where = (top if num_seeds == 1
               else epath.Path(seed_workdir(workdir, e.config.seed)))
      where.mkdir(parents=True, exist_ok=True)
      checkpoint.check_or_write_config(str(where), e.config)
      ckpts = checkpoint.RunCheckpoints(str(where),
                                        in_round_keep=min(num_seeds, 2))
      members.append(_Member(
          exp=e, workdir=where, ckpts=ckpts,
          summary_writer=metric_writers.create_default_writer(
              str(where / 'tb' / 'rounds'), just_logging=not is_main),
          completed=ckpts.completed_rounds()))
    options = config.train.get('xla_options', 'auto')
    conv_impl = models.conv_impl_of(config.model)
    train_step = train.make_train_step(
        lead.task, lead.mesh, config.train.get('exact_reduction', False),
        num_seeds=num_seeds,
        seed_batching=config.train.get('seed_batching', 'auto'),
        xla_options=options, conv_impl=conv_impl)
    eval_step = train.make_eval_step(lead.task, lead.mesh, options,
                                     conv_impl)
    rounds = list(rounds)
    shown = progress.Progress(
        len(rounds), steps_per_round=lead.num_steps - lead.rewind_step,
        images_per_step=images_per_step(config) * num_seeds,
        enabled=is_main)
    for position, r in enumerate(rounds):
      if all(r in m.completed for m in members):
        for m in members:
          m.results.append(restore(lambda: m.ckpts.round_metrics(r),
                                   f'end of round {r}',
                                   m.workdir / 'rounds' / str(r)))
          _rebuild_round_files(m, r)
        if stop(members[0].results[-1]):
          break
        continue
      row = _train_round(members, r, start, train_step, eval_step,
                         save_rewind, shown, position)
      if stop(row):
        break
    # Written again from the checkpoints' rows, in case a run was killed
    # between a round's checkpoint and its row.
    for m in members:
      write_results_csv(m.workdir, m.results)
  finally:
    for m in members:
      m.ckpts.close()
      m.summary_writer.close()
  if num_seeds == 1:
    return members[0].results
  return [m.results for m in members]


def _train_round(members: list[_Member], r: int, start, train_step,
                 eval_step, save_rewind: bool, shown: progress.Progress,
                 position: int) -> dict:
  """Trains round `r` of every member at once; returns the first's row."""
  num_seeds = len(members)
  lead = members[0].exp
  config = lead.config
  is_main = jax.process_index() == 0
  states = _start_states(members, r, start)
  counts = [pruning.count(s.mask, m.exp.prunable)
            for s, m in zip(states, members)]
  start_step = int(states[0].step)  # Every member's (`_start_states`).
  state = (states[0] if num_seeds == 1 else
           parallel.replicate(train.stack_trees(states), lead.mesh))
  del states
  seed_state = ((lambda s, i: s) if num_seeds == 1 else train.seed_slice)
  hooks = {}
  if r == 0 and save_rewind:

    def save_rewind_point(s):
      for i, m in enumerate(members):
        own = seed_state(s, i)
        m.ckpts.save_rewind(lead.rewind_step,
                            {'params': own.params,
                             'batch_stats': own.batch_stats,
                             'task_state': own.task_state})

    hooks[lead.rewind_step] = save_rewind_point

  def save_in_round(s):
    for i, m in enumerate(members):
      m.ckpts.save_in_round(r, seed_state(s, i))

  writers = [metric_writers.create_default_writer(
      str(m.workdir / 'tb' / f'round_{r:02d}'), just_logging=not is_main)
             for m in members]
  batches = [train_batches(m.exp.config, m.exp.task,
                           seed=_data_seed(m.exp.config, r),
                           start_step=start_step)
             for m in members]
  remaining, total = counts[0]
  seeds = f', {num_seeds} seeds' if num_seeds > 1 else ''
  bar = shown.round(
      position, f'round {r} ({position + 1} of {shown.num_rounds}, '
      f'{100 * remaining / total:.3g}% left)',
      start_step=start_step, num_steps=lead.num_steps)
  try:
    result = train.train_round(
        state,
        train_step=train_step, eval_step=eval_step,
        train_batches=(batches[0] if num_seeds == 1
                       else _stacked_batches(batches)),
        eval_batches=lambda: data.eval_iterator(
            config.data, global_batch_size=config.train.eval_batch_size),
        mesh=lead.mesh, num_steps=lead.num_steps, task=lead.task,
        writer=writers[0] if num_seeds == 1 else writers,
        log_every_steps=config.log_every_steps,
        checkpoint_every_steps=config.checkpoint_every_steps,
        save_checkpoint=save_in_round, hooks=hooks,
        description=f'round {r} ({100 * remaining / total:.2f}% left{seeds})',
        progress=bar)
  finally:
    bar.close()
    for w in writers:
      w.close()
  for i, m in enumerate(members):
    final = seed_state(result.state, i)
    remaining, total = counts[i]
    if r in m.completed:  # Trained again only alongside the other seeds.
      row = restore(lambda: m.ckpts.round_metrics(r), f'end of round {r}',
                    m.workdir / 'rounds' / str(r))
    else:
      row = {
          'round': r, 'fraction_left': remaining / total,
          'remaining': remaining,
          # Every task reports an accuracy or a loss or both; NaN if not.
          **{f'test_{k}': math.nan for k in ('accuracy', 'loss')},
          **{f'test_{k}': v for k, v in result.eval_metrics[i].items()},
          **{f'train_{k}': math.nan for k in ('accuracy', 'loss')},
          **{f'train_{k}': v for k, v in result.train_metrics[i].items()},
          'seconds': result.seconds,
          'sparsity': pruning.sparsity_report(final.mask, m.exp.prunable),
      }
      row = save_round_end(
          m.ckpts, m.workdir, r, final, row,
          with_task_state=saves_task_state(m.exp.config, m.exp.task_state))
      preemption.kill_point(f'round_saved:{r}')
    m.ckpts.clear_in_round(r)
    m.results.append(row)
    summaries.write_round(
        m.summary_writer, r, m.results, final.mask, m.exp.prunable,
        {k: row[k] for k in _result_fields([row])[1:]})
    write_results_csv(m.workdir, m.results)
    if is_main:
      seed = (f' (seed {m.exp.config.seed}, {m.workdir})'
              if num_seeds > 1 else '')
      print(f'\nRound {r} done{seed}.\n' + _results_table(m.results),
            flush=True)
  return members[0].results[-1]


def _rebuild_round_files(member: _Member, r: int) -> None:
  """Makes what a finished round derives from its checkpoint whole again.

  A run killed after round `r`'s end-of-round checkpoint may have left its
  in-round checkpoints behind, and its export unwritten or cut short.
  """
  member.ckpts.clear_in_round(r)
  where = member.workdir / 'export' / f'round_{r:02d}'
  try:
    export.load(str(where))
    return
  except (FileNotFoundError, ValueError) as e:
    logging.warning('Round %d: writing its export again (%s).', r,
                    str(e).split('. ')[0])
  saved = restore(lambda: member.ckpts.load_round(r), f'end of round {r}',
                  member.workdir / 'rounds' / str(r))
  export.save(str(where), {'params': saved['params'],
                           'batch_stats': saved['batch_stats']},
              saved['mask'])


def save_round_end(ckpts: checkpoint.RunCheckpoints, workdir: epath.Path,
                   round_idx: int, state: train.TrainState,
                   row: dict, *, with_task_state: bool = False) -> dict:
  """Saves a finished round: its compact export, then its checkpoint.

  With `with_task_state`, the checkpoint keeps the task's state too (for a
  next round that starts from it: `saves_task_state`).

  Returns:
    `row` with 'export_bytes', the size of the export (only the weights
    left; see `sslprune_jax.export`), as saved with the checkpoint.
  """
  network = {'params': state.params, 'batch_stats': state.batch_stats}
  row = {**row, 'export_bytes': export.save(
      str(workdir / 'export' / f'round_{round_idx:02d}'), network,
      state.mask)}
  saved = {**network, 'mask': state.mask}
  if with_task_state:
    saved['task_state'] = state.task_state
  ckpts.save_round(round_idx, saved, row)
  return row


def _start_states(members: list[_Member], r: int, start
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
    logging.info('Round %d: seeds saved up to steps %s; resuming all at '
                 'step %d.', r, steps, common)
    return [s if step == common else
            restore(lambda m=m, s=s: m.ckpts.restore_in_round(r, s, common),
                    f'in-round state of round {r}',
                    m.workdir / f'round_{r:02d}')
            for s, step, m in zip(states, steps, members)]
  logging.warning('Round %d: the seeds\' in-round checkpoints (steps %s) '
                  'share no step; restarting the round.', r, steps)
  for m in members:
    m.ckpts.clear_in_round(r)
  return [start(m.exp, m.ckpts, r) for m in members]


def _stacked_batches(iterators):
  """One batch of every seed's iterator per step, stacked along axis 0."""
  for batches in zip(*iterators):
    yield train.stack_trees(batches)


def source_config(workdir: str) -> ml_collections.ConfigDict:
  """The config of the pruning run in `workdir`."""
  path = epath.Path(workdir) / 'config.json'
  if not path.exists():
    raise ValueError(f'{workdir} holds no pruning run ({path} does not '
                     'exist); run the pruning first.')
  return ml_collections.ConfigDict(checkpoint.read_config_json(path))


def seed_run(workdir: str, seed: int) -> str:
  """Where seed `seed` of the pruning run in `workdir` is kept.

  A run that trained several seeds together keeps seed s in
  `seed_workdir(workdir, s)`: a run of seed s that starts from it reads
  that seed, so that packed seeds stay paired with what they came from. A
  run of one seed is read as it is, whatever `seed`.
  """
  source = source_config(workdir)
  packed = source.get('num_seeds', 1)
  if packed == 1:
    return workdir
  first = source.seed
  if not first <= seed < first + packed:
    raise ValueError(f'{workdir} trained seeds {first}..{first + packed - 1}'
                     f'; it has no seed {seed} to start from.')
  return seed_workdir(workdir, seed)


def check_source(config: ml_collections.ConfigDict,
                 source_workdir: str) -> ml_collections.ConfigDict:
  """The source run's config, checked to have trained this config's model."""
  source = source_config(source_workdir)
  diffs = checkpoint.config_diff(source.model.to_dict(),
                                 config.model.to_dict())
  if diffs:
    raise ValueError(f'The run in {source_workdir} trained another model '
                     '(source -> this run):\n  ' + '\n  '.join(diffs))
  return source


def source_rounds(source_workdir: str, wanted=()) -> list[int]:
  """`wanted` rounds of a source run, checked finished; () = all finished."""
  source_config(source_workdir)  # A clear error if there is no run.
  ckpts = checkpoint.RunCheckpoints(source_workdir)
  try:
    finished = ckpts.completed_rounds()
  finally:
    ckpts.close()
  wanted = list(wanted) or finished
  missing = sorted(set(wanted) - set(finished))
  if missing or not wanted:
    raise ValueError(
        f'{source_workdir} has not finished rounds {missing or "any"} '
        f'(finished: {finished}); run the pruning further first.')
  return wanted


def load_source(config: ml_collections.ConfigDict, variables: PyTree,
                source_workdir: str, round_idx: int, *,
                point: str = 'final') -> tuple[dict, PyTree]:
  """A network of another run, to start this one from.

  The trunk (weights, batch-norm statistics and mask) comes from round
  `round_idx` of the run in `source_workdir`: its trained weights
  (`point='final'`), or the rewind point's weights under that round's mask
  (`point='rewind'`, the winning ticket). The head is the source's if the
  source was trained on the same task and data, classes included (a
  label-trained winning ticket keeps its classifier); otherwise it is this
  run's fresh, unpruned head from `variables` (RotNet's 4-way head gives
  way to a classifier).

  Args:
    config: this run's config (its model must be the source's).
    variables: this run's freshly initialised variables.
    source_workdir: a pruning run with round `round_idx` finished.
    round_idx: the source round.
    point: 'final' or 'rewind'.

  Returns:
    (variables, mask) for this run's model; the weights are not masked (a
    caller may draw another mask).
  """
  source, saved = read_source_round(config, source_workdir, round_idx,
                                    point=point)
  params, mask = dict(saved['params']), dict(saved['mask'])
  head = variables['params'][models.HEAD]
  shapes = lambda tree: jax.tree.map(jnp.shape, tree)
  classes = lambda c: tuple(c.data.get('classes', ()))
  same_task = (source.task.name == config.task.name
               and source.data.name == config.data.name
               and classes(source) == classes(config)
               and shapes(params[models.HEAD]) == shapes(head))
  if not same_task:
    params[models.HEAD] = head
    mask[models.HEAD] = jax.tree.map(
        lambda x: jnp.ones(x.shape, jnp.bool_), head)
  if shapes(params) != shapes(variables['params']):
    raise ValueError(
        f'The network saved in {source_workdir} does not fit this run '
        '(different image channels or layers); its parameter shapes differ.')
  return {'params': params, 'batch_stats': saved['batch_stats']}, mask


def read_source_round(config: ml_collections.ConfigDict, source_workdir: str,
                      round_idx: int, *, point: str = 'final'
                      ) -> tuple[ml_collections.ConfigDict, dict]:
  """Round `round_idx` of the run in `source_workdir`, as it was saved.

  Args:
    config: this run's config (its model must be the source's).
    source_workdir: a pruning run with round `round_idx` finished.
    round_idx: the source round.
    point: 'final' (the round's trained weights) or 'rewind' (the rewind
      point's weights with the round's mask).

  Returns:
    (the source's config, {'params', 'batch_stats', 'mask'} with the mask
    boolean), the arrays placed on this run's default device.
  """
  source = check_source(config, source_workdir)
  source_rounds(source_workdir, [round_idx])
  ckpts = checkpoint.RunCheckpoints(source_workdir)
  where = epath.Path(source_workdir)
  try:
    saved = restore(lambda: ckpts.load_round(round_idx),
                    f'end of round {round_idx}',
                    where / 'rounds' / str(round_idx))
    if point == 'rewind':
      if not ckpts.has_rewind():
        raise ValueError(
            f'{source_workdir} has no rewind point (pruning.reset='
            f"{source.pruning.reset!r}): no winning ticket to start from.")
      rewound = restore(ckpts.load_rewind, 'rewind point', where / 'rewind',
                        advice=REWIND_ADVICE.format(workdir=where))
      saved = {'params': rewound['params'],
               'batch_stats': rewound['batch_stats'], 'mask': saved['mask']}
  finally:
    ckpts.close()
  # Via the host: restored arrays carry the source run's placement.
  saved = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), saved)
  saved['mask'] = jax.tree.map(lambda m: m.astype(jnp.bool_), saved['mask'])
  return source, saved


def _reference_mask(reference_workdir: str, round_idx: int,
                    like: PyTree) -> PyTree:
  """Round `round_idx`'s mask from another run, checked against `like`."""
  ckpts = checkpoint.RunCheckpoints(reference_workdir)
  try:
    if round_idx not in ckpts.completed_rounds():
      raise ValueError(
          f'pruning.reference_workdir={reference_workdir} has no finished '
          f'round {round_idx}; run the reference pruning first.')
    mask = restore(lambda: ckpts.load_round(round_idx),
                   f'mask of round {round_idx}',
                   epath.Path(reference_workdir) / 'rounds' / str(round_idx)
                   )['mask']
  finally:
    ckpts.close()
  shapes = lambda tree: jax.tree.map(jnp.shape, tree)
  if shapes(mask) != shapes(like):
    raise ValueError(f'The run in {reference_workdir} pruned a different '
                     'model: its masks do not fit this one.')
  # Via the host: the restored arrays carry the reference run's sharding.
  return jax.tree.map(lambda m: jnp.asarray(np.asarray(m), jnp.bool_), mask)


def _get(tree: PyTree, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def _target_reached(config, row: dict) -> bool:
  target = config.pruning.target_fraction_left
  return bool(target) and row['fraction_left'] <= target


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
  return int(np.random.SeedSequence([config.seed, round_idx]
                                    ).generate_state(1)[0])


def _reset(exp: Experiment, ckpts: checkpoint.RunCheckpoints, prev: dict,
           mask: PyTree, rng: jax.Array, round_idx: int
           ) -> tuple[dict, PyTree]:
  """Variables and task state a round > 0 starts from, under its new mask.

  Rewinding restores the whole training state of the rewind point (the
  weights, batch-norm statistics and the task's state, such as NPID's
  memory bank); `lr_rewind` and `finetune` keep those the previous round
  (`prev`) ended with; re-initialising draws them afresh.
  """
  if exp.config.pruning.reset in KEEPS_FINAL:
    return ({'params': pruning.apply_mask(prev['params'], mask),
             'batch_stats': prev['batch_stats']},
            prev.get('task_state', exp.task_state))
  if exp.config.pruning.reset == 'rewind':
    initial = exp.round_target()
    saved = restore(
        lambda: ckpts.restore_rewind({'params': initial['params'],
                                      'batch_stats': initial['batch_stats'],
                                      'task_state': exp.task_state}),
        'rewind point', ckpts.workdir / 'rewind',
        advice=REWIND_ADVICE.format(workdir=ckpts.workdir))
    return ({'params': pruning.rewind(saved['params'], mask),
             'batch_stats': saved['batch_stats']}, saved['task_state'])
  # Batch-norm statistics start at their initial values either way.
  return ({'params': pruning.reinit(
      lambda k: exp.init_fn(k)['params'], rng, mask),
           'batch_stats': exp.variables.get('batch_stats', {})},
          exp.task.init_state(jax.random.fold_in(exp.rngs['task'],
                                                 round_idx)))


# The rewind point is saved in round 0: training round 0 again saves it
# again, bit for bit.
REWIND_ADVICE = ('Delete {workdir}/rewind and {workdir}/rounds/0 and run '
                 'again: round 0 is trained again and saves the same rewind '
                 'point; the other rounds are kept.')


def restore(fn, what: str, where: epath.Path, advice: str | None = None):
  """Runs a restore, turning a failure into an error that says what to do
  (in two lines: `checkpoint.first_line`)."""
  try:
    return fn()
  except Exception as e:  # Orbax raises many types for unreadable files.
    raise checkpoint.CorruptCheckpointError(
        f'Could not read the {what} from {where}: {type(e).__name__}: '
        f'{checkpoint.first_line(e)}\nThe checkpoint is damaged or was '
        'written by another config. '
        + (advice or f'Delete {where} to redo the work it held; earlier '
           'rounds are kept.')
    ) from e
