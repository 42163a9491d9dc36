"""The export's N:M encoding: n values and log2(m)-bit indices per group,
by hand, round trips of N:M masks (edge groups, bfloat16), fallbacks and
damaged indices."""

import json

import jax
import ml_dtypes
import numpy as np
import pytest

from sslprune_jax import export
from sslprune_jax.export import nm_pack
from sslprune_jax.pruning import nm


def test_pack_by_hand():
  values = np.array([0.1, -0.5, 0.3, 0.2, 0.9, -0.05], np.float32)[:, None]
  keep = np.array([0, 1, 1, 0, 1, 1], bool)[:, None]
  assert nm_pack.conforms(keep, 2, 4)
  slot_values, packed = nm_pack.pack(values, keep, 2, 4)
  # Group 1 keeps positions 1 and 2; the edge group of 2 keeps 0 and 1:
  # indices 01 10 00 01.
  np.testing.assert_array_equal(
      slot_values, np.array([-0.5, 0.3, 0.9, -0.05], np.float32)
  )
  assert packed.tolist() == [0b01100001]
  dense, mask = nm_pack.unpack(slot_values, packed, (6, 1), 2, 4)
  np.testing.assert_array_equal(dense, np.where(keep, values, 0))
  np.testing.assert_array_equal(mask, keep)


def test_an_edge_group_smaller_than_n_is_padded():
  # 3:4 over 5 inputs: the edge group has 1 weight and keeps it; its two
  # other slots point at padding, which reading drops.
  values = np.arange(1, 6, dtype=np.float32)[:, None]
  keep = np.array([1, 1, 1, 0, 1], bool)[:, None]
  assert nm_pack.conforms(keep, 3, 4)
  slot_values, packed = nm_pack.pack(values, keep, 3, 4)
  assert slot_values.tolist() == [1.0, 2.0, 3.0, 5.0, 0.0, 0.0]
  dense, mask = nm_pack.unpack(slot_values, packed, (5, 1), 3, 4)
  np.testing.assert_array_equal(mask, keep)
  np.testing.assert_array_equal(dense, np.where(keep, values, 0))


def test_masks_that_do_not_follow_the_pattern_do_not_conform():
  full = np.ones((8, 2), bool)
  assert not nm_pack.conforms(full, 2, 4)
  fewer = np.zeros((8, 2), bool)
  fewer[0] = True  # One kept in a group that must keep two.
  assert not nm_pack.conforms(fewer, 2, 4)
  assert not nm_pack.conforms(np.ones((3, 3), bool), 2, 4)  # No group.


def _nm_network(n, m, dtype):
  rng = np.random.default_rng(n * 10 + m)
  params = {
      'Conv_0': {'kernel': rng.standard_normal((3, 3, 1, 8))},  # Too small.
      'Conv_1': {'kernel': rng.standard_normal((3, 3, 20, 6))},  # Edge groups.
      'Dense_0': {'kernel': rng.standard_normal((16, 4))},
      'classifier': {'kernel': rng.standard_normal((4, 10))},
      'BatchNorm_0': {'scale': rng.standard_normal(6)},
  }
  params = jax.tree.map(lambda x: x.astype(dtype), params)
  prunable = jax.tree.map(lambda x: x.ndim >= 2, params)
  prunable['classifier']['kernel'] = False
  mask = jax.tree.map(lambda x: np.ones(x.shape, bool), params)
  mask = nm.nm_prune(params, mask, prunable, n, m)
  mask = jax.tree.map(np.asarray, mask)
  variables = {
      'params': params,
      'batch_stats': {'BatchNorm_0': {'mean': np.zeros(6, np.float32)}},
  }
  return variables, mask


@pytest.mark.parametrize(
    'n, m, dtype',
    [(2, 4, np.float32), (1, 8, np.float32), (2, 8, ml_dtypes.bfloat16)],
)
def test_round_trip_is_exact(tmp_path, n, m, dtype):
  variables, mask = _nm_network(n, m, dtype)
  size = export.save(str(tmp_path), variables, mask, pattern=(n, m))
  manifest = export.read_manifest(str(tmp_path))
  assert manifest['version'] == 2
  encodings = {
      '/'.join(e['path'][1:]): e['encoding'] for e in manifest['leaves']
  }
  assert encodings['Conv_1/kernel'] == encodings['Dense_0/kernel'] == 'nm'
  assert encodings['Conv_0/kernel'] == encodings['classifier/kernel'] == 'dense'
  loaded, loaded_mask = export.load(str(tmp_path))
  for path, keep in jax.tree_util.tree_leaves_with_path(mask):
    got = loaded_mask
    for key in path:
      got = got[key.key]
    np.testing.assert_array_equal(got, keep)
  expected = jax.tree.map(
      lambda p, k: np.where(k, p, 0), variables['params'], mask
  )
  for a, b in zip(jax.tree.leaves(loaded['params']), jax.tree.leaves(expected)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
  # The N:M leaves take what the encoding says.
  unstructured = tmp_path / 'unstructured'
  other = export.save(str(unstructured), variables, mask)
  assert export.read_manifest(str(unstructured))['version'] == 1
  itemsize = np.dtype(dtype).itemsize
  nm_leaves = [
      variables['params']['Conv_1']['kernel'],
      variables['params']['Dense_0']['kernel'],
  ]
  saved = sum(
      export.encoded_bytes(x.size, int(nm.nm_kept(x.shape, n, m)), itemsize)
      - nm_pack.packed_bytes(x.shape, n, m, itemsize)
      for x in nm_leaves
  )
  # Pools share NumPy's per-array overhead: the difference is the data's
  # (up to the extra 'nm_indices' array's header).
  assert abs((other - size) - saved) < 400


def test_damaged_indices_are_refused(tmp_path):
  variables, mask = _nm_network(2, 4, np.float32)
  export.save(str(tmp_path), variables, mask, pattern=(2, 4))
  path = tmp_path / 'network.npz'
  with np.load(path) as npz:
    arrays = {name: npz[name] for name in npz.files}
  # Two equal positions in the first group (00 00).
  arrays['nm_indices'] = arrays['nm_indices'].copy()
  arrays['nm_indices'][0] = 0
  with open(path, 'wb') as f:
    np.savez(f, **arrays)
  with pytest.raises(ValueError, match='damaged.*N:M indices'):
    export.load(str(tmp_path))
  json.loads(arrays['manifest'].tobytes())  # The manifest itself is intact.
