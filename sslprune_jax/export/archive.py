"""The export's file: `save` writes network.npz, `load` reads it back.

The layout, pools and manifest are described in `sslprune_jax.export`; a
file that does not match them is refused as damaged, with how to export the
network again.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from etils import epath

from sslprune_jax import parallel
from sslprune_jax.export import encodings
from sslprune_jax.export import nm_pack

PyTree = Any

FILENAME = 'network.npz'
FORMAT = 'sslprune_jax.export'
# Version 2 adds the 'nm' encoding; a file without it is written as version
# 1, byte for byte as before, so that older readers still read it.
VERSION = 2
READABLE_VERSIONS = (1, 2)

_REEXPORT = (
    "Export the network again from the run's checkpoint: python -m "
    'sslprune_jax.export --workdir=RUN --round=N --out=DIR.'
)


def _flatten(
    tree: Mapping, prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], Any]]:
  """(path, leaf) for every leaf of nested mappings, in their key order."""
  out = []
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out += _flatten(value, prefix + (str(key),))
    else:
      out.append((prefix + (str(key),), value))
  return out


def _insert(tree: dict, path: list[str], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


class _Pools:
  """Growing lists of arrays, one per pool name, and their lengths."""

  def __init__(self):
    self.parts: dict[str, list[np.ndarray]] = {}
    self.lengths: dict[str, int] = {}

  def add(self, name: str, array: np.ndarray) -> int:
    """Appends a 1-D array to pool `name`; returns its offset there."""
    offset = self.lengths.get(name, 0)
    self.parts.setdefault(name, []).append(array)
    self.lengths[name] = offset + array.size
    return offset

  def arrays(self) -> dict[str, np.ndarray]:
    return {name: np.concatenate(parts) for name, parts in self.parts.items()}


def _encode(
    variables: Mapping, mask: Mapping, pattern: tuple[int, int] | None = None
) -> dict[str, np.ndarray]:
  """The arrays of the export file, 'manifest' included."""
  if 'params' not in variables:
    raise ValueError(
        'variables must hold a "params" collection, got keys '
        f'{sorted(variables)}.'
    )
  mask_leaves = dict(_flatten(mask, ('params',)))
  leaves = _flatten(variables)
  param_paths = {p for p, _ in leaves if p[0] == 'params'}
  if set(mask_leaves) != param_paths:
    raise ValueError(
        'The mask does not have the structure of params: only in the mask: '
        f'{sorted(set(mask_leaves) - param_paths)}, only in params: '
        f'{sorted(param_paths - set(mask_leaves))}.'
    )
  pools, manifest = _Pools(), []
  for path, leaf in leaves:
    values = parallel.to_host(leaf)
    entry = {
        'path': list(path),
        'shape': list(values.shape),
        'dtype': values.dtype.name,
    }
    flat = encodings.storable(values).reshape(-1)
    pool = f'values_{values.dtype.name}'
    if path[0] != 'params':
      entry.update(
          encoding='dense', kept=flat.size, values=pools.add(pool, flat)
      )
      manifest.append(entry)
      continue
    keep = parallel.to_host(mask_leaves[path])
    if keep.dtype != np.bool_ or keep.shape != values.shape:
      raise ValueError(
          f'The mask of {"/".join(path)} must be a boolean array of shape '
          f'{values.shape}, got {keep.dtype} {keep.shape}.'
      )
    if pattern is not None and nm_pack.conforms(keep, *pattern):
      n, m = pattern
      slot_values, packed = nm_pack.pack(encodings.storable(values), keep, n, m)
      entry.update(
          encoding='nm',
          kept=int(keep.sum()),
          n=n,
          m=m,
          values=pools.add(pool, slot_values),
          nm_indices=pools.add('nm_indices', packed),
      )
      manifest.append(entry)
      continue
    keep = keep.reshape(-1)
    kept = int(keep.sum())
    encoding = encodings.choose_encoding(flat.size, kept)
    entry.update(encoding=encoding, kept=kept)
    if encoding == 'dense':
      entry['values'] = pools.add(pool, flat)
    else:
      entry['values'] = pools.add(pool, flat[keep])
    if encoding == 'bitmask':
      entry['bits'] = pools.add('bits', np.packbits(keep))
    elif encoding == 'indices':
      dtype = encodings.index_dtype(flat.size)
      entry['index_dtype'] = dtype.name
      entry['indices'] = pools.add(
          f'indices_{dtype.name}', np.flatnonzero(keep).astype(dtype)
      )
    manifest.append(entry)
  arrays = pools.arrays()
  version = VERSION if any(e['encoding'] == 'nm' for e in manifest) else 1
  text = json.dumps(
      {'format': FORMAT, 'version': version, 'leaves': manifest},
      separators=(',', ':'),
  )
  arrays['manifest'] = np.frombuffer(text.encode('utf-8'), np.uint8)
  return arrays


def save(
    directory: str,
    variables: PyTree,
    mask: PyTree,
    pattern: tuple[int, int] | None = None,
) -> int:
  """Writes the pruned network to `directory`/network.npz.

  The file is written under a temporary name and renamed when complete, so a
  killed export leaves no partial file. Only process 0 writes; every process
  encodes the network and returns the same size, that of the file process 0
  writes. Arrays sharded over several processes are gathered first, so all
  processes must call `save` together.

  Args:
    directory: where the file goes (created if missing; any epath, gs://
      included).
    variables: {'params': ..., 'batch_stats': ...}, nested dicts of arrays.
      Weights at pruned positions need not be zero: they are not stored.
    mask: boolean arrays with the structure of variables['params'], True
      where the weight is kept.
    pattern: (n, m) of an N:M mask: the kernels that follow it exactly are
      stored as n values and indices per group ('nm', `export.nm_pack`).

  Returns:
    The size of the file in bytes.

  Raises:
    ValueError: if the mask does not match the params or is not boolean.
  """
  buffer = io.BytesIO()
  np.savez(buffer, **_encode(variables, mask, pattern))
  data = buffer.getvalue()
  if jax.process_index() == 0:
    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f'{FILENAME}.tmp'
    tmp.write_bytes(data)
    tmp.replace(directory / FILENAME)
  return len(data)


def _damaged(path: epath.Path, why: str) -> ValueError:
  return ValueError(
      f'{path} is damaged or is not a network export: {why}. ' + _REEXPORT
  )


def _read(path: epath.Path) -> tuple[dict, dict[str, np.ndarray]]:
  """The manifest and the arrays of an export file, checked readable."""
  if not path.exists():
    raise FileNotFoundError(
        f'{path} does not exist: no network was exported there. Export one '
        'with sslprune_jax.export.save, or from a run with python -m '
        'sslprune_jax.export --workdir=RUN --round=N --out=DIR.'
    )
  try:
    with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as npz:
      arrays = {name: npz[name] for name in npz.files}
    manifest = json.loads(arrays.pop('manifest').tobytes().decode('utf-8'))
  except Exception as e:  # Zip, npy and JSON errors are of many types.
    raise _damaged(path, f'{type(e).__name__}: {e}') from e
  if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
    raise _damaged(path, 'its manifest does not name the format ' f'{FORMAT!r}')
  if manifest.get('version') not in READABLE_VERSIONS:
    raise _damaged(
        path,
        f'it has format version {manifest.get("version")!r}'
        f', this code reads versions {READABLE_VERSIONS}',
    )
  return manifest, arrays


def read_manifest(directory: str) -> dict:
  """The manifest of the export in `directory` (format in the docstring)."""
  return _read(epath.Path(directory) / FILENAME)[0]


def _slice(arrays: dict, pool: str, offset: int, count: int) -> np.ndarray:
  array = arrays.get(pool)
  if (
      array is None
      or array.ndim != 1
      or offset < 0
      or offset + count > array.size
  ):
    raise ValueError(
        f'pool {pool!r} has no elements {offset} to ' f'{offset + count}'
    )
  return array[offset : offset + count]


def _decode_nm(entry, arrays, shape, dtype, stored):
  """(dense values, boolean mask) of an 'nm' entry."""
  n, m = int(entry['n']), int(entry['m'])
  if len(shape) < 2 or not 1 <= n <= m <= nm_pack.MAX_M:
    raise ValueError(f'an {n}:{m} entry of shape {shape}')
  rows = math.prod(shape) // shape[-2] * -(-shape[-2] // m)
  values = _slice(
      arrays, f'values_{dtype.name}', int(entry['values']), rows * n
  )
  if values.dtype != stored:
    raise ValueError(f'values of dtype {values.dtype}, expected {stored}')
  packed = _slice(
      arrays,
      'nm_indices',
      int(entry['nm_indices']),
      math.ceil(rows * n * nm_pack.index_bits(m) / 8),
  )
  dense, keep = nm_pack.unpack(values, packed, shape, n, m)
  if int(keep.sum()) != int(entry['kept']):
    raise ValueError(
        f'the mask keeps {int(keep.sum())} weights, the manifest says '
        f'{entry["kept"]}'
    )
  return dense.view(dtype), keep


def _decode_leaf(entry: dict, arrays: dict) -> tuple[np.ndarray, np.ndarray]:
  """(dense values, boolean mask) of one manifest entry."""
  dtype = encodings.dtype_named(entry['dtype'])
  shape = tuple(int(d) for d in entry['shape'])
  size = math.prod(shape)
  kept = int(entry['kept'])
  encoding = entry['encoding']
  stored = encodings.storable(np.zeros(0, dtype)).dtype
  if encoding == 'nm':
    return _decode_nm(entry, arrays, shape, dtype, stored)
  values = _slice(
      arrays,
      f'values_{dtype.name}',
      int(entry['values']),
      size if encoding == 'dense' else kept,
  )
  if values.dtype != stored:
    raise ValueError(f'values of dtype {values.dtype}, expected {stored}')
  values = values.view(dtype)
  if encoding == 'dense':
    return values.reshape(shape), np.ones(shape, np.bool_)
  if encoding == 'bitmask':
    bits = _slice(arrays, 'bits', int(entry['bits']), math.ceil(size / 8))
    keep = np.unpackbits(bits, count=size).astype(np.bool_)
  elif encoding == 'indices':
    index_type = encodings.index_dtype(size)
    if entry['index_dtype'] != index_type.name:
      raise ValueError(
          f'index dtype {entry["index_dtype"]}, expected ' f'{index_type.name}'
      )
    positions = _slice(
        arrays, f'indices_{index_type.name}', int(entry['indices']), kept
    ).astype(np.int64)
    if kept and (
        positions[0] < 0
        or positions[-1] >= size
        or np.any(np.diff(positions) <= 0)
    ):
      raise ValueError('kept positions out of range or out of order')
    keep = np.zeros(size, np.bool_)
    keep[positions] = True
  else:
    raise ValueError(f'unknown encoding {encoding!r}')
  if int(keep.sum()) != kept:
    raise ValueError(
        f'the mask keeps {int(keep.sum())} weights, the '
        f'manifest says {kept}'
    )
  dense = np.zeros(size, dtype)
  dense[keep] = values
  return dense.reshape(shape), keep.reshape(shape)


def load(directory: str) -> tuple[dict, dict]:
  """Reads back a network written by `save`.

  Args:
    directory: the directory given to `save`.

  Returns:
    (variables, mask): variables as {'params': ..., 'batch_stats': ...} with
    the saved structure, the params dense with zeros where pruned and the
    kept weights bit for bit as saved; mask boolean, shaped like params.
    All leaves are NumPy arrays of the saved dtypes.

  Raises:
    FileNotFoundError: if `directory` holds no export.
    ValueError: if the file is damaged, truncated or of another format
      version (the message says to export the network again).
  """
  path = epath.Path(directory) / FILENAME
  manifest, arrays = _read(path)
  variables, mask = {}, {}
  try:
    for entry in manifest['leaves']:
      keys = [str(k) for k in entry['path']]
      values, keep = _decode_leaf(entry, arrays)
      _insert(variables, keys, values)
      if keys[0] == 'params':
        _insert(mask, keys[1:], keep)
  except Exception as e:  # Any inconsistency of the manifest and arrays.
    raise _damaged(path, f'{type(e).__name__}: {e}') from e
  if 'params' not in variables:
    raise _damaged(path, 'it holds no params')
  return variables, mask
