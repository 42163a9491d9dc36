"""Convolutions timed alone, against the matmul peak.

CIFAR ResNet-18's 3x3 convolutions stage by stage (section 3,
`conv_profile`) and a 3x3 convolution written four ways (section 8,
`conv_forms`).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from sslprune_jax import kernels
from sslprune_jax import xla_options as xla_options_lib
from sslprune_jax.bench.timing import _times
from sslprune_jax.kernels import onednn_conv
from sslprune_jax.models.resnet import scale_width

# CIFAR ResNet-18's 3x3 convolutions at width 1, stage by stage:
# (side, channels).
_RESNET18_CONVS = ((32, 64), (16, 128), (8, 256), (4, 512))


def conv_profile(
    batch_size: int,
    peak: float,
    repeats: int = 3,
    width: float = 1.0,
    xla_options: str = 'auto',
    conv_impl: str = 'xla',
) -> dict:
  """FLOP/s of CIFAR ResNet-18's 3x3 convolutions, alone, on one device.

  For each stage's convolution (stride 1, 'SAME', float32, NHWC) at the
  per-device batch and the network's `width`: the forward pass, the input
  gradient and the weight gradient, each jitted alone with the step's
  compiler options and convolution implementation (`conv_impl`, 'xla' or
  'onednn') and timed (best of `repeats`), as GFLOP/s and as a fraction of
  the matmul `peak`. Where the train step falls short of the peak, this
  says which convolutions hold it back: the step cannot beat its
  convolutions.
  """
  jit = _jit_with(xla_options, conv_impl)
  conv = CONV_FORMS['conv' if conv_impl == 'xla' else conv_impl]
  programs = {
      'forward': jit(lambda x, w, g: conv(x, w)),
      'input_grad': jit(
          lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]
      ),
      'weight_grad': jit(
          lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0]
      ),
  }
  out = {}
  for side, base in _RESNET18_CONVS:
    channels = scale_width(base, width)
    keys = jax.random.split(jax.random.PRNGKey(side), 3)
    x = jax.random.normal(keys[0], (batch_size, side, side, channels))
    w = jax.random.normal(keys[1], (3, 3, channels, channels))
    g = jax.random.normal(keys[2], (batch_size, side, side, channels))
    flops = 2 * batch_size * side * side * 9 * channels * channels
    row = {'flops': flops}
    for name, program in programs.items():
      jax.block_until_ready(program(x, w, g))  # Compiles.
      best = min(_times(functools.partial(program, x, w, g), repeats))
      row[f'{name}_flops_per_s'] = flops / best
      row[f'{name}_fraction_of_peak'] = flops / best / peak
    out[f'{side}x{side}x{channels}'] = row
  return out


def _jit_with(xla_options: str, conv_impl: str = 'xla') -> Callable:
  """`jax.jit` with the compiler options `xla_options` names here for a
  program whose convolutions are `conv_impl`'s."""
  return functools.partial(
      jax.jit,
      compiler_options=(
          xla_options_lib.compiler_options(
              xla_options, jax.default_backend(), conv_impl
          )
      ),
  )


def _shifted_windows(x: jnp.ndarray) -> list[jnp.ndarray]:
  """The nine 3x3-window shifts of an NHWC batch, zero-padded by one."""
  h, w = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return [padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3)]


# A 3x3 stride-1 convolution written four ways (x NHWC, w HWIO).
CONV_FORMS = {
    # oneDNN's direct convolution (`kernels.onednn_conv`; CPU only).
    'onednn': lambda x, w: onednn_conv.conv_general_dilated(
        x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    ),
    'conv': lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    ),
    # Patches (im2col), then one matmul of depth 9 C.
    'im2col_matmul': lambda x, w: jnp.einsum(
        'nhwk,ko->nhwo',
        jnp.concatenate(_shifted_windows(x), axis=-1),
        w.reshape(-1, w.shape[-1]),
    ),
    # Nine 1x1 convolutions (matmuls of depth C) of shifted inputs, summed.
    'shifted_matmuls': lambda x, w: sum(
        jnp.einsum('nhwc,co->nhwo', s, w.reshape(9, *w.shape[2:])[k])
        for k, s in enumerate(_shifted_windows(x))
    ),
}


def conv_forms(
    batch_size: int,
    shapes,
    peak: float,
    xla_options: str = 'auto',
    repeats: int = 3,
) -> dict:
  """Forward + backward FLOP/s of each of `CONV_FORMS`, as fractions of
  `peak`, for (side, channels) in `shapes`: whether a convolution written
  as matmuls beats XLA's own on this backend (their backward passes are
  matmuls too, the weight gradient included), and whether oneDNN's
  beats both."""
  out = {}
  for side, channels in shapes:
    keys = jax.random.split(jax.random.PRNGKey(side + channels), 3)
    x = jax.random.normal(keys[0], (batch_size, side, side, channels))
    w = jax.random.normal(keys[1], (3, 3, channels, channels))
    g = jax.random.normal(keys[2], (batch_size, side, side, channels))
    # Forward, input gradient and weight gradient: 3 x the forward's FLOPs.
    flops = 3 * 2 * batch_size * side * side * 9 * channels * channels
    row = {}
    for name, form in CONV_FORMS.items():
      if name == 'onednn' and kernels.check_conv_impl(name) is not None:
        continue
      jit = _jit_with(xla_options, 'onednn' if name == 'onednn' else 'xla')
      program = jit(lambda x, w, g, form=form: jax.vjp(form, x, w)[1](g))
      jax.block_until_ready(program(x, w, g))  # Compiles.
      best = min(_times(functools.partial(program, x, w, g), repeats))
      row[name] = flops / best / peak
    out[f'{side}x{side}x{channels}'] = row
  return out
