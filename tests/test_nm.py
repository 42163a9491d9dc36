"""N:M masks on hand-made kernels: groups along the input dimension, the
group at the edge, ties, nesting over rounds, exact counts, conformance."""

import jax
import numpy as np
import pytest

from sslprune_jax import config_lib
from sslprune_jax import validation
from sslprune_jax.pruning import nm


def _dense(values):
  """A dense kernel [in, 1] of `values`."""
  return np.asarray(values, np.float32)[:, None]


def _reference(scores, mask, n, m):
  """N:M by hand: per group of the input axis, the n largest |s| among the
  kept, ties to the later position (stable ascending sort)."""
  s = np.moveaxis(np.abs(scores).astype(np.float64), -2, -1)
  k = np.moveaxis(mask, -2, -1)
  out = np.zeros_like(k)
  for index in np.ndindex(s.shape[:-1]):
    for start in range(0, s.shape[-1], m):
      cols = np.arange(start, min(start + m, s.shape[-1]))
      group = np.where(k[index][cols], s[index][cols], -np.inf)
      order = np.argsort(group, kind='stable')
      padded = m - len(cols)  # Padding ranks below every weight.
      for rank, j in enumerate(order):
        if rank + padded >= m - n and k[index][cols[j]]:
          out[index + (cols[j],)] = True
  return np.moveaxis(out, -1, -2)


def test_groups_keep_their_n_largest_and_the_edge_group_min_n_r():
  w = _dense([0.1, -0.5, 0.3, 0.2, 0.9, -0.05])
  full = np.ones_like(w, bool)
  keep = np.asarray(nm.nm_keep(np.abs(w), full, 2, 4))[:, 0]
  # First group [0.1, .5, .3, .2] keeps .5 and .3; the edge group of 2
  # keeps both (min(2, 2)).
  assert keep.tolist() == [False, True, True, False, True, True]
  keep = np.asarray(nm.nm_keep(np.abs(w), full, 1, 4))[:, 0]
  assert keep.tolist() == [False, True, False, False, True, False]


def test_ties_remove_the_earlier_weight_first():
  w = _dense([1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 1.0, 1.0])
  keep = np.asarray(nm.nm_keep(w, np.ones_like(w, bool), 2, 4))[:, 0]
  assert keep.tolist() == [False, False, True, True, True, True, False, False]


def test_pruned_weights_stay_pruned_and_are_not_replaced():
  w = _dense([5.0, 1.0, 2.0, 3.0])
  mask = _dense([False, True, False, False]).astype(bool)
  keep = np.asarray(nm.nm_keep(w, mask, 2, 4))[:, 0]
  assert keep.tolist() == [False, True, False, False]


def test_conv_groups_run_along_input_channels():
  # [h=1, w=1, in=4, out=2]: output 0 groups input channels [0..3] with
  # the largest at 3 and 0; output 1 at 1 and 2.
  w = np.zeros((1, 1, 4, 2), np.float32)
  w[0, 0, :, 0] = [4.0, 1.0, 2.0, 3.0]
  w[0, 0, :, 1] = [1.0, 4.0, 3.0, 2.0]
  keep = np.asarray(nm.nm_keep(w, np.ones_like(w, bool), 2, 4))
  assert keep[0, 0, :, 0].tolist() == [True, False, False, True]
  assert keep[0, 0, :, 1].tolist() == [False, True, True, False]


@pytest.mark.parametrize('shape', [(3, 3, 20, 6), (13, 5), (2, 2, 8, 3)])
def test_rounds_nest_with_exact_counts_as_by_hand(shape):
  rng = np.random.default_rng(0)
  w = rng.standard_normal(shape).astype(np.float32)
  # Ties too: some weights share a magnitude.
  w.flat[::7] = 0.5
  params = {'conv': {'kernel': w}, 'bias': np.zeros(3, np.float32)}
  prunable = {'conv': {'kernel': True}, 'bias': False}
  mask = jax.tree.map(lambda p: np.ones(np.shape(p), bool), params)
  for n in (4, 2, 1):
    new = nm.nm_prune(params, mask, prunable, n, 8)
    kernel = np.asarray(new['conv']['kernel'])
    assert kernel.sum() == nm.nm_kept(shape, n, 8)
    np.testing.assert_array_equal(
        kernel, _reference(w, np.asarray(mask['conv']['kernel']), n, 8)
    )
    assert not (kernel & ~np.asarray(mask['conv']['kernel'])).any()
    assert np.asarray(new['bias']).all()
    assert nm.conformance(new, prunable, n, 8)['all'] == 1.0
    mask = new


def test_kernels_without_a_whole_group_and_the_classifier_stay_dense():
  params = {
      'first': {'kernel': np.ones((3, 3, 1, 8), np.float32)},
      'conv': {'kernel': np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8)},
      'classifier': {'kernel': np.ones((8, 10), np.float32)},
  }
  prunable = {
      'first': {'kernel': True},
      'conv': {'kernel': True},
      'classifier': {'kernel': False},
  }
  assert nm.nm_prunable(params, prunable, 4) == {
      'first': {'kernel': False},
      'conv': {'kernel': True},
      'classifier': {'kernel': False},
  }
  mask = jax.tree.map(lambda p: np.ones(np.shape(p), bool), params)
  new = nm.nm_prune(params, mask, prunable, 1, 4)
  assert np.asarray(new['first']['kernel']).all()
  assert np.asarray(new['classifier']['kernel']).all()
  assert np.asarray(new['conv']['kernel']).sum() == 16


def test_random_masks_are_nm_and_nested():
  params = {'k': np.ones((4, 4, 16, 8), np.float32)}
  prunable = {'k': True}
  mask = {'k': np.ones((4, 4, 16, 8), bool)}
  first = nm.random_nm_prune(jax.random.key(0), mask, prunable, 2, 4)
  second = nm.random_nm_prune(jax.random.key(1), first, prunable, 1, 4)
  assert np.asarray(first['k']).sum() == nm.nm_kept((4, 4, 16, 8), 2, 4)
  assert np.asarray(second['k']).sum() == nm.nm_kept((4, 4, 16, 8), 1, 4)
  assert not (np.asarray(second['k']) & ~np.asarray(first['k'])).any()
  other = nm.random_nm_prune(jax.random.key(2), mask, prunable, 2, 4)
  assert (np.asarray(other['k']) != np.asarray(first['k'])).any()
  del params


def test_conformance_counts_groups_over_n():
  mask = {'k': _dense([True] * 4 + [True, False, False, False]).astype(bool)}
  assert nm.conformance(mask, {'k': True}, 2, 4) == {'k': 0.5, 'all': 0.5}


@pytest.mark.parametrize('n, m', [(0, 4), (5, 4), (1, 1), (2.0, 4)])
def test_bad_patterns_are_refused(n, m):
  with pytest.raises(ValueError, match='must be an int'):
    nm.check_nm(n, m)


@pytest.mark.parametrize(
    'granularity, n, m, method, message',
    [
        ('blocks', (4, 2, 1), 8, 'magnitude', 'Unknown pruning.granularity'),
        ('nm', (2, 1), 8, 'magnitude', r'2 values for num_rounds=3'),
        ('nm', (1, 2, 2), 8, 'magnitude', 'n cannot grow'),
        ('nm', (4, 2, 1), 2, 'magnitude', r'ints in \[1, m=2\]'),
        ('nm', (1, 1, 1), 1, 'magnitude', 'pruning.m must be an int >= 2'),
        ('nm', (4, 2, 1), 8, 'random_like', r"prunes by \('magnitude'"),
    ],
)
def test_bad_nm_configs_are_refused(granularity, n, m, method, message):
  config = config_lib.load('labels', 'quick')
  p = config.pruning
  p.granularity, p.n, p.m, p.method = granularity, n, m, method
  p.reference_workdir = '/elsewhere'
  with pytest.raises(ValueError, match=message):
    validation.validate_config(config)


def test_nm_quick_config_is_valid():
  config = config_lib.load('labels', 'quick')
  config.pruning.granularity = 'nm'
  config.pruning.n, config.pruning.m = (4, 2, 1), 8
  validation.validate_config(config)
