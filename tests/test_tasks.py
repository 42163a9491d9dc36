"""The self- and semi-supervised objectives against hand-computed cases."""

import math
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sslprune_jax import models
from sslprune_jax import parallel
from sslprune_jax import pruning
from sslprune_jax import tasks
from sslprune_jax import train
from sslprune_jax.tasks import exemplar
from sslprune_jax.tasks import npid

from test_train import init_variables


class TinyNet(nn.Module):
  """Conv -> pool -> head; no batch norm, so device splits do not matter."""

  outputs: int = 10

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    x = jnp.mean(nn.Conv(8, (3, 3), strides=2)(x), axis=(1, 2))
    return nn.Dense(self.outputs, name='classifier')(x)


def _state(model, task, seed=0, size=8):
  tx = train.create_optimizer(
      ml_collections.ConfigDict(
          dict(weight_decay=1e-4, momentum=0.9, nesterov=False)
      ),
      optax.constant_schedule(0.1),
  )
  variables = init_variables(model, jax.random.PRNGKey(seed), (size, size, 1))
  return train.create_train_state(
      model,
      variables,
      pruning.init_mask(variables['params']),
      tx,
      jax.random.PRNGKey(seed + 1),
      task.init_state(jax.random.PRNGKey(3)),
  )


def _run_step(task, state, batch, devices):
  mesh = parallel.create_mesh(devices)
  step = train.make_train_step(task, mesh)
  return step(
      parallel.replicate(state, mesh), parallel.shard_batch(batch, mesh)
  )


def _info(**kw):
  """What `get_task` reads of a `data.DatasetInfo`."""
  return types.SimpleNamespace(
      **{'num_classes': 10, 'index_range': (0, 64), **kw}
  )


def test_get_task_fills_dataset_fields_and_refuses_bad_ones():
  config = ml_collections.ConfigDict(dict(name='npid', num_negatives=7))
  task = tasks.get_task(config, _info(index_range=(100, 200)))
  assert (task.bank_size, task.num_classes, task.num_negatives) == (100, 10, 7)
  with pytest.raises(ValueError, match='Unknown fields'):
    tasks.get_task(ml_collections.ConfigDict(dict(name='rotnet', margin=1)))
  with pytest.raises(ValueError, match='Unknown task'):
    tasks.get_task('jigsaw')
  with pytest.raises(ValueError, match='copies'):
    tasks.get_task(ml_collections.ConfigDict(dict(name='exemplar', copies=1)))


# Exemplar.


def test_triplet_loss_by_hand():
  anchors = jnp.array([[1.0, 0.0]])
  positives = jnp.array([[[0.0, 1.0]]])  # |a - p| = sqrt(2)
  candidates = jnp.array([[1.0, 0.0], [-1.0, 0.0], [0.6, 0.8]])
  negative = jnp.array([[True, True, False]])  # the third is not
  # |a - n| = 0 and 2: hinges max(0, 0.5 + 1.41421 - 0) = 1.91421 and
  # max(0, 0.5 + 1.41421 - 2) = 0; their mean is 0.95711.
  losses = exemplar.triplet_losses(
      anchors, positives, candidates, negative, margin=0.5
  )
  np.testing.assert_allclose(losses, [(0.5 + math.sqrt(2)) / 2], rtol=1e-6)
  # With a margin of 1, the far negative counts too: 2.41421 + 0.41421.
  losses = exemplar.triplet_losses(
      anchors, positives, candidates, negative, margin=1.0
  )
  np.testing.assert_allclose(
      losses, [(2 + 2 * math.sqrt(2) - 2) / 2], rtol=1e-6
  )


def test_exemplar_copies_are_identity_or_mirror_without_randomness():
  task = exemplar.Exemplar(copies=4, min_scale=1.0, max_degrees=0.0, jitter=0.0)
  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.normal(size=(6, 6, 3)).astype(np.float32))
  for seed in range(4):
    out = np.asarray(task.augment(image, jax.random.PRNGKey(seed)))
    if not np.allclose(out, image, atol=1e-5):
      np.testing.assert_allclose(out, image[:, ::-1], atol=1e-5)


def test_exemplar_augmentations_differ_between_copies(num_devices):
  task = exemplar.Exemplar(copies=3)
  images = np.random.default_rng(0).normal(size=(8, 8, 8, 1)).astype(np.float32)
  mesh = parallel.create_mesh()
  prepare = jax.jit(
      jax.shard_map(
          lambda b: task.prepare(b, jax.random.PRNGKey(1)),
          mesh=mesh,
          in_specs=parallel.P(parallel.AXIS),
          out_specs=parallel.P(parallel.AXIS),
      )
  )
  out = np.asarray(
      prepare(parallel.shard_batch({'image': images}, mesh))['image']
  )
  assert out.shape == (24, 8, 8, 1)  # 3 copies of 1 image per device
  assert not np.allclose(out[0], out[8])


def test_exemplar_negatives_come_from_the_global_batch(num_devices):
  """8 devices x 2 images give the same step as 1 device x 16 images."""
  # Copies depend on each device's key; with the random transformations
  # turned off and mirror-symmetric images, they do not.
  task = exemplar.Exemplar(
      copies=2, embedding_dim=4, min_scale=1.0, max_degrees=0.0, jitter=0.0
  )
  model = TinyNet(outputs=4)
  state = _state(model, task)
  images = (
      np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype(np.float32)
  )
  batch = {
      'image': (images + images[:, :, ::-1]) / 2,
      'label': np.zeros(16, np.int32),
  }
  many, m_many = _run_step(task, state, batch, jax.devices())
  one, m_one = _run_step(task, state, batch, jax.devices()[:1])
  np.testing.assert_allclose(
      float(m_many.loss.compute()), float(m_one.loss.compute()), rtol=1e-5
  )
  assert float(m_one.loss.compute()) > 0
  for a, b in zip(jax.tree.leaves(many.params), jax.tree.leaves(one.params)):
    np.testing.assert_allclose(
        np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6
    )
  assert int(m_many.loss.count) == 32


# NPID.


def test_nce_loss_by_hand():
  # N = 10, K = 2, Z = 5: P = score / 5, K * P_n = 0.2.
  # Positive score 5: P = 1, h = 1 / 1.2, -log h = log 1.2.
  # Noise scores 5 and 0.5: P = 1 and 0.1, 1 - h = 0.2 / 1.2 and 0.2 / 0.3.
  losses, h_pos = npid.nce_losses(
      jnp.array([5.0]), jnp.array([[5.0, 0.5]]), jnp.array(5.0), bank_size=10
  )
  expected = math.log(1.2) - math.log(0.2 / 1.2) - math.log(0.2 / 0.3)
  np.testing.assert_allclose(losses, [expected], rtol=1e-5)
  np.testing.assert_allclose(h_pos, [1 / 1.2], rtol=1e-5)


def test_memory_bank_update_by_hand():
  bank = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
  new = npid.update_bank(
      bank, jnp.array([0, 2]), jnp.array([[0.0, 1.0], [0.6, 0.8]]), momentum=0.5
  )
  np.testing.assert_allclose(
      new, [[0.5**0.5, 0.5**0.5], [0.0, 1.0], [0.6, 0.8]], rtol=1e-6
  )


def test_knn_by_hand():
  bank = jnp.array(
      [[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0], [0.96, 0.28]]
  )
  labels = jnp.array([0, 1, 1, 2, -1])  # the last entry was never seen
  queries = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  # Query 0, k=2: entry 0 (sim 1, class 0) and entry 1 (sim 0.8, class 1);
  # entry 4 (0.96) is unseen. Class 0 wins with exp(1/T) > exp(0.8/T).
  # k=3 adds entry 2 (sim 0, class 1): exp(0.8/T) + 1 < exp(1/T) still.
  # With T=10: exp(0.1) = 1.105 < exp(0.08) + exp(0) = 2.083: class 1.
  predict = lambda k, t: np.asarray(
      npid.knn_predict(queries, bank, labels, num_classes=3, k=k, temperature=t)
  )
  np.testing.assert_array_equal(predict(2, 0.07), [0, 1])
  np.testing.assert_array_equal(predict(3, 0.07), [0, 1])
  np.testing.assert_array_equal(predict(3, 10.0), [1, 1])
  # k=1 is nearest neighbour.
  np.testing.assert_array_equal(predict(1, 0.07), [0, 1])


def test_npid_bank_is_identical_on_every_device_after_a_step(num_devices):
  task = tasks.get_task(
      ml_collections.ConfigDict(dict(name='npid', dim=8, num_negatives=16)),
      _info(index_range=(0, 40)),
  )
  model = TinyNet(outputs=8)
  state = _state(model, task)
  rng = np.random.default_rng(0)
  index = rng.permutation(40)[:16].astype(np.int32)
  batch = {
      'image': rng.normal(size=(16, 8, 8, 1)).astype(np.float32),
      'label': rng.integers(0, 10, size=16).astype(np.int32),
      'index': index,
  }
  new, metrics = _run_step(task, state, batch, jax.devices())
  shards = [
      np.asarray(s.data) for s in new.task_state['bank'].addressable_shards
  ]
  assert len(shards) == num_devices
  for s in shards[1:]:
    np.testing.assert_array_equal(s, shards[0])
  # Every entry of the global batch moved as the update rule says; the
  # others did not.
  v = model.apply({'params': state.params}, batch['image'])
  v = v / np.linalg.norm(v, axis=1, keepdims=True)
  old = np.asarray(state.task_state['bank'])
  expected = old.copy()
  mixed = 0.5 * old[index] + 0.5 * np.asarray(v)
  expected[index] = mixed / np.linalg.norm(mixed, axis=1, keepdims=True)
  np.testing.assert_allclose(shards[0], expected, rtol=1e-4, atol=1e-5)
  labels = np.full(40, -1)
  labels[index] = batch['label']
  np.testing.assert_array_equal(new.task_state['labels'], labels)
  z = float(new.task_state['z'])
  assert z > 0
  # A second step on the same images: momentum 0.5 towards the new features;
  # Z was estimated once and is kept.
  again, _ = _run_step(task, new, batch, jax.devices())
  v2 = model.apply({'params': new.params}, batch['image'])
  v2 = v2 / np.linalg.norm(v2, axis=1, keepdims=True)
  mixed = 0.5 * expected[index] + 0.5 * np.asarray(v2)
  expected[index] = mixed / np.linalg.norm(mixed, axis=1, keepdims=True)
  for shard in again.task_state['bank'].addressable_shards:
    np.testing.assert_allclose(
        np.asarray(shard.data), expected, rtol=1e-4, atol=1e-5
    )
  assert float(again.task_state['z']) == z
  assert np.isfinite(float(metrics.loss.compute()))


# S4L and few labels.


def test_s4l_loss_is_the_sum_of_its_parts():
  task = tasks.get_task(
      ml_collections.ConfigDict(dict(name='s4l', rotation_weight=0.7)),
      _info(num_classes=3),
  )
  assert task.num_outputs(3) == 7
  rng = np.random.default_rng(0)
  images = rng.normal(size=(4, 5, 5, 1)).astype(np.float32)
  labels = np.array([2, 0, 1, 1], np.int32)
  labelled = np.array([True, False, True, False])
  batch = task.prepare(
      {
          'image': jnp.asarray(images),
          'label': jnp.asarray(labels),
          'labelled': jnp.asarray(labelled),
      },
      None,
  )
  assert batch['image'].shape == (16, 5, 5, 1)
  outputs = jnp.asarray(rng.normal(size=(16, 7)).astype(np.float32))
  loss, _ = task.loss(outputs, batch, {}, None)
  # By hand: class cross-entropy on every rotated copy of the labelled
  # images 0 and 2 (rotation k of image i on row 4k + i), rotation
  # cross-entropy on all 16 rows (as many labelled as unlabelled images, so
  # S4L's mean of the two streams' means is the mean over all rows).
  log_softmax = lambda x: x - np.log(np.sum(np.exp(x), -1, keepdims=True))
  out = np.asarray(outputs)
  supervised = -np.mean(
      [
          log_softmax(out[4 * k + i, :3])[labels[i]]
          for k in range(4)
          for i in (0, 2)
      ]
  )
  rotation = -np.mean([log_softmax(out[i, 3:])[i // 4] for i in range(16)])
  np.testing.assert_allclose(
      float(loss), supervised + 0.7 * rotation, rtol=1e-5
  )
  parts = task.loss_parts(outputs, batch)
  np.testing.assert_allclose(
      [float(p) for p in parts], [supervised, rotation], rtol=1e-5
  )


def test_few_labels_is_labels_on_the_labelled_stream():
  task = tasks.get_task('few_labels')
  assert task.stream == 'labelled'
  assert tasks.get_task('labels').stream == 'all'
  assert tasks.get_task('s4l', _info()).stream == 'mixed'


def test_replacing_the_head_keeps_the_trunk_and_its_mask():
  config = {'name': 'resnet_cifar', 'depth': 10, 'width': 0.125}
  rotation_net = models.create_model(config, 4)
  variables = init_variables(rotation_net, jax.random.PRNGKey(0), (8, 8, 1))
  prunable = pruning.prunable_tree(variables['params'])
  mask = pruning.magnitude_prune(
      variables['params'], pruning.init_mask(variables['params']), prunable, 0.5
  )
  model, new_vars, new_mask = models.replace_head(
      config, variables, mask, 10, jax.random.PRNGKey(1), (8, 8, 1)
  )
  head = new_vars['params'][models.HEAD]
  assert head['kernel'].shape[-1] == 10
  assert all(np.all(m) for m in jax.tree.leaves(new_mask[models.HEAD]))
  for name in variables['params']:
    if name != models.HEAD:
      jax.tree.map(np.testing.assert_array_equal, new_mask[name], mask[name])
  # The trunk computes the same features.
  trunk = models.create_model(config, None)
  images = np.random.default_rng(0).normal(size=(2, 8, 8, 1))
  features = jax.jit(
      lambda v, m: trunk.apply(
          {
              'params': pruning.apply_mask(v['params'], m),
              'batch_stats': v['batch_stats'],
          },
          images,
          train=False,
      )
  )
  np.testing.assert_array_equal(
      features(new_vars, new_mask), features(variables, mask)
  )
  logits = jax.eval_shape(
      lambda v: model.apply(v, images, train=False), new_vars
  )
  assert logits.shape == (2, 10)


def test_npid_exact_softmax_by_hand():
  """num_negatives=0: cross-entropy over the whole bank (lemniscate's
  LinearAverage), against numpy."""
  task = tasks.get_task(
      ml_collections.ConfigDict(
          dict(name='npid', dim=3, num_negatives=0, temperature=0.5)
      ),
      _info(index_range=(10, 14)),
  )
  bank = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.6, 0.8, 0]], np.float32)
  state = {
      'bank': jnp.asarray(bank),
      'labels': jnp.zeros(4, jnp.int32),
      'z': jnp.array(-1.0),
  }
  outputs = jnp.array([[2.0, 0.0, 0.0], [0.0, 3.0, 4.0]])
  batch = {'index': jnp.array([13, 11]), 'label': jnp.array([0, 1])}
  # No collective on this path: called outside any mapped axis.
  loss, aux = task.loss(outputs, batch, state, jax.random.key(0))
  v = np.array([[1, 0, 0], [0, 0.6, 0.8]])
  logits = v @ bank.T / 0.5
  log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  expected = -np.array([log_p[0, 3], log_p[1, 1]])
  np.testing.assert_allclose(aux['losses'], expected, rtol=1e-5)
  np.testing.assert_allclose(loss, expected.mean(), rtol=1e-5)
  np.testing.assert_allclose(aux['h_pos'], np.exp(-expected), rtol=1e-5)
  with pytest.raises(ValueError, match='num_negatives must be >= 0'):
    tasks.get_task(
        ml_collections.ConfigDict(dict(name='npid', num_negatives=-1)), _info()
    )
