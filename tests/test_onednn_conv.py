"""The oneDNN convolution computes XLA's convolution, and runs pick it well.

Its forward pass and both gradients equal `lax.conv_general_dilated`'s to
float rounding over the shapes the models use (strides, kernel sizes,
asymmetric and named padding, vmapped seeds, inside the data-parallel
step); what it does not support goes to XLA unchanged; 'auto' picks it on
the CPU only where it can be built, and a choice the machine cannot run
is refused before any compute.

Where the kernel cannot be built the tests that run it are skipped, unless
SSLPRUNE_JAX_REQUIRE_ONEDNN=1 (as in CI) makes that a failure.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from sslprune_jax import checkpoint
from sslprune_jax import imp
from sslprune_jax import kernels
from sslprune_jax import models
from sslprune_jax import parallel
from sslprune_jax import tasks
from sslprune_jax import train
from sslprune_jax import xla_options
from sslprune_jax.kernels import onednn_conv

from test_imp import tiny_config
from test_models import random_variables
from test_xla_options import _state_and_batches
from test_xla_options import assert_same_updates
from test_xla_options import one_step_each

NHWC = ('NHWC', 'HWIO', 'NHWC')


@pytest.fixture(scope='module')
def onednn():
  reason = onednn_conv.availability()
  if reason is not None:
    if os.environ.get('SSLPRUNE_JAX_REQUIRE_ONEDNN') == '1':
      pytest.fail(f'the oneDNN convolution is required here: {reason}')
    pytest.skip(reason)


def _normal(seed, *shape):
  """Standard normal float32 inputs (numpy: a jax.random draw compiles
  per shape, a second or so each on CPU)."""
  return np.random.default_rng(seed).standard_normal(shape, np.float32)


def _compare(x, w, strides, padding, dy_seed=2):
  """Forward, input and weight gradients of both implementations."""

  def forward(conv):
    return lambda x, w: conv(x, w, strides, padding, dimension_numbers=NHWC)

  y = jax.eval_shape(forward(lax.conv_general_dilated), x, w)
  dy = _normal(dy_seed, *y.shape)

  def run(conv, x, w, dy):
    y, vjp = jax.vjp(forward(conv), x, w)
    return (y, *vjp(dy))

  want = jax.jit(functools.partial(run, lax.conv_general_dilated))(x, w, dy)
  got = jax.jit(functools.partial(run, onednn_conv.conv_general_dilated))(
      x, w, dy
  )
  for name, a, b in zip(('forward', 'input_grad', 'weight_grad'), want, got):
    assert a.shape == b.shape, name
    scale = float(jnp.max(jnp.abs(a)))
    np.testing.assert_allclose(b, a, rtol=0, atol=2e-6 * scale, err_msg=name)


@pytest.mark.parametrize(
    'n,h,w,c,k,o,strides,padding',
    [
        (4, 9, 9, 5, 3, 7, (1, 1), ((1, 1), (1, 1))),  # a block's 3x3
        (4, 10, 10, 4, 3, 6, (2, 2), ((1, 1), (1, 1))),  # strided 3x3
        (4, 11, 11, 3, 1, 8, (2, 2), ((0, 0), (0, 0))),  # 1x1 downsample
        (2, 16, 16, 3, 7, 5, (2, 2), ((3, 3), (3, 3))),  # ImageNet stem
        (2, 7, 12, 3, 3, 4, (1, 2), ((0, 2), (1, 0))),  # asymmetric
        (3, 8, 8, 4, 3, 4, (1, 1), 'SAME'),
        (3, 8, 8, 4, 3, 4, (2, 2), 'SAME'),
        (3, 9, 9, 4, 3, 4, (2, 2), 'VALID'),
    ],
)
def test_matches_xla(onednn, n, h, w, c, k, o, strides, padding):
  seed = n * h + c
  x = _normal(seed, n, h, w, c)
  kernel = _normal(seed + 1, k, k, c, o)
  _compare(x, kernel, strides, padding)


def test_matches_xla_vmapped_over_seeds(onednn):
  """Several seeds' networks in one program (`jax.vmap`)."""
  x = _normal(0, 3, 4, 8, 8, 5)
  w = _normal(1, 3, 3, 3, 5, 6)

  def loss(conv):
    def one(x, w):
      return jnp.sum(
          jnp.sin(conv(x, w, (1, 1), 'SAME', dimension_numbers=NHWC))
      )

    return jax.jit(jax.vmap(jax.value_and_grad(one, argnums=(0, 1))))

  want, (dx_want, dw_want) = loss(lax.conv_general_dilated)(x, w)
  got, (dx_got, dw_got) = loss(onednn_conv.conv_general_dilated)(x, w)
  for a, b in ((want, got), (dx_want, dx_got), (dw_want, dw_got)):
    np.testing.assert_allclose(
        b, a, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(a)))
    )


@pytest.mark.parametrize(
    'kwargs',
    [
        dict(
            lhs=jnp.ones((2, 6, 6, 3), jnp.bfloat16),
            rhs=jnp.ones((3, 3, 3, 4), jnp.bfloat16),
        ),
        dict(rhs_dilation=(2, 2)),
        dict(lhs_dilation=(2, 2), padding=((1, 1), (1, 1))),
        dict(feature_group_count=3, rhs=jnp.ones((3, 3, 1, 3))),
        dict(
            dimension_numbers=('NCHW', 'OIHW', 'NCHW'),
            lhs=jnp.ones((2, 3, 6, 6)),
            rhs=jnp.ones((4, 3, 3, 3)),
        ),
    ],
)
def test_unsupported_convolutions_go_to_xla(kwargs):
  """Exactly XLA's convolution, and no custom call in the program."""
  args = dict(
      lhs=jnp.ones((2, 6, 6, 3)),
      rhs=jnp.ones((3, 3, 3, 4)),
      window_strides=(1, 1),
      padding='SAME',
      dimension_numbers=NHWC,
  )
  args.update(kwargs)
  hlo = (
      jax.jit(lambda: onednn_conv.conv_general_dilated(**args))
      .lower()
      .as_text()
  )
  assert 'sslprune_onednn_conv' not in hlo
  np.testing.assert_array_equal(
      onednn_conv.conv_general_dilated(**args), lax.conv_general_dilated(**args)
  )


def test_the_models_use_it_where_chosen(onednn):
  x = _normal(0, 2, 32, 32, 3)
  for name, depth in (('resnet_cifar', 10), ('vgg', 11), ('alexnet', 0)):
    outs = []
    for impl in ('xla', 'onednn'):
      model = models.create_model(
          dict(name=name, depth=depth, width=0.125, conv_impl=impl), 10
      )
      variables = random_variables(model, x.shape)
      lowered = jax.jit(
          lambda v, model=model: model.apply(v, x, train=False)
      ).lower(variables)
      hlo = lowered.as_text()
      assert ('sslprune_onednn_conv' in hlo) == (impl == 'onednn'), name
      outs.append(lowered.compile()(variables))
    np.testing.assert_allclose(
        outs[1], outs[0], rtol=1e-5, atol=1e-6, err_msg=name
    )


def test_step_with_onednn_matches_xla(onednn, num_devices):
  """The data-parallel train step (eight devices) with each convolution,
  one step from the same state on each of a few batches: the updates
  agree to float rounding, as with the compiler options
  (tests/test_xla_options.py)."""
  mesh = parallel.create_mesh()
  task = tasks.get_task('labels')
  state, batches = _state_and_batches()
  model = state.apply_fn.__self__
  sharded = [parallel.shard_batch(b, mesh) for b in batches]
  results = {}
  for impl in ('xla', 'onednn'):
    step = train.make_train_step(task, mesh, conv_impl=impl)
    start = state.replace(apply_fn=model.clone(conv_impl=impl).apply)
    hlo = step.lower(parallel.replicate(start, mesh), sharded[0]).as_text()
    assert ('sslprune_onednn_conv' in hlo) == (impl == 'onednn')
    results[impl] = one_step_each(step, start, sharded, mesh)
  assert_same_updates(results['xla'], results['onednn'], state)


def test_auto_picks_onednn_on_the_cpu_only(onednn):
  assert kernels.resolve_conv_impl('auto', 'cpu') == 'onednn'
  assert kernels.resolve_conv_impl('auto', 'gpu') == 'xla'
  assert kernels.resolve_conv_impl('auto', 'tpu') == 'xla'
  assert kernels.resolve_conv_impl('auto', 'cpu', jnp.bfloat16) == 'xla'
  assert kernels.resolve_conv_impl('xla', 'cpu') == 'xla'
  # With oneDNN's convolutions XLA's own fusions beat YNNPACK's.
  assert xla_options.preset_for('auto', 'cpu', 'onednn') == 'none'
  assert xla_options.preset_for('auto', 'cpu', 'xla') == 'cpu_ynn'


@pytest.mark.parametrize(
    'choice,platform,dtype,message',
    [
        ('fastest', 'cpu', jnp.float32, 'Unknown model.conv_impl'),
        ('onednn', 'gpu', jnp.float32, 'CPU only'),
        ('onednn', 'cpu', jnp.bfloat16, 'float32 only'),
    ],
)
def test_bad_choice_is_refused(choice, platform, dtype, message):
  with pytest.raises(ValueError, match=message):
    kernels.resolve_conv_impl(choice, platform, dtype)


@pytest.fixture
def unbuildable(monkeypatch, tmp_path):
  """A machine without a compiler: an empty cache and no `g++`."""
  monkeypatch.setenv('SSLPRUNE_JAX_CACHE', str(tmp_path / 'cache'))
  monkeypatch.setenv('CXX', 'no-such-compiler')
  # A library loaded earlier in this process stays loaded: look again.
  monkeypatch.setattr(onednn_conv, '_load', onednn_conv.build)
  onednn_conv.availability.cache_clear()
  yield
  onednn_conv.availability.cache_clear()


def test_without_a_compiler_auto_falls_back_and_onednn_is_refused(
    unbuildable, data_dir
):
  with pytest.raises(onednn_conv.Unavailable, match='no C.. compiler'):
    onednn_conv.build()
  assert kernels.resolve_conv_impl('auto', 'cpu') == 'xla'
  with pytest.raises(ValueError, match='unavailable here: no C.. compiler'):
    kernels.resolve_conv_impl('onednn', 'cpu')
  config = tiny_config(data_dir, **{'model.conv_impl': 'onednn'})
  with pytest.raises(ValueError, match='model.conv_impl'):
    imp.validate_config(config)


def test_a_failed_compilation_says_what_to_install(monkeypatch, tmp_path):
  """A compiler that cannot find oneDNN's headers (here: an include path
  that hides nothing, and a library name that does not exist)."""
  monkeypatch.setenv('SSLPRUNE_JAX_CACHE', str(tmp_path))
  real = onednn_conv._command
  monkeypatch.setattr(
      onednn_conv,
      '_command',
      lambda cxx, out: [
          a.replace('-ldnnl', '-lno_such_dnnl') for a in real(cxx, out)
      ],
  )
  if onednn_conv.shutil.which(os.environ.get('CXX', 'g++')) is None:
    pytest.skip('no C++ compiler')
  with pytest.raises(
      onednn_conv.Unavailable, match='compiling the oneDNN convolution failed'
  ):
    onednn_conv.build()
  assert not list(tmp_path.rglob('*.so'))


def test_resuming_may_change_the_convolutions(data_dir, tmp_path):
  config = tiny_config(data_dir)
  checkpoint.check_or_write_config(str(tmp_path), config)
  config.model.conv_impl = 'xla'
  checkpoint.check_or_write_config(str(tmp_path), config)
