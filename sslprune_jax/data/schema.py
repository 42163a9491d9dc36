"""The data config: its fields, their defaults per dataset, and their checks.

`default_data_config(name)` gives a dataset's config; `_resolve_config`
checks one (names, splits, the labelled subset, classes) and freezes it.
Plain Python and ml_collections only, so that configs and `config_lib`
import it without TensorFlow.
"""

import dataclasses
import fractions
import os
import re

import ml_collections
from ml_collections import config_dict
import numpy as np

# Names of the augmentation policies (`sslprune_jax.data.augment`).
AUGMENTATIONS = ('cifar', 'imagenet', 'npid', 'none')
# Datasets the pipelines support.
DATASETS = (
    'fashion_mnist',
    'cifar10',
    'imagenet2012',
    'places365_small',
    'voc2007',
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
  check_augment(config.augment)
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
    raise ValueError(
        'read_shards must be a non-negative integer, got '
        f'{config.read_shards!r}.'
    )
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


def _as_fraction(value):
  """Returns a float as the exact decimal fraction it is written as."""
  return fractions.Fraction(str(value))


def _tfds_name(name):
  """Returns TFDS's name of a dataset of `DATASETS`."""
  return _TFDS_NAMES.get(name, name)


def check_augment(augment):
  """Raises ValueError unless `augment` names a known policy.

  Args:
    augment: the policy name.
  """
  if augment not in AUGMENTATIONS:
    raise ValueError(
        f'Unknown augment {augment!r}; expected one of {AUGMENTATIONS}.'
    )
