"""A compact export of a pruned network: only the weights it has left.

A pruned network checkpoint holds every weight, pruned or not, plus a mask as
large as the weights. `save` writes instead one plain NumPy file,
`<directory>/network.npz` (`np.savez`, uncompressed), from which `load`
rebuilds the dense parameters (exact zeros where pruned, the kept weights
bit for bit), the batch-norm statistics and the mask. Each parameter leaf is
stored in whichever of three encodings takes the fewest bytes:

  'dense'    the leaf is fully kept: its values only (no mask needed).
  'bitmask'  `np.packbits` of the flattened mask, ceil(size / 8) bytes, and
             the kept values in flat (C) order.
  'indices'  the flat positions of the kept weights, in the smallest unsigned
             integer type that holds size - 1 (`index_dtype`), and the kept
             values in the same order.

A partly pruned leaf thus costs min(ceil(size / 8), kept * index bytes) +
kept * value bytes (ties go to the bitmask). Other collections than
'params' (the batch-norm statistics) are stored dense.

File layout. So that a file does not pay NumPy's few hundred bytes of
per-array overhead for every leaf, the arrays are pooled: all values of one
dtype go, leaf after leaf, into one array 'values_<dtype>' (dtypes NumPy
cannot save itself, such as bfloat16, as unsigned integers of the same width,
bit for bit), all packed masks into 'bits', and all positions of one index
type into 'indices_<type>'. The array 'manifest' holds the UTF-8 bytes of a
JSON object:

  {'format': 'sslprune_jax.export', 'version': 1,
   'leaves': [{'path': ['params', 'Conv_0', 'kernel'], 'shape': [3, 3, 1, 16],
               'dtype': 'float32', 'encoding': 'indices', 'kept': 12,
               'values': <offset into values_float32>,
               'indices': <offset into indices_uint16>,
               'index_dtype': 'uint16'}, ...]}

with 'bits' (a byte offset into 'bits') instead of 'indices' for a bitmask
leaf, and neither for a dense one. Paths are lists of keys from the
variables' root, so a key may hold any character.

From the command line, round N of a finished pruning run:

  python -m sslprune_jax.export --workdir=/tmp/labels_quick --round=2 \
      --out=/tmp/labels_quick_r2

prints the fraction of the prunable weights left, the size of the export and
the dense size of the same network.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from typing import Any

import jax
import ml_dtypes
import numpy as np
from absl import app
from absl import flags
from absl import logging
from etils import epath

from sslprune_jax import parallel

PyTree = Any

FILENAME = 'network.npz'
FORMAT = 'sslprune_jax.export'
VERSION = 1
ENCODINGS = ('dense', 'bitmask', 'indices')
_INDEX_DTYPES = (np.uint8, np.uint16, np.uint32, np.uint64)

_REEXPORT = (
    "Export the network again from the run's checkpoint: python -m "
    'sslprune_jax.export --workdir=RUN --round=N --out=DIR.'
)


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


def _dtype(name: str) -> np.dtype:
  """A dtype from its name, including ml_dtypes' (bfloat16, float8_*)."""
  if hasattr(ml_dtypes, name):
    return np.dtype(getattr(ml_dtypes, name))
  return np.dtype(name)


def _storable(values: np.ndarray) -> np.ndarray:
  """`values` as an array np.save writes and np.load reads back exactly.

  NumPy saves ml_dtypes' types (bfloat16, ...) as opaque void bytes; they
  are stored as unsigned integers of the same width instead, bit for bit.
  """
  if values.dtype.kind == 'V':
    return values.view(np.dtype(f'u{values.dtype.itemsize}'))
  if values.dtype.kind not in 'biufc':
    raise ValueError(f'Cannot export arrays of dtype {values.dtype}.')
  return values


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


def _encode(variables: Mapping, mask: Mapping) -> dict[str, np.ndarray]:
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
    flat = _storable(values).reshape(-1)
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
    keep = keep.reshape(-1)
    kept = int(keep.sum())
    encoding = choose_encoding(flat.size, kept)
    entry.update(encoding=encoding, kept=kept)
    if encoding == 'dense':
      entry['values'] = pools.add(pool, flat)
    else:
      entry['values'] = pools.add(pool, flat[keep])
    if encoding == 'bitmask':
      entry['bits'] = pools.add('bits', np.packbits(keep))
    elif encoding == 'indices':
      dtype = index_dtype(flat.size)
      entry['index_dtype'] = dtype.name
      entry['indices'] = pools.add(
          f'indices_{dtype.name}', np.flatnonzero(keep).astype(dtype)
      )
    manifest.append(entry)
  arrays = pools.arrays()
  text = json.dumps(
      {'format': FORMAT, 'version': VERSION, 'leaves': manifest},
      separators=(',', ':'),
  )
  arrays['manifest'] = np.frombuffer(text.encode('utf-8'), np.uint8)
  return arrays


def save(directory: str, variables: PyTree, mask: PyTree) -> int:
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

  Returns:
    The size of the file in bytes.

  Raises:
    ValueError: if the mask does not match the params or is not boolean.
  """
  buffer = io.BytesIO()
  np.savez(buffer, **_encode(variables, mask))
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
  if manifest.get('version') != VERSION:
    raise _damaged(
        path,
        f'it has format version {manifest.get("version")!r}'
        f', this code reads version {VERSION}',
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


def _decode_leaf(entry: dict, arrays: dict) -> tuple[np.ndarray, np.ndarray]:
  """(dense values, boolean mask) of one manifest entry."""
  dtype = _dtype(entry['dtype'])
  shape = tuple(int(d) for d in entry['shape'])
  size = math.prod(shape)
  kept = int(entry['kept'])
  encoding = entry['encoding']
  stored = _storable(np.zeros(0, dtype)).dtype
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
    index_type = index_dtype(size)
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


def export_round(
    workdir: str, round_idx: int, out: str, point: str = 'final'
) -> dict:
  """Exports round `round_idx` of the finished pruning run in `workdir`.

  Args:
    workdir: a pruning run's workdir.
    round_idx: one of its finished rounds.
    out: the directory to export to.
    point: 'final' (the round's trained weights) or 'rewind' (the rewind
      point's weights under the round's mask).

  Returns:
    {'path', 'kept', 'total', 'fraction_left', 'bytes', 'dense_bytes'}:
    kept and total prunable weights (the leaves the run's pruning.exclude
    and pruning.min_ndim allow; a layerwise run's other layers count as
    fully kept), the export's size and the dense size of the same params
    and batch_stats, in bytes.
  """
  # Imported here: loading an export needs neither Orbax nor the training
  # code, only NumPy.
  from sslprune_jax import pruning  # pylint: disable=g-import-not-at-top
  from sslprune_jax.rundir import sources  # pylint: disable=g-import-not-at-top

  config = sources.source_config(workdir)
  config, saved = sources.read_source_round(
      config, workdir, round_idx, point=point
  )
  variables = {'params': saved['params'], 'batch_stats': saved['batch_stats']}
  prunable = pruning.prunable_tree(
      saved['params'],
      exclude=tuple(config.pruning.exclude),
      min_ndim=config.pruning.min_ndim,
  )
  kept, total = pruning.count(saved['mask'], prunable)
  size = save(out, variables, saved['mask'])
  return {
      'path': str(epath.Path(out) / FILENAME),
      'kept': kept,
      'total': total,
      'fraction_left': kept / total,
      'bytes': size,
      'dense_bytes': dense_bytes(variables),
  }


def format_summary(summary: dict) -> str:
  """The result of `export_round` as three lines of text."""
  return (
      f"{summary['path']}\n"
      f"prunable weights left: {summary['kept']} of {summary['total']} "
      f"({100 * summary['fraction_left']:.2f}%)\n"
      f"export: {summary['bytes']} bytes, dense: "
      f"{summary['dense_bytes']} bytes "
      f"({100 * summary['bytes'] / summary['dense_bytes']:.1f}%)"
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it reads.
  values = flags.FLAGS
  try:
    summary = export_round(
        values.workdir, values.round, values.out, values.point
    )
  except (ValueError, FileNotFoundError, RuntimeError) as e:
    raise SystemExit(f'error: {e}') from None
  print(format_summary(summary))


if __name__ == '__main__':
  # Defined here, not on import: other modules define --workdir and --out.
  flags.DEFINE_string('workdir', None, 'A pruning run.', required=True)
  flags.DEFINE_integer('round', None, 'A finished round of it.', required=True)
  flags.DEFINE_string(
      'out', None, 'Directory to write network.npz to.', required=True
  )
  flags.DEFINE_enum(
      'point',
      'final',
      ['final', 'rewind'],
      "The round's trained weights, or the rewind point's.",
  )
  app.run(main)
