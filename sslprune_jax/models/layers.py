"""Layers every model shares: the classifier, batch norm, width scaling.

PyTorch's (torchvision's) defaults, so that the ResNets, VGGs and AlexNet
start as the reference code's models do.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# torchvision's nn.Linear default (kaiming-uniform with a=sqrt(5)) is a
# uniform distribution with variance 1 / (3 * fan_in). Dense biases start at
# zero, since flax bias initialisers cannot see fan-in.
dense_kernel_init = nn.initializers.variance_scaling(
    1.0 / 3.0, 'fan_in', 'uniform'
)


def classifier(x: jnp.ndarray, num_classes: int, dtype: Any) -> jnp.ndarray:
  """The final linear layer of every model, named 'classifier'.

  Pruning excludes it by that name. Logits are returned in float32 so that
  losses and metrics are computed in float32 even for bfloat16 models.
  """
  x = nn.Dense(
      num_classes, kernel_init=dense_kernel_init, dtype=dtype, name='classifier'
  )(x)
  return jnp.asarray(x, jnp.float32)


def scale_width(base: int, width: float) -> int:
  """Scales a channel count by a width multiplier.

  Args:
    base: channel count of the reference (width 1.0) network.
    width: multiplier.

  Returns:
    ``round(base * width)``, at least 1 so that thin networks stay valid.
  """
  return max(1, int(round(base * width)))


# How batch-norm scales start. 'ones' is PyTorch's (and torchvision's)
# default; 'uniform' draws each scale from U[0, 1), as open_lth's CIFAR
# models do by default (`batchnorm_init='uniform'` in the default hparams of
# its models/cifar_resnet.py and cifar_vgg.py; models/bn_initializers.py).
# Offsets start at zero either way.
BN_SCALE_INITS = {
    'ones': nn.initializers.ones,
    'uniform': nn.initializers.uniform(scale=1.0),
}


def batch_norm_layer(
    train: bool, dtype: Any, name: str, scale_init: str = 'ones'
) -> nn.BatchNorm:
  """Builds a batch norm layer with PyTorch's defaults.

  No ``axis_name`` is given: statistics come from the local (per-device)
  batch only, as with PyTorch DistributedDataParallel without SyncBN.

  Args:
    train: whether to normalise with batch statistics (and update the running
      averages) instead of the running averages.
    dtype: computation dtype.
    name: submodule name.
    scale_init: a key of ``BN_SCALE_INITS``.

  Returns:
    An unbound ``nn.BatchNorm``.
  """
  # flax momentum is the weight of the old value, PyTorch's of the new one:
  # flax 0.9 == PyTorch 0.1.
  return nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      scale_init=BN_SCALE_INITS[scale_init],
      dtype=dtype,
      name=name,
  )
