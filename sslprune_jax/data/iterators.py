"""The iterators the round loop reads: training, mixed and evaluation.

`train_iterator` and `mixed_train_iterator` yield this host's numpy batches
from `(seed, start_step)`, exactly as an uninterrupted stream would;
`eval_iterator` yields the evaluation split once.
"""

import math
import operator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from sslprune_jax import voc
from sslprune_jax.data import augment as augment_lib
from sslprune_jax.data import epochs
from sslprune_jax.data import reading
from sslprune_jax.data import schema
from sslprune_jax.data import sources
from sslprune_jax.data import subsets


def _check_seed_and_step(seed, start_step):
  """Raises ValueError unless `seed` is an int and `start_step` one >= 0."""
  if not schema._is_int(seed):
    raise ValueError(f'seed must be an integer, got {seed!r}.')
  if not schema._is_int(start_step) or start_step < 0:
    raise ValueError(
        f'start_step must be a non-negative integer, got {start_step!r}.'
    )


def train_iterator(
    data_config, *, global_batch_size, seed, start_step=0, only_labelled=False
):
  """Returns this host's infinite stream of augmented training batches.

  Every epoch has `num_train_examples // global_batch_size` steps (the rest
  of the split is dropped, differently in each epoch; with several
  processes, a training split joining several splits may have a step less,
  as each part is shared out among the processes); with `only_labelled`
  it is an epoch over the labelled subset, of
  `num_labelled_examples // global_batch_size` steps (fewer if several
  processes hold unequal shares of the subset).

  The split is read in `data_config.read_shards` equal parts (0: one per
  process; `tfds.split_for_jax_process`), each shuffled and augmented on its
  own and contributing `global_batch_size // read_shards` examples to every
  step; a process reads its consecutive share of the parts and joins their
  batches in order. The global batch is therefore the same whatever the
  number of processes dividing `read_shards`. The stream depends only on
  `(data_config, global_batch_size, seed)` and the number of read shards;
  starting at `start_step=k` yields exactly the batches that `start_step=0`
  yields from its k-th on, without augmenting the skipped ones.

  Args:
    data_config: data config (see `default_data_config`).
    global_batch_size: examples per step over all hosts; must be divisible by
      `jax.process_count()`.
    seed: integer seed of shuffling and augmentation.
    start_step: number of batches to skip, e.g. the step to resume from.
    only_labelled: stream only the labelled subset (`labelled_indices`).

  Returns:
    An iterator of dicts `{'image': float32 [B, H, W, C], 'label': int32 [B],
    'index': int32 [B], 'labelled': bool [B]}` with
    `B = global_batch_size // jax.process_count()`, images normalised by the
    dataset's per-channel mean and standard deviation; `index` is the
    example's position in the base split, or in the base splits one after
    the other for a joined split such as VOC's 'train+validation'
    (`DatasetInfo.index_size` bounds it), and `labelled` whether it is in
    the labelled subset. For multi-label datasets (`DatasetInfo.multi_label`)
    `label` is int32 `[B, num_classes]`, each in {1, 0, -1} as
    `sslprune_jax.evaluation.voc.targets` defines them.

  Raises:
    ValueError: invalid config or arguments, or a split (or labelled subset)
      smaller than a batch.
    DatasetNotFoundError: the dataset could not be obtained.
  """
  config = schema._resolve_config(data_config)
  # Checked for its errors (a positive multiple of the number of processes);
  # batches are assembled from the read shards' batches.
  reading._local_batch_size(global_batch_size)
  num_shards, shards = reading._read_shards(config)
  shard_batch = reading._shard_batch_size(global_batch_size, num_shards)
  _check_seed_and_step(seed, start_step)
  reading._hide_accelerators_from_tf()
  builder = sources._prepared_builder(config)
  layout = subsets._index_layout(builder, config)
  subset = subsets._labelled_indices(config)
  kept = None
  if only_labelled or config.classes:
    kept = subset if only_labelled else subsets._class_indices(config)
    num_examples = len(kept)
    steps_per_epoch = epochs._subset_steps_per_epoch(
        builder, config, layout, kept, num_shards, shard_batch
    )
    what = (
        f'The labelled subset ({config.labelled!r}) of split'
        if only_labelled
        else f'Classes {list(config.classes)} of split'
    )
  else:
    num_examples = sources._num_examples(builder, config.train_split)
    # Read shards split each part of a joined training split on their own,
    # which can leave them fewer than `num_examples // num_shards` examples.
    steps_per_epoch = min(
        num_examples // global_batch_size,
        sources._num_examples(
            builder, subsets._host_split(config, 0, num_shards)
        )
        // shard_batch,
    )
    what = 'Split'
  if not steps_per_epoch:
    raise ValueError(
        f'{what} {config.train_split!r} of {config.name} has {num_examples} '
        f'examples, fewer than one global batch of {global_batch_size}'
        + (' in every read shard.' if num_shards > 1 else '.')
    )
  labelled = np.zeros(layout.size, bool)
  labelled[subset] = True
  keep = None
  if kept is not None:
    keep = np.zeros(layout.size, bool)
    keep[kept] = True
  return epochs._train_batches(
      builder,
      config,
      layout=layout,
      labelled=labelled,
      keep=keep,
      relabel=subsets._relabel(builder, config),
      seed=operator.index(seed),
      shards=shards,
      num_shards=num_shards,
      shard_batch=shard_batch,
      steps_per_epoch=steps_per_epoch,
      start_step=operator.index(start_step),
  )


def _interleave_shards(labelled, unlabelled, num_shards):
  """Joins two batches so that each of `num_shards` slices has both parts.

  Args:
    labelled: batch dict whose arrays have a leading dimension `L`.
    unlabelled: batch dict with the same keys, leading dimension `U`.
    num_shards: number of consecutive equal slices of the result.

  Returns:
    A dict of arrays `[L + U, ...]`: slice `s` holds the `s`-th
    `L // num_shards` rows of `labelled`, then the `s`-th
    `U // num_shards` rows of `unlabelled`.
  """

  def join(a, b):
    parts = [x.reshape(num_shards, -1, *x.shape[1:]) for x in (a, b)]
    return np.concatenate(parts, axis=1).reshape(-1, *a.shape[1:])

  return {key: join(labelled[key], unlabelled[key]) for key in labelled}


def mixed_train_iterator(
    data_config,
    *,
    labelled_batch_size,
    unlabelled_batch_size,
    seed,
    start_step=0,
    num_shards,
):
  """Returns this host's stream of labelled plus unlabelled training batches.

  Every step joins a batch of the labelled subset (`train_iterator` with
  `only_labelled=True`) and a batch of all the training examples used
  without labels (their `labelled` is False), from two independent streams
  whose seeds are derived from `seed`. Both resume at `start_step`, each
  with its own epoch length. The host's batch consists of `num_shards` equal
  consecutive slices (one per local device) that each hold their share of
  the labelled batch followed by their share of the unlabelled one.

  Args:
    data_config: data config (see `default_data_config`).
    labelled_batch_size: labelled examples per step over all hosts.
    unlabelled_batch_size: unlabelled examples per step over all hosts.
    seed: integer seed of shuffling and augmentation.
    start_step: number of steps to skip, e.g. the step to resume from.
    num_shards: slices of the host's batch, normally
      `jax.local_device_count()`.

  Returns:
    An iterator of dicts with the keys of `train_iterator`'s batches and
    `(labelled_batch_size + unlabelled_batch_size) // jax.process_count()`
    examples.

  Raises:
    ValueError: invalid config or arguments, a batch size not divisible by
      `jax.process_count() * num_shards`, or too few (labelled) examples.
    DatasetNotFoundError: the dataset could not be obtained.
  """
  if not schema._is_int(num_shards) or num_shards < 1:
    raise ValueError(
        f'num_shards must be a positive integer, got {num_shards!r}.'
    )
  _check_seed_and_step(seed, start_step)
  slices = jax.process_count() * num_shards
  for name, size in (
      ('labelled_batch_size', labelled_batch_size),
      ('unlabelled_batch_size', unlabelled_batch_size),
  ):
    if not schema._is_int(size) or size < 1 or size % slices:
      raise ValueError(
          f'{name} must be a positive multiple of the number of processes '
          f'times num_shards ({jax.process_count()} * {num_shards}), got '
          f'{size!r}.'
      )
  labelled = train_iterator(
      data_config,
      global_batch_size=labelled_batch_size,
      seed=reading._derive_seed(seed, 0, reading._LABELLED_STREAM),
      start_step=start_step,
      only_labelled=True,
  )
  unlabelled = train_iterator(
      data_config,
      global_batch_size=unlabelled_batch_size,
      seed=reading._derive_seed(seed, 0, reading._UNLABELLED_STREAM),
      start_step=start_step,
  )
  return (
      _interleave_shards(
          a, dict(b, labelled=np.zeros_like(b['labelled'])), num_shards
      )
      for a, b in zip(labelled, unlabelled)
  )


def eval_iterator(data_config, *, global_batch_size):
  """Returns one deterministic pass over this host's evaluation shard.

  Batches always hold `global_batch_size // jax.process_count()` examples and
  every host yields the same number of them: the last ones are padded with
  zero examples whose `mask` is False.

  Args:
    data_config: data config (see `default_data_config`); reads `eval_split`.
    global_batch_size: examples per step over all hosts; must be divisible by
      `jax.process_count()`.

  Returns:
    An iterator of dicts `{'image': float32 [B, H, W, C], 'label': int32 [B],
    'mask': bool [B]}`; images are only fitted to `image_size` (centre crop
    for 'imagenet') and normalised. For multi-label datasets `label` is
    int32 `[B, num_classes]` in {1, 0, -1} (see `train_iterator`); padding
    examples are then negatives of every class.

  Raises:
    ValueError: invalid config or batch size.
    DatasetNotFoundError: the dataset could not be obtained.
  """
  config = schema._resolve_config(data_config)
  local_batch = reading._local_batch_size(global_batch_size)
  reading._hide_accelerators_from_tf()
  builder = sources._prepared_builder(config)
  # Without drop_remainder every example is evaluated; the first hosts then
  # hold one example more than the others.
  local_split = tfds.split_for_jax_process(config.eval_split)
  num_local = subsets._count(builder, config, local_split)
  # With `classes`, the shard with the most of their examples need not be
  # the first.
  largest_shard = max(
      subsets._count(
          builder,
          config,
          tfds.split_for_jax_process(
              config.eval_split,
              process_index=p,
              process_count=jax.process_count(),
          ),
      )
      for p in range(jax.process_count() if config.classes else 1)
  )
  num_batches = math.ceil(largest_shard / local_batch)

  shape = sources._image_shape(builder)
  channels = shape[-1]
  mean, std = augment_lib.MEAN_STD[config.name]

  def prepare(example):
    image = augment_lib.preprocess_eval(
        example['image'],
        augment=config.augment,
        image_size=config.image_size,
        channels=channels,
        shape=shape,
    )
    return {
        'image': reading._finish(image, config, mean, std),
        'label': epochs._relabelled(example['label'], relabel),
        'mask': tf.constant(True),
    }

  relabel = subsets._relabel(builder, config)
  ds = reading._read(builder, local_split)
  if relabel is not None:
    relabel = tf.constant(relabel)
    ds = ds.filter(lambda ex: tf.gather(relabel, ex['label']) >= 0)
  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  if sources._is_multi_label(builder):
    # The mask is what excludes padding; as a negative of every class it at
    # least never adds a positive.
    padding_label = tf.fill([sources._num_classes(builder)], voc.NEGATIVE)
  else:
    padding_label = tf.constant(0, tf.int32)
  padding = {
      'image': tf.zeros(
          (
              config.image_size,
              config.image_size,
              1 if config.grayscale else channels,
          ),
          tf.float32,
      ),
      'label': padding_label,
      'mask': tf.constant(False),
  }
  num_padding = num_batches * local_batch - num_local
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_padding))
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(reading.pipeline_options())
  return iter(tfds.as_numpy(ds))
