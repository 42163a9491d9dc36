"""Model zoo: CIFAR/ImageNet ResNets, CIFAR VGG and AlexNet.

Every model is a ``flax.linen`` Module called as ``model.apply(variables, x,
train=...)`` on NHWC float images with any number of channels. Its final
linear layer is named ``classifier`` (pruning excludes it by that name), and
with ``num_classes=None`` the model returns trunk features instead of logits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslprune_jax import kernels
from sslprune_jax.models.alexnet import AlexNet
from sslprune_jax.models.alexnet import alexnet
from sslprune_jax.models.resnet import BN_SCALE_INITS
from sslprune_jax.models.resnet import BasicBlock
from sslprune_jax.models.resnet import BottleneckBlock
from sslprune_jax.models.resnet import ResNet
from sslprune_jax.models.resnet import inner_channel_groups
from sslprune_jax.models.resnet import resnet
from sslprune_jax.models.vgg import VGG
from sslprune_jax.models.vgg import vgg

__all__ = [
    'AlexNet',
    'BasicBlock',
    'BottleneckBlock',
    'CHANNEL_MODELS',
    'HEAD',
    'MODELS',
    'ResNet',
    'VGG',
    'alexnet',
    'channel_groups',
    'conv_impl_of',
    'create_model',
    'kernel_order',
    'replace_head',
    'with_head',
    'resnet',
    'vgg',
]

MODELS = ['resnet_cifar', 'resnet', 'vgg', 'alexnet']

DTYPES = {
    'float32': jnp.float32,
    'bfloat16': jnp.bfloat16,
    'float16': jnp.float16,
}

# Layers whose 'kernel' parameter is a prunable weight tensor.
KERNEL_LAYERS = (nn.Conv, nn.ConvTranspose, nn.ConvLocal, nn.Dense)


def parse_dtype(name: str | None) -> Any:
  """Maps a dtype name from a config to a jnp dtype.

  Args:
    name: 'float32' (also used when None), 'bfloat16' or 'float16'.

  Returns:
    The jnp dtype.

  Raises:
    ValueError: for an unknown name.
  """
  if name is None:
    return jnp.float32
  if name not in DTYPES:
    raise ValueError(
        f'Unknown dtype {name!r}; valid dtypes are ' f'{sorted(DTYPES)}.'
    )
  return DTYPES[name]


def conv_impl_of(model_config: Mapping[str, Any]) -> str:
  """'xla' or 'onednn': the convolutions of the model a config builds.

  Raises:
    ValueError: an unknown ``conv_impl`` or dtype, or a ``conv_impl`` this
      platform cannot run (see ``kernels.resolve_conv_impl``).
  """
  return kernels.resolve_conv_impl(
      model_config.get('conv_impl', 'auto'),
      dtype=parse_dtype(model_config.get('dtype', None)),
  )


def create_model(
    model_config: Mapping[str, Any], num_classes: int | None
) -> nn.Module:
  """Builds a model from its config.

  Args:
    model_config: ``ml_collections.ConfigDict`` (or mapping) with ``name``
      (one of ``MODELS``), ``depth`` (ignored by alexnet), ``width`` and
      optionally ``dtype`` ('float32' default, 'bfloat16') and
      ``bn_scale_init`` ('ones' default, 'uniform'; resnets and vgg, see
      ``layers.BN_SCALE_INITS``), and for alexnet
      ``batch_norm`` (False), ``dropout_rate`` (0.5) and ``cifar_stem``
      (None: chosen from the input size); and ``conv_impl`` ('auto'
      default, 'xla', 'onednn': see ``sslprune_jax.kernels``).
    num_classes: classifier outputs, or None for the trunk only.

  Returns:
    An unbound flax Module.

  Raises:
    ValueError: for an unknown model name, depth or dtype, or a
      ``conv_impl`` this platform cannot run.
  """
  name = model_config['name']
  width = float(model_config.get('width', 1.0))
  dtype = parse_dtype(model_config.get('dtype', None))
  bn_scale_init = model_config.get('bn_scale_init', 'ones')
  if bn_scale_init not in BN_SCALE_INITS:
    raise ValueError(
        f'Unknown bn_scale_init {bn_scale_init!r}; valid: '
        f'{sorted(BN_SCALE_INITS)}.'
    )
  conv_impl = conv_impl_of(model_config)
  if name in ('resnet_cifar', 'resnet'):
    return resnet(
        model_config['depth'],
        num_classes,
        width=width,
        cifar_stem=name == 'resnet_cifar',
        dtype=dtype,
        bn_scale_init=bn_scale_init,
        conv_impl=conv_impl,
        inner_widths=tuple(
            (block, tuple(widths))
            for block, widths in model_config.get('inner_widths', ())
        ),
    )
  if name == 'vgg':
    return vgg(
        model_config['depth'],
        num_classes,
        width=width,
        dtype=dtype,
        bn_scale_init=bn_scale_init,
        conv_impl=conv_impl,
    )
  if name == 'alexnet':
    return alexnet(
        num_classes,
        width=width,
        batch_norm=bool(model_config.get('batch_norm', False)),
        dropout_rate=float(model_config.get('dropout_rate', 0.5)),
        cifar_stem=model_config.get('cifar_stem', None),
        dtype=dtype,
        conv_impl=conv_impl,
    )
  raise ValueError(f'Unknown model {name!r}; valid models are {MODELS}.')


# The models whose channels `channel_groups` knows.
CHANNEL_MODELS = ('resnet', 'resnet_cifar')


def channel_groups(model_config: Mapping[str, Any], params) -> list[dict]:
  """The layers whose output channels channel pruning may remove, and what
  reads them (``resnet.inner_channel_groups``).

  Raises:
    ValueError: for a model without channel groups.
  """
  if model_config['name'] not in CHANNEL_MODELS:
    raise ValueError(
        f'Channel pruning is defined for {CHANNEL_MODELS}, not model.name='
        f"{model_config['name']!r}."
    )
  return inner_channel_groups(params)


def kernel_order(
    model: nn.Module, sample_input: Any, train: bool = False
) -> list[tuple[str, ...]]:
  """Lists conv/dense kernel paths in the order the forward pass uses them.

  The order of the params dict cannot be used for this: jax flattens dicts
  with sorted keys, so e.g. 'conv10' comes before 'conv2'. Instead ``init``
  is traced abstractly (no parameter is computed) while an interceptor
  records the scope path of every conv/dense layer as it is called.

  Args:
    model: unbound flax Module.
    sample_input: an input batch, or a ``jax.ShapeDtypeStruct`` of one; only
      its shape and dtype matter.
    train: value passed as the model's ``train`` argument while tracing.

  Returns:
    Param paths such as ``('layer1_0', 'conv1', 'kernel')``, each a tuple of
    keys into ``variables['params']``, in network order, each listed once
    (a layer applied twice keeps its first position).

  Raises:
    ValueError: if a recorded path is not a kernel in the params tree, which
      would mean the layer keeps its weights under another name.
  """
  order = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == '__call__' and isinstance(
        context.module, KERNEL_LAYERS
    ):
      path = tuple(context.module.path) + ('kernel',)
      if path not in order:
        order.append(path)
    return next_fun(*args, **kwargs)

  def init(x):
    rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
    with nn.intercept_methods(record):
      return model.init(rngs, x, train=train)

  variables = jax.eval_shape(init, sample_input)
  params = variables['params']
  for path in order:
    node = params
    for key in path:
      if not isinstance(node, Mapping) or key not in node:
        raise ValueError(f'Layer path {path} is not in the params tree.')
      node = node[key]
  return order


HEAD = 'classifier'


def replace_head(
    model_config: Mapping[str, Any],
    variables: Mapping[str, Any],
    mask: Mapping[str, Any],
    num_outputs: int,
    rng: jax.Array,
    image_shape: tuple[int, int, int],
) -> tuple[nn.Module, dict, dict]:
  """Swaps a trained network's task head for a fresh one of another width.

  A trunk pruned with one task is re-trained or evaluated with another
  (RotNet's 4-way head gives way to a 10-way classifier): the trunk's
  weights, batch-norm statistics and mask are kept, and the new
  'classifier' layer is freshly initialised and entirely unpruned.

  Args:
    model_config: the trained network's model config.
    variables: its variables ('params' and possibly 'batch_stats').
    mask: its mask (a pytree like `variables['params']`).
    num_outputs: the new head's width.
    rng: key of the new head's initialisation.
    image_shape: (H, W, C) of one input image.

  Returns:
    (model, variables, mask) of the network with the new head.
  """
  model = create_model(model_config, num_outputs)

  # Compiled, XLA keeps only the head's draws (bit-identical to eager
  # `init`); eager, every layer's initialiser compiles by itself: 1 s
  # against 10 s for a CIFAR ResNet-10 on CPU.
  @jax.jit
  def fresh_head(rng):
    return model.init(
        {'params': rng, 'dropout': rng},
        jnp.zeros((1, *image_shape)),
        train=False,
    )['params'][HEAD]

  params, new_mask = with_head(variables['params'], mask, fresh_head(rng))
  return model, {**variables, 'params': params}, new_mask


def with_head(
    params: Mapping[str, Any], mask: Mapping[str, Any], head: Any
) -> tuple[dict, dict]:
  """`params` and `mask` with `head` as the task head, entirely unpruned."""
  return (
      {**params, HEAD: head},
      {
          **mask,
          HEAD: jax.tree.map(lambda p: jnp.ones(p.shape, jnp.bool_), head),
      },
  )
