"""Getting the data: prepared TFDS builders, and what to do when there are none.

`get_builder` finds a prepared dataset, prepares Fashion-MNIST from
Debian's `dataset-fashion-mnist` files, or downloads with TFDS after
checking (within seconds, proxies included) that its download sites answer;
otherwise it says how to get the data (`DatasetNotFoundError`). The
builder's sizes, image shape and classes are read here too.
"""

import os
import socket
import sys
import urllib.parse

import tensorflow_datasets as tfds

from sslprune_jax.data import fashion_mnist
from sslprune_jax.data import schema

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
    lines.insert(
        0, f'Missing source files in {source_dir}: ' + ', '.join(missing) + '.'
    )
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
  tfds_name = schema._tfds_name(name)
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
      "To read it from another data dir, set the data config's data_dir or "
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


def _prepared_builder(config):
  """Returns a prepared builder for a validated config (see `get_builder`)."""
  builder = tfds.builder(
      schema._tfds_name(config.name), data_dir=config.data_dir
  )
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
  return _prepared_builder(schema._resolve_config(data_config))


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
