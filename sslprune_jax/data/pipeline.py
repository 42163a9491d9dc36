"""Training and evaluation input pipelines on TFDS datasets.

Each host reads its own shard of a split (`tfds.split_for_jax_process`) and
yields numpy batches of `global_batch_size // jax.process_count()` examples.
The training split may be read in more parts than there are hosts
(`read_shards`), which makes its stream independent of the number of hosts.

The training stream is exactly reproducible from `(seed, start_step)`:

* epoch `e` shuffles with seeds derived from `(seed, e)` only;
* an example's augmentation uses a stateless seed derived from
  `(seed, e, index of the example within epoch e)`, so parallel map scheduling
  cannot change it;
* every epoch has `num_train_examples // global_batch_size` steps (see
  `train_iterator` for joined splits on several processes);
* resuming at step `k` rebuilds epoch `k // steps_per_epoch` and skips the raw
  (undecoded, unaugmented) examples of its first `k % steps_per_epoch` steps.

Training examples carry their `index`, the position of the example in the
base split (`'train'` for `'train[:50%]'`), computed from TFDS's record ids
and the base split's shard lengths; it does not depend on the number of
processes. VOC's training split joins two splits (`'train+validation'`, the
paper's trainval): the examples of each base split are numbered after those
of the base splits before it in the union. The `labelled` subset of the
training split (a fraction of every class, or every image of a fraction of
the classes) is a set of such indices that every host computes identically
(`labelled_indices`). Streams restricted to it filter the examples before
shuffling, so resuming stays exact.

Batches of single-label datasets carry a class id per example. VOC 2007 is
multi-label: its `'label'` is one target per class, in the VOC devkit's
convention of `sslprune_jax.evaluation.voc` (1: a non-difficult object of the
class, 0: only difficult ones, -1: none).
"""

import dataclasses
import fractions
import functools
import math
import operator
import os
import re
import socket
import sys
import urllib.parse

import jax
import ml_collections
from ml_collections import config_dict
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from sslprune_jax.data import augment as augment_lib
from sslprune_jax.data import fashion_mnist
from sslprune_jax.evaluation import voc

# Datasets the pipelines support.
DATASETS = (
    'fashion_mnist', 'cifar10', 'imagenet2012', 'places365_small', 'voc2007'
)
# TFDS's names of the datasets whose name here differs.
_TFDS_NAMES = {'voc2007': 'voc/2007'}
# Datasets whose examples have several labels (see `_multi_label_targets`).
_MULTI_LABEL = ('voc2007',)
# Datasets whose training split may join splits with '+': VOC's trainval is
# TFDS's 'train+validation'.
_JOINED_TRAIN_SPLITS = ('voc2007',)

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
    # Places365-Standard with 256 x 256 images, as ImageNet.
    'places365_small': dict(
        eval_split='validation',
        image_size=224,
        augment='imagenet',
        shuffle_buffer=10_000,
        cache=False,
    ),
    # Classification on VOC 2007: trained on trainval, evaluated on test.
    'voc2007': dict(
        train_split='train+validation',
        eval_split='test',
        image_size=224,
        augment='imagenet',
        # More than trainval's 5011 images: a full shuffle of encoded JPEGs.
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
    'labelled',
    'labelled_fraction',
    'labelled_seed',
    'grayscale',
    'read_shards',
    'classes',
)

# Ways of choosing the labelled subset of the training split.
LABELLED = ('all', 'per_class', 'classes')
# ImageNet's 'per_class' subsets are TFDS's, by fraction of the images.
_IMAGENET_SUBSETS = {
    fractions.Fraction(1, 100): 'imagenet2012_subset/1pct',
    fractions.Fraction(1, 10): 'imagenet2012_subset/10pct',
}
# A training split is one split of the dataset, optionally sliced, or for
# `_JOINED_TRAIN_SPLITS` several such parts joined by '+'.
_SPLIT_PART = r'(\w+)(?:\[[^\[\]]*\])?'
_SPLIT_PART_PATTERN = re.compile(_SPLIT_PART)
_JOINED_SPLIT_PATTERN = re.compile(rf'{_SPLIT_PART}(?:\+{_SPLIT_PART})*')
# TFDS's record ids: '<shard file name>__<record number in the shard>', the
# shard file name being '<dataset>-<split>.<format>-<shard>-of-<shards>'.
_TFDS_ID_PATTERN = r'^(?:.*/)?([^/]*)__(\d+)$'
# Examples per batch when reading labels and indices of a whole split.
_SCAN_BATCH = 65_536

# Tags that keep the seeds derived for different purposes independent.
_FILE_SHUFFLE, _EXAMPLE_SHUFFLE, _AUGMENT = 0, 1, 2
_LABELLED_STREAM, _UNLABELLED_STREAM = 3, 4

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
    num_classes: number of classes (those of `classes` when it restricts
      the dataset, see `class_subset`).
    num_train_examples: examples in the whole training split (all hosts),
      of `classes` only if it is given.
    num_eval_examples: examples in the whole evaluation split (all hosts),
      likewise.
    image_shape: `(H, W, C)` of the images the pipelines yield.
    num_labelled_examples: examples of the labelled subset of the training
      split (all hosts; see `labelled_indices`).
    index_size: examples in the base split of the training split (`'train'`
      for `'train[:10%]'`): training indices lie in `[0, index_size)`. For
      datasets without split statistics (`tfds.testing.mock_data`), whose
      indices enumerate the training split, its number of examples.
    index_range: `(start, stop)`, the smallest range of indices that holds
      every index of the training split (`(0, 30000)` for Fashion-MNIST's
      `'train[:50%]'`): a per-example table, such as NPID's memory bank, needs
      only `stop - start` rows.
    multi_label: whether the batches' `'label'` holds a target per class
      (`[B, num_classes]` in {1, 0, -1}, VOC's convention) instead of one
      class id per example (`[B]`).
  """

  num_classes: int
  num_train_examples: int
  num_eval_examples: int
  image_shape: tuple[int, int, int]
  num_labelled_examples: int
  index_size: int
  index_range: tuple[int, int]
  # Last and with a default, so that code building infos by hand still works.
  multi_label: bool = False


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
  labelled: str
  labelled_fraction: float
  labelled_seed: int
  grayscale: bool = False
  read_shards: int = 0
  classes: tuple[int, ...] = ()


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
    `train_split` ('train'; 'train+validation', the trainval split, for
    voc2007), `eval_split`, `image_size`, `augment`, `shuffle_buffer`,
    `cache`, the labelled subset's `labelled` ('all', 'per_class' or
    'classes'; see `labelled_indices`), `labelled_fraction` and
    `labelled_seed`, `grayscale`, `read_shards` (see `train_iterator`) and
    `classes` (see `class_subset`).

  Raises:
    ValueError: unknown dataset.
  """
  _check_name(name)
  splits = dict(train_split='train')
  splits.update(_DEFAULTS[name])
  return ml_collections.ConfigDict(
      dict(
          name=name,
          # A typed placeholder so that a string can be given on the command
          # line while None stays the default.
          data_dir=config_dict.placeholder(str),
          **splits,
          labelled='all',
          labelled_fraction=0.1,
          labelled_seed=0,
          # Colour images turned to one luminance channel, e.g. to evaluate
          # a network trained on Fashion-MNIST on VOC07.
          grayscale=False,
          # The training split is read as this many equal parts, each
          # process reading `read_shards // process_count` of them and
          # joining their batches. 0: one part per process. A fixed value
          # makes the training stream the same on any number of processes
          # dividing it (resume on another slice; compare 1 and 2 hosts).
          read_shards=0,
          # The dataset restricted to these classes, relabelled 0..k-1 in
          # this order; () keeps every class (see `class_subset`).
          classes=(),
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
  if not isinstance(config.grayscale, (bool, np.bool_)):
    raise ValueError(f'grayscale must be a bool, got {config.grayscale!r}.')
  if not _is_int(config.read_shards) or config.read_shards < 0:
    raise ValueError('read_shards must be a non-negative integer, got '
                     f'{config.read_shards!r}.')
  _check_train_split(config)
  _check_labelled(config)
  _check_classes(config)
  data_dir = None if config.data_dir is None else os.fspath(config.data_dir)
  return dataclasses.replace(
      config,
      data_dir=data_dir,
      image_size=int(config.image_size),
      shuffle_buffer=int(config.shuffle_buffer),
      cache=bool(config.cache),
      labelled_fraction=float(config.labelled_fraction),
      labelled_seed=int(config.labelled_seed),
      read_shards=int(config.read_shards),
      classes=tuple(int(c) for c in config.classes),
  )


def _base_splits(train_split):
  """Returns the names of the splits a valid training split reads.

  Args:
    train_split: e.g. 'train[:50%]' or 'train+validation[:10]'.

  Returns:
    The base split of each '+'-joined part, in order: `('train',)` and
    `('train', 'validation')` for these examples.
  """
  return tuple(
      match.group(1) for match in _SPLIT_PART_PATTERN.finditer(train_split)
  )


def _check_train_split(config):
  """Raises ValueError unless `train_split` can number its examples.

  Args:
    config: a `_Config` whose `train_split` is a non-empty string.
  """
  split = config.train_split
  valid = _JOINED_SPLIT_PATTERN.fullmatch(split) is not None
  bases = _base_splits(split) if valid else ()
  if config.name not in _JOINED_TRAIN_SPLITS:
    if len(bases) != 1:
      raise ValueError(
          "train_split must be one split, optionally sliced (e.g. 'train' or "
          f"'train[:50%]'), got {split!r}; only "
          f'{", ".join(_JOINED_TRAIN_SPLITS)} joins splits with "+".'
      )
    return
  if not valid:
    raise ValueError(
        'train_split must be one split or several joined by "+", each '
        "optionally sliced (e.g. 'train+validation' or "
        f"'train[:50%]+validation'), got {split!r}."
    )
  if len(set(bases)) < len(bases):
    # Indices number the examples of each base split once.
    raise ValueError(
        f'train_split {split!r} reads a split twice; join distinct splits.'
    )


def _check_labelled(config):
  """Raises ValueError unless the labelled subset's fields are valid.

  Args:
    config: a `_Config` whose other fields are valid.
  """
  if config.labelled not in LABELLED:
    raise ValueError(
        f'Unknown labelled {config.labelled!r}; expected one of {LABELLED}.'
    )
  if config.name in _MULTI_LABEL and config.labelled != 'all':
    # Both subsets are defined by an example's single class.
    raise ValueError(
        f"{config.name} is multi-label: labelled must be 'all', got "
        f'{config.labelled!r}.'
    )
  fraction = config.labelled_fraction
  if (
      not isinstance(fraction, (int, float, np.integer, np.floating))
      or isinstance(fraction, (bool, np.bool_))
      or not 0 < fraction <= 1
  ):
    raise ValueError(
        f'labelled_fraction must be a number in (0, 1], got {fraction!r}.'
    )
  if not _is_int(config.labelled_seed) or config.labelled_seed < 0:
    raise ValueError(
        'labelled_seed must be a non-negative integer, got '
        f'{config.labelled_seed!r}.'
    )
  if (
      config.name == 'imagenet2012'
      and config.labelled == 'per_class'
      and _as_fraction(fraction) not in _IMAGENET_SUBSETS
  ):
    raise ValueError(
        "imagenet2012 takes its 'per_class' labelled subsets from TFDS's "
        f'{" and ".join(_IMAGENET_SUBSETS.values())}: labelled_fraction must '
        f'be 0.01 or 0.1, got {fraction!r}.'
    )


def _check_classes(config):
  """Raises ValueError unless `classes` lists distinct class ids.

  Whether each id is one of the dataset's classes is checked once the
  dataset is at hand (`_check_classes_exist`).

  Args:
    config: a `_Config` whose other fields are valid.
  """
  classes = config.classes
  if (
      not isinstance(classes, (tuple, list))
      or not all(_is_int(c) and c >= 0 for c in classes)
      or len(set(classes)) < len(classes)
  ):
    raise ValueError(
        'classes must be a tuple of distinct class ids >= 0 (() for every '
        f'class), got {classes!r}.'
    )
  if classes and config.name in _MULTI_LABEL:
    raise ValueError(
        f'{config.name} is multi-label: an image belongs to several classes, '
        f'so it cannot be restricted to some; classes must be (), got '
        f'{classes!r}.'
    )


def _check_classes_exist(builder, config):
  """Raises ValueError if `classes` names a class the dataset lacks."""
  if not config.classes:
    return
  num_classes = _num_classes(builder)
  unknown = [c for c in config.classes if c >= num_classes]
  if unknown:
    raise ValueError(
        f'classes {list(config.classes)} of {config.name}: {unknown} not in '
        f'its {num_classes} classes (0..{num_classes - 1}).'
    )


def _as_fraction(value):
  """Returns a float as the exact decimal fraction it is written as."""
  return fractions.Fraction(str(value))


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


def _bars_on_terminals_only():
  """Turns TFDS's preparation progress bars off unless stderr is a terminal.

  Elsewhere (CI, nohup, a notebook's captured stream) its nested tqdm bars
  print a line per update with cursor escapes: 30 lines of noise on a
  first run. Its one-line start and end messages stay.
  """
  if not sys.stderr.isatty():
    tfds.disable_progress_bar()


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
  _bars_on_terminals_only()
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
    _bars_on_terminals_only()
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


def _download_with_tfds(builder, name, data_dir):
  """Downloads and prepares a dataset with TFDS (CIFAR-10, VOC 2007).

  Args:
    builder: TFDS's unprepared builder of the dataset.
    name: the dataset's name in `DATASETS`.
    data_dir: TFDS data dir, None for the default.

  Returns:
    A prepared builder.

  Raises:
    DatasetNotFoundError: the download failed.
  """
  root = os.fspath(builder.data_dir_root)
  tfds_name = _tfds_name(name)
  try:
    _tfds_download_and_prepare(builder)
  except Exception as e:  # pylint: disable=broad-except
    raise DatasetNotFoundError(
        f'Dataset {name} is not prepared in {root} and downloading it failed '
        f'({e}). Downloading needs network access: run '
        f'`tfds build {tfds_name} --data_dir={root}` on a machine that has '
        f'it, and copy {os.path.join(root, builder.name)} here if that is '
        'another machine.'
    ) from e
  return tfds.builder(tfds_name, data_dir=data_dir)


def _places365_not_found(builder):
  """Returns the error for an unprepared `places365_small`."""
  root = os.fspath(builder.data_dir_root)
  return DatasetNotFoundError(
      f'Dataset places365_small is not prepared in {root}. It is not '
      'downloaded automatically (tens of GB from data.csail.mit.edu, hours '
      f'of preparation): run `tfds build places365_small --data_dir={root}` '
      'on a machine with network access, and copy '
      f'{os.path.join(root, builder.name)} here if that is another machine. '
      'To read it from another data dir, set the data config\'s data_dir or '
      'the TFDS_DATA_DIR environment variable.'
  )


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


def _imagenet_subset_not_found(builder):
  """Returns the error for an unprepared `imagenet2012_subset`."""
  root = os.fspath(builder.data_dir_root)
  manual_dir = os.path.join(root, 'downloads', 'manual')
  name = f'{builder.name}/{builder.builder_config.name}'
  return DatasetNotFoundError(
      f'Dataset {name}, which lists the labelled images of imagenet2012 for '
      f"labelled='per_class', is not prepared in {root}. Put "
      f'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in {manual_dir} '
      f'(as for imagenet2012), then run `tfds build {name} --data_dir={root}`; '
      "it downloads the subset's list of files from the SimCLR repository on "
      'GitHub, so it needs network access.'
  )


def _tfds_name(name):
  """Returns TFDS's name of a dataset of `DATASETS`."""
  return _TFDS_NAMES.get(name, name)


def _prepared_builder(config):
  """Returns a prepared builder for a validated config (see `get_builder`)."""
  builder = tfds.builder(_tfds_name(config.name), data_dir=config.data_dir)
  if not _has_data(builder):
    if config.name == 'fashion_mnist':
      builder = _prepare_fashion_mnist(builder, config.data_dir)
    elif config.name in ('cifar10', 'voc2007'):
      builder = _download_with_tfds(builder, config.name, config.data_dir)
    elif config.name == 'places365_small':
      raise _places365_not_found(builder)
    else:
      raise _imagenet_not_found(builder)
  _check_classes_exist(builder, config)
  return builder


def get_builder(data_config):
  """Returns the prepared TFDS builder of a data config's dataset.

  Fashion-MNIST is prepared on first use from Debian's
  `dataset-fashion-mnist` files (see `fashion_mnist.LocalFashionMnist`), or
  downloaded by TFDS when they are absent. CIFAR-10 and VOC 2007 (TFDS's
  `voc/2007`, under 1 GB) are downloaded by TFDS. ImageNet must be prepared
  beforehand from a manual download, and Places365 with
  `tfds build places365_small`. Downloads are tried only if a download host
  answers, so they fail at once without network access.

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


def _is_multi_label(builder):
  """Returns whether a builder's examples have VOC's multi-label features."""
  features = builder.info.features
  return 'label' not in features and 'labels_no_difficult' in features


def _num_classes(builder):
  """Returns the number of classes of a (single- or multi-label) builder."""
  features = builder.info.features
  if _is_multi_label(builder):
    # A `Sequence` of class labels.
    return int(features['labels'].feature.num_classes)
  return int(features['label'].num_classes)


def get_info(data_config):
  """Describes a data config's dataset as the pipelines yield it.

  Args:
    data_config: data config (see `default_data_config`).

  Returns:
    A `DatasetInfo`. Counting the labelled examples reads the labels of the
    training split once per process unless `labelled` is 'all'.

  Raises:
    ValueError: invalid config.
    DatasetNotFoundError: the dataset (or ImageNet's labelled subset) could
      not be obtained.
  """
  config = _resolve_config(data_config)
  builder = _prepared_builder(config)
  channels = 1 if config.grayscale else _image_shape(builder)[-1]
  layout = _index_layout(builder, config)
  ranges = _index_ranges(builder, layout, config.train_split, 0)
  if config.classes:
    num_train_examples = len(_class_indices(config))
  else:
    num_train_examples = _num_examples(builder, config.train_split)
  return DatasetInfo(
      num_classes=len(config.classes) or _num_classes(builder),
      num_train_examples=num_train_examples,
      num_eval_examples=_count(builder, config, config.eval_split),
      image_shape=(config.image_size, config.image_size, int(channels)),
      num_labelled_examples=len(_labelled_indices(config)),
      index_size=layout.size,
      index_range=(min(r[0] for r in ranges), max(r[1] for r in ranges)),
      multi_label=_is_multi_label(builder),
  )


# ---------------------------------------------------------------------------
# Pipelines.


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
    if key == 'label' and _is_multi_label(builder):
      wanted.update(labels=True, labels_no_difficult=True)
    else:
      wanted[key] = True
  decoders = {'image': tfds.decode.SkipDecoding()} if 'image' in keys else {}
  return tfds.decode.PartialDecoding(wanted, decoders=decoders)


def _read(
    builder, split, *, keys=('image', 'label'), layout=None, index_start=0,
    shuffle_files=False, file_seed=None
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
  multi_label = _is_multi_label(builder)
  num_classes = _num_classes(builder) if multi_label else None

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


# ---------------------------------------------------------------------------
# Example indices and the labelled subset.


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
  bases = _base_splits(config.train_split)
  for base in bases:
    if splits and base not in splits:
      raise ValueError(
          f'{config.name} has no split {base!r} (train_split '
          f'{config.train_split!r}); its splits are {sorted(splits)}.'
      )
  shards = []
  for base in bases:
    if not splits or not splits[base].shard_lengths:
      return _IndexLayout(None, _num_examples(builder, config.train_split))
    shards.extend(zip(splits[base].filenames, splits[base].shard_lengths))
  offsets, size = {}, 0
  for name, length in shards:
    offsets[name] = size
    size += int(length)
  return _IndexLayout(offsets, size)


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


def _host_split(config, shard, num_shards):
  """Returns read shard `shard` of `num_shards` of the training split."""
  return tfds.split_for_jax_process(
      config.train_split, process_index=shard, process_count=num_shards,
      drop_remainder=True
  )


def _index_start(builder, layout, split, shard):
  """Returns `_read`'s `index_start` for a read shard's `_host_split`."""
  if layout.shard_offsets is not None:
    return 0
  return shard * _num_examples(builder, split)


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
    return [(index_start, index_start + _num_examples(builder, split))]
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
  ds = _read(builder, split, keys=keys, layout=layout).batch(_SCAN_BATCH)
  batches = list(tfds.as_numpy(ds))
  names = list(keys) + ([] if layout is None else ['index'])
  return {
      key: np.concatenate([batch[key] for batch in batches])
      if batches else np.zeros((0,), np.int64)
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
  name = _IMAGENET_SUBSETS[_as_fraction(config.labelled_fraction)]
  subset = tfds.builder(name, data_dir=config.data_dir)
  if not _has_data(subset):
    raise _imagenet_subset_not_found(subset)
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
  fraction = _as_fraction(config.labelled_fraction)
  half = fractions.Fraction(1, 2)
  if config.labelled == 'classes':
    candidates = np.asarray(
        config.classes or range(_num_classes(builder)), np.int64
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
  builder = _prepared_builder(config)
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
    return _num_examples(builder, split)
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
  table = np.full(_num_classes(builder), -1, np.int32)
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
  config = _resolve_config(data_config)
  if not config.classes:
    raise ValueError('class_subset needs a data config with classes.')
  return _class_indices(config)


@functools.lru_cache(maxsize=None)
def _labelled_indices(config):
  """Cached `labelled_indices` of a validated config (a read-only array)."""
  builder = _prepared_builder(config)
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
  return _labelled_indices(_resolve_config(data_config))


def _cached_train_source(builder, layout, split, index_start):
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
  ds = _read(builder, split, layout=layout, index_start=index_start)
  shape = _image_shape(builder)
  if None not in shape:
    ds = ds.map(
        lambda ex: dict(
            ex, image=augment_lib.decode(ex['image'], shape[-1], shape)
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
  ds = ds.cache()
  # tf.data throws a partially read cache away, and the epochs read only
  # whole batches of a shuffled split; so fill the cache with one full pass.
  ds.reduce(np.int64(0), lambda count, _: count + 1)
  return ds


def _train_epoch(
    source, builder, config, *, layout, local_split, index_start, labelled,
    keep, relabel, epoch, seed, local_batch, examples_per_epoch, skip,
    index_offset
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
    source = _read(
        builder,
        local_split,
        layout=layout,
        index_start=index_start,
        shuffle_files=True,
        file_seed=_derive_seed(seed, epoch, _FILE_SHUFFLE),
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
      seed=_derive_seed(seed, epoch, _EXAMPLE_SHUFFLE),
      reshuffle_each_iteration=False,
  )
  ds = ds.take(examples_per_epoch)
  # Positions are attached before skipping, so that a resumed stream gives
  # each example the same augmentation seed as the uninterrupted one.
  ds = ds.enumerate().skip(skip)

  key = _augment_key(seed, epoch)
  shape = _image_shape(builder)
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
        'image': _finish(image, config, mean, std),
        'label': _relabelled(example['label'], relabel),
        'index': tf.cast(example['index'], tf.int32),
        'labelled': tf.gather(labelled, example['index']),
    }

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  return ds.with_options(pipeline_options())


def _relabelled(label, relabel):
  """An example's label as int32, through `_relabel`'s table if any."""
  label = tf.cast(label, tf.int32)
  return label if relabel is None else tf.gather(relabel, label)


def _shard_batches(builder, config, *, layout, labelled, keep, relabel,
                   seed, shard, num_shards, shard_batch, steps_per_epoch,
                   start_step):
  """Yields the training batches of one read shard forever."""
  local_split = _host_split(config, shard, num_shards)
  index_start = _index_start(builder, layout, local_split, shard)
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
  streams = [_shard_batches(builder, config, shard=shard, **kwargs)
             for shard in shards]
  if len(streams) == 1:
    yield from streams[0]
    return
  for parts in zip(*streams):
    yield {key: np.concatenate([part[key] for part in parts])
           for key in parts[0]}


def _subset_steps_per_epoch(builder, config, layout, subset, num_shards,
                            shard_batch):
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
    split = _host_split(config, shard, num_shards)
    index_start = _index_start(builder, layout, split, shard)
    counts.append(sum(
        int(np.searchsorted(subset, stop) - np.searchsorted(subset, start))
        for start, stop in _index_ranges(builder, layout, split, index_start)
    ))
  return min(counts) // shard_batch


def _check_seed_and_step(seed, start_step):
  """Raises ValueError unless `seed` is an int and `start_step` one >= 0."""
  if not _is_int(seed):
    raise ValueError(f'seed must be an integer, got {seed!r}.')
  if not _is_int(start_step) or start_step < 0:
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
  config = _resolve_config(data_config)
  # Checked for its errors (a positive multiple of the number of processes);
  # batches are assembled from the read shards' batches.
  _local_batch_size(global_batch_size)
  num_shards, shards = _read_shards(config)
  shard_batch = _shard_batch_size(global_batch_size, num_shards)
  _check_seed_and_step(seed, start_step)
  _hide_accelerators_from_tf()
  builder = _prepared_builder(config)
  layout = _index_layout(builder, config)
  subset = _labelled_indices(config)
  kept = None
  if only_labelled or config.classes:
    kept = subset if only_labelled else _class_indices(config)
    num_examples = len(kept)
    steps_per_epoch = _subset_steps_per_epoch(
        builder, config, layout, kept, num_shards, shard_batch
    )
    what = (f'The labelled subset ({config.labelled!r}) of split'
            if only_labelled else f'Classes {list(config.classes)} of split')
  else:
    num_examples = _num_examples(builder, config.train_split)
    # Read shards split each part of a joined training split on their own,
    # which can leave them fewer than `num_examples // num_shards` examples.
    steps_per_epoch = min(
        num_examples // global_batch_size,
        _num_examples(builder, _host_split(config, 0, num_shards))
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
  return _train_batches(
      builder,
      config,
      layout=layout,
      labelled=labelled,
      keep=keep,
      relabel=_relabel(builder, config),
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
    data_config, *, labelled_batch_size, unlabelled_batch_size, seed,
    start_step=0, num_shards
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
  if not _is_int(num_shards) or num_shards < 1:
    raise ValueError(
        f'num_shards must be a positive integer, got {num_shards!r}.'
    )
  _check_seed_and_step(seed, start_step)
  slices = jax.process_count() * num_shards
  for name, size in (
      ('labelled_batch_size', labelled_batch_size),
      ('unlabelled_batch_size', unlabelled_batch_size),
  ):
    if not _is_int(size) or size < 1 or size % slices:
      raise ValueError(
          f'{name} must be a positive multiple of the number of processes '
          f'times num_shards ({jax.process_count()} * {num_shards}), got '
          f'{size!r}.'
      )
  labelled = train_iterator(
      data_config,
      global_batch_size=labelled_batch_size,
      seed=_derive_seed(seed, 0, _LABELLED_STREAM),
      start_step=start_step,
      only_labelled=True,
  )
  unlabelled = train_iterator(
      data_config,
      global_batch_size=unlabelled_batch_size,
      seed=_derive_seed(seed, 0, _UNLABELLED_STREAM),
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
  config = _resolve_config(data_config)
  local_batch = _local_batch_size(global_batch_size)
  _hide_accelerators_from_tf()
  builder = _prepared_builder(config)
  # Without drop_remainder every example is evaluated; the first hosts then
  # hold one example more than the others.
  local_split = tfds.split_for_jax_process(config.eval_split)
  num_local = _count(builder, config, local_split)
  # With `classes`, the shard with the most of their examples need not be
  # the first.
  largest_shard = max(
      _count(
          builder, config, tfds.split_for_jax_process(
              config.eval_split, process_index=p,
              process_count=jax.process_count()))
      for p in range(jax.process_count() if config.classes else 1)
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
        'image': _finish(image, config, mean, std),
        'label': _relabelled(example['label'], relabel),
        'mask': tf.constant(True),
    }

  relabel = _relabel(builder, config)
  ds = _read(builder, local_split)
  if relabel is not None:
    relabel = tf.constant(relabel)
    ds = ds.filter(lambda ex: tf.gather(relabel, ex['label']) >= 0)
  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  if _is_multi_label(builder):
    # The mask is what excludes padding; as a negative of every class it at
    # least never adds a positive.
    padding_label = tf.fill([_num_classes(builder)], voc.NEGATIVE)
  else:
    padding_label = tf.constant(0, tf.int32)
  padding = {
      'image': tf.zeros(
          (config.image_size, config.image_size,
           1 if config.grayscale else channels), tf.float32
      ),
      'label': padding_label,
      'mask': tf.constant(False),
  }
  num_padding = num_batches * local_batch - num_local
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_padding))
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(pipeline_options())
  return iter(tfds.as_numpy(ds))
