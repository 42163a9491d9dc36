"""Tests for the model zoo.

Large models are only traced with ``jax.eval_shape`` so that no parameter is
actually computed; real forward passes use thin networks.
"""

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sslprune_jax import models
from sslprune_jax.models.alexnet import adaptive_avg_pool

from test_train import init_variables

RNGS = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}


def make_config(name, depth=18, width=1.0, **kwargs):
  """Builds a model ConfigDict.

  Args:
    name: model name.
    depth: model depth.
    width: width multiplier.
    **kwargs: further fields.

  Returns:
    The ConfigDict.
  """
  return ml_collections.ConfigDict(
      dict(name=name, depth=depth, width=width, **kwargs)
  )


def abstract_variables(model, shape):
  """Returns the variable shapes of ``model`` without computing them.

  Args:
    model: unbound flax Module.
    shape: input shape (NHWC).

  Returns:
    Pytree of ``jax.ShapeDtypeStruct``.
  """
  return jax.eval_shape(
      lambda x: model.init(RNGS, x, train=False),
      jax.ShapeDtypeStruct(shape, jnp.float32),
  )


def abstract_output(model, shape, train=False):
  """Returns the output shape/dtype of ``model`` without computing it.

  Args:
    model: unbound flax Module.
    shape: input shape (NHWC).
    train: train flag.

  Returns:
    ``jax.ShapeDtypeStruct`` of the output.
  """

  def forward(x):
    variables = model.init(RNGS, x, train=False)
    if train:
      out, _ = model.apply(
          variables,
          x,
          train=True,
          rngs={'dropout': RNGS['dropout']},
          mutable=['batch_stats'],
      )
      return out
    return model.apply(variables, x, train=False)

  return jax.eval_shape(forward, jax.ShapeDtypeStruct(shape, jnp.float32))


def num_params(model, shape):
  """Counts trainable parameters (batch-norm statistics excluded).

  Args:
    model: unbound flax Module.
    shape: input shape (NHWC).

  Returns:
    Number of scalars in the 'params' collection.
  """
  params = abstract_variables(model, shape)['params']
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def params_leaf_paths(params, min_ndim=0):
  """Lists the key paths of the leaves of a params tree.

  Args:
    params: nested dict of arrays or ShapeDtypeStructs.
    min_ndim: only keep leaves with at least this many dimensions.

  Returns:
    List of tuples of keys.
  """
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return [
      tuple(entry.key for entry in path)
      for path, leaf in leaves
      if leaf.ndim >= min_ndim
  ]


def random_variables(model, shape, seed=0, statistics=False):
  """Builds variables of the right structure without running ``init``.

  Compiling ``model.init`` costs seconds on CPU, so tests that only need
  some valid variables fill the abstract tree from numpy instead: normal
  params of unit gain (outputs of the order of 1 at any depth), zero
  running means and unit running variances.

  Args:
    model: unbound flax Module.
    shape: input shape (NHWC).
    seed: numpy seed.
    statistics: running means and variances away from 0 and 1 too, for
      tests in which they must show.

  Returns:
    A variables dict usable with ``model.apply``.
  """
  rng = np.random.RandomState(seed)
  abstract = abstract_variables(model, shape)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'mean':
      mean = 0.2 * rng.randn(*leaf.shape) if statistics else 0.0
      return jnp.asarray(np.broadcast_to(mean, leaf.shape), leaf.dtype)
    if name == 'var':
      spread = 0.5 * np.abs(rng.randn(*leaf.shape)) if statistics else 0.0
      return jnp.asarray(np.broadcast_to(1.0 + spread, leaf.shape), leaf.dtype)
    fan_in = max(1, math.prod(leaf.shape[:-1]))
    return jnp.asarray(rng.randn(*leaf.shape) / np.sqrt(fan_in), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


# --- parameter counts --------------------------------------------------------


def test_resnet50_imagenet_param_count():
  model = models.create_model(make_config('resnet', depth=50), 1000)
  assert num_params(model, (1, 224, 224, 3)) == 25_557_032


def test_resnet18_cifar_param_count():
  model = models.create_model(make_config('resnet_cifar', depth=18), 10)
  assert num_params(model, (1, 32, 32, 3)) == 11_173_962


def test_alexnet_param_count():
  model = models.create_model(make_config('alexnet'), 1000)
  assert num_params(model, (1, 224, 224, 3)) == 61_100_840


def test_vgg19_cifar_param_count():
  # (in, out) channels of the 16 convs of VGG-19.
  convs = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256)]
  convs += [(256, 256)] * 3 + [(256, 512)] + [(512, 512)] * 7
  # 3x3 kernels: 1,728 + 36,864 + 73,728 + 147,456 + 294,912
  #   + 3 * 589,824 + 1,179,648 + 7 * 2,359,296 = 20,018,880.
  kernels = sum(9 * cin * cout for cin, cout in convs)
  assert kernels == 20_018_880
  # Per output channel: conv bias + BN scale + BN bias. Output channels sum
  # to 2 * 64 + 2 * 128 + 4 * 256 + 8 * 512 = 5,504, so 3 * 5,504 = 16,512.
  per_channel = 3 * sum(cout for _, cout in convs)
  assert per_channel == 16_512
  # Classifier: 512 * 10 weights + 10 biases = 5,130.
  classifier = 512 * 10 + 10
  expected = kernels + per_channel + classifier
  assert expected == 20_040_522
  # Without the (redundant, but present in open_lth) conv biases this would
  # be 20,040,522 - 5,504 = 20,035,018.
  model = models.create_model(make_config('vgg', depth=19), 10)
  assert num_params(model, (1, 32, 32, 3)) == expected


# --- output shapes -----------------------------------------------------------

SMALL_CONFIGS = [
    make_config('resnet_cifar', depth=18, width=0.25),
    make_config('resnet', depth=50, width=0.25),
    make_config('vgg', depth=11, width=0.25),
    make_config('alexnet', width=0.25),
    make_config('alexnet', width=0.25, batch_norm=True),
]
CONFIG_IDS = ['resnet_cifar18', 'resnet50', 'vgg11', 'alexnet', 'alexnet_bn']


@pytest.mark.parametrize('config', SMALL_CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize('shape', [(2, 28, 28, 1), (2, 32, 32, 3)])
@pytest.mark.parametrize('train', [False, True])
def test_logits_shape_small_inputs(config, shape, train):
  model = models.create_model(config, 10)
  out = abstract_output(model, shape, train=train)
  assert out.shape == (2, 10)
  assert out.dtype == jnp.float32


@pytest.mark.parametrize(
    'name,depth',
    [
        ('resnet', 18),
        ('resnet', 50),
        ('resnet_cifar', 18),
        ('vgg', 16),
        ('alexnet', 0),
    ],
)
def test_logits_shape_imagenet_input(name, depth):
  model = models.create_model(make_config(name, depth=depth), 1000)
  assert abstract_output(model, (2, 224, 224, 3)).shape == (2, 1000)


@pytest.mark.parametrize(
    'name,depth,width,dim',
    [
        ('resnet_cifar', 18, 1.0, 512),
        ('resnet_cifar', 18, 0.5, 256),
        ('resnet', 50, 1.0, 2048),
        ('vgg', 19, 1.0, 512),
        ('vgg', 19, 0.25, 128),
        ('alexnet', 0, 1.0, 6 * 6 * 256),
    ],
)
@pytest.mark.parametrize(
    'shape', [(2, 28, 28, 1), (2, 32, 32, 3), (2, 224, 224, 3)]
)
def test_features_mode(name, depth, width, dim, shape):
  model = models.create_model(make_config(name, depth=depth, width=width), None)
  assert abstract_output(model, shape).shape == (2, dim)
  params = abstract_variables(model, shape)['params']
  assert 'classifier' not in params


@pytest.mark.parametrize(
    'name,depth',
    [('resnet_cifar', 18), ('resnet', 50), ('vgg', 19), ('alexnet', 0)],
)
def test_width_multiplier_shrinks_params(name, depth):
  shape = (1, 32, 32, 3)
  full = num_params(
      models.create_model(make_config(name, depth=depth, width=1.0), 10), shape
  )
  half = num_params(
      models.create_model(make_config(name, depth=depth, width=0.5), 10), shape
  )
  assert half < full / 2


def test_tiny_width_keeps_at_least_one_channel():
  model = models.create_model(make_config('vgg', depth=11, width=1e-3), 10)
  params = abstract_variables(model, (1, 32, 32, 3))['params']
  assert params['conv0']['kernel'].shape == (3, 3, 3, 1)


def test_resnet10():
  model = models.create_model(make_config('resnet_cifar', depth=10), 10)
  assert abstract_output(model, (2, 32, 32, 3)).shape == (2, 10)
  params = abstract_variables(model, (1, 32, 32, 3))['params']
  assert {'layer1_0', 'layer2_0', 'layer3_0', 'layer4_0'} <= set(params)
  assert 'layer1_1' not in params


def test_resnet_stems():
  cifar = abstract_variables(
      models.create_model(make_config('resnet_cifar'), 10), (1, 32, 32, 3)
  )
  imagenet = abstract_variables(
      models.create_model(make_config('resnet'), 10), (1, 32, 32, 3)
  )
  assert cifar['params']['conv1']['kernel'].shape == (3, 3, 3, 64)
  assert imagenet['params']['conv1']['kernel'].shape == (7, 7, 3, 64)


def test_bottleneck_shortcuts():
  params = abstract_variables(
      models.create_model(make_config('resnet', depth=50), 10), (1, 64, 64, 3)
  )['params']
  # The first block of every stage changes the channel count (64 -> 256 in
  # stage 1), so it projects; the other blocks use the identity.
  for stage in range(1, 5):
    assert 'downsample_conv' in params[f'layer{stage}_0']
    assert 'downsample_conv' not in params[f'layer{stage}_1']
  # ResNet v1.5: the stride sits on the 3x3 conv.
  assert params['layer2_0']['conv2']['kernel'].shape == (3, 3, 128, 128)
  assert all(
      'bias' not in layer
      for name, layer in params['layer2_0'].items()
      if 'conv' in name
  )


def test_unknown_name_raises():
  with pytest.raises(ValueError, match='resnet_cifar'):
    models.create_model(make_config('mlp'), 10)


@pytest.mark.parametrize('name', ['resnet', 'resnet_cifar', 'vgg'])
def test_unknown_depth_raises(name):
  with pytest.raises(ValueError, match='valid depths'):
    models.create_model(make_config(name, depth=7), 10)


def test_unknown_dtype_raises():
  with pytest.raises(ValueError, match='bfloat16'):
    models.create_model(make_config('vgg', depth=11, dtype='int8'), 10)


def test_models_list():
  assert models.MODELS == ['resnet_cifar', 'resnet', 'vgg', 'alexnet']


def test_bfloat16_keeps_float32_params_and_logits():
  model = models.create_model(
      make_config('resnet_cifar', depth=10, width=0.25, dtype='bfloat16'), 10
  )
  variables = abstract_variables(model, (2, 32, 32, 3))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  assert abstract_output(model, (2, 32, 32, 3)).dtype == jnp.float32
  features = models.create_model(
      make_config('resnet_cifar', depth=10, width=0.25, dtype='bfloat16'), None
  )
  assert abstract_output(features, (2, 32, 32, 3)).dtype == jnp.bfloat16


# --- batch norm and determinism ----------------------------------------------


@pytest.mark.parametrize(
    'config',
    [
        make_config('resnet_cifar', depth=10, width=0.125),
        make_config('vgg', depth=11, width=0.125),
        make_config('alexnet', width=0.125, batch_norm=True),
    ],
    ids=['resnet', 'vgg', 'alexnet_bn'],
)
def test_batch_stats_update_in_train_mode(config):
  model = models.create_model(config, 10)
  x = np.random.default_rng(2).normal(1.0, 3.0, (4, 28, 28, 1))
  x = jnp.asarray(x, jnp.float32)
  conv_name = 'conv0' if config.name == 'vgg' else 'conv1'
  bn_name = 'bn0' if config.name == 'vgg' else 'bn1'

  # Compiled: eager, every op of the network compiles by itself.
  @jax.jit
  def evaluate(variables):
    return model.apply(variables, x, train=False)

  @jax.jit
  def train_step(variables):
    return model.apply(
        variables,
        x,
        train=True,
        rngs={'dropout': jax.random.key(3)},
        mutable=['batch_stats', 'intermediates'],
        capture_intermediates=lambda mdl, _: mdl.name == conv_name,
    )

  variables = random_variables(model, x.shape)
  assert 'batch_stats' in variables
  out_train, state = train_step(variables)
  before = jax.tree.leaves(variables['batch_stats'])
  after = jax.tree.leaves(state['batch_stats'])
  assert len(before) == len(after) > 0
  assert all(not np.allclose(b, a) for b, a in zip(before, after))
  # Momentum 0.9: the new mean is 0.9 * old (zero) + 0.1 * batch mean, so
  # the first conv's running mean must be a tenth of its batch mean.
  conv_out = state['intermediates'][conv_name]['__call__'][0]
  np.testing.assert_allclose(
      state['batch_stats'][bn_name]['mean'],
      0.1 * conv_out.mean(axis=(0, 1, 2)),
      rtol=1e-4,
      atol=1e-6,
  )

  out_a = evaluate(variables)
  out_b = evaluate(variables)
  np.testing.assert_array_equal(out_a, out_b)
  assert np.all(np.isfinite(out_a))
  # Train mode normalises with batch statistics, eval mode with the
  # (initial) running averages, so they must differ.
  assert not np.allclose(out_train, out_a)


def test_resnet_initialisation():
  model = models.create_model(
      make_config('resnet_cifar', depth=10, width=0.5), 10
  )
  variables = init_variables(model, jax.random.key(0), (32, 32, 3))
  params = variables['params']
  # Kaiming-normal on fan-out: std = sqrt(2 / (3 * 3 * 256)).
  kernel = np.asarray(params['layer4_0']['conv2']['kernel'])
  assert kernel.shape == (3, 3, 256, 256)
  np.testing.assert_allclose(kernel.std(), np.sqrt(2 / (9 * 256)), rtol=0.05)
  np.testing.assert_array_equal(params['bn1']['scale'], 1.0)
  np.testing.assert_array_equal(params['bn1']['bias'], 0.0)
  np.testing.assert_array_equal(variables['batch_stats']['bn1']['var'], 1.0)
  np.testing.assert_array_equal(params['classifier']['bias'], 0.0)


def test_alexnet_dropout_only_in_train_mode():
  model = models.create_model(make_config('alexnet', width=0.125), 10)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 32, 32, 3)))
  variables = random_variables(model, x.shape)
  assert 'batch_stats' not in variables

  @functools.partial(jax.jit, static_argnums=1)
  def forward(rng, train):
    return model.apply(variables, x, train=train, rngs={'dropout': rng})

  train_a = forward(jax.random.key(4), True)
  train_b = forward(jax.random.key(5), True)
  assert not np.allclose(train_a, train_b)
  np.testing.assert_array_equal(
      forward(jax.random.key(4), False), forward(jax.random.key(5), False)
  )


def test_alexnet_stem_choice():
  small = abstract_variables(
      models.create_model(make_config('alexnet'), 10), (1, 32, 32, 3)
  )
  large = abstract_variables(
      models.create_model(make_config('alexnet'), 10), (1, 224, 224, 3)
  )
  forced = abstract_variables(
      models.create_model(make_config('alexnet', cifar_stem=False), 10),
      (1, 63, 63, 3),
  )
  assert small['params']['conv1']['kernel'].shape == (3, 3, 3, 64)
  assert large['params']['conv1']['kernel'].shape == (11, 11, 3, 64)
  assert forced['params']['conv1']['kernel'].shape == (11, 11, 3, 64)


# --- adaptive average pooling ------------------------------------------------


def reference_adaptive_pool(x, size):
  """Loop-based PyTorch adaptive average pooling (NHWC, numpy)."""
  n, h, w, c = x.shape
  out = np.zeros((n, size, size, c), x.dtype)
  for i in range(size):
    h0, h1 = (i * h) // size, -(-((i + 1) * h) // size)
    for j in range(size):
      w0, w1 = (j * w) // size, -(-((j + 1) * w) // size)
      out[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
  return out


@pytest.mark.parametrize('hw', [(1, 1), (2, 3), (6, 6), (13, 13), (5, 8)])
def test_adaptive_avg_pool_matches_pytorch_bins(hw):
  x = np.random.RandomState(0).randn(2, *hw, 3).astype(np.float32)
  np.testing.assert_allclose(
      adaptive_avg_pool(jnp.asarray(x), 6),
      reference_adaptive_pool(x, 6),
      rtol=1e-5,
      atol=1e-6,
  )


def test_adaptive_avg_pool_divisible_case():
  x = np.random.RandomState(1).randn(1, 12, 12, 2).astype(np.float32)
  expected = x.reshape(1, 6, 2, 6, 2, 2).mean(axis=(2, 4))
  np.testing.assert_allclose(
      adaptive_avg_pool(jnp.asarray(x), 6), expected, rtol=1e-5, atol=1e-6
  )


# --- kernel order -------------------------------------------------------------


def check_kernel_order(model, shape):
  """Checks kernel_order against the params tree and returns it.

  Args:
    model: unbound flax Module.
    shape: input shape.

  Returns:
    The kernel order.
  """
  order = models.kernel_order(model, jnp.zeros(shape))
  params = abstract_variables(model, shape)['params']
  kernels = params_leaf_paths(params, min_ndim=2)
  assert len(order) == len(set(order))
  assert sorted(order) == sorted(kernels)
  return order


def test_kernel_order_resnet18():
  model = models.create_model(
      make_config('resnet_cifar', depth=18, width=0.25), 10
  )
  order = check_kernel_order(model, (1, 32, 32, 3))
  # 1 stem + 16 block convs + 3 projection shortcuts + classifier.
  assert len(order) == 21
  assert order[0] == ('conv1', 'kernel')
  assert order[-1] == ('classifier', 'kernel')
  assert order[1:4] == [
      ('layer1_0', 'conv1', 'kernel'),
      ('layer1_0', 'conv2', 'kernel'),
      ('layer1_1', 'conv1', 'kernel'),
  ]
  assert order.index(('layer2_0', 'downsample_conv', 'kernel')) == (
      order.index(('layer2_0', 'conv2', 'kernel')) + 1
  )


def test_kernel_order_resnet50():
  model = models.create_model(make_config('resnet', depth=50), 1000)
  order = check_kernel_order(model, (1, 64, 64, 3))
  # 1 stem + 16 * 3 block convs + 4 shortcuts + classifier.
  assert len(order) == 54
  assert order[0] == ('conv1', 'kernel')
  assert order[-1] == ('classifier', 'kernel')


def test_kernel_order_vgg_is_numeric_not_alphabetical():
  model = models.create_model(make_config('vgg', depth=19, width=0.125), 10)
  order = check_kernel_order(model, (1, 32, 32, 3))
  assert order == [(f'conv{i}', 'kernel') for i in range(16)] + [
      ('classifier', 'kernel')
  ]
  # The sorted flattening that jax uses would put conv10 before conv2.
  flat = params_leaf_paths(
      abstract_variables(model, (1, 32, 32, 3))['params'], min_ndim=2
  )
  assert flat != order


def test_kernel_order_alexnet():
  model = models.create_model(make_config('alexnet', batch_norm=True), 10)
  order = check_kernel_order(model, (1, 28, 28, 1))
  assert order == [(f'conv{i}', 'kernel') for i in range(1, 6)] + [
      ('fc6', 'kernel'),
      ('fc7', 'kernel'),
      ('classifier', 'kernel'),
  ]


def test_kernel_order_features_mode():
  model = models.create_model(
      make_config('resnet_cifar', depth=10, width=0.25), None
  )
  order = check_kernel_order(model, (1, 32, 32, 3))
  assert order[-1] == ('layer4_0', 'downsample_conv', 'kernel')
  assert all('classifier' not in path for path in order)


def test_kernel_order_accepts_shape_dtype_struct():
  model = models.create_model(make_config('vgg', depth=11, width=0.125), 10)
  order = models.kernel_order(
      model, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  )
  assert order[0] == ('conv0', 'kernel')


@pytest.mark.parametrize('name,depth', [('resnet_cifar', 10), ('vgg', 11)])
def test_batch_norm_scales_start_as_configured(name, depth):
  def scales(**kwargs):
    model = models.create_model(
        make_config(name, depth=depth, width=0.25, **kwargs), 10
    )
    variables = init_variables(model, jax.random.key(0), (32, 32, 3))
    leaves = jax.tree_util.tree_flatten_with_path(variables['params'])[0]
    return [
        (jax.tree_util.keystr(path), np.asarray(x))
        for path, x in leaves
        if 'bn' in jax.tree_util.keystr(path)
    ]

  # open_lth's CIFAR models: scales from U[0, 1), offsets zero.
  uniform = scales(bn_scale_init='uniform')
  values = np.concatenate([x for path, x in uniform if 'scale' in path])
  assert values.min() >= 0 and values.max() < 1 and values.std() > 0.2
  assert all(not x.any() for path, x in uniform if 'bias' in path)
  # PyTorch's default, and the default here.
  for ones in (scales(bn_scale_init='ones'), scales()):
    assert all(np.all(x == 1) for path, x in ones if 'scale' in path)
  with pytest.raises(ValueError, match='Unknown bn_scale_init'):
    scales(bn_scale_init='normal')


def test_cifar_configs_take_open_lth_batch_norm_init():
  from sslprune_jax import config_lib  # pylint: disable=import-outside-toplevel

  assert config_lib.load('labels', '').model.bn_scale_init == 'uniform'
  assert config_lib.load('labels', 'vgg19').model.bn_scale_init == 'uniform'
  assert config_lib.load('labels', 'quick').model.bn_scale_init == 'uniform'
  # ImageNet ResNet-50: torchvision's.
  assert config_lib.load('labels', 'imagenet').model.bn_scale_init == 'ones'
