"""Evaluations that read a pruning run: re-training its masks, linear probes,
layerwise pruning, pruning from a pre-trained network, and Figure 3's driver.

The source runs are the shrunk quick configs of tests/test_imp.py on real
Fashion-MNIST.
"""

import csv
import io
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from sslprune_jax import checkpoint
from sslprune_jax import imp
from sslprune_jax import models
from sslprune_jax import pruning
from sslprune_jax import report
from sslprune_jax import tasks
from sslprune_jax import figure3
from sslprune_jax.evaluation import classifier
from sslprune_jax.evaluation import layerwise
from sslprune_jax.evaluation import linear
from sslprune_jax.evaluation import retrain
from sslprune_jax import voc
from test_imp import OVERRIDES, load_config, round_masks


def shrunk(name, data_dir, arg='quick', **extra):
  config = load_config(arg, name)
  overrides = dict(OVERRIDES)
  if name == 'linear_eval':
    overrides = {
        k: v
        for k, v in overrides.items()
        if k.startswith(('data.', 'model.', 'train.eval'))
    }
  config.update_from_flattened_dict(
      {**overrides, 'data.data_dir': data_dir, **extra}
  )
  return config


@pytest.fixture
def labels_run(labels_run):  # pylint: disable=redefined-outer-name
  """The workdir of the shrunk quick labels run (conftest.py)."""
  return labels_run[1]


@pytest.fixture(scope='module')
def rotnet_run(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('rotnet_source')
  imp.run(
      shrunk(
          'rotnet',
          data_dir,
          **{
              'pruning.num_rounds': 1,
              'data.train_split': 'train[:512]',
              'train.num_epochs': 1.0,
              'train.batch_size': 32,
              'pruning.rewind_samples': 128,
          },
      ),
      str(workdir),
  )
  return workdir


def _np(tree):
  return jax.tree.map(np.asarray, tree)


def _rewind_params(workdir):
  ckpts = checkpoint.RunCheckpoints(str(workdir))
  try:
    return _np(ckpts.load_rewind()['params'])
  finally:
    ckpts.close()


def _starts(config):
  """Source round -> (variables, mask) each re-training round starts from."""
  exp = imp.build(config)
  ckpts = checkpoint.RunCheckpoints(config.source.workdir)
  try:
    return exp, {
        r: _np(retrain.round_start(exp, ckpts, r)[:2])
        for r in ckpts.completed_rounds()
    }
  finally:
    ckpts.close()


def _retrain_config(data_dir, source, **source_fields):
  config = shrunk('retrain', data_dir)
  config.source.update(dict(workdir=str(source), **source_fields))
  return config


def _layer_counts(mask, prunable):
  return [
      int(m.sum())
      for m, ok in zip(jax.tree.leaves(mask), jax.tree.leaves(prunable))
      if ok
  ]


def test_winning_ticket_is_the_rewind_point_under_the_source_mask(
    labels_run, data_dir
):
  _, starts = _starts(
      _retrain_config(data_dir, labels_run, init='winning_ticket')
  )
  masks, rewound = round_masks(labels_run), _rewind_params(labels_run)
  assert sorted(starts) == [0, 1, 2]
  for r, (variables, mask) in starts.items():
    jax.tree.map(np.testing.assert_array_equal, mask, masks[r])
    # A label-trained ticket keeps its classifier: everything is rewound.
    jax.tree.map(
        np.testing.assert_array_equal,
        variables['params'],
        jax.tree.map(lambda p, m: p * m, rewound, masks[r]),
    )


def test_reinit_keeps_the_mask_with_fresh_weights(labels_run, data_dir):
  _, starts = _starts(_retrain_config(data_dir, labels_run, init='reinit'))
  masks, rewound = round_masks(labels_run), _rewind_params(labels_run)
  for r, (variables, mask) in starts.items():
    jax.tree.map(np.testing.assert_array_equal, mask, masks[r])
    kernel = variables['params']['conv1']['kernel']
    assert np.all(kernel[~mask['conv1']['kernel']] == 0)
    assert not np.allclose(
        kernel, rewound['conv1']['kernel'] * masks[r]['conv1']['kernel']
    )


def test_random_masks_have_the_source_per_layer_rates(labels_run, data_dir):
  masks = round_masks(labels_run)
  for kind in ('random_like', 'random_natural'):
    exp, starts = _starts(
        _retrain_config(data_dir, labels_run, init='winning_ticket', mask=kind)
    )
    for r, (variables, mask) in starts.items():
      assert _layer_counts(mask, exp.prunable) == _layer_counts(
          masks[r], exp.prunable
      )
      if r:
        assert not np.array_equal(
            mask['layer4_0']['conv2']['kernel'],
            masks[r]['layer4_0']['conv2']['kernel'],
        )
      # The rewound weights under the new mask, not under the old one.
      rewound = _rewind_params(labels_run)['layer4_0']['conv2']['kernel']
      kept = mask['layer4_0']['conv2']['kernel']
      np.testing.assert_array_equal(
          variables['params']['layer4_0']['conv2']['kernel'][kept],
          rewound[kept],
      )


def test_random_natural_masks_remove_naturally_small_weights_first():
  params = {
      'a': jnp.array([[0.5, 1e-5, 0.3, 2e-4], [0.7, 0.2, 1e-6, 0.9]]),
      'b': jnp.array([[1e-5, 0.4], [0.5, 0.6]]),
  }
  reference = {
      'a': jnp.array([[1, 1, 1, 0], [0, 1, 1, 1]], bool),  # 2 out
      'b': jnp.array([[1, 1], [1, 0]], bool),
  }  # 1 out
  prunable = {'a': True, 'b': True}
  for seed in range(5):
    mask = pruning.random_prune_like(
        jax.random.PRNGKey(seed),
        reference,
        prunable,
        params=params,
        threshold=1e-3,
    )
    # 'a' has three weights under 1e-3 but loses two: the two smallest.
    np.testing.assert_array_equal(mask['a'], [[1, 0, 1, 1], [1, 1, 0, 1]])
    np.testing.assert_array_equal(mask['b'], [[0, 1], [1, 1]])


def test_retraining_a_rotnet_mask_on_labels(rotnet_run, data_dir, tmp_path):
  config = _retrain_config(data_dir, rotnet_run, init='winning_ticket')
  exp, starts = _starts(config)
  masks, rewound = round_masks(rotnet_run), _rewind_params(rotnet_run)
  for r, (variables, mask) in starts.items():
    # The trunk is the rotnet ticket; the head a fresh 10-way classifier.
    np.testing.assert_array_equal(
        variables['params']['layer2_0']['conv1']['kernel'],
        rewound['layer2_0']['conv1']['kernel']
        * masks[r]['layer2_0']['conv1']['kernel'],
    )
    assert variables['params'][models.HEAD]['kernel'].shape[-1] == 10
    assert mask[models.HEAD]['kernel'].all()
  rows = retrain.run(config, str(tmp_path))
  source = report.load_run(str(rotnet_run))
  assert [r['round'] for r in rows] == [0, 1]
  assert [r['fraction_left'] for r in rows] == [
      float(r['fraction_left']) for r in source.rows
  ]
  # The mask stays the source's through training.
  for r, mask in round_masks(tmp_path).items():
    trunk = {k: v for k, v in mask.items() if k != models.HEAD}
    jax.tree.map(
        np.testing.assert_array_equal,
        trunk,
        {k: v for k, v in masks[r].items() if k != models.HEAD},
    )
  assert all(row['test_accuracy'] > 0.3 for row in rows)
  # A restart of the finished run does no work and reads the same rows.
  again = retrain.run(config, str(tmp_path))
  assert [r['test_accuracy'] for r in again] == [
      r['test_accuracy'] for r in rows
  ]


def test_source_problems_are_explained(labels_run, data_dir, tmp_path):
  config = _retrain_config(data_dir, labels_run, init='winning_ticket')
  config.model.width = 0.25
  with pytest.raises(ValueError, match='trained another model'):
    retrain.run(config, str(tmp_path / 'a'))
  config = _retrain_config(
      data_dir, labels_run, init='winning_ticket', rounds=(0, 7)
  )
  with pytest.raises(ValueError, match=r'not finished rounds \[7\]'):
    retrain.run(config, str(tmp_path / 'b'))
  config = _retrain_config(data_dir, labels_run, init='ticket')
  with pytest.raises(ValueError, match='Unknown source.init'):
    retrain.run(config, str(tmp_path / 'c'))
  config = _retrain_config(data_dir, tmp_path / 'nothing')
  with pytest.raises(ValueError, match='holds no pruning run'):
    retrain.run(config, str(tmp_path / 'd'))


def test_linear_probe_separates_linearly_separable_features():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(5, 16)) * 3
  labels = rng.integers(0, 5, size=600)
  features = centres[labels] + rng.normal(size=(600, 16)) * 0.3
  config = load_config('quick', 'linear_eval').linear
  config.num_epochs = 20.0
  config.batch_size = 64
  params, stats = classifier.train_classifier(
      features[:500], labels[:500], 5, config, seed=0
  )
  assert classifier.accuracy(params, stats, features[:500], labels[:500]) == 1.0
  assert classifier.accuracy(params, stats, features[500:], labels[500:]) == 1.0


def test_linear_probe_of_every_round(labels_run, data_dir, tmp_path):
  config = shrunk('linear_eval', data_dir, **{'linear.num_epochs': 3.0})
  config.source.workdir = str(labels_run)
  rows = linear.run(config, str(tmp_path))
  source = report.load_run(str(labels_run))
  assert [r['round'] for r in rows] == [0, 1, 2]
  assert [r['fraction_left'] for r in rows] == [
      float(r['fraction_left']) for r in source.rows
  ]
  # Chance is 0.1; the features of a trained trunk do much better.
  assert all(r['test_accuracy'] > 0.5 for r in rows)
  saved = list(
      csv.DictReader(io.StringIO((tmp_path / 'results.csv').read_text()))
  )
  assert [float(r['test_accuracy']) for r in saved] == [
      r['test_accuracy'] for r in rows
  ]
  # Features from an inner block, streamed through the trunk with SGD.
  config = shrunk(
      'linear_eval',
      data_dir,
      **{
          'linear.layer': 'layer2_0',
          'linear.cache_features': False,
          'linear.num_epochs': 1.0,
          'linear.batch_size': 128,
          'source.rounds': (2,),
      },
  )
  config.source.workdir = str(labels_run)
  (row,) = linear.run(config, str(tmp_path / 'layer2'))
  assert row['round'] == 2 and row['test_accuracy'] > 0.3
  config.linear.layer = 'layer9'
  with pytest.raises(ValueError, match='not a module of the model'):
    linear.run(config, str(tmp_path / 'bad'))


def test_layerwise_sweep_prunes_only_the_first_k_layers(data_dir, tmp_path):
  config = shrunk(
      'layerwise',
      data_dir,
      **{
          'layerwise.layers': (1, 3),
          'pruning.num_rounds': 1,
          'data.train_split': 'train[:512]',
          'train.num_epochs': 1.0,
          'pruning.rewind_samples': 128,
      },
  )
  results = layerwise.run(config, str(tmp_path))
  assert sorted(results) == [1, 3]
  exp = imp.build(config)
  order = [
      p
      for p in models.kernel_order(exp.model, jnp.zeros((1, 28, 28, 1)))
      if p[0] != models.HEAD
  ]
  for k, directory in layerwise.run_dirs(config, str(tmp_path)).items():
    mask = round_masks(directory)[1]
    for i, path in enumerate(order):
      leaf = mask
      for key in path:
        leaf = leaf[key]
      assert (leaf.mean() < 1) == (i < k), (k, path)


def test_pruning_during_transfer_starts_from_the_pretrained_network(
    labels_run, data_dir, tmp_path
):
  config = shrunk(
      'rotnet',
      data_dir,
      **{
          'pruning.num_rounds': 1,
          'pruning.rewind_samples': 0,
          'train.batch_size': 32,
          'data.train_split': 'train[:256]',
          'init_from.workdir': str(labels_run),
      },
  )
  exp = imp.build(config)
  final = _np(checkpoint.RunCheckpoints(str(labels_run)).load_round(0))
  np.testing.assert_array_equal(
      exp.variables['params']['conv1']['kernel'],
      final['params']['conv1']['kernel'],
  )
  assert exp.variables['params'][models.HEAD]['kernel'].shape[-1] == 4
  imp.run(config, str(tmp_path))
  # Rewinding to sample 0 is rewinding to the pre-trained weights.
  np.testing.assert_array_equal(
      _rewind_params(tmp_path)['conv1']['kernel'],
      final['params']['conv1']['kernel'],
  )


def test_a_pre_trained_start_is_the_sources_weights_under_its_mask(
    labels_run, data_dir
):
  """IMP on other classes from a pruned round of another run
  (`sslprune_jax.pretrained`'s start): the trunk is that round's trained
  weights under its mask, the mask is its mask, the head is fresh."""
  config = shrunk(
      'labels',
      data_dir,
      **{
          'data.classes': (5, 6, 7, 8, 9),
          'init_from.workdir': str(labels_run),
          'init_from.round': 2,
      },
  )
  exp = imp.build(config)
  with checkpoint.RunCheckpoints(str(labels_run)) as ckpts:
    source = _np(ckpts.load_round(2))
  params = _np(exp.variables['params'])
  mask = _np(exp.start_mask)
  assert mask.keys() == source['mask'].keys()
  for key in source['mask']:
    if key == models.HEAD:
      continue
    jax.tree.map(np.testing.assert_array_equal, mask[key], source['mask'][key])
    jax.tree.map(
        lambda p, w, m: np.testing.assert_array_equal(p * m, w * m),
        params[key],
        source['params'][key],
        source['mask'][key],
    )
  assert params[models.HEAD]['kernel'].shape[-1] == 5
  assert mask[models.HEAD]['kernel'].all()
  # Pruning goes on from the source's weights left.
  left = pruning.count(exp.start_mask, exp.prunable)
  assert left[0] < left[1]


def test_figure3_runs_every_curve_and_reports(data_dir, tmp_path, monkeypatch):
  load = figure3.load_config

  def tiny(name, seed):
    config = load(name, seed)
    images = 3000 if name == 'rotnet' else 6000
    config.update_from_flattened_dict(
        {
            **{k: v for k, v in OVERRIDES.items() if k != 'data.train_split'},
            'data.train_split': f'train[:{images // 12}]',
            'data.eval_split': 'test[:200]',
            'train.num_epochs': 1.0,
            'data.data_dir': data_dir,
            'pruning.num_rounds': 1,
            'pruning.rewind_samples': 128,
            'checkpoint_every_steps': 0,
        }
    )
    if name == 'rotnet':
      # The variant's batch; 200 test images over eight devices.
      config.train.batch_size = 32
      config.train.eval_batch_size = 200
    return config

  monkeypatch.setattr(figure3, 'load_config', tiny)
  # One seed keeps this affordable; means over seeds are tested in
  # tests/test_evaluation.py.
  paths = figure3.run(str(tmp_path), seeds=1)
  table = pathlib.Path(paths['md']).read_text()
  for curve in (
      'labels, winning ticket',
      'labels, reinit',
      'rotnet, winning ticket',
      'rotnet, reinit',
      'random, reinit',
      'random per-layer, winning ticket',
      'random per-layer, reinit',
  ):
    assert curve in table
  assert 'random, winning ticket' not in table
  assert pathlib.Path(paths['png']).stat().st_size > 0
  rows = list(
      csv.DictReader(io.StringIO(pathlib.Path(paths['csv']).read_text()))
  )
  assert len(rows) == 7 * 2 and all(r['n'] == '1' for r in rows)
  assert len({r['fraction_left'] for r in rows}) == 2


def test_multilabel_loss_by_hand():
  task = tasks.get_task('multilabel')
  logits = jnp.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
  targets = jnp.array([[1, -1, 0], [0, 0, 0]])  # image 2: all difficult
  loss, aux = task.loss(logits, {'label': targets}, {}, None)
  # Image 1 counts classes 0 (positive) and 1 (negative) only.
  expected = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-1.0))) / 2
  np.testing.assert_allclose(aux['losses'][0], expected, rtol=1e-6)
  assert not aux['counted'][1]
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.1, 0.2]])
  target = np.array([[1, -1], [-1, 0], [1, 1]], np.int8)
  assert task.eval_summary({'scores': scores, 'targets': target}) == {
      'mAP': voc.mean_average_precision(scores, target)[0]
  }


def test_voc07_finetuning_and_pruning_during_transfer(
    labels_run, data_dir, tmp_path
):
  voc_fields = {
      'data.image_size': 32,
      'data.shuffle_buffer': 64,
      'model.width': 0.125,
      'train.num_epochs': 2.0,
      'train.batch_size': 16,
      'train.eval_batch_size': 16,
      'log_every_steps': 2,
      # Only the end-of-round checkpoints, written synchronously: the
      # background writes of in-round ones fail under mock_data's patches.
      'checkpoint_every_steps': 0,
  }
  with tfds.testing.mock_data(num_examples=48):
    config = load_config('quick', 'voc07')
    config.update_from_flattened_dict(
        {**voc_fields, 'source.workdir': str(labels_run)}
    )
    rows = retrain.run(config, str(tmp_path / 'finetune'))
    assert [r['round'] for r in rows] == [0, 1, 2]
    assert all(0 < r['test_mAP'] <= 1 for r in rows)
    masks = round_masks(labels_run)
    for r, mask in round_masks(tmp_path / 'finetune').items():
      for key in mask:
        if key != models.HEAD:
          jax.tree.map(np.testing.assert_array_equal, mask[key], masks[r][key])
    finetuned = _np(
        checkpoint.RunCheckpoints(str(tmp_path / 'finetune')).load_round(1)
    )
    assert finetuned['params'][models.HEAD]['kernel'].shape[-1] == 20

    config = load_config('prune_quick', 'voc07')
    config.update_from_flattened_dict(
        {
            **voc_fields,
            'pruning.num_rounds': 2,
            'init_from.workdir': str(labels_run),
        }
    )
    rows = imp.run(config, str(tmp_path / 'prune'))
    source = report.load_run(str(labels_run))
    # The same fractions of weights left as the network pruned before.
    assert [r['fraction_left'] for r in rows] == [
        float(r['fraction_left']) for r in source.rows
    ]
    assert all(0 < r['test_mAP'] <= 1 for r in rows)


def test_voc07_svms_on_frozen_features(labels_run, data_dir, tmp_path):
  with tfds.testing.mock_data(num_examples=48):
    config = load_config('voc07', 'linear_eval')
    config.model = load_config('quick', 'labels').model
    config.update_from_flattened_dict(
        {
            'model.width': 0.125,
            'data.image_size': 32,
            'data.grayscale': True,
            'train.eval_batch_size': 16,
            'source.rounds': (0, 2),
            'source.workdir': str(labels_run),
            # The quick ResNet-10 has no res5 block 'layer4_2': its globally
            # pooled features.
            'linear.layer': '',
            'linear.pool': (),
        }
    )
    rows = linear.run(config, str(tmp_path))
  assert [r['round'] for r in rows] == [0, 2]
  for row in rows:
    assert 0 < row['test_mAP'] <= 1
    aps = [row[f'test_AP_{c:02d}'] for c in range(20)]
    np.testing.assert_allclose(np.nanmean(aps), row['test_mAP'])
