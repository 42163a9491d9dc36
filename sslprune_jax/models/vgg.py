"""VGG for CIFAR as used in the lottery-ticket literature.

This is the variant of Morcos et al. / Frankle & Carbin (open_lth's
``cifar_vgg_N``): 3x3 convolutions with bias, each followed by batch norm and
ReLU, 2x2 max-pools between stages, global average pooling and a single
linear classifier instead of torchvision's three-layer MLP head.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from sslprune_jax import kernels
from sslprune_jax.models.layers import batch_norm_layer
from sslprune_jax.models.layers import classifier
from sslprune_jax.models.layers import scale_width

# 'M' marks a 2x2 stride-2 max-pool; numbers are conv output channels.
VGG_CONFIGS = {
    11: (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512),
    13: (64, 64, 'M', 128, 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512),
    16: (
        64,
        64,
        'M',
        128,
        128,
        'M',
        256,
        256,
        256,
        'M',
        512,
        512,
        512,
        'M',
        512,
        512,
        512,
    ),
    19: (
        64,
        64,
        'M',
        128,
        128,
        'M',
        256,
        256,
        256,
        256,
        'M',
        512,
        512,
        512,
        512,
        'M',
        512,
        512,
        512,
        512,
    ),
}

# open_lth initialises VGG convolutions with torch's kaiming_normal_, whose
# default mode is fan-in.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


class VGG(nn.Module):
  """CIFAR VGG with batch norm and a single linear classifier.

  Attributes:
    layers: sequence of conv widths and 'M' (max-pool) markers.
    num_classes: classifier outputs; ``None`` returns the pooled trunk
      features instead.
    width: multiplier of every conv width.
    dtype: computation dtype; parameters stay float32.
    bn_scale_init: how batch-norm scales start (``layers.BN_SCALE_INITS``).
    conv_impl: 'xla' or 'onednn' (``sslprune_jax.kernels``).
  """

  layers: Sequence[int | str]
  num_classes: int | None
  width: float = 1.0
  dtype: Any = jnp.float32
  bn_scale_init: str = 'ones'
  conv_impl: str = 'xla'

  @nn.compact
  def __call__(self, x, train: bool = True):
    """Runs the network.

    Args:
      x: NHWC float images, any number of channels.
      train: use batch statistics and update running averages.

    Returns:
      ``[N, num_classes]`` float32 logits, or ``[N, C]`` pooled features if
      ``num_classes`` is None.
    """
    x = jnp.asarray(x, self.dtype)
    index = 0
    for layer in self.layers:
      if layer == 'M':
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        continue
      x = nn.Conv(
          scale_width(layer, self.width),
          (3, 3),
          padding='SAME',
          use_bias=True,
          kernel_init=conv_kernel_init,
          dtype=self.dtype,
          conv_general_dilated=kernels.conv_general_dilated(self.conv_impl),
          name=f'conv{index}',
      )(x)
      x = batch_norm_layer(train, self.dtype, f'bn{index}', self.bn_scale_init)(
          x
      )
      x = nn.relu(x)
      index += 1
    # Global rather than fixed 2x2 average pooling, so that inputs other than
    # 32x32 (e.g. 28x28 Fashion-MNIST) give the same feature size.
    x = jnp.mean(x, axis=(1, 2))
    if self.num_classes is None:
      return x
    return classifier(x, self.num_classes, self.dtype)


def vgg(
    depth: int,
    num_classes: int | None,
    width: float = 1.0,
    dtype: Any = jnp.float32,
    bn_scale_init: str = 'ones',
    conv_impl: str = 'xla',
) -> VGG:
  """Builds a CIFAR VGG of a standard depth.

  Args:
    depth: one of 11, 13, 16, 19.
    num_classes: classifier outputs, or None for the trunk only.
    width: multiplier of the channel counts.
    dtype: computation dtype.
    bn_scale_init: how batch-norm scales start (``layers.BN_SCALE_INITS``).
    conv_impl: 'xla' or 'onednn' (``sslprune_jax.kernels``).

  Returns:
    An unbound ``VGG``.

  Raises:
    ValueError: if ``depth`` is not supported.
  """
  if depth not in VGG_CONFIGS:
    raise ValueError(
        f'Unsupported VGG depth {depth}; valid depths are '
        f'{sorted(VGG_CONFIGS)}.'
    )
  return VGG(
      layers=VGG_CONFIGS[depth],
      num_classes=num_classes,
      width=width,
      dtype=dtype,
      bn_scale_init=bn_scale_init,
      conv_impl=conv_impl,
  )
