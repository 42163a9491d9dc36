"""Linear probes against Goyal et al.'s benchmark settings, by hand.

The reference is fair_self_supervision_benchmark: its ResNet-50 linear
classifier configs (configs/legacy_tasks/imagenet_linear_tune/
resnet50_*.yaml, configs/benchmark_tasks/image_classification/places205/
resnet50_*.yaml), its res5 feature blob for the VOC07 SVMs
(res5_2_branch2c_bn_s1k6_resize) and Caffe2's MomentumSGDUpdate.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslprune_jax import config_lib
from sslprune_jax import models
from sslprune_jax import parallel
from sslprune_jax.evaluation import classifier
from sslprune_jax.evaluation import features
from sslprune_jax.evaluation import linear
from sslprune_jax.evaluation import svm


def test_benchmark_variants_have_the_benchmarks_settings():
  for arg in ('', 'places', 'voc07'):
    config = config_lib.load('linear_eval', arg)
    lin = config.linear
    assert (config.model.name, config.model.depth) == ('resnet', 50)
    assert (lin.layer, tuple(lin.pool)) == ('layer4_2', (6, 1))
    # SOLVER: BASE_LR 0.01, MOMENTUM 0.9, NESTEROV, WEIGHT_DECAY 1e-4,
    # STEP_SIZES 3 x 40000 (cumulative), NUM_ITERATIONS 140000, GAMMA 0.1;
    # TRAIN.BATCH_SIZE 256; FC_INIT_STD 0.01; BN_NO_SCALE_SHIFT.
    assert (
        lin.learning_rate,
        lin.momentum,
        lin.nesterov,
        lin.weight_decay,
    ) == (0.01, 0.9, True, 1e-4)
    assert (
        lin.num_steps,
        tuple(lin.decay_steps),
        lin.decay_factor,
        lin.batch_size,
    ) == (140_000, (40_000, 80_000, 120_000), 0.1, 256)
    assert (lin.norm, lin.bn_momentum, lin.init_std) == (
        'batch_norm',
        0.9,
        0.01,
    )
    assert tuple(lin.svm_costs) == svm.BENCHMARK_COSTS
    assert lin.svm_folds == 3
    assert not linear._linear_problems(lin)
  for arg in ('quick', 'cifar10'):
    lin = config_lib.load('linear_eval', arg).linear
    assert (lin.layer, tuple(lin.pool), lin.num_steps) == ('', (), 0)
    assert not linear._linear_problems(lin)


def test_bad_linear_fields_are_explained():
  lin = config_lib.load('linear_eval', '').linear
  lin.layer = ''
  lin.norm = 'layer_norm'
  lin.schedule = 'cosine'
  problems = '\n'.join(linear._linear_problems(lin))
  assert 'linear.pool needs a spatial feature map' in problems
  assert "Unknown linear.norm 'layer_norm'" in problems
  assert 'linear.num_steps needs linear.schedule="step"' in problems


def test_pooling_is_6x6_windows_at_stride_1_flattened_channel_major():
  x = jnp.arange(2 * 7 * 7 * 3, dtype=jnp.float32).reshape(2, 7, 7, 3)
  out = np.asarray(features.pool_features(x, (6, 1)))
  assert out.shape == (2, 3 * 2 * 2)
  # Caffe2's NCHW flattening: index c * 4 + i * 2 + j is channel c, window
  # (i, j); window (1, 0) covers rows 1-6, columns 0-5.
  expected = np.asarray(x)[1, 1:7, 0:6, 2].mean()
  np.testing.assert_allclose(out[1, 2 * 4 + 1 * 2 + 0], expected, rtol=1e-6)
  np.testing.assert_allclose(
      np.asarray(features.pool_features(x, ())),
      np.asarray(x).mean(axis=(1, 2)),
      rtol=1e-6,
  )
  with pytest.raises(ValueError, match='larger than'):
    features.pool_features(x[:, :5, :5], (6, 1))


def test_res5_is_resnet50s_last_block():
  config = config_lib.load('linear_eval', 'voc07')
  model = models.create_model(config.model, None)
  shapes = jax.eval_shape(
      lambda: model.init(
          jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False
      )
  )
  blocks = sorted(k for k in shapes['params'] if k.startswith('layer4_'))
  assert blocks[-1] == config.linear.layer == 'layer4_2'


def _random_variables(model):
  """Random weights, unit batch-norm statistics (quicker than `init`)."""
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(
      lambda: model.init(
          jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
      )
  )

  def fill(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if 'var' in name or 'scale' in name:
      return np.ones(leaf.shape, np.float32)
    if 'kernel' in name:
      return (0.1 * rng.normal(size=leaf.shape)).astype(np.float32)
    return np.zeros(leaf.shape, np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def test_feature_fn_pools_a_blocks_output_in_windows():
  # A ResNet-10 compiles in seconds; at 224 pixels its last block is 7 x 7,
  # as ResNet-50's res5.
  config = config_lib.load('linear_eval', 'voc07')
  config.model.update(dict(depth=10, width=0.125))
  mesh = parallel.create_mesh()
  features_of = features.feature_fn(config.model, 'layer4_0', mesh, (6, 1))
  model = models.create_model(config.model, None)
  images = jnp.asarray(
      np.random.default_rng(0).random((8, 224, 224, 3)), jnp.float32
  )
  variables = _random_variables(model)
  out = parallel.to_host(
      features_of(
          parallel.replicate(variables, mesh),
          parallel.shard_batch(images, mesh),
      )
  )
  assert out.shape == (8, 64 * 2 * 2) and np.abs(out).max() > 0
  _, state = model.apply(
      variables,
      images,
      train=False,
      capture_intermediates=True,
      mutable=['intermediates'],
  )
  last = np.asarray(state['intermediates']['layer4_0']['__call__'][0])
  assert last.shape[1:3] == (7, 7)
  # Channel 5, window (1, 1): rows and columns 1-6.
  np.testing.assert_allclose(
      out[3, 5 * 4 + 3], last[3, 1:, 1:, 5].mean(), rtol=1e-4, atol=1e-6
  )


def test_schedule_is_in_iterations_as_the_benchmark():
  lin = config_lib.load('linear_eval', '').linear
  steps, lr = classifier.learning_rate_schedule(lin, steps_per_epoch=5004)
  assert steps == 140_000
  # lr_utils.py: iteration t (from 1) is decayed once for each cumulative
  # step size below t; optax counts from 0.
  for count, expected in (
      (0, 0.01),
      (39_999, 0.01),
      (40_000, 1e-3),
      (80_000, 1e-4),
      (120_000, 1e-5),
      (139_999, 1e-5),
  ):
    assert float(lr(count)) == pytest.approx(expected)


def test_sgd_is_caffe2_momentum_sgd_update():
  lin = config_lib.load('linear_eval', '').linear
  lin.update(dict(num_steps=6, decay_steps=(3,), learning_rate=0.5))
  _, lr = classifier.learning_rate_schedule(lin, steps_per_epoch=1)
  tx = classifier.optimizer(lin, lr)
  w = jnp.array([1.0, -2.0])
  grads = [jnp.array([0.3, -0.1]) * (k + 1) for k in range(6)]
  state = tx.init(w)
  # model_builder.py: g += wd * w; MomentumSGDUpdate with nesterov:
  # m' = mu m + lr g; w -= (1 + mu) m' - mu m.
  w_ref, m, mu = np.array(w), np.zeros(2), 0.9
  for k, g in enumerate(grads):
    updates, state = tx.update(g, state, w)
    w = w + updates
    g_ref = np.asarray(g) + 1e-4 * w_ref
    rate = 0.5 if k < 3 else 0.05
    m_new = mu * m + rate * g_ref
    w_ref = w_ref - ((1 + mu) * m_new - mu * m)
    m = m_new
    np.testing.assert_allclose(np.asarray(w), w_ref, rtol=1e-5)


def test_batch_norm_head_trains_and_keeps_running_averages():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(4, 12)) * 3
  labels = rng.integers(0, 4, size=512)
  features = (centres[labels] + rng.normal(size=(512, 12)) * 0.3 + 5.0).astype(
      np.float32
  )
  lin = config_lib.load('linear_eval', '').linear
  lin.update(
      dict(num_steps=200, decay_steps=(150,), batch_size=64, learning_rate=0.1)
  )
  params, stats = classifier.train_classifier(
      features[:400], labels[:400], 4, lin, seed=0
  )
  assert classifier.accuracy(params, stats, features[400:], labels[400:]) == 1.0
  # 200 updates at momentum 0.9 forget the start (mean 0, variance 1).
  np.testing.assert_allclose(stats['mean'], features[:400].mean(0), atol=0.3)
  np.testing.assert_allclose(
      stats['scale'], 1 / features[:400].std(0), rtol=0.2
  )
