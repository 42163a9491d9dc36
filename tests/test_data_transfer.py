"""Tests of the Places365 and VOC 2007 input pipelines (sslprune_jax.data).

Neither dataset can be prepared here: their pipelines run on the fake
examples of `tfds.testing.mock_data`, which TFDS generates from the
builders' features. Joined training splits (VOC's 'train+validation') are
checked on a small Fashion-MNIST with several shards per split.
"""

import os

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from sslprune_jax import voc
from sslprune_jax import data
from sslprune_jax.data import augment
from sslprune_jax.data import fashion_mnist
from sslprune_jax.data import pipeline
from sslprune_jax.data import schema
from sslprune_jax.data import sources

# Small images and splits keep the tests fast.
_IMAGE_SIZE = 32
_NUM_EXAMPLES = 12


def _config(name, data_dir, **overrides):
  """Returns the default config of `name` reading from `data_dir`."""
  config = data.default_data_config(name)
  config.data_dir = os.fspath(data_dir)
  config.update(overrides)
  return config


def _small_config(name, data_dir, **overrides):
  """Returns a config of `name` with small images and shuffle buffer."""
  small = dict(image_size=_IMAGE_SIZE, shuffle_buffer=64)
  return _config(name, data_dir, **{**small, **overrides})


def _take(iterator, n):
  """Returns the next `n` items of an iterator as a list."""
  return [next(iterator) for _ in range(n)]


def _raw_voc_targets(data_dir, split):
  """Returns `voc.targets` of the examples of a VOC split, in file order.

  Must run under the same `mock_data` as the pipeline. The mock generates
  examples from the features that are read, so they are read with the
  pipeline's own choice of features.
  """
  builder = tfds.builder('voc/2007', data_dir=os.fspath(data_dir))
  ds = builder.as_dataset(
      split=split,
      decoders=pipeline._decoders(builder, ('image', 'label')),
      read_config=tfds.ReadConfig(interleave_cycle_length=1),
  )
  examples = list(tfds.as_numpy(ds))
  return voc.targets(
      [ex['labels'] for ex in examples],
      [ex['labels_no_difficult'] for ex in examples],
      num_classes=20,
  )


# ---------------------------------------------------------------------------
# Configuration.


def test_default_configs():
  assert {'places365_small', 'voc2007'} <= set(data.DATASETS)
  places = data.default_data_config('places365_small')
  assert (places.train_split, places.eval_split) == ('train', 'validation')
  assert (places.image_size, places.augment) == (224, 'imagenet')
  assert (places.cache, places.shuffle_buffer) == (False, 10_000)
  voc07 = data.default_data_config('voc2007')
  assert (voc07.train_split, voc07.eval_split) == ('train+validation', 'test')
  assert (voc07.image_size, voc07.augment, voc07.cache) == (
      224,
      'imagenet',
      False,
  )
  assert voc07.labelled == 'all'
  for name in ('places365_small', 'voc2007'):
    assert augment.MEAN_STD[name] == augment.MEAN_STD['imagenet2012']


def test_invalid_configs(tmp_path):
  def check(name, message, **overrides):
    config = _config(name, tmp_path, **overrides)
    with pytest.raises(ValueError, match=message):
      data.train_iterator(config, global_batch_size=8, seed=0)

  # Only VOC joins splits.
  check(
      'places365_small',
      'one split.*only voc2007',
      train_split='train+validation',
  )
  check('voc2007', 'twice', train_split='train[:10]+train[20:]')
  check('voc2007', 'several joined', train_split='train++validation')
  check('voc2007', 'several joined', train_split='train+')
  # Labelled subsets are defined by single labels.
  for labelled in ('per_class', 'classes'):
    check('voc2007', "multi-label: labelled must be 'all'", labelled=labelled)
  # Slices of joined splits are fine.
  pipeline._resolve_config(
      _config('voc2007', tmp_path, train_split='train[:50%]+validation[5:]')
  )
  # Validation happens before any work: nothing was prepared.
  assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------
# Both datasets on fake examples.


@pytest.mark.parametrize(
    'name, num_classes, multi_label',
    [('places365_small', 365, False), ('voc2007', 20, True)],
)
def test_mock_info_and_batches(tmp_path, name, num_classes, multi_label):
  config = _small_config(name, tmp_path)
  label_shape = (num_classes,) if multi_label else ()
  with tfds.testing.mock_data(num_examples=_NUM_EXAMPLES):
    info = data.get_info(config)
    assert info.num_classes == num_classes
    assert info.multi_label is multi_label
    assert info.image_shape == (_IMAGE_SIZE, _IMAGE_SIZE, 3)
    assert info.num_train_examples == info.num_eval_examples == _NUM_EXAMPLES
    assert info.num_labelled_examples == info.index_size == _NUM_EXAMPLES

    # Epochs of 12 // 4 = 3 steps; 4 batches cross into the second one.
    batches = _take(data.train_iterator(config, global_batch_size=4, seed=0), 4)
    for batch in batches:
      assert set(batch) == {'image', 'label', 'index', 'labelled'}
      assert batch['image'].shape == (4, _IMAGE_SIZE, _IMAGE_SIZE, 3)
      assert batch['image'].dtype == np.float32
      assert np.isfinite(batch['image']).all()
      assert batch['label'].shape == (4, *label_shape)
      assert batch['label'].dtype == np.int32
      if multi_label:
        assert np.isin(batch['label'], [1, 0, -1]).all()
      else:
        assert ((batch['label'] >= 0) & (batch['label'] < num_classes)).all()
      assert batch['index'].dtype == np.int32
      assert batch['labelled'].all()
    epoch = np.concatenate([b['index'] for b in batches[:3]])
    assert sorted(epoch) == list(range(_NUM_EXAMPLES))

    # 12 examples in batches of 8: the second batch has 4 padding rows.
    evaluation = list(data.eval_iterator(config, global_batch_size=8))
    assert len(evaluation) == 2
    for batch in evaluation:
      assert set(batch) == {'image', 'label', 'mask'}
      assert batch['image'].shape == (8, _IMAGE_SIZE, _IMAGE_SIZE, 3)
      assert batch['label'].shape == (8, *label_shape)
      assert batch['label'].dtype == np.int32
      assert batch['mask'].dtype == np.bool_
    masks = np.concatenate([b['mask'] for b in evaluation])
    np.testing.assert_array_equal(masks, np.arange(16) < _NUM_EXAMPLES)
    padding = evaluation[-1]
    assert not padding['image'][~padding['mask']].any()
    expected_padding = voc.NEGATIVE if multi_label else 0
    assert (padding['label'][~padding['mask']] == expected_padding).all()


def test_voc_labels_are_voc_targets(tmp_path):
  config = _small_config('voc2007', tmp_path)
  with tfds.testing.mock_data(num_examples=_NUM_EXAMPLES):
    # The mock gives every split the same examples.
    expected = _raw_voc_targets(tmp_path, 'train')
    # Random objects make classes of all three kinds.
    assert {voc.POSITIVE, voc.DIFFICULT, voc.NEGATIVE} <= set(expected.flat)

    batches = _take(data.train_iterator(config, global_batch_size=4, seed=1), 3)
    for batch in batches:
      # Without split statistics, indices number the examples in file order.
      np.testing.assert_array_equal(batch['label'], expected[batch['index']])

    evaluation = list(data.eval_iterator(config, global_batch_size=8))
    labels = np.concatenate([b['label'] for b in evaluation])
    masks = np.concatenate([b['mask'] for b in evaluation])
    np.testing.assert_array_equal(
        labels[masks], _raw_voc_targets(tmp_path, 'test')
    )

    # The mixed stream needs nothing but batches of any label shape.
    mixed = next(
        data.mixed_train_iterator(
            config,
            labelled_batch_size=8,
            unlabelled_batch_size=8,
            seed=0,
            num_shards=8,
        )
    )
    assert mixed['label'].shape == (16, 20)
    assert mixed['labelled'].reshape(8, 2)[:, 0].all()


def _fake_voc(objects):
  """Returns a `mock_data` reader of VOC images with the given objects.

  Args:
    objects: one `(labels, labels_no_difficult)` pair of class lists per
      image, the same for every split.
  """
  image = tf.io.encode_jpeg(np.full((12, 16, 3), 128, np.uint8))

  def as_dataset(builder, split, decoders=None, read_config=None, **kwargs):
    del builder, split, decoders, read_config, kwargs  # Images stay encoded.

    def examples():
      for labels, clear in objects:
        yield {
            'image': image,
            'labels': np.asarray(labels, np.int64),
            'labels_no_difficult': np.asarray(clear, np.int64),
        }

    return tf.data.Dataset.from_generator(
        examples,
        output_signature={
            'image': tf.TensorSpec((), tf.string),
            'labels': tf.TensorSpec((None,), tf.int64),
            'labels_no_difficult': tf.TensorSpec((None,), tf.int64),
        },
    ).apply(tf.data.experimental.assert_cardinality(len(objects)))

  return as_dataset


def test_voc_targets_of_real_cases(tmp_path):
  objects = [
      ([3, 3, 7], [3]),  # A clear and a difficult object of class 3.
      ([], []),  # No object: a negative of every class.
      ([0, 19], [0, 19]),
      ([5, 5], []),  # Only difficult objects.
  ]
  config = _small_config('voc2007', tmp_path, image_size=8)
  expected = voc.targets(*zip(*objects), num_classes=20)
  assert expected[0, 3] == voc.POSITIVE and expected[0, 7] == voc.DIFFICULT
  assert expected[3, 5] == voc.DIFFICULT
  with tfds.testing.mock_data(as_dataset_fn=_fake_voc(objects)):
    evaluation = list(data.eval_iterator(config, global_batch_size=8))
    assert len(evaluation) == 1
    batch = evaluation[0]
    np.testing.assert_array_equal(batch['mask'], np.arange(8) < 4)
    np.testing.assert_array_equal(batch['label'][:4], expected)
    assert (batch['label'][4:] == voc.NEGATIVE).all()
    train = next(data.train_iterator(config, global_batch_size=4, seed=0))
    np.testing.assert_array_equal(train['label'], expected[train['index']])


# ---------------------------------------------------------------------------
# Joined training splits, on real data.


@pytest.fixture(scope='module')
def sharded_dir(tmp_path_factory):
  """A TFDS data dir with 60 Fashion-MNIST examples per split in 3 files."""
  if fashion_mnist.missing_source_files():
    pytest.skip('Fashion-MNIST source files missing.')
  data_dir = tmp_path_factory.mktemp('joined')
  fashion_mnist.LocalFashionMnist(data_dir=data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          try_download_gcs=False, max_examples_per_split=60, num_shards=3
      )
  )
  return data_dir


def _read_in_file_order(data_dir, split):
  """Returns a Fashion-MNIST split as numpy arrays, in file order."""
  builder = tfds.builder('fashion_mnist', data_dir=os.fspath(data_dir))
  return tfds.as_numpy(
      builder.as_dataset(
          split=split,
          batch_size=-1,
          read_config=tfds.ReadConfig(interleave_cycle_length=1),
      )
  )


def test_joined_split_numbers_each_part_after_the_last(
    sharded_dir, monkeypatch
):
  # Fashion-MNIST stands in for VOC, whose splits cannot be prepared here.
  monkeypatch.setattr(schema, '_JOINED_TRAIN_SPLITS', ('fashion_mnist',))
  # 41 + 41 examples, each part running over shard boundaries (20 per file).
  config = _config(
      'fashion_mnist',
      sharded_dir,
      augment='none',
      train_split='train[10:51]+test[5:46]',
  )
  builder = data.get_builder(config)
  assert builder.info.splits['train'].shard_lengths == [20, 20, 20]
  info = data.get_info(config)
  assert (info.num_train_examples, info.index_size) == (82, 120)
  # The test part starts after the 60 training examples.
  expected = list(range(10, 51)) + list(range(65, 106))
  assert info.index_range == (10, 106)
  np.testing.assert_array_equal(data.labelled_indices(config), expected)

  train = _read_in_file_order(sharded_dir, 'train')
  test = _read_in_file_order(sharded_dir, 'test')
  images = np.concatenate([train['image'], test['image']])
  labels = np.concatenate([train['label'], test['label']])
  (mean,), (std,) = augment.MEAN_STD['fashion_mnist']
  epoch = _take(data.train_iterator(config, global_batch_size=41, seed=0), 2)
  assert sorted(np.concatenate([b['index'] for b in epoch])) == expected
  for batch in epoch:
    np.testing.assert_array_equal(batch['label'], labels[batch['index']])
    np.testing.assert_allclose(
        batch['image'],
        (images[batch['index']] / 255 - mean) / std,
        atol=1e-5,
    )

  # Three processes share out each part on its own: 13 + 13 examples per
  # host, less than 82 // 3. Epochs then have 26 // 9 = 2 steps, not
  # 82 // 27 = 3, and resuming still finds the right step.
  monkeypatch.setattr(jax, 'process_count', lambda: 3)
  seen = []
  for process_index in range(3):
    monkeypatch.setattr(jax, 'process_index', lambda i=process_index: i)
    stream = _take(data.train_iterator(config, global_batch_size=27, seed=0), 5)
    for part in (stream[:2], stream[2:4]):
      assert len(set(np.concatenate([b['index'] for b in part]))) == 18
    resumed = _take(
        data.train_iterator(config, global_batch_size=27, seed=0, start_step=3),
        2,
    )
    for a, b in zip(stream[3:], resumed):
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    seen.append(set(np.concatenate([b['index'] for b in stream])))
  for i in range(3):
    assert seen[i] <= set(expected)
    for j in range(i):
      assert not seen[i] & seen[j]


# ---------------------------------------------------------------------------
# VOC 2007 prepared by TFDS from a tiny fake VOCdevkit.

# Objects of each image: (class name, difficult). Images of each set.
_VOC_OBJECTS = {
    'train': [
        [('cat', False)],
        [('cat', True), ('dog', False)],
        [('person', True)],
        [('person', False), ('person', True), ('car', False)],
        [('aeroplane', False), ('tvmonitor', True)],
        [('bus', False)],
    ],
    'val': [
        [('dog', True), ('dog', False)],
        [('bird', False)],
        [('sofa', True), ('chair', True)],
        [('horse', False)],
    ],
    'test': [
        [('cat', True)],
        [('cow', False), ('sheep', False)],
        [('bottle', True), ('bottle', False)],
        [('train', False)],
        [('boat', True)],
    ],
}


def _voc_annotation(objects):
  """Returns a VOC annotation XML with the given objects."""
  parts = [
      '<annotation><size><width>24</width><height>16</height>'
      '<depth>3</depth></size>'
  ]
  for name, difficult in objects:
    parts.append(
        f'<object><name>{name}</name><pose>Unspecified</pose>'
        f'<truncated>0</truncated><difficult>{int(difficult)}</difficult>'
        '<bndbox><xmin>2</xmin><ymin>3</ymin><xmax>20</xmax><ymax>12</ymax>'
        '</bndbox></object>'
    )
  parts.append('</annotation>')
  return ''.join(parts)


def _write_voc_devkit(root):
  """Writes `_VOC_OBJECTS` as a VOC 2007 devkit; returns image id targets."""
  builder = tfds.builder('voc/2007', data_dir=os.fspath(root))
  names = builder.info.features['labels'].feature.names
  base = root / 'VOCdevkit' / 'VOC2007'
  for folder in ('JPEGImages', 'Annotations', 'ImageSets/Main'):
    (base / folder).mkdir(parents=True)
  rng = np.random.default_rng(0)
  targets = {}
  for set_name, images in _VOC_OBJECTS.items():
    ids = []
    for i, objects in enumerate(images):
      image_id = f'{set_name}{i:03d}'
      ids.append(image_id)
      pixels = rng.integers(0, 256, (16, 24, 3), np.uint8)
      (base / 'JPEGImages' / f'{image_id}.jpg').write_bytes(
          tf.io.encode_jpeg(pixels).numpy()
      )
      (base / 'Annotations' / f'{image_id}.xml').write_text(
          _voc_annotation(objects)
      )
      classes = [names.index(name) for name, _ in objects]
      clear = [names.index(name) for name, hard in objects if not hard]
      targets[f'{image_id}.jpg'] = voc.targets([classes], [clear], 20)[0]
    (base / 'ImageSets' / 'Main' / f'{set_name}.txt').write_text(
        ''.join(f'{image_id}\n' for image_id in ids)
    )
  return targets


@pytest.fixture(scope='module')
def voc_dir(tmp_path_factory):
  """A TFDS data dir with a tiny VOC 2007 in 2 files per split.

  Returns:
    `(data_dir, targets)`, `targets` mapping each image's file name to its
    `voc.targets` row.
  """
  source = tmp_path_factory.mktemp('vocdevkit')
  targets = _write_voc_devkit(source)
  data_dir = tmp_path_factory.mktemp('voc')
  with pytest.MonkeyPatch.context() as patch:
    # Both archives extract to the same fake devkit.
    patch.setattr(
        tfds.download.DownloadManager,
        'download_and_extract',
        lambda self, urls: {key: os.fspath(source) for key in urls},
    )
    tfds.builder('voc/2007', data_dir=data_dir).download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            try_download_gcs=False, num_shards=2
        )
    )
  return data_dir, targets


def _file_names(data_dir, split):
  """Returns the image file names of a VOC split, in file order."""
  builder = tfds.builder('voc/2007', data_dir=os.fspath(data_dir))
  ds = builder.as_dataset(
      split=split,
      decoders=tfds.decode.PartialDecoding({'image/filename': True}),
      read_config=tfds.ReadConfig(interleave_cycle_length=1),
  )
  return [ex['image/filename'].decode() for ex in tfds.as_numpy(ds)]


def test_prepared_voc_trainval(voc_dir):
  data_dir, targets = voc_dir
  config = _config('voc2007', data_dir, image_size=16)
  builder = data.get_builder(config)
  assert builder.info.splits['train'].num_shards == 2
  info = data.get_info(config)
  assert (info.num_classes, info.multi_label) == (20, True)
  assert (info.num_train_examples, info.num_eval_examples) == (10, 5)
  assert (info.index_size, info.index_range) == (10, (0, 10))
  # Indices come from TFDS's record ids: the validation files start at 6.
  offsets = pipeline._index_layout(
      builder, pipeline._resolve_config(config)
  ).shard_offsets
  assert len(offsets) == 4
  assert min(v for k, v in offsets.items() if '-validation.' in k) == 6
  # Indices number 'train' then 'validation', each in file order.
  by_index = _file_names(data_dir, 'train') + _file_names(
      data_dir, 'validation'
  )
  assert [name[:3] for name in by_index] == ['tra'] * 6 + ['val'] * 4

  epoch = _take(data.train_iterator(config, global_batch_size=5, seed=0), 2)
  assert sorted(np.concatenate([b['index'] for b in epoch])) == list(range(10))
  for batch in epoch:
    assert batch['image'].shape == (5, 16, 16, 3)
    for index, label in zip(batch['index'], batch['label']):
      np.testing.assert_array_equal(label, targets[by_index[index]])

  batches = list(data.eval_iterator(config, global_batch_size=8))
  assert len(batches) == 1
  batch = batches[0]
  np.testing.assert_array_equal(batch['mask'], np.arange(8) < 5)
  expected = [targets[name] for name in _file_names(data_dir, 'test')]
  # Evaluation may interleave the files; compare the sets of rows.
  assert sorted(map(tuple, batch['label'][:5])) == sorted(map(tuple, expected))
  assert (batch['label'][5:] == voc.NEGATIVE).all()


# ---------------------------------------------------------------------------
# Missing data.


def test_missing_datasets_say_how_to_get_them(tmp_path, monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError('a download was attempted')

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', refuse)
  # Places365 is never downloaded, network or not.
  with pytest.raises(data.DatasetNotFoundError) as error:
    data.get_info(_config('places365_small', tmp_path))
  message = str(error.value)
  assert f'tfds build places365_small --data_dir={tmp_path}' in message
  assert 'TFDS_DATA_DIR' in message

  # VOC is downloaded when a download host answers; here none does.
  monkeypatch.setattr(sources, '_download_hosts_reachable', lambda _: False)
  with pytest.raises(data.DatasetNotFoundError) as error:
    data.train_iterator(
        _config('voc2007', tmp_path), global_batch_size=8, seed=0
    )
  message = str(error.value)
  assert f'tfds build voc/2007 --data_dir={tmp_path}' in message
  assert 'network' in message
