"""Reading a split with tf.data: shards, decoding, seeds, normalisation.

`_read` gives this host's (or one read shard's) examples with their
`index`, the example's position in the base split computed from TFDS's
record ids, so that subsets and per-example seeds do not depend on the
number of hosts. Seeds for shuffling and augmentation are derived here.
"""

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from sslprune_jax import voc
from sslprune_jax.data import augment as augment_lib
from sslprune_jax.data import schema
from sslprune_jax.data import sources

# TFDS's record ids: '<shard file name>__<record number in the shard>', the
# shard file name being '<dataset>-<split>.<format>-<shard>-of-<shards>'.
_TFDS_ID_PATTERN = r'^(?:.*/)?([^/]*)__(\d+)$'
# Tags that keep the seeds derived for different purposes independent.
_FILE_SHUFFLE, _EXAMPLE_SHUFFLE, _AUGMENT = 0, 1, 2
_LABELLED_STREAM, _UNLABELLED_STREAM = 3, 4


def _finish(image, config, mean, std):
  """Normalises a [0, 1] image, first turning it grey if configured.

  A grey image is normalised with the luminance of the channel means and
  standard deviations.
  """
  if config.grayscale and image.shape[-1] == 3:
    image = tf.image.rgb_to_grayscale(image)
    # tf.image.rgb_to_grayscale's weights.
    weights = np.array([0.2989, 0.5870, 0.1140])
    mean, std = [float(weights @ mean)], [float(weights @ std)]
  return augment_lib.normalize(image, mean, std)


def _read_shards(config):
  """Returns how many parts the training split is read in, and this host's.

  Args:
    config: the validated data config.

  Returns:
    `(num_shards, shards)`: `config.read_shards`, or the number of processes
    if it is 0, and the (consecutive) parts this process reads.

  Raises:
    ValueError: `read_shards` is not a multiple of the number of processes.
  """
  count, index = jax.process_count(), jax.process_index()
  num_shards = config.read_shards or count
  if num_shards % count:
    raise ValueError(
        f'data.read_shards {num_shards} is not a multiple of the number of '
        f'processes {count}.'
    )
  per_process = num_shards // count
  return num_shards, range(index * per_process, (index + 1) * per_process)


def _shard_batch_size(global_batch_size, num_shards):
  """Returns the examples per batch of one read shard.

  Raises:
    ValueError: the global batch is not a multiple of `num_shards`.
  """
  if global_batch_size % num_shards:
    raise ValueError(
        f'global_batch_size {global_batch_size} is not divisible by the '
        f'number of read shards {num_shards} (data.read_shards, 0: one per '
        'process).'
    )
  return global_batch_size // num_shards


def _local_batch_size(global_batch_size):
  """Returns this host's share of a global batch.

  Args:
    global_batch_size: examples per step over all hosts.

  Returns:
    `global_batch_size // jax.process_count()`.

  Raises:
    ValueError: not a positive multiple of the number of processes.
  """
  if not schema._is_int(global_batch_size) or global_batch_size < 1:
    raise ValueError(
        'global_batch_size must be a positive integer, got '
        f'{global_batch_size!r}.'
    )
  process_count = jax.process_count()
  if global_batch_size % process_count:
    raise ValueError(
        f'global_batch_size {global_batch_size} is not divisible by the '
        f'number of processes {process_count}.'
    )
  return int(global_batch_size) // process_count


def _derive_seed(seed, epoch, purpose):
  """Derives a 63-bit seed from `(seed, epoch, purpose)`.

  Args:
    seed: the user's seed, any integer.
    epoch: epoch number.
    purpose: one of the `_FILE_SHUFFLE`, ... tags.

  Returns:
    A non-negative int below 2**63, a valid tf.data seed.
  """
  words = np.random.SeedSequence(
      [int(seed) % 2**64, int(epoch), purpose]
  ).generate_state(2, np.uint32)
  return (int(words[0]) << 31) ^ int(words[1])


def _augment_key(seed, epoch):
  """Returns the stateless key of an epoch's augmentations, int64 `[2]`."""
  key = _derive_seed(seed, epoch, _AUGMENT)
  return tf.constant([key >> 32, key & 0xFFFFFFFF], tf.int64)


def _hide_accelerators_from_tf():
  """Keeps TensorFlow off GPUs, which JAX owns; tf.data runs on the CPU."""
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:
    # TF already initialised its devices; nothing can be changed any more.
    pass


def pipeline_options():
  """Returns tf.data options: deterministic order, no autotuning model.

  `AUTOTUNE` parallelism then falls back to tf.data's defaults (a map uses
  the CPU's cores, a prefetch buffer grows while it runs dry), which keep
  up with training: 19-29k images/s on 2 cores for the quick configs,
  either way. The autotuning model's thread would cost more than it
  gains: deleting an iterator waits for the thread's next optimisation
  pass, up to a minute apart, so every round's end stalled for as long as
  the round's training iterator was dropped (16-55 s measured in one
  shrunk RotNet run).
  """
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = False
  return options


def _multi_label_targets(labels, labels_no_difficult, num_classes):
  """Computes VOC's per-class targets of one example inside tf.data.

  This is `voc.targets` for one image.

  Args:
    labels: int `[n]`, the classes of all the image's objects.
    labels_no_difficult: int `[m]`, the classes of its objects that are not
      marked difficult.
    num_classes: number of classes.

  Returns:
    int32 `[num_classes]`: `voc.POSITIVE` for the classes of
    `labels_no_difficult`, else `voc.DIFFICULT` for those of `labels`, else
    `voc.NEGATIVE`.
  """

  def present(classes):
    # Empty lists (images without such objects) give no class.
    return tf.reduce_any(
        tf.cast(tf.one_hot(classes, num_classes), tf.bool), axis=0
    )

  return tf.where(
      present(labels_no_difficult),
      voc.POSITIVE,
      tf.where(present(labels), voc.DIFFICULT, voc.NEGATIVE),
  )


def _decoders(builder, keys):
  """Returns the decoding of the features `_read` needs for `keys`.

  Args:
    builder: a TFDS builder.
    keys: `_read`'s keys.

  Returns:
    A `tfds.decode.PartialDecoding`: only the features needed are parsed
    (not VOC's boxes, for instance), and images stay encoded.
  """
  wanted = {}
  for key in keys:
    if key == 'label' and sources._is_multi_label(builder):
      wanted.update(labels=True, labels_no_difficult=True)
    else:
      wanted[key] = True
  decoders = {'image': tfds.decode.SkipDecoding()} if 'image' in keys else {}
  return tfds.decode.PartialDecoding(wanted, decoders=decoders)


def _read(
    builder,
    split,
    *,
    keys=('image', 'label'),
    layout=None,
    index_start=0,
    shuffle_files=False,
    file_seed=None,
):
  """Reads a split with undecoded images, keeping only some features.

  Args:
    builder: a prepared TFDS builder.
    split: the split to read.
    keys: the features to keep. For multi-label datasets, `'label'` is the
      example's targets (`_multi_label_targets`), computed from its
      `'labels'` and `'labels_no_difficult'`.
    layout: the training split's `_IndexLayout` to add each example's
      `index` (int64) with, or None for no index.
    index_start: the index of the split's first example when `layout` has no
      shard offsets (see `_IndexLayout`).
    shuffle_files: whether to shuffle the order of the split's files; ignored
      when `layout` has no shard offsets, as indices then follow the order
      of the files (read one after the other).
    file_seed: the file shuffling seed.

  Returns:
    A `tf.data.Dataset` of dicts of `keys` (`'image'` encoded), plus `'index'`
    when `layout` is given.
  """
  with_ids = layout is not None and layout.shard_offsets is not None
  multi_label = sources._is_multi_label(builder)
  num_classes = sources._num_classes(builder) if multi_label else None

  def select(example):
    selected = {}
    for key in keys:
      if key == 'label' and multi_label:
        selected[key] = _multi_label_targets(
            example['labels'], example['labels_no_difficult'], num_classes
        )
      else:
        selected[key] = example[key]
    return selected

  read_config = tfds.ReadConfig(
      shuffle_seed=file_seed,
      options=pipeline_options(),
      # TFDS would cache small splits on its own; caching is decided here
      # (`config.cache`), and a second cache would only hold a copy.
      try_autocache=False,
      add_tfds_id=with_ids,
  )
  if layout is not None and not with_ids:
    # Indices then follow the read order, which must be the files' order.
    read_config.interleave_cycle_length = 1
  ds = builder.as_dataset(
      split=split,
      shuffle_files=shuffle_files and (layout is None or with_ids),
      read_config=read_config,
      # Images stay encoded until after shuffling, skipping and cropping:
      # smaller buffers, and JPEGs can be decoded only where cropped.
      decoders=_decoders(builder, keys),
  )
  if layout is None:
    return ds.map(select)
  if with_ids:
    offsets = _shard_offset_table(layout.shard_offsets)
    return ds.map(
        lambda example: {
            **select(example),
            'index': _index_from_tfds_id(example['tfds_id'], offsets),
        },
        num_parallel_calls=tf.data.AUTOTUNE,
    )
  return ds.enumerate(index_start).map(
      lambda index, example: {**select(example), 'index': index}
  )


def _shard_offset_table(shard_offsets):
  """Returns `_IndexLayout.shard_offsets` as a TensorFlow lookup table."""
  names = list(shard_offsets)
  return tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(
          tf.constant(names, tf.string),
          tf.constant([shard_offsets[name] for name in names], tf.int64),
      ),
      # Every shard read is in the table; -1 would give negative indices.
      default_value=-1,
  )


def _index_from_tfds_id(tfds_id, offsets):
  """Computes an example's index in the base splits from its TFDS record id.

  Args:
    tfds_id: scalar `tf.string`, e.g.
      `b'fashion_mnist-train.tfrecord-00000-of-00001__15000'`.
    offsets: `_shard_offset_table` of the `_IndexLayout`.

  Returns:
    Scalar int64: the shard's offset plus the record number.
  """
  shard = tf.strings.regex_replace(tfds_id, _TFDS_ID_PATTERN, r'\1')
  record = tf.strings.to_number(
      tf.strings.regex_replace(tfds_id, _TFDS_ID_PATTERN, r'\2'), tf.int64
  )
  return offsets.lookup(shard) + record
