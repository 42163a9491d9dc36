"""An experiment assembled from its config: everything its rounds share.

`build` checks the config (`validation`), reads the dataset's metadata,
builds the model, its prunable leaves, its optimiser and the schedule of a
round (T steps, the rewind step k), and computes nothing a resumed run does
not need. `seed_configs` makes the configs of the seeds one config trains
together.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from sslprune_jax import data
from sslprune_jax import models
from sslprune_jax import parallel
from sslprune_jax import pruning
from sslprune_jax import tasks
from sslprune_jax import train
from sslprune_jax import validation
from sslprune_jax import xla_options
from sslprune_jax.source_network import load_source

PyTree = Any


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
        f'{num_train_examples} training examples.'
    )
  num_steps = max(1, int(round(config.train.num_epochs * steps_per_epoch)))
  rewind_step = rewind_step_of(config, config.pruning.rewind_samples)
  if (
      config.pruning.reset != 'reinit'
      and config.pruning.num_rounds > 0
      and rewind_step >= num_steps
  ):
    raise ValueError(
        f'pruning.rewind_samples={config.pruning.rewind_samples} is step '
        f'{rewind_step} ({images_per_step(config)} images a step), not '
        f'before the end of the run (step {num_steps}): rounds after the '
        f'first would not train (pruning.reset={config.pruning.reset!r}).'
    )
  return num_steps, rewind_step


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
        jax.eval_shape(self.init_fn, self.init_rng),
    )

  def round_target(self) -> PyTree:
    """Structure (and placement) of an end-of-round checkpoint."""
    target = {
        'params': self.variable_shapes['params'],
        'batch_stats': self.variable_shapes.get('batch_stats', {}),
        'mask': self.start_mask,
    }
    if saves_task_state(self.config, self.task_state):
      target['task_state'] = self.task_state
    return target


def saves_task_state(config, task_state: PyTree) -> bool:
  """Whether ends of rounds keep the task's state: only where the next
  round starts from it (`validation.KEEPS_FINAL`) and there is one (NPID's
  memory bank, 0.6 GB on ImageNet, is not saved 30 times otherwise)."""
  return config.pruning.reset in validation.KEEPS_FINAL and bool(
      jax.tree.leaves(task_state)
  )


def build(config: ml_collections.ConfigDict) -> Experiment:
  """Checks the config, reads the dataset's metadata, builds the model.

  Everything here is cheap; bad input is refused before any training.
  """
  validation.validate_config(config)
  mesh = parallel.create_mesh()
  parallel.check_batch_size(config.train.batch_size, mesh)
  parallel.check_batch_size(config.train.eval_batch_size, mesh)
  if tasks.TASKS[config.task.name].stream == 'mixed':
    parallel.check_batch_size(config.train.labelled_batch_size, mesh)
  info = data.get_info(config.data)
  task = tasks.get_task(config.task, info)
  epoch_examples = (
      info.num_labelled_examples
      if task.stream == 'labelled'
      else info.num_train_examples
  )
  num_steps, rewind_step = round_schedule(config, epoch_examples)
  model = models.create_model(config.model, task.num_outputs(info.num_classes))
  init_rng, state_rng, prune_rng, reinit_rng, task_rng = jax.random.split(
      jax.random.PRNGKey(config.seed), 5
  )
  init_fn = jax.jit(
      functools.partial(
          train.init_variables, model, image_shape=info.image_shape
      ),
      compiler_options=xla_options.one_off_options(jax.default_backend()),
  )
  # Shapes only: nothing is compiled or computed that a resumed run does
  # not need (`Experiment.variables`).
  variables = jax.eval_shape(init_fn, init_rng)
  prunable = pruning.prunable_tree(
      variables['params'],
      exclude=tuple(config.pruning.exclude),
      min_ndim=config.pruning.min_ndim,
  )
  if config.pruning.layers:
    order = [
        path
        for path in models.kernel_order(
            model, jnp.zeros((1, *info.image_shape))
        )
        if _get(prunable, path)
    ]
    if config.pruning.layers > len(order):
      raise ValueError(
          f'pruning.layers={config.pruning.layers} but the '
          f'model has only {len(order)} prunable layers.'
      )
    prunable = pruning.restrict_to_layers(
        prunable, order[: config.pruning.layers]
    )
  _check_rounds_leave_weights(
      config.pruning, config.model, variables['params'], prunable
  )
  start_mask = pruning.init_mask(variables['params'])
  source_variables = None
  if config.init_from.workdir:
    source_variables, start_mask = load_source(
        config,
        init_fn(init_rng),
        config.init_from.workdir,
        config.init_from.round,
    )
    source_variables = {
        **source_variables,
        'params': pruning.apply_mask(source_variables['params'], start_mask),
    }
  steps_per_epoch = epoch_examples // config.train.batch_size
  learning_rate_fn = train.create_learning_rate_fn(
      config.train, steps_per_epoch
  )
  final_rate = optax.constant_schedule(float(learning_rate_fn(num_steps - 1)))
  return Experiment(
      config=config,
      mesh=mesh,
      info=info,
      model=model,
      task=task,
      init_fn=init_fn,
      init_rng=init_rng,
      source_variables=source_variables,
      start_mask=start_mask,
      task_state=task.init_state(task_rng),
      prunable=prunable,
      optimizer=train.Optimizer(
          train.create_optimizer(config.train, learning_rate_fn),
          learning_rate_fn,
      ),
      final_rate_optimizer=train.Optimizer(
          train.create_optimizer(config.train, final_rate), final_rate
      ),
      num_steps=num_steps,
      rewind_step=rewind_step,
      rngs={
          'state': state_rng,
          'prune': prune_rng,
          'reinit': reinit_rng,
          'task': task_rng,
      },
  )


def channel_groups_of(config, params: PyTree) -> list[dict]:
  """The channel groups of a channel-pruned run's network, else []."""
  if config.pruning.get('granularity', 'unstructured') != 'channel':
    return []
  return models.channel_groups(config.model, params)


def _check_rounds_leave_weights(
    pruning_config, model_config, params, prunable
) -> None:
  """Refuses more rounds than the prunable weights last, and N:M pruning
  of a network with no kernel to group."""
  if pruning_config.get('granularity', 'unstructured') == 'channel':
    groups = models.channel_groups(model_config, params)
    problem = pruning.channels.rounds_problem(
        [_get(params, g['producer']).shape[-1] for g in groups],
        pruning_config.fraction,
        pruning_config.num_rounds,
        pruning_config.channel_scope,
    )
    if problem:
      raise ValueError(
          f'pruning.num_rounds={pruning_config.num_rounds} of channel '
          f'pruning: {problem}.'
      )
    return
  if pruning_config.get('granularity', 'unstructured') == 'nm':
    m = pruning_config.m
    if not any(jax.tree.leaves(pruning.nm.nm_prunable(params, prunable, m))):
      raise ValueError(
          f'pruning.granularity=nm with m={m}: no prunable kernel has an '
          f'input dimension of {m} or more, so nothing would be pruned.'
      )
    return
  total = sum(
      math.prod(p.shape)
      for p, keep in zip(jax.tree.leaves(params), jax.tree.leaves(prunable))
      if keep
  )
  remaining, rounds = total, 0
  while rounds < pruning_config.num_rounds:
    remaining -= pruning.num_to_prune(pruning_config.fraction, remaining)
    if remaining < 1:
      raise ValueError(
          f'pruning.num_rounds={pruning_config.num_rounds}: at '
          f'pruning.fraction={pruning_config.fraction}, round {rounds + 1} '
          f"prunes the last of the model's {total} prunable weights; at "
          f'most {rounds} rounds leave any.'
      )
    rounds += 1


def _get(tree: PyTree, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def train_batches(
    config: ml_collections.ConfigDict, task, *, seed: int, start_step: int
):
  """This host's training batches for the task's stream, from `start_step`.

  'all' streams every training example, 'labelled' only the labelled subset
  (`data.labelled`), 'mixed' puts `train.labelled_batch_size` labelled
  images and `train.batch_size` images without labels in every step, each
  device getting its share of both.
  """
  if task.stream == 'mixed':
    return data.mixed_train_iterator(
        config.data,
        labelled_batch_size=config.train.labelled_batch_size,
        unlabelled_batch_size=config.train.batch_size,
        seed=seed,
        start_step=start_step,
        num_shards=jax.local_device_count(),
    )
  return data.train_iterator(
      config.data,
      global_batch_size=config.train.batch_size,
      seed=seed,
      start_step=start_step,
      only_labelled=task.stream == 'labelled',
  )


def seed_configs(
    config: ml_collections.ConfigDict,
) -> list[ml_collections.ConfigDict]:
  """The configs of the `num_seeds` runs that one config trains together.

  Seed i's config is `config` with `seed = config.seed + i` and
  `num_seeds = 1`: exactly the config of a separate run of that seed, so
  that its workdir (`rundir.seed_dir`) can be read, resumed or evaluated like
  any other run's.
  """
  num_seeds = config.get('num_seeds', 1)
  if not isinstance(num_seeds, int) or num_seeds < 1:
    raise ValueError(
        f'Invalid config: num_seeds must be a positive int, got {num_seeds!r}.'
    )
  if num_seeds == 1:
    return [config]
  configs = []
  for i in range(num_seeds):
    c = ml_collections.ConfigDict(config.to_dict())
    c.seed = config.seed + i
    c.num_seeds = 1
    configs.append(c)
  return configs
