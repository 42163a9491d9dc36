"""AlexNet in torchvision form, optionally with batch norm.

The self-supervised AlexNets (DeepCluster, RotNet) put batch norm after
every convolution; ``batch_norm=True`` gives that variant.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslprune_jax import kernels
from sslprune_jax.models.layers import batch_norm_layer
from sslprune_jax.models.layers import classifier
from sslprune_jax.models.layers import dense_kernel_init
from sslprune_jax.models.layers import scale_width

# torchvision leaves AlexNet at PyTorch's default kaiming-uniform(a=sqrt(5)),
# i.e. uniform with variance 1 / (3 * fan_in).
conv_kernel_init = nn.initializers.variance_scaling(
    1.0 / 3.0, 'fan_in', 'uniform'
)

# The ImageNet stem (11x11 stride 4) followed by three 3x3 stride-2 pools
# needs at least 63 pixels per side to leave a non-empty feature map.
MIN_IMAGENET_STEM_SIZE = 63


def adaptive_avg_pool(x: jnp.ndarray, output_size: int) -> jnp.ndarray:
  """Average-pools NHWC input to a fixed spatial size, as PyTorch does.

  Bin ``i`` along an axis of length ``n`` covers
  ``[floor(i * n / s), ceil((i + 1) * n / s))``; bins may overlap or repeat
  rows, so any input size (even smaller than ``output_size``) works.

  Args:
    x: ``[N, H, W, C]`` array.
    output_size: side of the square output.

  Returns:
    ``[N, output_size, output_size, C]`` array.
  """

  def pool_axis(v, axis):
    n = v.shape[axis]
    bins = []
    for i in range(output_size):
      start = (i * n) // output_size
      end = math.ceil((i + 1) * n / output_size)
      window = jax.lax.slice_in_dim(v, start, end, axis=axis)
      bins.append(jnp.mean(window, axis=axis, keepdims=True))
    return jnp.concatenate(bins, axis=axis)

  # Bins are rectangles, so pooling rows then columns equals pooling each
  # rectangle directly.
  return pool_axis(pool_axis(x, 1), 2)


class AlexNet(nn.Module):
  """AlexNet (torchvision layout).

  Attributes:
    num_classes: classifier outputs; ``None`` returns the trunk features,
      which are the flattened 6x6 pooled conv5 activations (``36 * 256 *
      width`` values), i.e. the conv layers only, without fc6/fc7.
    width: multiplier of every conv and hidden fc width.
    batch_norm: add batch norm after every convolution.
    dropout_rate: dropout before fc6 and fc7; draws from the 'dropout' rng
      collection when ``train`` is True.
    cifar_stem: replace the 11x11 stride-4 conv by a 3x3 stride-1 conv so
      that small images (28x28, 32x32) survive the three max-pools. ``None``
      picks it automatically when the input is smaller than 63 pixels, the
      smallest size the ImageNet stem can process.
    dtype: computation dtype; parameters stay float32.
    conv_impl: 'xla' or 'onednn' (``sslprune_jax.kernels``).
  """

  num_classes: int | None
  width: float = 1.0
  batch_norm: bool = False
  dropout_rate: float = 0.5
  cifar_stem: bool | None = None
  dtype: Any = jnp.float32
  conv_impl: str = 'xla'

  def _conv_block(self, x, features, kernel, stride, pad, train, index):
    """Conv (+ BN) + ReLU, named ``conv{index}`` / ``bn{index}``."""
    x = nn.Conv(
        scale_width(features, self.width),
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        kernel_init=conv_kernel_init,
        dtype=self.dtype,
        conv_general_dilated=kernels.conv_general_dilated(self.conv_impl),
        name=f'conv{index}',
    )(x)
    if self.batch_norm:
      x = batch_norm_layer(train, self.dtype, f'bn{index}')(x)
    return nn.relu(x)

  @nn.compact
  def __call__(self, x, train: bool = True):
    """Runs the network.

    Args:
      x: NHWC float images, any number of channels.
      train: use batch statistics, update running averages and apply
        dropout.

    Returns:
      ``[N, num_classes]`` float32 logits, or ``[N, 36 * C]`` flattened
      pooled conv features if ``num_classes`` is None.
    """
    x = jnp.asarray(x, self.dtype)
    cifar_stem = self.cifar_stem
    if cifar_stem is None:
      cifar_stem = min(x.shape[1], x.shape[2]) < MIN_IMAGENET_STEM_SIZE
    if cifar_stem:
      x = self._conv_block(x, 64, 3, 1, 1, train, 1)
    else:
      x = self._conv_block(x, 64, 11, 4, 2, train, 1)
    x = nn.max_pool(x, (3, 3), strides=(2, 2))
    x = self._conv_block(x, 192, 5, 1, 2, train, 2)
    x = nn.max_pool(x, (3, 3), strides=(2, 2))
    x = self._conv_block(x, 384, 3, 1, 1, train, 3)
    x = self._conv_block(x, 256, 3, 1, 1, train, 4)
    x = self._conv_block(x, 256, 3, 1, 1, train, 5)
    x = nn.max_pool(x, (3, 3), strides=(2, 2))
    x = adaptive_avg_pool(x, 6)
    x = x.reshape((x.shape[0], -1))
    if self.num_classes is None:
      return x
    hidden = scale_width(4096, self.width)
    for index in (6, 7):
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = nn.Dense(
          hidden,
          kernel_init=dense_kernel_init,
          dtype=self.dtype,
          name=f'fc{index}',
      )(x)
      x = nn.relu(x)
    return classifier(x, self.num_classes, self.dtype)


def alexnet(
    num_classes: int | None,
    width: float = 1.0,
    batch_norm: bool = False,
    dropout_rate: float = 0.5,
    cifar_stem: bool | None = None,
    dtype: Any = jnp.float32,
    conv_impl: str = 'xla',
) -> AlexNet:
  """Builds an AlexNet.

  Args:
    num_classes: classifier outputs, or None for the conv trunk only.
    width: multiplier of the channel counts.
    batch_norm: add batch norm after every convolution.
    dropout_rate: dropout rate of the fc layers.
    cifar_stem: see ``AlexNet.cifar_stem``.
    dtype: computation dtype.
    conv_impl: 'xla' or 'onednn' (``sslprune_jax.kernels``).

  Returns:
    An unbound ``AlexNet``.
  """
  return AlexNet(
      num_classes=num_classes,
      width=width,
      batch_norm=batch_norm,
      dropout_rate=dropout_rate,
      cifar_stem=cifar_stem,
      dtype=dtype,
      conv_impl=conv_impl,
  )
