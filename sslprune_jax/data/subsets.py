"""Example indices and the labelled subset of the training split.

The indices of a split's examples (`_IndexLayout`), the labelled subset (a
fraction of every class, ImageNet's TFDS subsets, or every image of some
classes: `labelled_indices`) and the class subset with its relabelling
(`class_subset`), all computed identically on every host.
"""

import dataclasses
import fractions
import functools
import math
import os

import numpy as np
import tensorflow_datasets as tfds

from sslprune_jax.data import reading
from sslprune_jax.data import schema
from sslprune_jax.data import sources

# Examples per batch when reading labels and indices of a whole split.
_SCAN_BATCH = 65_536


@dataclasses.dataclass(frozen=True)
class _IndexLayout:
  """How the examples of a training split are numbered.

  Attributes:
    shard_offsets: maps the file name of each shard of the base splits
      (e.g. `'voc-validation.tfrecord-00001-of-00004'`) to the index of its
      first example; an example's index is its shard's offset plus its
      record number in the shard (from TFDS's `tfds_id`). The shards are
      numbered in order within a base split, and the base splits of a
      joined training split one after the other (those of 'validation' from
      the size of 'train' on for 'train+validation'). None when the dataset
      has no split statistics (as under `tfds.testing.mock_data`, whose
      record ids are made up): examples are then numbered by their position
      in the training split read in file order, each host's shard starting
      at `process_index` times its size.
    size: the number of indices, an exclusive upper bound: the examples of
      the base splits, or the training split's without split statistics.
  """

  shard_offsets: dict[str, int] | None
  size: int


def _index_layout(builder, config):
  """Returns the `_IndexLayout` of a config's training split.

  Args:
    builder: the prepared TFDS builder.
    config: the validated data config.

  Returns:
    An `_IndexLayout`.

  Raises:
    ValueError: a base split does not exist.
  """
  splits = builder.info.splits
  bases = schema._base_splits(config.train_split)
  for base in bases:
    if splits and base not in splits:
      raise ValueError(
          f'{config.name} has no split {base!r} (train_split '
          f'{config.train_split!r}); its splits are {sorted(splits)}.'
      )
  shards = []
  for base in bases:
    if not splits or not splits[base].shard_lengths:
      return _IndexLayout(
          None, sources._num_examples(builder, config.train_split)
      )
    shards.extend(zip(splits[base].filenames, splits[base].shard_lengths))
  offsets, size = {}, 0
  for name, length in shards:
    offsets[name] = size
    size += int(length)
  return _IndexLayout(offsets, size)


def _host_split(config, shard, num_shards):
  """Returns read shard `shard` of `num_shards` of the training split."""
  return tfds.split_for_jax_process(
      config.train_split,
      process_index=shard,
      process_count=num_shards,
      drop_remainder=True,
  )


def _index_start(builder, layout, split, shard):
  """Returns `_read`'s `index_start` for a read shard's `_host_split`."""
  if layout.shard_offsets is not None:
    return 0
  return shard * sources._num_examples(builder, split)


def _index_ranges(builder, layout, split, index_start):
  """Returns the indices a split holds, as `(start, stop)` ranges.

  Args:
    builder: the prepared TFDS builder.
    layout: the training split's `_IndexLayout`.
    split: a training split or a part of it.
    index_start: its `_index_start`.

  Returns:
    A list of `(start, stop)` pairs of ints, found without reading the data.
  """
  if layout.shard_offsets is None:
    return [(index_start, index_start + sources._num_examples(builder, split))]
  ranges = []
  for instruction in builder.info.splits[split].file_instructions:
    name = os.path.basename(os.fspath(instruction.filename))
    start = layout.shard_offsets[name] + int(instruction.skip)
    ranges.append((start, start + int(instruction.take)))
  return ranges


def _scan(builder, split, keys, layout=None):
  """Reads some features of every example of a split, without images.

  Args:
    builder: a prepared TFDS builder.
    split: the split to read, in file order.
    keys: the features to read (not `'image'`).
    layout: `_IndexLayout` to add `'index'` with, or None.

  Returns:
    A dict of numpy arrays, one per key (and `'index'`).
  """
  ds = reading._read(builder, split, keys=keys, layout=layout).batch(
      _SCAN_BATCH
  )
  batches = list(tfds.as_numpy(ds))
  names = list(keys) + ([] if layout is None else ['index'])
  return {
      key: np.concatenate([batch[key] for batch in batches])
      if batches
      else np.zeros((0,), np.int64)
      for key in names
  }


def _imagenet_subset_indices(builder, config, layout):
  """Returns the indices of ImageNet's labelled 'per_class' subset.

  Args:
    builder: the prepared `imagenet2012` builder.
    config: the validated data config.
    layout: its `_IndexLayout`.

  Returns:
    The indices of the training split's examples whose `file_name` is in
    TFDS's `imagenet2012_subset` of `labelled_fraction` of the images.

  Raises:
    DatasetNotFoundError: that subset is not prepared.
  """
  name = schema._IMAGENET_SUBSETS[schema._as_fraction(config.labelled_fraction)]
  subset = tfds.builder(name, data_dir=config.data_dir)
  if not sources._has_data(subset):
    raise sources._imagenet_subset_not_found(subset)
  file_names = set(_scan(subset, 'train', ('file_name',))['file_name'])
  examples = _scan(builder, config.train_split, ('file_name',), layout)
  chosen = [name in file_names for name in examples['file_name']]
  return examples['index'][np.asarray(chosen, bool)]


def _choose_labelled(builder, config, layout):
  """Computes the labelled indices of a config's training split (unsorted).

  Args:
    builder: the prepared TFDS builder.
    config: the validated data config.
    layout: its `_IndexLayout`.

  Returns:
    An int64 array of indices.
  """
  if config.labelled == 'all':
    if config.classes:
      return _class_indices(config)
    ranges = _index_ranges(builder, layout, config.train_split, 0)
    return np.concatenate(
        [np.arange(start, stop, dtype=np.int64) for start, stop in ranges]
    )
  if config.name == 'imagenet2012' and config.labelled == 'per_class':
    indices = _imagenet_subset_indices(builder, config, layout)
    if config.classes:
      indices = np.intersect1d(indices, _class_indices(config))
    return indices
  examples = _scan(builder, config.train_split, ('label',), layout)
  labels, indices = examples['label'], examples['index']
  if config.classes:
    kept = np.isin(labels, config.classes)
    labels, indices = labels[kept], indices[kept]
  fraction = schema._as_fraction(config.labelled_fraction)
  half = fractions.Fraction(1, 2)
  if config.labelled == 'classes':
    candidates = np.asarray(
        config.classes or range(sources._num_classes(builder)), np.int64
    )
    count = max(1, math.floor(fraction * len(candidates) + half))
    classes = candidates[
        np.random.default_rng(config.labelled_seed).permutation(
            len(candidates)
        )[:count]
    ]
    return indices[np.isin(labels, classes)]
  chosen = []
  for label in np.unique(labels):
    members = np.sort(indices[labels == label])
    count = math.floor(fraction * len(members) + half)
    rng = np.random.default_rng([config.labelled_seed, int(label)])
    chosen.append(members[rng.permutation(len(members))[:count]])
  return np.concatenate(chosen) if chosen else np.zeros((0,), np.int64)


@functools.lru_cache(maxsize=None)
def _class_indices(config):
  """The sorted, read-only indices of the training examples in `classes`."""
  builder = sources._prepared_builder(config)
  examples = _scan(
      builder, config.train_split, ('label',), _index_layout(builder, config)
  )
  indices = np.sort(
      examples['index'][np.isin(examples['label'], config.classes)]
  ).astype(np.int64)
  indices.flags.writeable = False
  return indices


def _count(builder, config, split):
  """Returns the number of examples of `split` in the config's classes."""
  if not config.classes:
    return sources._num_examples(builder, split)
  labels = _scan(builder, split, ('label',))['label']
  return int(np.isin(labels, config.classes).sum())


def _relabel(builder, config):
  """Returns the int32 table from a dataset label to its label here, or
  None when every class keeps its id (no `classes`).

  The classes listed become 0..k-1 in their order and the others -1 (never
  seen: their examples are filtered out first).
  """
  if not config.classes:
    return None
  table = np.full(sources._num_classes(builder), -1, np.int32)
  table[list(config.classes)] = np.arange(len(config.classes))
  return table


def class_subset(data_config):
  """Returns the indices of the training examples of the config's classes.

  `data.classes` turns a single-label dataset into the dataset of some of
  its classes, e.g. five Fashion-MNIST classes to pre-train on and the other
  five to transfer to: the training and evaluation streams hold only their
  examples, relabelled 0..k-1 in the order listed; `DatasetInfo` counts
  their examples and k classes; the labelled subset is chosen among them.
  Examples keep their index in the base split, so an index table (NPID's
  memory bank) still has `DatasetInfo.index_size` rows, those of the other
  classes unused.

  Args:
    data_config: data config (see `default_data_config`) with a non-empty
      `classes`.

  Returns:
    A sorted, read-only int64 array of indices (`'index'` of the batches).

  Raises:
    ValueError: invalid config, or `classes` is ().
    DatasetNotFoundError: the dataset could not be obtained.
  """
  config = schema._resolve_config(data_config)
  if not config.classes:
    raise ValueError('class_subset needs a data config with classes.')
  return _class_indices(config)


@functools.lru_cache(maxsize=None)
def _labelled_indices(config):
  """Cached `labelled_indices` of a validated config (a read-only array)."""
  builder = sources._prepared_builder(config)
  indices = np.sort(
      _choose_labelled(builder, config, _index_layout(builder, config))
  ).astype(np.int64)
  indices.flags.writeable = False
  return indices


def labelled_indices(data_config):
  """Returns the indices of the labelled examples of the training split.

  The subset is chosen by the config's `labelled`:

  * 'all': every example of `train_split`;
  * 'per_class': in every class `c` with `n_c` examples in `train_split`,
    `floor(labelled_fraction * n_c + 1/2)` of them (computed exactly, on the
    decimal value of the fraction), the first ones of a permutation of the
    class's examples (in index order) drawn by
    `np.random.default_rng([labelled_seed, c])`. For imagenet2012 it is
    instead TFDS's `imagenet2012_subset/1pct` or `/10pct`
    (`labelled_fraction` 0.01 or 0.1; `labelled_seed` is unused): the
    examples whose `file_name` is in that dataset's training split, which
    must be prepared;
  * 'classes': every example of the first
    `max(1, floor(labelled_fraction * num_classes + 1/2))` classes of
    `np.random.default_rng(labelled_seed).permutation(num_classes)`.

  With `classes` (see `class_subset`), the subset is chosen among their
  examples: 'all' is all of them, 'per_class' counts within each of them,
  and 'classes' permutes the list of `classes` instead of all the classes.

  Every process computes the same subset from one pass over the labels of
  the whole `train_split` (images are not decoded); results are cached per
  config in the process.

  Args:
    data_config: data config (see `default_data_config`).

  Returns:
    A sorted, read-only int64 numpy array of indices in the numbering of the
    batches' `'index'` (positions in the base split).

  Raises:
    ValueError: invalid config.
    DatasetNotFoundError: the dataset (or ImageNet's labelled subset) could
      not be obtained.
  """
  return _labelled_indices(schema._resolve_config(data_config))
