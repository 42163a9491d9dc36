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

An N:M network (`pruning.granularity='nm'`; `save(..., pattern=(n, m))`)
stores each kernel that follows n:m exactly in a fourth encoding:

  'nm'       per group of m weights along the input dimension, n values and
             n ceil(log2(m))-bit positions, packed into 'nm_indices'
             (`nm_pack`; the entry holds 'n', 'm' and 'nm_indices').

Files with an 'nm' leaf have version 2; the others are written as version
1, as before.

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

Modules: `encodings` (the three encodings and their sizes), `nm_pack` (the
N:M encoding), `archive` (the file: `save`, `load`, `read_manifest`),
`runs` (exporting a round of a finished run) and `__main__` (the command). Loading an export needs only
NumPy: this package's names do not import Orbax or the training code.

From the command line, round N of a finished pruning run:

  python -m sslprune_jax.export --workdir=/tmp/labels_quick --round=2 \
      --out=/tmp/labels_quick_r2

prints the fraction of the prunable weights left, the size of the export and
the dense size of the same network.
"""

from sslprune_jax.export.archive import FILENAME
from sslprune_jax.export.archive import FORMAT
from sslprune_jax.export.archive import load
from sslprune_jax.export.archive import read_manifest
from sslprune_jax.export.archive import save
from sslprune_jax.export.archive import VERSION
from sslprune_jax.export.encodings import choose_encoding
from sslprune_jax.export.encodings import dense_bytes
from sslprune_jax.export.encodings import encoded_bytes
from sslprune_jax.export.encodings import index_dtype


def __getattr__(name):
  # The round exporter reads runs through Orbax; loaded on first use so that
  # `load` stays NumPy-only.
  if name in ('export_round', 'format_summary'):
    from sslprune_jax.export import runs  # pylint: disable=g-import-not-at-top

    return getattr(runs, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
