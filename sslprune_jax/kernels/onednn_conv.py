"""Convolutions on the CPU through oneDNN, called from jitted JAX code.

XLA:CPU's own convolutions reach 0.3-0.6 of the machine's matmul peak at the
16-64 channels of the CIFAR networks, above all in the weight gradient (see
``python -m sslprune_jax.bench --sections=conv``). oneDNN's direct
convolutions, with the kernel in its blocked layout and the images left in
NHWC, run these at the peak. This module compiles ``onednn_conv.cc`` (three
XLA FFI targets: forward, input gradient, weight gradient) against the
system's oneDNN on first use, registers it with JAX and exposes
:func:`conv_general_dilated`, a drop-in for ``lax.conv_general_dilated`` with a
custom VJP, for flax's ``nn.Conv(conv_general_dilated=...)``.

The library is built into a per-user cache keyed by the source, jaxlib's
version and the compiler, so it is compiled once (about 6 s). It needs a C++
compiler and oneDNN's headers (Debian/Ubuntu: ``apt install g++
libdnnl-dev``); :func:`availability` says why it cannot be used where it
cannot.

Only what oneDNN computes exactly like XLA goes through it: float32, 2-D,
NHWC images, HWIO kernels, no dilation, one feature group. Anything else is
handed to ``lax.conv_general_dilated`` unchanged.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

SOURCE = pathlib.Path(__file__).with_name('onednn_conv.cc')

TARGETS = {
    'fwd': 'SslpruneOnednnConvFwd',
    'bwd_data': 'SslpruneOnednnConvBwdData',
    'bwd_weights': 'SslpruneOnednnConvBwdWeights',
}

NHWC = ('NHWC', 'HWIO', 'NHWC')


class Unavailable(RuntimeError):
  """The oneDNN kernel cannot be built or loaded on this machine."""


def cache_dir() -> pathlib.Path:
  """Where built libraries are kept: ``$SSLPRUNE_JAX_CACHE`` or XDG's."""
  root = os.environ.get('SSLPRUNE_JAX_CACHE')
  if root is None:
    xdg = os.environ.get('XDG_CACHE_HOME', pathlib.Path.home() / '.cache')
    root = pathlib.Path(xdg) / 'sslprune_jax'
  return pathlib.Path(root) / 'kernels'


def _compiler() -> str:
  cxx = os.environ.get('CXX', 'g++')
  if shutil.which(cxx) is None:
    raise Unavailable(
        f'no C++ compiler ({cxx!r} is not on PATH); on '
        'Debian/Ubuntu: apt install g++ libdnnl-dev'
    )
  return cxx


def _command(cxx: str, output: pathlib.Path) -> list[str]:
  return [
      cxx,
      '-O2',
      '-std=c++17',
      '-shared',
      '-fPIC',
      '-fopenmp',
      '-w',
      f'-I{jax.ffi.include_dir()}',
      str(SOURCE),
      '-o',
      str(output),
      '-ldnnl',
  ]


def library_path() -> pathlib.Path:
  """The built library's path: one per source, jaxlib version and compiler."""
  cxx = _compiler()
  key = hashlib.sha256()
  key.update(SOURCE.read_bytes())
  key.update(jax.lib.__version__.encode())
  key.update(' '.join(_command(cxx, pathlib.Path('-'))).encode())
  return cache_dir() / f'onednn_conv-{key.hexdigest()[:16]}.so'


def build() -> pathlib.Path:
  """Compiles the library unless the cache already has it.

  The library is written under a temporary name and renamed into place, so
  processes that build it at the same time never load a half-written file.

  Returns:
    The library's path.

  Raises:
    Unavailable: no compiler, or the compilation failed (e.g. no oneDNN).
  """
  path = library_path()
  if path.exists():
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
    partial = pathlib.Path(tmp) / path.name
    done = subprocess.run(
        _command(_compiler(), partial),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
      lines = done.stderr.strip().splitlines()
      hint = (
          '; on Debian/Ubuntu: apt install libdnnl-dev'
          if 'dnnl' in done.stderr
          else ''
      )
      raise Unavailable(
          'compiling the oneDNN convolution failed'
          f'{hint}: {lines[0] if lines else done.returncode}'
      )
    os.replace(partial, path)
  return path


@functools.cache
def _load() -> None:
  library = ctypes.CDLL(str(build()))
  for name, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(
        f'sslprune_onednn_conv_{name}',
        jax.ffi.pycapsule(getattr(library, symbol)),
        platform='cpu',
    )


@functools.cache
def availability() -> str | None:
  """None where the kernel can be used, else the reason it cannot."""
  try:
    _load()
  except (Unavailable, OSError) as e:
    return str(e)
  return None


def _call(
    name: str,
    shape: tuple[int, ...],
    a: jax.Array,
    b: jax.Array,
    strides: tuple[int, int],
    padding: tuple[tuple[int, int], ...],
):
  _load()
  # Inside shard_map the result varies over the same mesh axes as the inputs.
  out = jax.typeof(a).update(shape=shape, dtype=jnp.float32)
  (top, bottom), (left, right) = padding
  return jax.ffi.ffi_call(
      f'sslprune_onednn_conv_{name}', out, vmap_method='sequential'
  )(
      a,
      b,
      stride_h=np.int64(strides[0]),
      stride_w=np.int64(strides[1]),
      pad_top=np.int64(top),
      pad_left=np.int64(left),
      pad_bottom=np.int64(bottom),
      pad_right=np.int64(right),
      threads=np.int64(_threads()),
  )


def _threads() -> int:
  """oneDNN threads per call: all cores (0) for one CPU device, else 1.

  With several CPU devices in the process (simulated ones, as in the
  tests) XLA runs their programs side by side, one thread each; oneDNN's
  own threads on top of those oversubscribe the cores and, measured, hold
  some devices back past the 40 s XLA gives a collective to assemble.
  """
  return 1 if jax.local_device_count('cpu') > 1 else 0


def _out_shape(x_shape, w_shape, strides, padding) -> tuple[int, ...]:
  spatial = tuple(
      (size + lo + hi - k) // s + 1
      for size, k, s, (lo, hi) in zip(
          x_shape[1:3], w_shape[:2], strides, padding
      )
  )
  return (x_shape[0], *spatial, w_shape[3])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_nhwc(
    x: jax.Array,
    w: jax.Array,
    strides: tuple[int, int],
    padding: tuple[tuple[int, int], ...],
) -> jax.Array:
  """A float32 NHWC x HWIO convolution computed by oneDNN."""
  return _call(
      'fwd',
      _out_shape(x.shape, w.shape, strides, padding),
      x,
      w,
      strides,
      padding,
  )


def _forward(x, w, strides, padding):
  return conv_nhwc(x, w, strides, padding), (x, w)


def _backward(strides, padding, residuals, dy):
  x, w = residuals
  dx = _call('bwd_data', x.shape, dy, w, strides, padding)
  dw = _call('bwd_weights', w.shape, x, dy, strides, padding)
  return dx, dw


conv_nhwc.defvjp(_forward, _backward)


def _explicit_padding(padding, x_shape, w_shape, strides):
  if isinstance(padding, str):
    return tuple(
        lax.padtype_to_pads(x_shape[1:3], w_shape[:2], strides, padding)
    )
  return tuple(tuple(int(p) for p in pair) for pair in padding)


def _is_nhwc(lhs: jax.Array, rhs: jax.Array, dimension_numbers) -> bool:
  if lhs.ndim != 4 or rhs.ndim != 4:
    return False
  return lax.conv_dimension_numbers(
      lhs.shape, rhs.shape, dimension_numbers
  ) == lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)


def supported(
    lhs: jax.Array,
    rhs: jax.Array,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    preferred_element_type: Any = None,
) -> bool:
  """Whether oneDNN takes this convolution (else XLA's is used)."""
  undilated = all(
      d is None or all(int(k) == 1 for k in d)
      for d in (lhs_dilation, rhs_dilation)
  )
  return (
      lhs.dtype == jnp.float32
      and rhs.dtype == jnp.float32
      and preferred_element_type in (None, jnp.float32)
      and undilated
      and feature_group_count == 1
      and batch_group_count == 1
      and _is_nhwc(lhs, rhs, dimension_numbers)
  )


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
  """``lax.conv_general_dilated``, through oneDNN where it is supported.

  `precision` is moot on the CPU, where float32 convolutions are float32
  whatever it says.
  """
  if not supported(
      lhs,
      rhs,
      lhs_dilation,
      rhs_dilation,
      dimension_numbers,
      feature_group_count,
      batch_group_count,
      preferred_element_type,
  ):
    return lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
  strides = tuple(int(s) for s in window_strides)
  pads = _explicit_padding(padding, lhs.shape, rhs.shape, strides)
  return conv_nhwc(*_same_variance(lhs, rhs), strides, pads)


def _same_variance(*arrays: jax.Array) -> list[jax.Array]:
  """Casts the operands to vary over the same shard_map axes.

  A custom call has one result type, so its operands must agree; the cast's
  transpose sums a replicated kernel's gradient over the axes, as XLA's own
  convolution does.
  """
  varying = [jax.typeof(a).manual_axis_type.varying for a in arrays]
  axes = frozenset().union(*varying)
  return [
      lax.pcast(a, tuple(sorted(axes - v)), to='varying') if axes - v else a
      for a, v in zip(arrays, varying)
  ]
