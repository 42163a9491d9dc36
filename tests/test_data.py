"""Tests of the input pipelines (sslprune_jax.data)."""

import gzip
import os

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from sslprune_jax import data
from sslprune_jax.data import augment
from sslprune_jax.data import epochs
from sslprune_jax.data import fashion_mnist
from sslprune_jax.data import pipeline
from sslprune_jax.data import sources


def _config(name, data_dir, **overrides):
  """Returns the default config of `name` reading from `data_dir`."""
  config = data.default_data_config(name)
  config.data_dir = os.fspath(data_dir)
  config.update(overrides)
  return config


def _take(iterator, n):
  """Returns the next `n` items of an iterator as a list."""
  return [next(iterator) for _ in range(n)]


def _assert_same_batches(batches_a, batches_b):
  """Asserts that two lists of batches are identical."""
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def _image_fingerprints(images):
  """Returns a sorted list of one hashable fingerprint per image."""
  return sorted(image.tobytes() for image in images)


@pytest.fixture(scope='module')
def fmnist_dir(request):
  """The session's TFDS data dir, with Fashion-MNIST prepared from the
  Debian files (tests/conftest.py); these tests only read it."""
  if fashion_mnist.missing_source_files():
    pytest.skip(
        'Fashion-MNIST source files missing; run '
        '`apt-get install dataset-fashion-mnist`.'
    )
  return request.getfixturevalue('data_dir')


# ---------------------------------------------------------------------------
# The Fashion-MNIST builder.


def test_local_builder_matches_tfds(fmnist_dir):
  builder = data.get_builder(_config('fashion_mnist', fmnist_dir))
  reference = tfds.builder('fashion_mnist')
  assert builder.name == reference.name == 'fashion_mnist'
  assert str(builder.version) == str(reference.version) == '3.0.1'
  assert repr(builder.info.features) == repr(reference.info.features)
  assert (
      builder.info.features['label'].names
      == reference.info.features['label'].names
  )
  assert builder.info.features['image'].shape == (28, 28, 1)
  assert builder.info.features['image'].np_dtype == np.uint8
  assert builder.info.splits['train'].num_examples == 60_000
  assert builder.info.splits['test'].num_examples == 10_000
  local = fashion_mnist.LocalFashionMnist(data_dir=fmnist_dir)
  assert repr(local.info.features) == repr(reference.info.features)


def test_label_distribution(fmnist_dir):
  builder = data.get_builder(_config('fashion_mnist', fmnist_dir))
  labels = tfds.as_numpy(
      builder.as_dataset(
          split='train',
          batch_size=-1,
          decoders={'image': tfds.decode.SkipDecoding()},
      )
  )['label']
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), [6000] * 10)


def test_pixels_match_source_files(fmnist_dir):
  builder = data.get_builder(_config('fashion_mnist', fmnist_dir))
  test_set = tfds.as_numpy(builder.as_dataset(split='test', batch_size=-1))
  images = test_set['image']
  assert images.shape == (10_000, 28, 28, 1)
  assert images.dtype == np.uint8
  assert images.min() == 0 and images.max() == 255
  # The published mean pixel (of the training set) is 0.2860.
  assert abs(images.mean() / 255 - 0.2860) < 0.01
  # Same images as in the IDX file, whatever the order TFDS stored them in.
  source = fashion_mnist.read_images(
      os.path.join(
          fashion_mnist.resolve_source_dir(), 't10k-images-idx3-ubyte.gz'
      ),
      10_000,
  )
  assert _image_fingerprints(images) == _image_fingerprints(source)


def test_pngs_are_the_bytes_tfds_writes():
  """The whole-split encoding writes what TFDS's `Image` feature writes
  for each array (so a prepared dataset's files are unchanged)."""
  images = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1), np.uint8)
  images[0] = 0  # Constant images compress differently.
  image_feature = fashion_mnist.features()['image']
  want = [image_feature.encode_example(image) for image in images]
  assert list(fashion_mnist.encode_pngs(images)) == want


def _write_gzip(path, payload):
  with gzip.open(path, 'wb') as f:
    f.write(payload)


def test_idx_reader_rejects_corrupt_files(tmp_path):
  header = np.array([0x803, 2, 28, 28], '>u4').tobytes()
  good = tmp_path / 'good.gz'
  _write_gzip(good, header + bytes(2 * 28 * 28))
  assert fashion_mnist.read_images(good, 2).shape == (2, 28, 28, 1)

  cases = {
      'magic number': (
          np.array([0x801, 2, 28, 28], '>u4').tobytes() + bytes(2 * 28 * 28)
      ),
      'shape': header + bytes(2 * 28 * 28),  # Read with a wrong count.
      'truncated': header + bytes(28 * 28),
  }
  for problem, payload in cases.items():
    path = tmp_path / f'{problem}.gz'
    _write_gzip(path, payload)
    count = 3 if problem == 'shape' else 2
    with pytest.raises(fashion_mnist.IdxFormatError, match=problem):
      fashion_mnist.read_images(path, count)

  not_gzip = tmp_path / 'plain.gz'
  not_gzip.write_bytes(b'not a gzip file')
  with pytest.raises(fashion_mnist.IdxFormatError, match='gzip'):
    fashion_mnist.read_labels(not_gzip, 2)


def test_corrupt_source_files_raise_not_found(tmp_path, monkeypatch):
  source_dir = tmp_path / 'source'
  source_dir.mkdir()
  for path in fashion_mnist.source_files(source_dir):
    _write_gzip(path, b'\x00' * 16)
  monkeypatch.setenv(fashion_mnist.SOURCE_DIR_ENV, os.fspath(source_dir))
  with pytest.raises(data.DatasetNotFoundError, match='magic number'):
    data.get_builder(_config('fashion_mnist', tmp_path / 'tfds'))


# ---------------------------------------------------------------------------
# Training pipeline.

# 512 examples in batches of 128: 4 steps per epoch.
_SMALL_TRAIN = dict(train_split='train[:512]')


def test_train_batches(fmnist_dir):
  config = _config('fashion_mnist', fmnist_dir, **_SMALL_TRAIN)
  batches = _take(data.train_iterator(config, global_batch_size=128, seed=0), 6)
  for batch in batches:
    assert set(batch) == {'image', 'label', 'index', 'labelled'}
    assert batch['image'].shape == (128, 28, 28, 1)
    assert batch['image'].dtype == np.float32
    assert batch['label'].shape == (128,)
    assert batch['label'].dtype == np.int32
    assert batch['label'].min() >= 0 and batch['label'].max() < 10
    assert batch['index'].shape == (128,)
    assert batch['index'].dtype == np.int32
    assert batch['labelled'].dtype == np.bool_
    assert batch['labelled'].all()  # labelled='all'.
  images = np.stack([b['image'] for b in batches])
  # Padding makes cropped borders black, so the mean is a bit below zero.
  assert abs(images.mean()) < 0.2
  assert 0.8 < images.std() < 1.2


def test_train_is_deterministic(fmnist_dir):
  config = _config('fashion_mnist', fmnist_dir, **_SMALL_TRAIN)
  first = _take(data.train_iterator(config, global_batch_size=128, seed=3), 3)
  again = _take(data.train_iterator(config, global_batch_size=128, seed=3), 3)
  _assert_same_batches(first, again)
  other = _take(data.train_iterator(config, global_batch_size=128, seed=4), 3)
  assert not np.array_equal(first[0]['image'], other[0]['image'])


def test_a_process_reads_a_training_split_once(fmnist_dir, monkeypatch):
  reads = []
  read = epochs._read_train_source
  monkeypatch.setattr(
      epochs, '_read_train_source', lambda *a: reads.append(a) or read(*a)
  )
  monkeypatch.setattr(epochs, '_SOURCES', type(epochs._SOURCES)())
  config = _config('fashion_mnist', fmnist_dir, **_SMALL_TRAIN)
  first = _take(data.train_iterator(config, global_batch_size=128, seed=3), 5)
  # A later round's stream, from another step: the split is not read again.
  later = _take(
      data.train_iterator(config, global_batch_size=128, seed=3, start_step=2),
      3,
  )
  assert len(reads) == 1
  _assert_same_batches(first[2:], later)
  # Only a few are kept, the most recently used.
  monkeypatch.setattr(epochs, '_MAX_SOURCES', 1)
  other = _config('fashion_mnist', fmnist_dir, train_split='train[:384]')
  _take(data.train_iterator(other, global_batch_size=128, seed=3), 1)
  _take(data.train_iterator(config, global_batch_size=128, seed=3), 1)
  assert len(reads) == 3 and len(epochs._SOURCES) == 1


@pytest.mark.parametrize('cache', [True, False])
def test_train_resumes_exactly(fmnist_dir, cache):
  config = _config('fashion_mnist', fmnist_dir, cache=cache, **_SMALL_TRAIN)
  stream = _take(data.train_iterator(config, global_batch_size=128, seed=7), 10)
  # Epochs are reshuffled: epoch 1 does not repeat epoch 0.
  assert not np.array_equal(stream[0]['label'], stream[4]['label'])
  # Step 5 is in the middle of the second epoch; the comparison runs past the
  # end of that epoch too.
  resumed = _take(
      data.train_iterator(config, global_batch_size=128, seed=7, start_step=5),
      5,
  )
  _assert_same_batches(stream[5:], resumed)
  at_boundary = _take(
      data.train_iterator(config, global_batch_size=128, seed=7, start_step=4),
      2,
  )
  _assert_same_batches(stream[4:6], at_boundary)


def test_train_epoch_sees_each_example_once(fmnist_dir):
  config = _config('fashion_mnist', fmnist_dir, augment='none', **_SMALL_TRAIN)
  epoch = _take(data.train_iterator(config, global_batch_size=128, seed=0), 4)
  seen = np.concatenate([b['image'] for b in epoch])
  # The evaluation pipeline applies the same preprocessing when augment is
  # 'none', so it gives the same images in file order.
  eval_config = _config(
      'fashion_mnist', fmnist_dir, augment='none', eval_split='train[:512]'
  )
  batches = list(data.eval_iterator(eval_config, global_batch_size=128))
  everything = np.concatenate([b['image'] for b in batches])
  assert _image_fingerprints(seen) == _image_fingerprints(everything)


def test_train_shards_across_processes(fmnist_dir, monkeypatch):
  config = _config('fashion_mnist', fmnist_dir, augment='none', **_SMALL_TRAIN)
  single = _take(data.train_iterator(config, global_batch_size=128, seed=0), 4)
  image_at = {
      int(index): image.tobytes()
      for batch in single
      for index, image in zip(batch['index'], batch['image'])
  }
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  shards, indices = [], []
  for index in range(2):
    monkeypatch.setattr(jax, 'process_index', lambda index=index: index)
    epoch = _take(data.train_iterator(config, global_batch_size=128, seed=0), 4)
    assert epoch[0]['image'].shape == (64, 28, 28, 1)
    shards.append(np.concatenate([b['image'] for b in epoch]))
    indices.append(np.concatenate([b['index'] for b in epoch]))
  # The two hosts' epochs are disjoint halves of the split.
  assert len(set(_image_fingerprints(np.concatenate(shards)))) == 512
  # Indices are unique over the hosts and do not depend on their number.
  assert sorted(np.concatenate(indices)) == list(range(512))
  for images, host_indices in zip(shards, indices):
    for image, index in zip(images, host_indices):
      assert image.tobytes() == image_at[int(index)]


# ---------------------------------------------------------------------------
# Example indices and labelled subsets.


def _read_in_file_order(data_dir, split, **kwargs):
  """Returns a whole Fashion-MNIST split as numpy arrays, in file order."""
  builder = data.get_builder(_config('fashion_mnist', data_dir))
  return tfds.as_numpy(
      builder.as_dataset(
          split=split,
          batch_size=-1,
          # One file after the other, as indices count.
          read_config=tfds.ReadConfig(interleave_cycle_length=1),
          **kwargs,
      )
  )


def _split_labels(data_dir, split):
  """Returns the labels of a Fashion-MNIST split, in file order."""
  return _read_in_file_order(
      data_dir, split, decoders={'image': tfds.decode.SkipDecoding()}
  )['label']


@pytest.fixture(scope='module')
def sharded_dir(tmp_path_factory):
  """A TFDS data dir with 600 Fashion-MNIST examples per split in 3 files."""
  if fashion_mnist.missing_source_files():
    pytest.skip('Fashion-MNIST source files missing.')
  data_dir = tmp_path_factory.mktemp('sharded')
  fashion_mnist.LocalFashionMnist(data_dir=data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          try_download_gcs=False, max_examples_per_split=600, num_shards=3
      )
  )
  return data_dir


@pytest.mark.parametrize('cache', [True, False])
def test_index_is_the_position_in_the_base_split(sharded_dir, cache):
  builder = data.get_builder(_config('fashion_mnist', sharded_dir))
  assert builder.info.splits['train'].shard_lengths == [200, 200, 200]
  # The slice starts in the first file and ends in the last one.
  config = _config(
      'fashion_mnist',
      sharded_dir,
      train_split='train[100:500]',
      augment='none',
      cache=cache,
  )
  epoch = _take(data.train_iterator(config, global_batch_size=100, seed=1), 4)
  indices = np.concatenate([b['index'] for b in epoch])
  assert sorted(indices) == list(range(100, 500))
  source = _read_in_file_order(sharded_dir, 'train')
  (mean,), (std,) = augment.MEAN_STD['fashion_mnist']
  for batch in epoch:
    np.testing.assert_array_equal(
        batch['label'], source['label'][batch['index']]
    )
    expected = (source['image'][batch['index']] / 255 - mean) / std
    np.testing.assert_allclose(batch['image'], expected, atol=1e-5)
  info = data.get_info(config)
  assert (info.index_size, info.num_train_examples) == (600, 400)
  assert info.num_labelled_examples == 400
  np.testing.assert_array_equal(
      data.labelled_indices(config), np.arange(100, 500)
  )
  config.labelled = 'per_class'
  subset = data.labelled_indices(config)
  labels = source['label'][100:500]
  np.testing.assert_array_equal(
      np.bincount(source['label'][subset], minlength=10),
      (np.bincount(labels, minlength=10) + 5) // 10,
  )


def test_per_class_subset(fmnist_dir):
  config = _config(
      'fashion_mnist',
      fmnist_dir,
      train_split='train[:500]',
      labelled='per_class',
      labelled_fraction=0.29,
  )
  labels = _split_labels(fmnist_dir, 'train[:500]')
  counts = np.bincount(labels, minlength=10)
  # floor(0.29 * n + 1/2) in exact arithmetic; class 1 has 50 examples, for
  # which floating point would give 14 instead of 15.
  assert counts[1] == 50
  expected = (29 * counts + 50) // 100
  assert expected[1] == 15
  subset = data.labelled_indices(config)
  assert subset.dtype == np.int64
  assert np.all(np.diff(subset) > 0) and subset[-1] < 500
  np.testing.assert_array_equal(
      np.bincount(labels[subset], minlength=10), expected
  )
  assert data.get_info(config).num_labelled_examples == expected.sum()
  # Deterministic even when computed afresh, and the seed matters.
  pipeline._labelled_indices.cache_clear()
  np.testing.assert_array_equal(data.labelled_indices(config), subset)
  config.labelled_seed = 1
  other = data.labelled_indices(config)
  np.testing.assert_array_equal(
      np.bincount(labels[other], minlength=10), expected
  )
  assert not np.array_equal(other, subset)


def test_classes_subset(fmnist_dir):
  config = _config(
      'fashion_mnist',
      fmnist_dir,
      train_split='train[:2000]',
      labelled='classes',
      labelled_fraction=0.25,
      labelled_seed=3,
  )
  labels = _split_labels(fmnist_dir, 'train[:2000]')
  # floor(0.25 * 10 + 1/2) = 3 classes.
  classes = np.random.default_rng(3).permutation(10)[:3]
  np.testing.assert_array_equal(
      data.labelled_indices(config), np.flatnonzero(np.isin(labels, classes))
  )
  config.labelled_fraction = 0.01  # At least one class.
  assert set(labels[data.labelled_indices(config)]) == {classes[0]}


@pytest.mark.parametrize('cache', [True, False])
def test_dataset_of_some_classes(fmnist_dir, cache):
  config = _config(
      'fashion_mnist',
      fmnist_dir,
      train_split='train[:2000]',
      eval_split='test[:1000]',
      classes=(7, 2, 5),
      cache=cache,
  )
  labels = _split_labels(fmnist_dir, 'train[:2000]')
  members = np.flatnonzero(np.isin(labels, (7, 2, 5)))
  np.testing.assert_array_equal(data.class_subset(config), members)
  info = data.get_info(config)
  test_labels = _split_labels(fmnist_dir, 'test[:1000]')
  assert info.num_classes == 3
  assert info.num_train_examples == len(members)
  assert info.num_eval_examples == np.isin(test_labels, (7, 2, 5)).sum()
  assert info.num_labelled_examples == len(members)
  # Relabelled in the order listed: 7 -> 0, 2 -> 1, 5 -> 2.
  relabel = {7: 0, 2: 1, 5: 2}
  stream = _take(
      data.train_iterator(config, global_batch_size=64, seed=1),
      len(members) // 64 + 1,
  )
  epoch = stream[: len(members) // 64]
  indices = np.concatenate([b['index'] for b in epoch])
  assert len(set(indices)) == len(indices) == len(members) // 64 * 64
  assert set(indices) <= set(members)
  for batch in stream:
    np.testing.assert_array_equal(
        batch['label'], [relabel[c] for c in labels[batch['index']]]
    )
  _assert_same_batches(
      stream[2:],
      _take(
          data.train_iterator(
              config, global_batch_size=64, seed=1, start_step=2
          ),
          len(stream) - 2,
      ),
  )
  evaluated = list(data.eval_iterator(config, global_batch_size=128))
  real = np.concatenate([b['label'][b['mask']] for b in evaluated])
  np.testing.assert_array_equal(
      real, [relabel[c] for c in test_labels if c in relabel]
  )
  # The labelled subset is chosen among the classes.
  config.labelled = 'per_class'
  labelled = data.labelled_indices(config)
  assert set(labelled) <= set(members)
  assert len(labelled) == sum(round(0.1 * np.sum(labels == c)) for c in relabel)


def test_classes_must_exist_and_be_distinct(fmnist_dir):
  config = _config('fashion_mnist', fmnist_dir)
  for classes, message in (
      ((3, 3), 'distinct'),
      ((-1,), 'distinct'),
      ((2, 10), r'\[10\] not in its 10 classes'),
  ):
    config.classes = classes
    with pytest.raises(ValueError, match=message):
      data.get_info(config)
  voc = _config('voc2007', fmnist_dir, classes=(1,)).to_dict()
  with pytest.raises(ValueError, match='multi-label'):
    pipeline._resolve_config(voc)


@pytest.mark.parametrize('cache', [True, False])
def test_only_labelled_stream(fmnist_dir, cache):
  config = _config(
      'fashion_mnist',
      fmnist_dir,
      train_split='train[:2000]',
      labelled='per_class',
      cache=cache,
  )
  subset = data.labelled_indices(config)
  assert len(subset) == 201
  labels = _split_labels(fmnist_dir, 'train[:2000]')
  stream = _take(
      data.train_iterator(
          config, global_batch_size=50, seed=2, only_labelled=True
      ),
      8,
  )
  for batch in stream:
    assert batch['labelled'].all()
    np.testing.assert_array_equal(batch['label'], labels[batch['index']])
  # Epochs of 201 // 50 = 4 steps over the subset, each example at most once.
  for epoch in (stream[:4], stream[4:]):
    indices = np.concatenate([b['index'] for b in epoch])
    assert len(set(indices)) == 200
    assert set(indices) <= set(subset)
  resumed = _take(
      data.train_iterator(
          config,
          global_batch_size=50,
          seed=2,
          start_step=3,
          only_labelled=True,
      ),
      5,
  )
  _assert_same_batches(stream[3:], resumed)
  # The whole stream flags the labelled examples.
  everything = _take(
      data.train_iterator(config, global_batch_size=500, seed=2), 1
  )[0]
  np.testing.assert_array_equal(
      everything['labelled'], np.isin(everything['index'], subset)
  )
  with pytest.raises(ValueError, match='labelled subset'):
    data.train_iterator(
        config, global_batch_size=256, seed=0, only_labelled=True
    )


def test_mixed_stream(fmnist_dir):
  config = _config(
      'fashion_mnist',
      fmnist_dir,
      train_split='train[:2000]',
      labelled='per_class',
  )
  subset = data.labelled_indices(config)
  kwargs = dict(
      labelled_batch_size=16, unlabelled_batch_size=32, seed=5, num_shards=8
  )
  stream = _take(data.mixed_train_iterator(config, **kwargs), 14)
  for batch in stream:
    assert set(batch) == {'image', 'label', 'index', 'labelled'}
    assert batch['image'].shape == (48, 28, 28, 1)
    # Each of the 8 slices: 2 labelled examples, then 4 without labels.
    flags = batch['labelled'].reshape(8, 6)
    assert flags[:, :2].all() and not flags[:, 2:].any()
    assert np.isin(batch['index'][batch['labelled']], subset).all()
  # The labelled part runs through epochs of 201 // 16 = 12 steps.
  labelled = np.concatenate([b['index'][b['labelled']] for b in stream[:12]])
  assert len(set(labelled)) == 192
  unlabelled = np.concatenate([b['index'][~b['labelled']] for b in stream])
  assert len(set(unlabelled)) == len(unlabelled)  # Within one epoch.
  resumed = _take(data.mixed_train_iterator(config, start_step=11, **kwargs), 3)
  _assert_same_batches(stream[11:], resumed)
  for bad in (
      dict(labelled_batch_size=12),
      dict(unlabelled_batch_size=20),
      dict(num_shards=0),
  ):
    with pytest.raises(ValueError, match='num_shards'):
      data.mixed_train_iterator(config, **{**kwargs, **bad})


def _fake_imagenet(num_examples, subsets):
  """Returns a `mock_data` reader of fake ImageNet files and subsets.

  Args:
    num_examples: examples of imagenet2012's splits, named 'n<i>.JPEG'.
    subsets: subset config name ('1pct', ...) -> file names it lists.
  """
  image = tf.io.encode_png(np.zeros((8, 8, 3), np.uint8))

  def as_dataset(builder, split, decoders=None, read_config=None, **kwargs):
    del split, decoders, read_config, kwargs  # Images stay encoded.
    names = [f'n{i}.JPEG' for i in range(num_examples)]
    if builder.name == 'imagenet2012_subset':
      names = subsets[builder.builder_config.name]
    return tf.data.Dataset.from_tensor_slices(
        {
            'file_name': names,
            'image': tf.fill([len(names)], image),
            'label': np.arange(len(names), dtype=np.int64) % 5,
        }
    )

  return as_dataset


def test_imagenet_per_class_uses_tfds_subsets(tmp_path, monkeypatch):
  subsets = {
      '1pct': ['n3.JPEG', 'n7.JPEG', 'n11.JPEG', 'other.JPEG'],
      '10pct': [f'n{i}.JPEG' for i in range(10)],
  }
  config = _config(
      'imagenet2012',
      tmp_path,
      image_size=8,
      labelled='per_class',
      labelled_fraction=0.01,
  )
  with tfds.testing.mock_data(as_dataset_fn=_fake_imagenet(20, subsets)):
    np.testing.assert_array_equal(data.labelled_indices(config), [3, 7, 11])
    batch = next(
        data.train_iterator(
            config, global_batch_size=3, seed=0, only_labelled=True
        )
    )
    assert sorted(batch['index']) == [3, 7, 11]
    assert batch['image'].shape == (3, 8, 8, 3)
    config.labelled_fraction = 0.1
    assert data.get_info(config).num_labelled_examples == 10

    config.data_dir = os.fspath(tmp_path / 'other')
    monkeypatch.setattr(
        sources, '_has_data', lambda builder: builder.name == 'imagenet2012'
    )
    with pytest.raises(data.DatasetNotFoundError) as error:
      data.labelled_indices(config)
  message = str(error.value)
  assert 'tfds build imagenet2012_subset/10pct' in message
  assert 'ILSVRC2012_img_train.tar' in message
  assert 'network' in message


# ---------------------------------------------------------------------------
# Evaluation pipeline.


def test_eval_covers_split_once_with_padding(fmnist_dir):
  config = _config('fashion_mnist', fmnist_dir, augment='none')
  batches = list(data.eval_iterator(config, global_batch_size=96))
  assert len(batches) == 105  # ceil(10000 / 96)
  for batch in batches:
    assert set(batch) == {'image', 'label', 'mask'}
    assert batch['image'].shape == (96, 28, 28, 1)
    assert batch['mask'].dtype == np.bool_
    assert batch['label'].dtype == np.int32
  masks = np.concatenate([b['mask'] for b in batches])
  assert masks.sum() == 10_000
  assert masks[:10_000].all()
  last = batches[-1]
  assert not last['image'][~last['mask']].any()
  assert not last['label'][~last['mask']].any()
  # Normalised by the training set's statistics, the test set is close to
  # zero mean and unit variance.
  images = np.concatenate([b['image'] for b in batches])[masks]
  assert abs(images.mean()) < 0.02
  assert abs(images.std() - 1.0) < 0.02
  again = next(data.eval_iterator(config, global_batch_size=96))
  _assert_same_batches(batches[:1], [again])


def test_eval_pads_hosts_to_the_same_length(fmnist_dir, monkeypatch):
  config = _config('fashion_mnist', fmnist_dir, eval_split='test[:1001]')
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  counts = []
  for index in range(2):
    monkeypatch.setattr(jax, 'process_index', lambda index=index: index)
    batches = list(data.eval_iterator(config, global_batch_size=100))
    assert len(batches) == 11  # ceil(501 / 50) on both hosts.
    counts.append(sum(b['mask'].sum() for b in batches))
  assert counts == [501, 500]


# ---------------------------------------------------------------------------
# CIFAR-10 and ImageNet on fake data.


@pytest.mark.parametrize(
    'name, image_size', [('cifar10', 32), ('imagenet2012', 64)]
)
def test_mock_pipelines(tmp_path, name, image_size):
  config = _config(name, tmp_path, image_size=image_size, shuffle_buffer=64)
  num_classes = {'cifar10': 10, 'imagenet2012': 1000}[name]
  with tfds.testing.mock_data(num_examples=20):
    info = data.get_info(config)
    assert info.num_classes == num_classes
    assert info.image_shape == (image_size, image_size, 3)
    assert info.num_train_examples == 20
    assert info.num_labelled_examples == info.index_size == 20

    train = data.train_iterator(config, global_batch_size=8, seed=0)
    batches = _take(train, 4)  # Crosses the end of the 2-step epoch.
    for batch in batches:
      assert batch['image'].shape == (8, image_size, image_size, 3)
      assert batch['image'].dtype == np.float32
      assert np.isfinite(batch['image']).all()
      assert ((batch['label'] >= 0) & (batch['label'] < num_classes)).all()
      # Mock data has no split statistics: indices enumerate the split.
      assert ((batch['index'] >= 0) & (batch['index'] < 20)).all()
    epoch = np.concatenate([b['index'] for b in batches[:2]])
    assert len(set(epoch)) == 16
    resumed = _take(
        data.train_iterator(config, global_batch_size=8, seed=0, start_step=1),
        3,
    )
    _assert_same_batches(batches[1:], resumed)

    evaluation = list(data.eval_iterator(config, global_batch_size=8))
    assert len(evaluation) == 3
    assert sum(b['mask'].sum() for b in evaluation) == 20
    for batch in evaluation:
      assert batch['image'].shape == (8, image_size, image_size, 3)


# ---------------------------------------------------------------------------
# Augmentations.


def _random_image(height, width, channels=3, seed=0):
  return np.random.default_rng(seed).integers(
      0, 256, (height, width, channels), np.uint8
  )


@pytest.mark.parametrize('encoding', ['decoded', 'jpeg', 'png'])
def test_imagenet_augment_accepts_any_encoding(encoding):
  image = _random_image(50, 75)
  if encoding == 'jpeg':
    image = tf.io.encode_jpeg(image)
  elif encoding == 'png':
    image = tf.io.encode_png(image)
  else:
    image = tf.constant(image)
  seed = tf.constant([1, 2], tf.int64)
  train = augment.preprocess_train(
      image, seed, augment='imagenet', image_size=32, channels=3
  )
  assert train.shape == (32, 32, 3)
  again = augment.preprocess_train(
      image, seed, augment='imagenet', image_size=32, channels=3
  )
  np.testing.assert_array_equal(train, again)
  evaluation = augment.preprocess_eval(
      image, augment='imagenet', image_size=32, channels=3
  )
  assert evaluation.shape == (32, 32, 3)
  assert 0.0 <= float(tf.reduce_min(evaluation))
  assert float(tf.reduce_max(evaluation)) <= 1.0


def test_cifar_augment_is_a_padded_crop():
  image = _random_image(32, 32)
  padded = np.pad(image, ((4, 4), (4, 4), (0, 0))).astype(np.float32) / 255
  crops = set()
  for seed in range(20):
    out = augment.cifar_train(
        tf.constant(image), tf.constant([seed, 0], tf.int64), 32, 3
    ).numpy()
    windows = [
        (top, left, flip)
        for top in range(9)
        for left in range(9)
        for flip in (False, True)
        if np.allclose(
            out[:, ::-1] if flip else out,
            padded[top : top + 32, left : left + 32],
        )
    ]
    assert windows, 'output is not a window of the padded image'
    crops.add(windows[0])
  assert len(crops) > 5  # The seed changes the crop.


def test_normalisation_constants():
  for name in data.DATASETS:
    mean, std = augment.MEAN_STD[name]
    assert len(mean) == len(std) == (1 if name == 'fashion_mnist' else 3)


# ---------------------------------------------------------------------------
# Configuration and errors.


def test_default_configs():
  fmnist = data.default_data_config('fashion_mnist')
  assert (fmnist.image_size, fmnist.augment) == (28, 'cifar')
  assert fmnist.cache
  assert fmnist.data_dir is None
  cifar = data.default_data_config('cifar10')
  assert (cifar.image_size, cifar.augment, cifar.cache) == (32, 'cifar', True)
  imagenet = data.default_data_config('imagenet2012')
  assert (imagenet.image_size, imagenet.augment, imagenet.cache) == (
      224,
      'imagenet',
      False,
  )
  assert imagenet.eval_split == 'validation'
  assert imagenet.train_split == 'train'


def test_invalid_configs(tmp_path):
  with pytest.raises(ValueError, match='fashion_mnist, cifar10, imagenet2012'):
    data.default_data_config('mnist')
  with pytest.raises(ValueError, match='Unknown dataset'):
    data.get_builder({'name': 'mnist', 'data_dir': None})
  bad_values = [
      ('augment', 'autoaugment', 'augment'),
      ('image_size', 0, 'image_size'),
      ('shuffle_buffer', -1, 'shuffle_buffer'),
      ('cache', 'yes', 'cache'),
      ('train_split', 'train+test', 'one split'),
      ('labelled', 'foo', r"labelled 'foo'.*'all', 'per_class', 'classes'"),
      ('labelled_fraction', 0, r'labelled_fraction .*\(0, 1\]'),
      ('labelled_fraction', 1.5, r'labelled_fraction .*\(0, 1\]'),
      ('labelled_fraction', True, 'labelled_fraction'),
      ('labelled_seed', -1, 'labelled_seed'),
  ]
  for field, value, message in bad_values:
    # A plain dict: ConfigDict itself refuses some wrong types.
    config = _config('fashion_mnist', tmp_path).to_dict()
    config[field] = value
    with pytest.raises(ValueError, match=message):
      data.train_iterator(config, global_batch_size=8, seed=0)
  imagenet = _config(
      'imagenet2012', tmp_path, labelled='per_class', labelled_fraction=0.05
  )
  for call in (data.get_info, data.labelled_indices):
    with pytest.raises(ValueError, match=r'0\.01 or 0\.1.*got 0\.05') as error:
      call(imagenet)
    assert 'imagenet2012_subset/1pct' in str(error.value)
    assert 'imagenet2012_subset/10pct' in str(error.value)
  # 'classes' takes any fraction on ImageNet.
  pipeline._resolve_config(
      _config(
          'imagenet2012', tmp_path, labelled='classes', labelled_fraction=0.05
      )
  )
  config = _config('fashion_mnist', tmp_path).to_dict()
  config['batch_size'] = 8
  with pytest.raises(ValueError, match='batch_size'):
    data.get_info(config)
  with pytest.raises(ValueError, match='global_batch_size'):
    data.eval_iterator(_config('fashion_mnist', tmp_path), global_batch_size=0)
  # Validation happens before any work: nothing was prepared.
  assert not any(tmp_path.iterdir())


def _no_network(monkeypatch):
  """Makes TFDS downloads fail at once, as they would offline."""
  monkeypatch.setattr(sources, '_download_hosts_reachable', lambda _: False)

  def refuse(*args, **kwargs):
    raise AssertionError('a download was attempted')

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', refuse)


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
  _no_network(monkeypatch)
  monkeypatch.setenv(fashion_mnist.SOURCE_DIR_ENV, os.fspath(tmp_path / 'no'))
  with pytest.raises(data.DatasetNotFoundError) as error:
    data.get_builder(_config('fashion_mnist', tmp_path / 'tfds'))
  message = str(error.value)
  assert 'apt-get install dataset-fashion-mnist' in message
  assert 'network' in message
  assert isinstance(error.value, RuntimeError)
  assert isinstance(error.value, FileNotFoundError)


def test_missing_cifar10_and_imagenet_say_how_to_get_them(
    tmp_path, monkeypatch
):
  _no_network(monkeypatch)
  with pytest.raises(data.DatasetNotFoundError, match='network'):
    data.get_builder(_config('cifar10', tmp_path))
  with pytest.raises(data.DatasetNotFoundError) as error:
    data.get_info(_config('imagenet2012', tmp_path))
  message = str(error.value)
  assert 'ILSVRC2012_img_train.tar' in message
  assert 'ILSVRC2012_img_val.tar' in message
  assert os.path.join(os.fspath(tmp_path), 'downloads', 'manual') in message
  assert 'tfds build imagenet2012' in message
