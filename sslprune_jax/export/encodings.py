"""The encodings of a pruned leaf and their sizes (see `sslprune_jax.export`).

Which of 'dense', 'bitmask' and 'indices' stores a leaf in the fewest bytes
(`choose_encoding`, `encoded_bytes`), the index type of its positions
(`index_dtype`), and the dtypes NumPy cannot save itself, stored bit for bit
as unsigned integers (`storable`, `dtype_named`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import ml_dtypes
import numpy as np

PyTree = Any

PyTree = Any
_INDEX_DTYPES = (np.uint8, np.uint16, np.uint32, np.uint64)


def index_dtype(size: int) -> np.dtype:
  """The smallest unsigned integer type holding every flat position < size.

  Args:
    size: number of elements of the leaf.

  Returns:
    uint8, uint16, uint32 or uint64: the first whose maximum is >= size - 1.
  """
  for dtype in _INDEX_DTYPES:
    if size - 1 <= np.iinfo(dtype).max:
      return np.dtype(dtype)
  raise ValueError(f'A leaf of {size} elements is too large to index.')


def dtype_named(name: str) -> np.dtype:
  """A dtype from its name, including ml_dtypes' (bfloat16, float8_*)."""
  if hasattr(ml_dtypes, name):
    return np.dtype(getattr(ml_dtypes, name))
  return np.dtype(name)


def storable(values: np.ndarray) -> np.ndarray:
  """`values` as an array np.save writes and np.load reads back exactly.

  NumPy saves ml_dtypes' types (bfloat16, ...) as opaque void bytes; they
  are stored as unsigned integers of the same width instead, bit for bit.
  """
  if values.dtype.kind == 'V':
    return values.view(np.dtype(f'u{values.dtype.itemsize}'))
  if values.dtype.kind not in 'biufc':
    raise ValueError(f'Cannot export arrays of dtype {values.dtype}.')
  return values


def choose_encoding(size: int, kept: int) -> str:
  """The smallest encoding of a leaf of `size` weights keeping `kept`.

  Both sparse encodings store the same kept values, so only the cost of
  saying which weights are kept decides between them.

  Args:
    size: the leaf's number of weights.
    kept: how many of them the mask keeps.

  Returns:
    'dense' if every weight is kept; otherwise 'bitmask' or 'indices',
    whichever needs fewer bytes (the bitmask on a tie).
  """
  if kept == size:
    return 'dense'
  bitmask = math.ceil(size / 8)
  indices = kept * index_dtype(size).itemsize
  return 'bitmask' if bitmask <= indices else 'indices'


def encoded_bytes(size: int, kept: int, itemsize: int) -> int:
  """Bytes of array data a leaf takes in the export (no file overhead)."""
  encoding = choose_encoding(size, kept)
  if encoding == 'dense':
    return size * itemsize
  if encoding == 'bitmask':
    return math.ceil(size / 8) + kept * itemsize
  return kept * (index_dtype(size).itemsize + itemsize)


def dense_bytes(variables: PyTree) -> int:
  """Bytes of array data of the network stored densely, without a mask."""
  return sum(
      int(np.size(x)) * np.dtype(x.dtype).itemsize
      for x in jax.tree.leaves(variables)
  )
