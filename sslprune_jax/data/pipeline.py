"""Training and evaluation input pipelines on TFDS datasets.

Each host reads its own shard of a split (`tfds.split_for_jax_process`) and
yields numpy batches of `global_batch_size // jax.process_count()` examples.

The training stream is exactly reproducible from `(seed, start_step)`:

* epoch `e` shuffles with seeds derived from `(seed, e)` only;
* an example's augmentation uses a stateless seed derived from
  `(seed, e, index of the example within epoch e)`, so parallel map scheduling
  cannot change it;
* every epoch has `num_train_examples // global_batch_size` steps;
* resuming at step `k` rebuilds epoch `k // steps_per_epoch` and skips the raw
  (undecoded, unaugmented) examples of its first `k % steps_per_epoch` steps.
"""

import dataclasses
import math
import operator
import os
import socket
import urllib.parse

import jax
import ml_collections
from ml_collections import config_dict
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from sslprune_jax.data import augment as augment_lib
from sslprune_jax.data import fashion_mnist

# Datasets the pipelines support.
DATASETS = ('fashion_mnist', 'cifar10', 'imagenet2012')

# Per-dataset defaults of the fields that differ between datasets.
_DEFAULTS = {
    'fashion_mnist': dict(
        eval_split='test',
        image_size=28,
        augment='cifar',
        shuffle_buffer=60_000,
        cache=True,
    ),
    'cifar10': dict(
        eval_split='test',
        image_size=32,
        augment='cifar',
        shuffle_buffer=50_000,
        cache=True,
    ),
    'imagenet2012': dict(
        eval_split='validation',
        image_size=224,
        augment='imagenet',
        shuffle_buffer=10_000,
        cache=False,
    ),
}

_CONFIG_FIELDS = (
    'name',
    'data_dir',
    'train_split',
    'eval_split',
    'image_size',
    'augment',
    'shuffle_buffer',
    'cache',
)

# Tags that keep the seeds derived for different purposes independent.
_FILE_SHUFFLE, _EXAMPLE_SHUFFLE, _AUGMENT = 0, 1, 2

# Seconds to wait for a download site before declaring it unreachable; without
# this check TFDS retries for minutes on a machine without network.
_PROBE_TIMEOUT_S = 5.0
# Where TFDS fetches already prepared datasets from before downloading sources.
_TFDS_GCS_HOST = 'storage.googleapis.com'
_PROXY_VARIABLES = (
    'https_proxy',
    'HTTPS_PROXY',
    'http_proxy',
    'HTTP_PROXY',
    'all_proxy',
    'ALL_PROXY',
)


class DatasetNotFoundError(FileNotFoundError, RuntimeError):
  """A dataset is not prepared and could not be prepared or downloaded."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and the training loop need to know about a dataset.

  Attributes:
    num_classes: number of labels.
    num_train_examples: examples in the whole training split (all hosts).
    num_eval_examples: examples in the whole evaluation split (all hosts).
    image_shape: `(H, W, C)` of the images the pipelines yield.
  """

  num_classes: int
  num_train_examples: int
  num_eval_examples: int
  image_shape: tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class _Config:
  """A validated data config."""

  name: str
  data_dir: str | None
  train_split: str
  eval_split: str
  image_size: int
  augment: str
  shuffle_buffer: int
  cache: bool


def _check_name(name):
  """Raises ValueError unless `name` is a supported dataset."""
  if name not in DATASETS:
    raise ValueError(
        f'Unknown dataset {name!r}; expected one of {", ".join(DATASETS)}.'
    )


def default_data_config(name='fashion_mnist'):
  """Returns the default data config of a dataset.

  Args:
    name: one of `DATASETS`.

  Returns:
    A `ConfigDict` with fields `name`, `data_dir` (None: TFDS's default),
    `train_split`, `eval_split`, `image_size`, `augment`, `shuffle_buffer` and
    `cache`.

  Raises:
    ValueError: unknown dataset.
  """
  _check_name(name)
  return ml_collections.ConfigDict(
      dict(
          name=name,
          # A typed placeholder so that a string can be given on the command
          # line while None stays the default.
          data_dir=config_dict.placeholder(str),
          train_split='train',
          **_DEFAULTS[name],
      )
  )


def _is_int(value):
  """Returns True for integers, False for bools and everything else."""
  return isinstance(value, (int, np.integer)) and not isinstance(
      value, (bool, np.bool_)
  )


def _resolve_config(data_config):
  """Validates a data config and fills missing fields with the defaults.

  Args:
    data_config: `ConfigDict` or mapping with at least `name`.

  Returns:
    A `_Config`.

  Raises:
    ValueError: unknown dataset or field, or an invalid value.
  """
  fields = dict(data_config.items())
  if 'name' not in fields:
    raise ValueError(
        f'The data config has no name; expected one of {DATASETS}.'
    )
  _check_name(fields['name'])
  unknown = sorted(set(fields) - set(_CONFIG_FIELDS))
  if unknown:
    raise ValueError(
        f'Unknown data config fields {unknown}; valid fields are '
        f'{list(_CONFIG_FIELDS)}.'
    )
  resolved = dict(default_data_config(fields['name']).items())
  resolved.update(fields)
  config = _Config(**resolved)

  if config.data_dir is not None and not isinstance(
      config.data_dir, (str, os.PathLike)
  ):
    raise ValueError(
        f'data_dir must be a path or None, got {config.data_dir!r}.'
    )
  for field in ('train_split', 'eval_split'):
    value = getattr(config, field)
    if not isinstance(value, str) or not value:
      raise ValueError(f'{field} must be a non-empty string, got {value!r}.')
  augment_lib.check_augment(config.augment)
  if not _is_int(config.image_size) or config.image_size < 1:
    raise ValueError(
        f'image_size must be a positive integer, got {config.image_size!r}.'
    )
  if not _is_int(config.shuffle_buffer) or config.shuffle_buffer < 1:
    raise ValueError(
        'shuffle_buffer must be a positive integer, got '
        f'{config.shuffle_buffer!r}.'
    )
  if not isinstance(config.cache, (bool, np.bool_)):
    raise ValueError(f'cache must be a bool, got {config.cache!r}.')
  data_dir = None if config.data_dir is None else os.fspath(config.data_dir)
  return dataclasses.replace(
      config,
      data_dir=data_dir,
      image_size=int(config.image_size),
      shuffle_buffer=int(config.shuffle_buffer),
      cache=bool(config.cache),
  )


# ---------------------------------------------------------------------------
# Obtaining the data.


def _has_data(builder):
  """Returns whether TFDS can read the builder's dataset.

  Args:
    builder: a TFDS builder.

  Returns:
    True if the dataset is prepared. `tfds.testing.mock_data` fakes reading
    without faking the prepared files, so a builder that TFDS can read is
    accepted too.
  """
  if builder.is_prepared():
    return True
  try:
    builder.as_dataset()
  except AssertionError:  # TFDS's "could not find data" error.
    return False
  return True


def _download_hosts(builder):
  """Returns the `(host, port)` pairs TFDS would download the dataset from.

  Args:
    builder: a TFDS builder.

  Returns:
    TFDS's store of prepared datasets, then the hosts of the source URLs that
    the builder registers checksums for.
  """
  hosts = [(_TFDS_GCS_HOST, 443)]
  for url in builder.url_infos or ():
    parsed = urllib.parse.urlsplit(url)
    if parsed.hostname:
      port = parsed.port or (443 if parsed.scheme == 'https' else 80)
      if (parsed.hostname, port) not in hosts:
        hosts.append((parsed.hostname, port))
  return hosts


def _download_hosts_reachable(builder):
  """Quickly checks whether TFDS could download a dataset.

  Args:
    builder: a TFDS builder.

  Returns:
    False if none of the download hosts accepts a connection. True if one
    does, or if a proxy is configured (connections then go through it and
    cannot be probed directly).
  """
  if any(os.environ.get(name) for name in _PROXY_VARIABLES):
    return True
  for host, port in _download_hosts(builder):
    try:
      with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
        return True
    except OSError:
      continue
  return False


def _tfds_download_and_prepare(builder):
  """Downloads and prepares a dataset with TFDS's own builder.

  Args:
    builder: a TFDS builder.

  Raises:
    ConnectionError: no download host is reachable.
    Exception: whatever TFDS raises.
  """
  if not _download_hosts_reachable(builder):
    hosts = ', '.join(host for host, _ in _download_hosts(builder))
    raise ConnectionError(f'no network access to {hosts}')
  builder.download_and_prepare()


def _fashion_mnist_instructions(root, source_dir, missing):
  """Returns how to obtain Fashion-MNIST, for error messages."""
  files = ', '.join(
      os.path.basename(path) for path in fashion_mnist.source_files()
  )
  lines = [
      f'How to get it: install the source files with '
      f'`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu, puts '
      f'them in {fashion_mnist.DEFAULT_SOURCE_DIR}), or set '
      f'{fashion_mnist.SOURCE_DIR_ENV} to a folder holding {files}; they are '
      f'prepared into {root} on first use. Alternatively, '
      f'`tfds build fashion_mnist --data_dir={root}` downloads it (needs '
      'network access).'
  ]
  if missing:
    lines.insert(0, f'Missing source files in {source_dir}: '
                 + ', '.join(missing) + '.')
  return '\n'.join(lines)


def _prepare_fashion_mnist(builder, data_dir):
  """Prepares Fashion-MNIST from local files, else with a TFDS download.

  Args:
    builder: TFDS's unprepared `fashion_mnist` builder.
    data_dir: TFDS data dir, None for the default.

  Returns:
    A prepared TFDS `fashion_mnist` builder.

  Raises:
    DatasetNotFoundError: the dataset could not be obtained.
  """
  root = os.fspath(builder.data_dir_root)
  source_dir = fashion_mnist.resolve_source_dir()
  missing = fashion_mnist.missing_source_files(source_dir)
  instructions = _fashion_mnist_instructions(root, source_dir, missing)
  if not missing:
    local = fashion_mnist.LocalFashionMnist(
        data_dir=data_dir, source_dir=source_dir
    )
    try:
      local.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False)
      )
    except Exception as e:  # pylint: disable=broad-except
      # Another process sharing data_dir may have prepared it meanwhile.
      builder = tfds.builder('fashion_mnist', data_dir=data_dir)
      if _has_data(builder):
        return builder
      raise DatasetNotFoundError(
          f'Preparing fashion_mnist from {source_dir} into {root} failed: '
          f'{e}\n{instructions}'
      ) from e
  else:
    try:
      _tfds_download_and_prepare(builder)
    except Exception as e:  # pylint: disable=broad-except
      raise DatasetNotFoundError(
          f'Dataset fashion_mnist is not prepared in {root}, its source files '
          f'are not in {source_dir}, and the TFDS download failed ({e}).\n'
          f'{instructions}'
      ) from e
  # A fresh builder reads the info that preparation wrote.
  return tfds.builder('fashion_mnist', data_dir=data_dir)


def _download_cifar10(builder, data_dir):
  """Downloads and prepares CIFAR-10 with TFDS.

  Args:
    builder: TFDS's unprepared `cifar10` builder.
    data_dir: TFDS data dir, None for the default.

  Returns:
    A prepared `cifar10` builder.

  Raises:
    DatasetNotFoundError: the download failed.
  """
  root = os.fspath(builder.data_dir_root)
  try:
    _tfds_download_and_prepare(builder)
  except Exception as e:  # pylint: disable=broad-except
    raise DatasetNotFoundError(
        f'Dataset cifar10 is not prepared in {root} and downloading it failed '
        f'({e}). Downloading needs network access: run '
        f'`tfds build cifar10 --data_dir={root}` on a machine that has it, '
        f'and copy {os.path.join(root, "cifar10")} here if that is another '
        'machine.'
    ) from e
  return tfds.builder('cifar10', data_dir=data_dir)


def _imagenet_not_found(builder):
  """Returns the error for an unprepared ImageNet."""
  root = os.fspath(builder.data_dir_root)
  manual_dir = os.path.join(root, 'downloads', 'manual')
  return DatasetNotFoundError(
      f'Dataset imagenet2012 is not prepared in {root}. ImageNet cannot be '
      'downloaded automatically: download ILSVRC2012_img_train.tar and '
      'ILSVRC2012_img_val.tar from https://image-net.org (registration '
      f'required), put them in {manual_dir}, then run '
      f'`tfds build imagenet2012 --data_dir={root}` (it takes hours).'
  )


def _prepared_builder(config):
  """Returns a prepared builder for a validated config (see `get_builder`)."""
  builder = tfds.builder(config.name, data_dir=config.data_dir)
  if _has_data(builder):
    return builder
  if config.name == 'fashion_mnist':
    return _prepare_fashion_mnist(builder, config.data_dir)
  if config.name == 'cifar10':
    return _download_cifar10(builder, config.data_dir)
  raise _imagenet_not_found(builder)


def get_builder(data_config):
  """Returns the prepared TFDS builder of a data config's dataset.

  Fashion-MNIST is prepared on first use from Debian's
  `dataset-fashion-mnist` files (see `fashion_mnist.LocalFashionMnist`), or
  downloaded by TFDS when they are absent. CIFAR-10 is downloaded by TFDS.
  ImageNet must be prepared beforehand from a manual download.

  Args:
    data_config: data config (see `default_data_config`); uses `name` and
      `data_dir` (None: TFDS's default data dir).

  Returns:
    A prepared `tfds.core.DatasetBuilder`.

  Raises:
    ValueError: invalid config, e.g. an unknown dataset name.
    DatasetNotFoundError: the dataset is not prepared and could not be
      obtained; the message says how to get it.
  """
  return _prepared_builder(_resolve_config(data_config))


def _num_examples(builder, split):
  """Returns the number of examples in a split (which may be a slice).

  Args:
    builder: a prepared TFDS builder.
    split: split name, slice or `tfds.split_for_jax_process` result.

  Returns:
    The number of examples.

  Raises:
    ValueError: the split does not exist or its size is unknown.
  """
  try:
    return int(builder.info.splits[split].num_examples)
  except KeyError:
    # Datasets without split statistics (such as those faked by
    # `tfds.testing.mock_data`) still know their dataset's cardinality.
    cardinality = int(builder.as_dataset(split=split).cardinality())
  if cardinality < 0:
    raise ValueError(
        f'Cannot tell how many examples split {split!r} of {builder.name} has.'
    )
  return cardinality


def _image_shape(builder):
  """Returns the dataset's static image shape `(H, W, C)`; H, W may be None."""
  return tuple(builder.info.features['image'].shape)


def get_info(data_config):
  """Describes a data config's dataset as the pipelines yield it.

  Args:
    data_config: data config (see `default_data_config`).

  Returns:
    A `DatasetInfo`.

  Raises:
    ValueError: invalid config.
    DatasetNotFoundError: the dataset could not be obtained.
  """
  config = _resolve_config(data_config)
  builder = _prepared_builder(config)
  channels = _image_shape(builder)[-1]
  return DatasetInfo(
      num_classes=int(builder.info.features['label'].num_classes),
      num_train_examples=_num_examples(builder, config.train_split),
      num_eval_examples=_num_examples(builder, config.eval_split),
      image_shape=(config.image_size, config.image_size, int(channels)),
  )


# ---------------------------------------------------------------------------
# Pipelines.


def _local_batch_size(global_batch_size):
  """Returns this host's share of a global batch.

  Args:
    global_batch_size: examples per step over all hosts.

  Returns:
    `global_batch_size // jax.process_count()`.

  Raises:
    ValueError: not a positive multiple of the number of processes.
  """
  if not _is_int(global_batch_size) or global_batch_size < 1:
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


def _pipeline_options():
  """Returns tf.data options: deterministic order, autotuned parallelism."""
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = True
  return options


def _read(builder, split, *, shuffle_files=False, file_seed=None):
  """Reads a split with undecoded images, keeping only image and label.

  Args:
    builder: a prepared TFDS builder.
    split: the split to read.
    shuffle_files: whether to shuffle the order of the split's files.
    file_seed: the file shuffling seed.

  Returns:
    A `tf.data.Dataset` of `{'image': encoded, 'label': int64}`.
  """
  read_config = tfds.ReadConfig(
      shuffle_seed=file_seed,
      options=_pipeline_options(),
      # TFDS would cache small splits on its own; caching is decided here
      # (`config.cache`), and a second cache would only hold a copy.
      try_autocache=False,
  )
  ds = builder.as_dataset(
      split=split,
      shuffle_files=shuffle_files,
      read_config=read_config,
      # Images stay encoded until after shuffling, skipping and cropping:
      # smaller buffers, and JPEGs can be decoded only where cropped.
      decoders={'image': tfds.decode.SkipDecoding()},
  )
  return ds.map(
      lambda example: {'image': example['image'], 'label': example['label']}
  )


def _cached_train_source(builder, config, split):
  """Returns the training split read once into memory.

  Args:
    builder: a prepared TFDS builder.
    config: the validated data config.
    split: this host's training split.

  Returns:
    A cached `tf.data.Dataset` in file order; images are decoded first when
    they all have the same shape (small datasets), which spares decoding them
    again every epoch.
  """
  ds = _read(builder, split)
  shape = _image_shape(builder)
  if None not in shape:
    ds = ds.map(
        lambda ex: {
            'image': augment_lib.decode(ex['image'], shape[-1], shape),
            'label': ex['label'],
        },
        num_parallel_calls=tf.data.AUTOTUNE,
    )
  ds = ds.cache()
  # tf.data throws a partially read cache away, and the epochs read only
  # whole batches of a shuffled split; so fill the cache with one full pass.
  ds.reduce(np.int64(0), lambda count, _: count + 1)
  return ds


def _train_epoch(
    source, builder, config, *, local_split, epoch, seed, local_batch,
    examples_per_epoch, skip, index_offset
):
  """Builds the dataset of one training epoch for this host.

  Args:
    source: the cached split from `_cached_train_source`, or None to read
      the split's files afresh (in a shuffled order).
    builder: a prepared TFDS builder.
    config: the validated data config.
    local_split: this host's training split.
    epoch: epoch number.
    seed: the user's seed.
    local_batch: examples per batch on this host.
    examples_per_epoch: examples this host uses per epoch (whole batches).
    skip: raw examples to skip at the start (when resuming).
    index_offset: added to an example's index within this host's epoch to
      make it unique over all hosts.

  Returns:
    A `tf.data.Dataset` of batches `{'image': float32, 'label': int32}`.
  """
  if source is None:
    source = _read(
        builder,
        local_split,
        shuffle_files=True,
        file_seed=_derive_seed(seed, epoch, _FILE_SHUFFLE),
    )
  ds = source.shuffle(
      config.shuffle_buffer,
      seed=_derive_seed(seed, epoch, _EXAMPLE_SHUFFLE),
      reshuffle_each_iteration=False,
  )
  ds = ds.take(examples_per_epoch)
  # Indices are attached before skipping, so that a resumed stream gives each
  # example the same augmentation seed as the uninterrupted one.
  ds = ds.enumerate().skip(skip)

  key = _augment_key(seed, epoch)
  shape = _image_shape(builder)
  mean, std = augment_lib.MEAN_STD[config.name]

  def prepare(index, example):
    example_seed = tf.random.experimental.stateless_fold_in(
        key, index + index_offset, alg='philox'
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
        'image': augment_lib.normalize(image, mean, std),
        'label': tf.cast(example['label'], tf.int32),
    }

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_pipeline_options())


def _train_batches(builder, config, *, seed, local_batch, steps_per_epoch,
                   start_step):
  """Yields the training batches of this host forever (see `train_iterator`)."""
  local_split = tfds.split_for_jax_process(
      config.train_split, drop_remainder=True
  )
  source = None
  if config.cache:
    source = _cached_train_source(builder, config, local_split)
  examples_per_epoch = steps_per_epoch * local_batch
  epoch, step_in_epoch = divmod(start_step, steps_per_epoch)
  skip = step_in_epoch * local_batch
  while True:
    ds = _train_epoch(
        source,
        builder,
        config,
        local_split=local_split,
        epoch=epoch,
        seed=seed,
        local_batch=local_batch,
        examples_per_epoch=examples_per_epoch,
        skip=skip,
        index_offset=jax.process_index() * examples_per_epoch,
    )
    yield from tfds.as_numpy(ds)
    epoch += 1
    skip = 0


def train_iterator(data_config, *, global_batch_size, seed, start_step=0):
  """Returns this host's infinite stream of augmented training batches.

  Every epoch has `num_train_examples // global_batch_size` steps (the rest
  of the split is dropped, differently in each epoch). The stream depends only
  on `(data_config, global_batch_size, seed, jax.process_count())`; starting
  at `start_step=k` yields exactly the batches that `start_step=0` yields from
  its k-th on, without augmenting the skipped ones.

  Args:
    data_config: data config (see `default_data_config`).
    global_batch_size: examples per step over all hosts; must be divisible by
      `jax.process_count()`.
    seed: integer seed of shuffling and augmentation.
    start_step: number of batches to skip, e.g. the step to resume from.

  Returns:
    An iterator of dicts `{'image': float32 [B, H, W, C], 'label': int32 [B]}`
    with `B = global_batch_size // jax.process_count()`, images normalised by
    the dataset's per-channel mean and standard deviation.

  Raises:
    ValueError: invalid config or arguments, or a split smaller than a batch.
    DatasetNotFoundError: the dataset could not be obtained.
  """
  config = _resolve_config(data_config)
  local_batch = _local_batch_size(global_batch_size)
  if not _is_int(seed):
    raise ValueError(f'seed must be an integer, got {seed!r}.')
  if not _is_int(start_step) or start_step < 0:
    raise ValueError(
        f'start_step must be a non-negative integer, got {start_step!r}.'
    )
  _hide_accelerators_from_tf()
  builder = _prepared_builder(config)
  num_examples = _num_examples(builder, config.train_split)
  steps_per_epoch = num_examples // global_batch_size
  if not steps_per_epoch:
    raise ValueError(
        f'Split {config.train_split!r} of {config.name} has {num_examples} '
        f'examples, fewer than one global batch of {global_batch_size}.'
    )
  return _train_batches(
      builder,
      config,
      seed=operator.index(seed),
      local_batch=local_batch,
      steps_per_epoch=steps_per_epoch,
      start_step=operator.index(start_step),
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
    for 'imagenet') and normalised.

  Raises:
    ValueError: invalid config or batch size.
    DatasetNotFoundError: the dataset could not be obtained.
  """
  config = _resolve_config(data_config)
  local_batch = _local_batch_size(global_batch_size)
  _hide_accelerators_from_tf()
  builder = _prepared_builder(config)
  # Without drop_remainder every example is evaluated; the first hosts then
  # hold one example more than the others.
  local_split = tfds.split_for_jax_process(config.eval_split)
  num_local = _num_examples(builder, local_split)
  largest_shard = _num_examples(
      builder,
      tfds.split_for_jax_process(
          config.eval_split, process_index=0,
          process_count=jax.process_count(),
      ),
  )
  num_batches = math.ceil(largest_shard / local_batch)

  shape = _image_shape(builder)
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
        'image': augment_lib.normalize(image, mean, std),
        'label': tf.cast(example['label'], tf.int32),
        'mask': tf.constant(True),
    }

  ds = _read(builder, local_split).map(
      prepare, num_parallel_calls=tf.data.AUTOTUNE
  )
  padding = {
      'image': tf.zeros(
          (config.image_size, config.image_size, channels), tf.float32
      ),
      'label': tf.constant(0, tf.int32),
      'mask': tf.constant(False),
  }
  num_padding = num_batches * local_batch - num_local
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_padding))
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_pipeline_options())
  return iter(tfds.as_numpy(ds))
