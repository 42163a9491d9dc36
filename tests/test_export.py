"""The sparse export of a pruned network.

Covers: round trips of a real pruned ResNet at several fractions left (mask,
weights, batch-norm statistics and the network's outputs all exact), the
file's size against what its encodings predict, each encoding on a small
tree worked out by hand (bfloat16 included), damaged and missing files, and
the export of a finished run's round.
"""

import functools
import json
import math
import re

import jax
import ml_dtypes
import numpy as np
import pytest

from sslprune_jax import checkpoint
from sslprune_jax import export
from sslprune_jax import models
from sslprune_jax import pruning
from sslprune_jax import train
from test_imp import load_config

FRACTIONS_LEFT = (1.0, 0.4, 0.1, 0.01)
IMAGE_SHAPE = (28, 28, 1)


def as_np(tree):
  return jax.tree.map(np.asarray, tree)


def prune_to(params, prunable, left):
  """A mask keeping `left` of the prunable weights, by magnitude."""
  mask = pruning.init_mask(params)
  if left < 1.0:
    mask = pruning.magnitude_prune(params, mask, prunable, 1.0 - left)
  return as_np(mask)


@pytest.fixture(scope='module')
def network():
  """The :quick config's network (ResNet-10 at width 1/4), pruned."""
  config = load_config('quick')
  model = models.create_model(config.model, 10)
  # The shapes of `train.init_variables`, traced only: compiling Flax's
  # initialisers takes seconds on 2 cores. Weights at He scale and
  # batch-norm parameters and statistics away from their initial zeros and
  # ones, so that a mix-up between leaves shows.
  shapes = jax.eval_shape(
      functools.partial(train.init_variables, model, image_shape=IMAGE_SHAPE),
      jax.random.PRNGKey(0),
  )
  rng = np.random.default_rng(0)

  def draw(x):
    if len(x.shape) >= 2:
      std = math.sqrt(2 / math.prod(x.shape[:-1]))
      return rng.normal(0, std, x.shape).astype(x.dtype)
    return rng.uniform(0.5, 1.5, x.shape).astype(x.dtype)

  variables = jax.tree.map(draw, shapes)
  prunable = pruning.prunable_tree(variables['params'])
  masks = {
      left: prune_to(variables['params'], prunable, left)
      for left in FRACTIONS_LEFT
  }
  images = rng.normal(size=(4, *IMAGE_SHAPE)).astype(np.float32)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  return {
      'config': config,
      'variables': variables,
      'prunable': prunable,
      'masks': masks,
      'images': images,
      'apply': apply,
  }


@pytest.fixture(scope='module')
def exports(network, tmp_path_factory):
  """{fraction left: (directory, size)} of the network's exports."""
  out = {}
  for left, mask in network['masks'].items():
    directory = tmp_path_factory.mktemp(f'export_{left}')
    # The unmasked weights: pruned ones must not be stored.
    out[left] = (
        directory,
        export.save(str(directory), network['variables'], mask),
    )
  return out


def bits(x):
  """The bytes of an array, to compare floats bit for bit."""
  return np.ascontiguousarray(x).view(np.uint8)


@pytest.mark.parametrize('left', FRACTIONS_LEFT)
def test_round_trip_is_exact(network, exports, left):
  directory, size = exports[left]
  variables, mask = export.load(str(directory))
  original = network['variables']
  expected_mask = network['masks'][left]
  assert sorted(p.name for p in directory.iterdir()) == ['network.npz']
  assert (directory / 'network.npz').stat().st_size == size

  assert jax.tree.structure(mask) == jax.tree.structure(expected_mask)
  for got, want in zip(jax.tree.leaves(mask), jax.tree.leaves(expected_mask)):
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, want)
  kept, total = pruning.count(mask, network['prunable'])
  assert kept / total == pytest.approx(left, abs=1 / total)

  masked = as_np(pruning.apply_mask(original['params'], expected_mask))
  assert jax.tree.structure(variables['params']) == jax.tree.structure(masked)
  for got, want, keep in zip(
      jax.tree.leaves(variables['params']),
      jax.tree.leaves(original['params']),
      jax.tree.leaves(expected_mask),
  ):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(bits(got[keep]), bits(want[keep]))
    np.testing.assert_array_equal(
        bits(got[~keep]), bits(np.zeros_like(want[~keep]))
    )
  for got, want in zip(
      jax.tree.leaves(variables['params']), jax.tree.leaves(masked)
  ):
    np.testing.assert_array_equal(got, want)
  assert jax.tree.structure(variables['batch_stats']) == jax.tree.structure(
      original['batch_stats']
  )
  for got, want in zip(
      jax.tree.leaves(variables['batch_stats']),
      jax.tree.leaves(original['batch_stats']),
  ):
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(bits(got), bits(want))

  outputs = network['apply'](variables, network['images'])
  expected = network['apply'](
      {'params': masked, 'batch_stats': original['batch_stats']},
      network['images'],
  )
  np.testing.assert_array_equal(np.asarray(outputs), np.asarray(expected))


def predicted_bytes(variables, mask, prunable):
  """Array bytes the encodings should take, worked out leaf by leaf."""
  total = export.dense_bytes({'batch_stats': variables['batch_stats']})
  for p, m, ok in zip(
      jax.tree.leaves(variables['params']),
      jax.tree.leaves(mask),
      jax.tree.leaves(prunable),
  ):
    n, k = p.size, int(m.sum())
    if not ok or k == n:
      total += n * p.itemsize
    else:
      index_bytes = 1 if n <= 2**8 else 2 if n <= 2**16 else 4
      total += min(math.ceil(n / 8), k * index_bytes) + k * p.itemsize
  return total


def test_size_shrinks_with_the_weights_left(network, exports):
  variables, prunable = network['variables'], network['prunable']
  sizes = [exports[left][1] for left in FRACTIONS_LEFT]
  assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
  dense = export.dense_bytes(variables)
  assert dense == sum(x.nbytes for x in jax.tree.leaves(variables))
  for left in FRACTIONS_LEFT:
    directory, size = exports[left]
    manifest = len(
        json.dumps(export.read_manifest(str(directory)), separators=(',', ':'))
    )
    mask = network['masks'][left]
    payload = predicted_bytes(variables, mask, prunable)
    assert payload == export.dense_bytes(
        {'batch_stats': variables['batch_stats']}
    ) + sum(
        export.encoded_bytes(p.size, int(m.sum()), p.itemsize)
        for p, m in zip(
            jax.tree.leaves(variables['params']), jax.tree.leaves(mask)
        )
    )
    # Beyond the arrays and the manifest: a few pools' npy and zip headers.
    assert payload + manifest < size < payload + manifest + 2048, left
  # Fully kept, the export is the dense network plus its headers.
  assert exports[1.0][1] < dense + 12_000
  prunable_bytes = sum(
      p.nbytes
      for p, ok in zip(
          jax.tree.leaves(variables['params']), jax.tree.leaves(prunable)
      )
      if ok
  )
  rest = dense - prunable_bytes
  assert exports[0.01][1] < 0.05 * prunable_bytes + rest


def test_encodings_by_hand(tmp_path):
  rng = np.random.default_rng(1)

  def leaf(shape, dtype=np.float32):
    # Nonzero everywhere, so that a lost weight shows.
    return (rng.uniform(1, 2, shape) * rng.choice([-1, 1], shape)).astype(dtype)

  def keep(shape, positions):
    m = np.zeros(math.prod(shape), np.bool_)
    m[list(positions)] = True
    return m.reshape(shape)

  params = {
      'full': {'kernel': leaf((4, 4)), 'bias': leaf((3,))},
      # 64 weights, 32 kept: 8 bytes of bits against 32 of uint8 indices.
      'half': {'kernel': leaf((8, 8))},
      # 64 weights, 8 kept: 8 bytes either way; the bitmask wins ties.
      'tie': {'kernel': leaf((8, 8))},
      # 400 weights, 3 kept: 50 bytes of bits against 6 of uint16.
      'few': {'kernel': leaf((20, 20))},
      # 256 weights: positions up to 255 fit uint8.
      'one': {'kernel': leaf((16, 16))},
      'none': {'kernel': leaf((5, 3))},
      # 90,000 weights: positions need uint32.
      'big': {'kernel': leaf((300, 300))},
      # bfloat16, 32 weights, 10 kept: 4 bytes of bits against 10.
      'bf16': {'kernel': leaf((4, 8), ml_dtypes.bfloat16)},
  }
  mask = {
      'full': {'kernel': keep((4, 4), range(16)), 'bias': keep((3,), range(3))},
      'half': {'kernel': keep((8, 8), range(0, 64, 2))},
      'tie': {'kernel': keep((8, 8), range(0, 64, 8))},
      'few': {'kernel': keep((20, 20), [0, 255, 399])},
      'one': {'kernel': keep((16, 16), [255])},
      'none': {'kernel': keep((5, 3), [])},
      'big': {'kernel': keep((300, 300), [7, 89_999])},
      'bf16': {'kernel': keep((4, 8), [1, 2, 3, 5, 8, 13, 21, 22, 30, 31])},
  }
  variables = {
      'params': params,
      'batch_stats': {'bn': {'mean': leaf((3,)), 'var': leaf((3,))}},
  }
  size = export.save(str(tmp_path), variables, mask)
  entries = {
      '/'.join(e['path']): e
      for e in export.read_manifest(str(tmp_path))['leaves']
  }
  expected = {
      'params/full/kernel': ('dense', None),
      'params/full/bias': ('dense', None),
      'params/half/kernel': ('bitmask', None),
      'params/tie/kernel': ('bitmask', None),
      'params/few/kernel': ('indices', 'uint16'),
      'params/one/kernel': ('indices', 'uint8'),
      'params/none/kernel': ('indices', 'uint8'),
      'params/big/kernel': ('indices', 'uint32'),
      'params/bf16/kernel': ('bitmask', None),
      'batch_stats/bn/mean': ('dense', None),
      'batch_stats/bn/var': ('dense', None),
  }
  assert {
      name: (e['encoding'], e.get('index_dtype')) for name, e in entries.items()
  } == expected
  assert entries['params/bf16/kernel']['dtype'] == 'bfloat16'
  assert entries['params/few/kernel']['kept'] == 3

  with np.load(tmp_path / 'network.npz') as npz:
    pools = {name: npz[name] for name in npz.files}
  assert pools['bits'].size == 8 + 8 + 4
  np.testing.assert_array_equal(pools['indices_uint8'], [255])
  np.testing.assert_array_equal(pools['indices_uint16'], [0, 255, 399])
  np.testing.assert_array_equal(pools['indices_uint32'], [7, 89_999])
  assert pools['values_float32'].size == 16 + 3 + 32 + 8 + 3 + 1 + 2 + 6
  assert pools['values_bfloat16'].dtype == np.uint16
  assert pools['values_bfloat16'].size == 10
  assert size == (tmp_path / 'network.npz').stat().st_size

  loaded, loaded_mask = export.load(str(tmp_path))
  for name, (got, want) in {
      'mask': (loaded_mask, mask),
      'params': (loaded['params'], pruning.apply_mask(params, mask)),
      'batch_stats': (loaded['batch_stats'], variables['batch_stats']),
  }.items():
    assert jax.tree.structure(got) == jax.tree.structure(want), name
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      w = np.asarray(w)
      assert g.dtype == w.dtype and g.shape == w.shape, name
      np.testing.assert_array_equal(g, w)
  got, want = loaded['params']['bf16']['kernel'], params['bf16']['kernel']
  m = mask['bf16']['kernel']
  np.testing.assert_array_equal(bits(got[m]), bits(want[m]))


@pytest.mark.parametrize(
    'size,dtype',
    [
        (1, np.uint8),
        (256, np.uint8),
        (257, np.uint16),
        (2**16, np.uint16),
        (2**16 + 1, np.uint32),
        (2**32, np.uint32),
        (2**32 + 1, np.uint64),
    ],
)
def test_index_dtype_is_the_smallest_that_fits(size, dtype):
  assert export.index_dtype(size) == np.dtype(dtype)


def small_network():
  variables = {
      'params': {
          'conv': {'kernel': np.arange(1, 13, dtype=np.float32).reshape(3, 4)}
      },
      'batch_stats': {},
  }
  mask = {'conv': {'kernel': np.arange(12).reshape(3, 4) % 5 == 0}}
  return variables, mask


def test_missing_export_is_named(tmp_path):
  missing = tmp_path / 'nowhere'
  with pytest.raises(
      FileNotFoundError, match=re.escape(str(missing / 'network.npz'))
  ):
    export.load(str(missing))


def test_truncated_or_flipped_file_is_refused(tmp_path):
  export.save(str(tmp_path), *small_network())
  path = tmp_path / 'network.npz'
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match='damaged.*Export the network again'):
    export.load(str(tmp_path))
  # One bit flipped in the first array's data: its checksum fails.
  flipped = bytearray(data)
  flipped[200] ^= 1
  path.write_bytes(bytes(flipped))
  with pytest.raises(ValueError, match='damaged'):
    export.load(str(tmp_path))


def rewrite(path, change):
  """Rewrites an export with `change(arrays, manifest)` applied."""
  with np.load(path) as npz:
    arrays = {name: npz[name] for name in npz.files}
  manifest = json.loads(arrays['manifest'].tobytes())
  change(arrays, manifest)
  arrays['manifest'] = np.frombuffer(json.dumps(manifest).encode(), np.uint8)
  with open(path, 'wb') as f:
    np.savez(f, **arrays)


def test_other_version_or_inconsistent_manifest_is_refused(tmp_path):
  export.save(str(tmp_path), *small_network())
  path = tmp_path / 'network.npz'
  rewrite(path, lambda arrays, manifest: manifest.update(version=99))
  with pytest.raises(
      ValueError, match=r'damaged.*version 99.*reads versions \(1, 2\)'
  ):
    export.load(str(tmp_path))

  export.save(str(tmp_path), *small_network())
  rewrite(path, lambda arrays, manifest: manifest['leaves'][0].update(kept=4))
  with pytest.raises(ValueError, match='damaged'):
    export.load(str(tmp_path))


def test_mask_must_match_params(tmp_path):
  variables, mask = small_network()
  with pytest.raises(ValueError, match='structure of params'):
    export.save(str(tmp_path), variables, {'other': mask['conv']})
  with pytest.raises(ValueError, match='boolean'):
    export.save(
        str(tmp_path),
        variables,
        {'conv': {'kernel': mask['conv']['kernel'].astype(np.float32)}},
    )
  assert not list(tmp_path.iterdir())


def test_export_of_a_finished_round(network, tmp_path):
  """A run's round 0 written as the run writes it, exported as the CLI does."""
  workdir, out = tmp_path / 'run', tmp_path / 'out'
  checkpoint.check_or_write_config(str(workdir), network['config'])
  mask = network['masks'][0.1]
  saved = {
      'params': network['variables']['params'],
      'batch_stats': network['variables']['batch_stats'],
      'mask': mask,
  }
  ckpts = checkpoint.RunCheckpoints(str(workdir))
  ckpts.save_round(0, saved, {'fraction_left': 0.1})
  ckpts.close()

  summary = export.export_round(str(workdir), 0, str(out))
  kept, total = pruning.count(mask, network['prunable'])
  assert summary['kept'] == kept and summary['total'] == total
  assert summary['bytes'] == (out / 'network.npz').stat().st_size
  assert summary['dense_bytes'] == export.dense_bytes(network['variables'])
  text = export.format_summary(summary)
  assert f'{kept} of {total}' in text and str(summary['bytes']) in text

  variables, loaded_mask = export.load(str(out))
  for got, want in zip(jax.tree.leaves(loaded_mask), jax.tree.leaves(mask)):
    np.testing.assert_array_equal(got, want)
  masked = pruning.apply_mask(network['variables']['params'], mask)
  for got, want in zip(
      jax.tree.leaves(variables['params']), jax.tree.leaves(masked)
  ):
    np.testing.assert_array_equal(got, np.asarray(want))
