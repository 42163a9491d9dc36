"""The 'nm' encoding: an N:M kernel as n values and n indices per group.

Groups are those of `sslprune_jax.pruning.nm`: m consecutive weights along
the kernel's input dimension (axis -2), the last group of each column
padded to m. Each group stores exactly n slots: the kept weights' values,
in order, and their positions in the group as ceil(log2(m))-bit indices
packed into bytes (2 bits for 2:4, 3 for 1:8). An edge group of r < n
weights fills its other slots with padding positions (>= r), whose values
are zero and which reading drops. So a float32 2:4 kernel takes 8.5 bytes
per 4 weights (as a bitmask does), a 1:8 kernel 4.375 per 8 (a bitmask
5), in the layout sparse kernels read.

A kernel is stored so only if every group keeps exactly min(n, r) weights
(`conforms`); NumPy only.
"""

from __future__ import annotations

import math

import numpy as np

# Indices are unpacked through uint8.
MAX_M = 256


def index_bits(m: int) -> int:
  """Bits of one position in a group of m."""
  return max(1, math.ceil(math.log2(m)))


def _grouped(x: np.ndarray, m: int, fill) -> np.ndarray:
  """[rows, m]: every group of `x` (input axis -2), padded with `fill`."""
  x = np.moveaxis(x, -2, -1)
  pad = -x.shape[-1] % m
  x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)], constant_values=fill)
  return x.reshape(-1, m)


def _ungrouped(groups: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """The inverse of `_grouped` for a kernel of `shape`."""
  moved = (*shape[:-2], shape[-1], shape[-2])
  c = shape[-2]
  flat = groups.reshape(*moved[:-1], -1)[..., :c]
  return np.ascontiguousarray(np.moveaxis(flat, -1, -2))


def _padding(shape: tuple[int, ...], m: int) -> np.ndarray:
  """[rows, m]: True at the padding positions."""
  return _grouped(np.zeros(shape, np.bool_), m, True)


def conforms(keep: np.ndarray, n: int, m: int) -> bool:
  """Whether every group of the kernel mask `keep` keeps exactly min(n,
  r) of its r weights."""
  if keep.ndim < 2 or keep.shape[-2] < m or not 1 <= n <= m <= MAX_M:
    return False
  counts = _grouped(keep, m, False).sum(axis=-1)
  sizes = m - _padding(keep.shape, m).sum(axis=-1)
  return bool(np.all(counts == np.minimum(n, sizes)))


def packed_bytes(shape: tuple[int, ...], n: int, m: int, itemsize: int) -> int:
  """Bytes the encoding takes for a kernel of `shape`."""
  rows = math.prod(shape) // shape[-2] * -(-shape[-2] // m)
  return rows * n * itemsize + math.ceil(rows * n * index_bits(m) / 8)


def pack(
    values: np.ndarray, keep: np.ndarray, n: int, m: int
) -> tuple[np.ndarray, np.ndarray]:
  """(slot values [rows * n], packed indices uint8) of a kernel whose mask
  `conforms`."""
  take = _grouped(keep, m, False)
  pad = _padding(keep.shape, m)
  need = n - take.sum(axis=-1, keepdims=True)
  take = take | (pad & (np.cumsum(pad, axis=-1) <= need))
  # The True positions of each row, in order.
  slots = np.sort(np.argsort(~take, axis=-1, kind='stable')[:, :n], axis=-1)
  slot_values = np.take_along_axis(_grouped(values, m, 0), slots, axis=-1)
  bits = index_bits(m)
  shifts = np.arange(bits - 1, -1, -1, dtype=np.uint16)
  index_bits_array = (slots[..., None].astype(np.uint16) >> shifts) & 1
  return slot_values.reshape(-1), np.packbits(
      index_bits_array.astype(np.uint8).reshape(-1)
  )


def unpack(
    slot_values: np.ndarray,
    packed: np.ndarray,
    shape: tuple[int, ...],
    n: int,
    m: int,
) -> tuple[np.ndarray, np.ndarray]:
  """(dense values, boolean mask) of a kernel stored by `pack`."""
  rows = math.prod(shape) // shape[-2] * -(-shape[-2] // m)
  bits = index_bits(m)
  flat = np.unpackbits(packed, count=rows * n * bits).reshape(rows, n, bits)
  slots = (flat.astype(np.int64) << np.arange(bits - 1, -1, -1)).sum(-1)
  if np.any(slots >= m) or np.any(np.diff(slots, axis=-1) <= 0):
    raise ValueError('N:M indices out of range or out of order')
  dense = np.zeros((rows, m), slot_values.dtype)
  keep = np.zeros((rows, m), np.bool_)
  np.put_along_axis(dense, slots, slot_values.reshape(rows, n), axis=-1)
  np.put_along_axis(keep, slots, True, axis=-1)
  return _ungrouped(dense, shape), _ungrouped(keep, shape)
