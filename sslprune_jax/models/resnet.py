"""ResNets with torchvision semantics, in ImageNet and CIFAR form.

Parameter names follow torchvision (``conv1``, ``bn1``, ``layer1_0``, ...,
``downsample_conv``) so that layers can be matched against PyTorch
checkpoints by eye; the final linear layer is always called ``classifier``
because pruning recognises and excludes it by that name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from sslprune_jax import kernels

# Shared with the other models; also importable from here, as before.
from sslprune_jax.models.layers import BN_SCALE_INITS
from sslprune_jax.models.layers import batch_norm_layer
from sslprune_jax.models.layers import classifier
from sslprune_jax.models.layers import dense_kernel_init
from sslprune_jax.models.layers import scale_width

# Kaiming-normal on fan-out, the initialisation torchvision gives ResNet convs.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

BASE_WIDTHS = (64, 128, 256, 512)


def conv(
    features: int,
    kernel: int,
    stride: int,
    dtype: Any,
    name: str,
    conv_impl: str = 'xla',
) -> nn.Conv:
  """Builds a bias-free convolution with PyTorch-style symmetric padding.

  Explicit padding of ``kernel // 2`` is used rather than 'SAME' because for
  strided convolutions on even inputs 'SAME' pads only on the bottom/right,
  which shifts the sampling grid relative to torchvision.

  Args:
    features: output channels.
    kernel: square kernel size.
    stride: spatial stride.
    dtype: computation dtype.
    name: submodule name.
    conv_impl: 'xla' or 'onednn' (``sslprune_jax.kernels``).

  Returns:
    An unbound ``nn.Conv``.
  """
  pad = kernel // 2
  return nn.Conv(
      features,
      (kernel, kernel),
      strides=(stride, stride),
      padding=((pad, pad), (pad, pad)),
      use_bias=False,
      kernel_init=conv_kernel_init,
      dtype=dtype,
      conv_general_dilated=kernels.conv_general_dilated(conv_impl),
      name=name,
  )


def shortcut(
    x: jnp.ndarray,
    features: int,
    stride: int,
    dtype: Any,
    train: bool,
    bn_scale_init: str = 'ones',
    conv_impl: str = 'xla',
) -> jnp.ndarray:
  """The residual path of a block.

  The identity, or a 1x1 projection and batch norm where the block changes
  the resolution or the number of channels (named as in torchvision).
  """
  if stride == 1 and x.shape[-1] == features:
    return x
  x = conv(features, 1, stride, dtype, 'downsample_conv', conv_impl)(x)
  return batch_norm_layer(train, dtype, 'downsample_bn', bn_scale_init)(x)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with an identity or projection shortcut.

  Attributes:
    features: output channels.
    stride: stride of the first convolution (and of the shortcut).
    dtype: computation dtype.
    bn_scale_init: how batch-norm scales start (``BN_SCALE_INITS``).
    conv_impl: 'xla' or 'onednn' (``sslprune_jax.kernels``).
    inner: (channels of conv1,) where channel pruning left fewer than
      ``features`` (None: ``features``).
  """

  features: int
  stride: int = 1
  dtype: Any = jnp.float32
  bn_scale_init: str = 'ones'
  conv_impl: str = 'xla'
  inner: tuple[int, ...] | None = None

  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool = True):
    """Applies the block.

    Args:
      x: NHWC input.
      train: use batch statistics and update running averages.

    Returns:
      NHWC output with ``features`` channels.
    """
    (inner,) = self.inner or (self.features,)
    y = conv(inner, 3, self.stride, self.dtype, 'conv1', self.conv_impl)(x)
    y = batch_norm_layer(train, self.dtype, 'bn1', self.bn_scale_init)(y)
    y = nn.relu(y)
    y = conv(self.features, 3, 1, self.dtype, 'conv2', self.conv_impl)(y)
    y = batch_norm_layer(train, self.dtype, 'bn2', self.bn_scale_init)(y)
    return nn.relu(
        y
        + shortcut(
            x,
            self.features,
            self.stride,
            self.dtype,
            train,
            self.bn_scale_init,
            self.conv_impl,
        )
    )


class BottleneckBlock(nn.Module):
  """1x1 reduce, 3x3, 1x1 expand (x4), with the stride on the 3x3 (v1.5).

  Attributes:
    features: bottleneck channels; the block outputs ``4 * features``.
    stride: stride of the 3x3 convolution (and of the shortcut).
    dtype: computation dtype.
    bn_scale_init: how batch-norm scales start (``BN_SCALE_INITS``).
    conv_impl: 'xla' or 'onednn' (``sslprune_jax.kernels``).
    inner: (channels of conv1, of conv2) where channel pruning left fewer
      than ``features`` (None: ``features`` both).
  """

  features: int
  stride: int = 1
  dtype: Any = jnp.float32
  bn_scale_init: str = 'ones'
  conv_impl: str = 'xla'
  inner: tuple[int, ...] | None = None

  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool = True):
    """Applies the block.

    Args:
      x: NHWC input.
      train: use batch statistics and update running averages.

    Returns:
      NHWC output with ``4 * features`` channels.
    """
    out_features = self.features * self.expansion
    first, second = self.inner or (self.features, self.features)
    y = conv(first, 1, 1, self.dtype, 'conv1', self.conv_impl)(x)
    y = batch_norm_layer(train, self.dtype, 'bn1', self.bn_scale_init)(y)
    y = nn.relu(y)
    y = conv(second, 3, self.stride, self.dtype, 'conv2', self.conv_impl)(y)
    y = batch_norm_layer(train, self.dtype, 'bn2', self.bn_scale_init)(y)
    y = nn.relu(y)
    y = conv(out_features, 1, 1, self.dtype, 'conv3', self.conv_impl)(y)
    y = batch_norm_layer(train, self.dtype, 'bn3', self.bn_scale_init)(y)
    return nn.relu(
        y
        + shortcut(
            x,
            out_features,
            self.stride,
            self.dtype,
            train,
            self.bn_scale_init,
            self.conv_impl,
        )
    )


class ResNet(nn.Module):
  """ResNet v1.5 (torchvision layout).

  Attributes:
    stage_sizes: number of blocks in each of the four stages.
    block_cls: ``BasicBlock`` or ``BottleneckBlock``.
    num_classes: classifier outputs; ``None`` returns the pooled trunk
      features instead, for callers that attach their own heads.
    width: multiplier of the stage widths 64/128/256/512 (and of the stem).
    cifar_stem: True for the CIFAR stem (3x3 stride-1 conv, no max-pool);
      False for the ImageNet stem (7x7 stride-2 conv, 3x3 stride-2 max-pool).
    dtype: computation dtype; parameters stay float32.
    bn_scale_init: how batch-norm scales start (``BN_SCALE_INITS``).
    conv_impl: 'xla' or 'onednn' (``sslprune_jax.kernels``).
    inner_widths: ((block name, its `inner` channels), ...) of a
      channel-pruned network exported smaller (``inner_channel_groups``);
      blocks not named keep their width.
  """

  stage_sizes: Sequence[int]
  block_cls: type[nn.Module]
  num_classes: int | None
  width: float = 1.0
  cifar_stem: bool = False
  dtype: Any = jnp.float32
  bn_scale_init: str = 'ones'
  conv_impl: str = 'xla'
  inner_widths: tuple[tuple[str, tuple[int, ...]], ...] = ()

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
    widths = [scale_width(w, self.width) for w in BASE_WIDTHS]
    if self.cifar_stem:
      x = conv(widths[0], 3, 1, self.dtype, 'conv1', self.conv_impl)(x)
      x = batch_norm_layer(train, self.dtype, 'bn1', self.bn_scale_init)(x)
      x = nn.relu(x)
    else:
      x = conv(widths[0], 7, 2, self.dtype, 'conv1', self.conv_impl)(x)
      x = batch_norm_layer(train, self.dtype, 'bn1', self.bn_scale_init)(x)
      x = nn.relu(x)
      # flax pads max-pool windows with -inf, matching PyTorch's padding=1.
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    inner = dict(self.inner_widths)
    for stage, (num_blocks, features) in enumerate(
        zip(self.stage_sizes, widths)
    ):
      for block in range(num_blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        name = f'layer{stage + 1}_{block}'
        x = self.block_cls(
            features=features,
            stride=stride,
            dtype=self.dtype,
            bn_scale_init=self.bn_scale_init,
            conv_impl=self.conv_impl,
            inner=inner.get(name),
            name=name,
        )(x, train=train)
    x = jnp.mean(x, axis=(1, 2))
    if self.num_classes is None:
      return x
    return classifier(x, self.num_classes, self.dtype)


# depth -> (stage sizes, block type); depth 10 is the small variant used for
# quick experiments, the rest are the torchvision depths.
RESNET_SPECS = {
    10: ((1, 1, 1, 1), BasicBlock),
    18: ((2, 2, 2, 2), BasicBlock),
    34: ((3, 4, 6, 3), BasicBlock),
    50: ((3, 4, 6, 3), BottleneckBlock),
    101: ((3, 4, 23, 3), BottleneckBlock),
    152: ((3, 8, 36, 3), BottleneckBlock),
}


def inner_channel_groups(params: Mapping[str, Any]) -> list[dict]:
  """The channels channel pruning may remove: those inside each block.

  A block's output channels are added to its shortcut's, so removing one
  would need the same channel removed from every block of the stage and
  its projection; the channels inside blocks are free (what channel-pruning
  work on ResNets prunes). A basic block has one such layer (conv1, bn1,
  read by conv2), a bottleneck two (conv1 and conv2).

  Returns:
    One dict per prunable layer, in network order: 'block' (its name),
    'producer' (the path of the conv kernel whose output channels go),
    'norm' (the path of the batch norm after it), 'consumers' (paths of the
    kernels reading those channels on their input axis, -2).
  """
  blocks = sorted(
      (k for k in params if re.fullmatch(r'layer\d+_\d+', k)),
      key=lambda k: tuple(int(i) for i in k[len('layer') :].split('_')),
  )
  groups = []
  for block in blocks:
    inner = ['conv1', 'conv2'] if 'conv3' in params[block] else ['conv1']
    for i, name in enumerate(inner):
      groups.append(
          {
              'block': block,
              'producer': (block, name, 'kernel'),
              'norm': (block, f'bn{i + 1}'),
              'consumers': ((block, f'conv{i + 2}', 'kernel'),),
          }
      )
  return groups


def resnet(
    depth: int,
    num_classes: int | None,
    width: float = 1.0,
    cifar_stem: bool = False,
    dtype: Any = jnp.float32,
    bn_scale_init: str = 'ones',
    conv_impl: str = 'xla',
    inner_widths: tuple[tuple[str, tuple[int, ...]], ...] = (),
) -> ResNet:
  """Builds a ResNet of a standard depth.

  Args:
    depth: one of 10, 18, 34, 50, 101, 152.
    num_classes: classifier outputs, or None for the trunk only.
    width: multiplier of the channel counts.
    cifar_stem: use the CIFAR stem (see ``ResNet``).
    dtype: computation dtype.
    bn_scale_init: how batch-norm scales start (``BN_SCALE_INITS``).
    conv_impl: 'xla' or 'onednn' (``sslprune_jax.kernels``).
    inner_widths: see ``ResNet``.

  Returns:
    An unbound ``ResNet``.

  Raises:
    ValueError: if ``depth`` is not supported.
  """
  if depth not in RESNET_SPECS:
    raise ValueError(
        f'Unsupported ResNet depth {depth}; valid depths are '
        f'{sorted(RESNET_SPECS)}.'
    )
  stage_sizes, block_cls = RESNET_SPECS[depth]
  return ResNet(
      stage_sizes=stage_sizes,
      block_cls=block_cls,
      num_classes=num_classes,
      width=width,
      cifar_stem=cifar_stem,
      dtype=dtype,
      bn_scale_init=bn_scale_init,
      conv_impl=conv_impl,
      inner_widths=inner_widths,
  )
