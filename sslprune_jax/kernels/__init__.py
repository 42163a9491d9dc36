"""Hand-written kernels the models may call instead of XLA's own ops.

One today: 2-D convolutions through oneDNN on the CPU
(`sslprune_jax.kernels.onednn_conv`). ``model.conv_impl`` chooses:

- 'xla': XLA's convolutions, on every backend.
- 'onednn': oneDNN's, on the CPU, for float32 models; refused elsewhere
  and where it cannot be built.
- 'auto' (the default): 'onednn' for float32 models on the CPU where it can
  be built, else 'xla'. GPU and TPU keep XLA's convolutions: no measurement there says
  otherwise.

Both compute the same convolution; they differ in the order of their sums
(``tests/test_onednn_conv.py`` bounds the difference on whole runs).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp

from sslprune_jax.kernels import onednn_conv

CONV_IMPLS = ('auto', 'xla', 'onednn')


def check_conv_impl(
    choice: str, platform: str | None = None, dtype: Any = jnp.float32
) -> str | None:
  """Why `choice` cannot run on `platform` in `dtype` (None where it can)."""
  if choice not in CONV_IMPLS:
    return f'Unknown model.conv_impl {choice!r}; valid: {CONV_IMPLS}.'
  platform = platform or jax.default_backend()
  if choice == 'onednn':
    if platform != 'cpu':
      return (
          f"model.conv_impl='onednn' runs on the CPU only, not on "
          f"{platform}; use 'auto' or 'xla'."
      )
    if jnp.dtype(dtype) != jnp.float32:
      return (
          f"model.conv_impl='onednn' computes in float32 only, not "
          f"{jnp.dtype(dtype).name}; use 'auto' or 'xla'."
      )
    reason = onednn_conv.availability()
    if reason is not None:
      return f"model.conv_impl='onednn' is unavailable here: {reason}."
  return None


def resolve_conv_impl(
    choice: str, platform: str | None = None, dtype: Any = jnp.float32
) -> str:
  """'xla' or 'onednn': the convolution a model config's choice runs.

  Raises:
    ValueError: for an unknown choice, or 'onednn' where it cannot run.
  """
  problem = check_conv_impl(choice, platform, dtype)
  if problem is not None:
    raise ValueError(problem)
  if choice != 'auto':
    return choice
  platform = platform or jax.default_backend()
  if platform != 'cpu' or jnp.dtype(dtype) != jnp.float32:
    return 'xla'
  reason = onednn_conv.availability()
  if reason is not None:
    _log_fallback(reason)
    return 'xla'
  return 'onednn'


@functools.cache
def _log_fallback(reason: str) -> None:
  logging.warning(
      "model.conv_impl='auto' uses XLA's convolutions (slower "
      'on the CPU): %s',
      reason,
  )


def conv_general_dilated(impl: str) -> Callable | None:
  """The function flax's ``nn.Conv(conv_general_dilated=...)`` takes.

  None for 'xla' (flax's default, ``lax.conv_general_dilated``).
  """
  if impl == 'xla':
    return None
  if impl == 'onednn':
    return onednn_conv.conv_general_dilated
  raise ValueError(
      f"Unresolved conv_impl {impl!r}; expected 'xla' or "
      "'onednn' (see resolve_conv_impl)."
  )
