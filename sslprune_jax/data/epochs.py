"""One epoch of the training stream, exactly reproducible from its seed.

An epoch shuffles with seeds of `(seed, epoch)` only and augments each
example with a stateless seed of `(seed, epoch, index)`; resuming at a step
skips the raw examples before it (see the package docstring).
"""

import collections

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from sslprune_jax.data import augment as augment_lib
from sslprune_jax.data import image_ops
from sslprune_jax.data import reading
from sslprune_jax.data import sources
from sslprune_jax.data import subsets

# The training splits `_cached_train_source` has read, most recent last: the
# rounds of a run (and the runs of one process: a sweep, a figure, the
# tests) each start a new stream over the same split, which read and
# decoded the whole split again (0.5 s a round for 2,048 Fashion-MNIST
# images on 2 cores). A few are kept: a host reads one or two parts.
_SOURCES = collections.OrderedDict()
_MAX_SOURCES = 4


def _cached_train_source(builder, layout, split, index_start):
  """This host's training split, in memory (see `_read_train_source`): the
  same dataset object for the same split, read only the first time."""
  key = (
      str(builder.data_path),
      str(split),
      index_start,
      layout.size,
      None
      if layout.shard_offsets is None
      else tuple(sorted(layout.shard_offsets.items())),
  )
  if key in _SOURCES:
    _SOURCES.move_to_end(key)
  else:
    _SOURCES[key] = _read_train_source(builder, layout, split, index_start)
    while len(_SOURCES) > _MAX_SOURCES:
      _SOURCES.popitem(last=False)
  return _SOURCES[key]


def _read_train_source(builder, layout, split, index_start):
  """Returns this host's training split read once into memory.

  Args:
    builder: a prepared TFDS builder.
    layout: the training split's `_IndexLayout`.
    split: this host's training split.
    index_start: its `_index_start`.

  Returns:
    A cached `tf.data.Dataset` of `{'image', 'label', 'index'}` in file
    order; images are decoded first when they all have the same shape (small
    datasets), which spares decoding them again every epoch.
  """
  ds = reading._read(builder, split, layout=layout, index_start=index_start)
  shape = sources._image_shape(builder)
  if None not in shape:
    ds = ds.map(
        lambda ex: dict(
            ex, image=image_ops.decode(ex['image'], shape[-1], shape)
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
  ds = ds.cache()
  # tf.data throws a partially read cache away, and the epochs read only
  # whole batches of a shuffled split; so fill the cache with one full pass.
  ds.reduce(np.int64(0), lambda count, _: count + 1)
  return ds


def _train_epoch(
    source,
    builder,
    config,
    *,
    layout,
    local_split,
    index_start,
    labelled,
    keep,
    relabel,
    epoch,
    seed,
    local_batch,
    examples_per_epoch,
    skip,
    index_offset,
):
  """Builds the dataset of one training epoch for this host.

  Args:
    source: the cached split from `_cached_train_source`, or None to read
      the split's files afresh (in a shuffled order).
    builder: a prepared TFDS builder.
    config: the validated data config.
    layout: the training split's `_IndexLayout`.
    local_split: this host's training split.
    index_start: its `_index_start`.
    labelled: bool `[layout.size]`, whether each index is labelled.
    keep: bool `[layout.size]`, the examples to stream (the labelled ones,
      or those of `classes`), or None for all.
    relabel: `_relabel`'s table, or None.
    epoch: epoch number.
    seed: the user's seed.
    local_batch: examples per batch on this host.
    examples_per_epoch: examples this host uses per epoch (whole batches).
    skip: raw examples to skip at the start (when resuming).
    index_offset: added to an example's position within this host's epoch to
      make its augmentation seed unique over all hosts.

  Returns:
    A `tf.data.Dataset` of batches `{'image': float32, 'label': int32,
    'index': int32, 'labelled': bool}` (`'label'` `[B, num_classes]` for
    multi-label datasets).
  """
  if source is None:
    source = reading._read(
        builder,
        local_split,
        layout=layout,
        index_start=index_start,
        shuffle_files=True,
        file_seed=reading._derive_seed(seed, epoch, reading._FILE_SHUFFLE),
    )
  labelled = tf.constant(labelled)
  if keep is not None:
    # Before shuffling and skipping, so that resuming skips the same examples.
    keep = tf.constant(keep)
    source = source.filter(lambda ex: tf.gather(keep, ex['index']))
  if relabel is not None:
    relabel = tf.constant(relabel)
  ds = source.shuffle(
      config.shuffle_buffer,
      seed=reading._derive_seed(seed, epoch, reading._EXAMPLE_SHUFFLE),
      reshuffle_each_iteration=False,
  )
  ds = ds.take(examples_per_epoch)
  # Positions are attached before skipping, so that a resumed stream gives
  # each example the same augmentation seed as the uninterrupted one.
  ds = ds.enumerate().skip(skip)

  key = reading._augment_key(seed, epoch)
  shape = sources._image_shape(builder)
  mean, std = augment_lib.MEAN_STD[config.name]

  def prepare(position, example):
    example_seed = tf.random.experimental.stateless_fold_in(
        key, position + index_offset, alg='philox'
    )
    image = augment_lib.preprocess_train(
        example['image'],
        example_seed,
        augment=config.augment,
        image_size=config.image_size,
        channels=shape[-1],
        shape=shape,
    )
    return {
        'image': reading._finish(image, config, mean, std),
        'label': _relabelled(example['label'], relabel),
        'index': tf.cast(example['index'], tf.int32),
        'labelled': tf.gather(labelled, example['index']),
    }

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  return ds.with_options(reading.pipeline_options())


def _relabelled(label, relabel):
  """An example's label as int32, through `_relabel`'s table if any."""
  label = tf.cast(label, tf.int32)
  return label if relabel is None else tf.gather(relabel, label)


def _shard_batches(
    builder,
    config,
    *,
    layout,
    labelled,
    keep,
    relabel,
    seed,
    shard,
    num_shards,
    shard_batch,
    steps_per_epoch,
    start_step,
):
  """Yields the training batches of one read shard forever."""
  local_split = subsets._host_split(config, shard, num_shards)
  index_start = subsets._index_start(builder, layout, local_split, shard)
  source = None
  if config.cache:
    source = _cached_train_source(builder, layout, local_split, index_start)
  examples_per_epoch = steps_per_epoch * shard_batch
  epoch, step_in_epoch = divmod(start_step, steps_per_epoch)
  skip = step_in_epoch * shard_batch
  while True:
    ds = _train_epoch(
        source,
        builder,
        config,
        layout=layout,
        local_split=local_split,
        index_start=index_start,
        labelled=labelled,
        keep=keep,
        relabel=relabel,
        epoch=epoch,
        seed=seed,
        local_batch=shard_batch,
        examples_per_epoch=examples_per_epoch,
        skip=skip,
        index_offset=shard * examples_per_epoch,
    )
    yield from tfds.as_numpy(ds)
    epoch += 1
    skip = 0


def _train_batches(builder, config, *, shards, **kwargs):
  """Yields this host's training batches forever (see `train_iterator`):
  those of its read shards, joined in order."""
  streams = [
      _shard_batches(builder, config, shard=shard, **kwargs) for shard in shards
  ]
  if len(streams) == 1:
    yield from streams[0]
    return
  for parts in zip(*streams):
    yield {
        key: np.concatenate([part[key] for part in parts]) for key in parts[0]
    }


def _subset_steps_per_epoch(
    builder, config, layout, subset, num_shards, shard_batch
):
  """Returns the steps of an epoch over a subset of the training split.

  Args:
    builder: the prepared TFDS builder.
    config: the validated data config.
    layout: the training split's `_IndexLayout`.
    subset: its sorted indices (the labelled ones, or those of `classes`).
    num_shards: parts the training split is read in.
    shard_batch: examples per batch of a part.

  Returns:
    The number of whole batches in the read shard with the fewest examples
    of the subset: `len(subset) // global_batch_size` with one shard,
    possibly less with several (shards need not hold equally many).
  """
  counts = []
  for shard in range(num_shards):
    split = subsets._host_split(config, shard, num_shards)
    index_start = subsets._index_start(builder, layout, split, shard)
    counts.append(
        sum(
            int(np.searchsorted(subset, stop) - np.searchsorted(subset, start))
            for start, stop in subsets._index_ranges(
                builder, layout, split, index_start
            )
        )
    )
  return min(counts) // shard_batch
