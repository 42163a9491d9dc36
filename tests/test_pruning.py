"""The pruning math, checked against cases worked out by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslprune_jax import pruning


def small_params():
  """Two prunable kernels (10 and 6 weights) plus leaves never pruned."""
  return {
      'conv': {
          'kernel': jnp.array(
              [[0.3, -0.1, 0.9, 0.05, -0.7], [0.2, 0.6, -0.4, 0.8, 0.01]]
          )
      },
      'bn': {'scale': jnp.array([0.001, 0.002]), 'bias': jnp.array([0.0, 0.0])},
      'dense': {
          'kernel': jnp.array([[-0.25, 0.15, 0.5], [0.02, -0.95, 0.35]]),
          'bias': jnp.array([0.0, 0.0, 0.0]),
      },
      'classifier': {
          'kernel': jnp.array([[1e-6, 2e-6]]),
          'bias': jnp.array([0.0, 0.0]),
      },
  }


def as_np(tree):
  return jax.tree.map(np.asarray, tree)


def test_prunable_excludes_classifier_biases_and_batchnorm():
  prunable = pruning.prunable_tree(small_params())
  assert prunable == {
      'conv': {'kernel': True},
      'bn': {'scale': False, 'bias': False},
      'dense': {'kernel': True, 'bias': False},
      'classifier': {'kernel': False, 'bias': False},
  }
  everything = pruning.prunable_tree(small_params(), exclude=(), min_ndim=1)
  assert all(jax.tree.leaves(everything))
  with pytest.raises(ValueError, match='No parameter is prunable'):
    pruning.prunable_tree(small_params(), exclude=('.*',))


@pytest.mark.parametrize(
    'fraction,remaining,expected',
    [
        (0.2, 10, 2),
        (0.2, 15, 3),
        (0.2, 16, 4),
        (0.2, 7, 2),
        (0.2, 1, 1),
        (0.5, 5, 3),
        (0.1, 30, 3),
        (0.3, 10, 3),
        (0.7, 10, 7),
        (0.2, 0, 0),
    ],
)
def test_num_to_prune_is_exact_ceil(fraction, remaining, expected):
  # 0.2 * 15 == 3.0000000000000004 in floating point; the answer is 3.
  assert pruning.num_to_prune(fraction, remaining) == expected


@pytest.mark.parametrize('fraction', [0.0, 1.0, -0.1, 1.5])
def test_fraction_outside_unit_interval_is_refused(fraction):
  with pytest.raises(ValueError, match=r'\(0, 1\)'):
    pruning.num_to_prune(fraction, 10)


def test_global_magnitude_pruning_by_hand():
  params = small_params()
  prunable = pruning.prunable_tree(params)
  mask = pruning.init_mask(params)
  # 16 prunable weights; ceil(0.2 * 16) = 4 go. Sorted |w| over both
  # kernels together: 0.01, 0.02, 0.05, 0.1, 0.15, ... -> the first four.
  new = as_np(pruning.magnitude_prune(params, mask, prunable, 0.2))
  np.testing.assert_array_equal(
      new['conv']['kernel'],
      [[True, False, True, False, True], [True, True, True, True, False]],
  )
  np.testing.assert_array_equal(
      new['dense']['kernel'], [[True, True, True], [False, True, True]]
  )
  # Excluded leaves keep everything, however small their values.
  assert new['classifier']['kernel'].all() and new['bn']['scale'].all()
  assert pruning.count(new, prunable) == (12, 16)

  # Round 2: ceil(0.2 * 12) = 3 more: 0.15, 0.2, 0.25.
  newer = as_np(pruning.magnitude_prune(params, new, prunable, 0.2))
  np.testing.assert_array_equal(
      newer['conv']['kernel'],
      [[True, False, True, False, True], [False, True, True, True, False]],
  )
  np.testing.assert_array_equal(
      newer['dense']['kernel'], [[False, False, True], [False, True, True]]
  )
  assert pruning.count(newer, prunable) == (9, 16)


def test_ties_prune_exactly_the_count_in_tree_order():
  params = {
      'a': {'kernel': jnp.ones((2, 2))},
      'b': {'kernel': jnp.ones((1, 3))},
  }
  prunable = pruning.prunable_tree(params, exclude=())
  mask = pruning.init_mask(params)
  # 7 equal weights, ceil(0.2 * 7) = 2: the first two in tree order.
  new = as_np(pruning.magnitude_prune(params, mask, prunable, 0.2))
  np.testing.assert_array_equal(
      new['a']['kernel'], [[False, False], [True, True]]
  )
  assert new['b']['kernel'].all()
  # A tie straddling the threshold: |w| = .5 1 1 1 2, ceil(0.5 * 5) = 3.
  params = {'k': {'kernel': jnp.array([[1.0, -1.0, 2.0, 0.5, 1.0]])}}
  new = pruning.magnitude_prune(
      params,
      pruning.init_mask(params),
      pruning.prunable_tree(params, exclude=()),
      0.5,
  )
  np.testing.assert_array_equal(
      new['k']['kernel'], [[False, False, True, False, True]]
  )


def test_pruned_weights_stay_pruned_whatever_their_value():
  params = small_params()
  prunable = pruning.prunable_tree(params)
  mask = pruning.magnitude_prune(
      params, pruning.init_mask(params), prunable, 0.2
  )
  # Give the pruned weights the largest magnitudes: they must stay pruned
  # and must not count towards the remaining weights.
  big = jax.tree.map(lambda p, m: jnp.where(m, p, 100.0), params, mask)
  new = pruning.magnitude_prune(big, mask, prunable, 0.5)
  assert pruning.count(new, prunable) == (6, 16)
  for old, cur in zip(jax.tree.leaves(mask), jax.tree.leaves(new)):
    assert not np.any(np.asarray(cur) & ~np.asarray(old))


@pytest.mark.parametrize('fraction', [0.2, 0.35])
def test_counts_accumulate_over_rounds(fraction):
  rng = np.random.default_rng(0)
  params = {
      'c1': {'kernel': jnp.asarray(rng.normal(size=(3, 3, 4, 8)))},
      'c2': {'kernel': jnp.asarray(rng.normal(size=(3, 3, 8, 8)))},
      'd': {'kernel': jnp.asarray(rng.normal(size=(8, 5)))},
      'classifier': {'kernel': jnp.asarray(rng.normal(size=(5, 2)))},
  }
  prunable = pruning.prunable_tree(params)
  total = 288 + 576 + 40
  expected = total
  mask = pruning.init_mask(params)
  for _ in range(12):
    old = mask
    mask = pruning.magnitude_prune(params, mask, prunable, fraction)
    expected -= math.ceil(round(fraction * expected, 9))
    remaining, count_total = pruning.count(mask, prunable)
    assert (remaining, count_total) == (expected, total)
    # Nested masks; every pruned weight is no larger than every kept one.
    kept, dropped = [], []
    for o, m, p, ok in zip(
        jax.tree.leaves(old),
        jax.tree.leaves(mask),
        jax.tree.leaves(params),
        jax.tree.leaves(prunable),
    ):
      o, m, p = np.asarray(o), np.asarray(m), np.abs(np.asarray(p))
      assert not np.any(m & ~o)
      if ok:
        kept.append(p[m])
        dropped.append(p[o & ~m])
    assert np.concatenate(dropped).max() <= np.concatenate(kept).min()
  assert np.asarray(mask['classifier']['kernel']).all()


def test_random_pruning_counts_and_randomness():
  params = small_params()
  prunable = pruning.prunable_tree(params)
  mask = pruning.init_mask(params)
  a = pruning.random_prune(jax.random.PRNGKey(0), mask, prunable, 0.5)
  b = pruning.random_prune(jax.random.PRNGKey(1), mask, prunable, 0.5)
  assert pruning.count(a, prunable) == (8, 16)
  assert pruning.count(b, prunable) == (8, 16)
  assert any(
      not np.array_equal(x, y)
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )
  c = pruning.random_prune(jax.random.PRNGKey(2), a, prunable, 0.5)
  assert pruning.count(c, prunable) == (4, 16)
  for old, new in zip(jax.tree.leaves(a), jax.tree.leaves(c)):
    assert not np.any(np.asarray(new) & ~np.asarray(old))
  assert np.asarray(c['classifier']['kernel']).all()


def test_random_pruning_is_roughly_uniform():
  params = {'k': {'kernel': jnp.ones((100, 100))}}
  prunable = pruning.prunable_tree(params, exclude=())
  mask = pruning.random_prune(
      jax.random.PRNGKey(0), pruning.init_mask(params), prunable, 0.5
  )
  rows = np.asarray(mask['k']['kernel']).mean(axis=1)
  assert abs(rows[:50].mean() - rows[50:].mean()) < 0.05


def test_random_natural_prunes_near_zero_weights_first():
  params = small_params()
  prunable = pruning.prunable_tree(params)
  mask = pruning.init_mask(params)
  # Below 0.06: 0.05, 0.01, 0.02 (3 weights); ceil(0.5 * 16) = 8 go, so the
  # other 5 are random.
  for seed in range(3):
    new = as_np(
        pruning.random_natural_prune(
            jax.random.PRNGKey(seed), params, mask, prunable, 0.5, 0.06
        )
    )
    assert pruning.count(new, prunable) == (8, 16)
    assert not new['conv']['kernel'][0, 3]
    assert not new['conv']['kernel'][1, 4]
    assert not new['dense']['kernel'][1, 0]
  # More near-zero weights than the target: the smallest of them go.
  new = as_np(
      pruning.random_natural_prune(
          jax.random.PRNGKey(0), params, mask, prunable, 0.1, 0.06
      )
  )
  assert pruning.count(new, prunable) == (14, 16)
  assert not new['conv']['kernel'][1, 4] and not new['dense']['kernel'][1, 0]
  assert new['conv']['kernel'][0, 3]


def test_paper_random_baseline_is_one_global_natural_adjusted_mask():
  params = small_params()
  prunable = pruning.prunable_tree(params)
  # Below 0.06 of the 16 prunable weights: 0.01 (conv), 0.02 (dense), 0.05
  # (conv); the classifier's tiny weights are not prunable.
  seen = set()
  for seed in range(20):
    mask = as_np(
        pruning.random_natural_oneshot(
            jax.random.PRNGKey(seed),
            params,
            prunable,
            num_kept=10,
            threshold=0.06,
        )
    )
    # Exactly 10 kept, counted over both kernels together.
    assert pruning.count(mask, prunable) == (10, 16)
    assert not mask['conv']['kernel'][0, 3]
    assert not mask['conv']['kernel'][1, 4]
    assert not mask['dense']['kernel'][1, 0]
    assert mask['classifier']['kernel'].all() and mask['bn']['scale'].all()
    seen.add(int(mask['conv']['kernel'].sum()))
  # The other 3 removed weights fall on either kernel: the layers' shares
  # vary from draw to draw (a per-layer draw would fix them).
  assert len(seen) > 1
  # Fewer to remove than naturally-zero weights: the smallest go.
  mask = as_np(
      pruning.random_natural_oneshot(
          jax.random.PRNGKey(0), params, prunable, num_kept=14, threshold=0.06
      )
  )
  assert not mask['conv']['kernel'][1, 4] and not mask['dense']['kernel'][1, 0]
  assert mask['conv']['kernel'][0, 3]
  # Everything kept, or nothing.
  for kept in (16, 0):
    mask = pruning.random_natural_oneshot(
        jax.random.PRNGKey(0), params, prunable, num_kept=kept, threshold=0.06
    )
    assert pruning.count(mask, prunable) == (kept, 16)
  with pytest.raises(ValueError, match='num_kept'):
    pruning.random_natural_oneshot(
        jax.random.PRNGKey(0), params, prunable, num_kept=17, threshold=0.06
    )


def test_random_prune_like_keeps_per_layer_counts():
  rng = np.random.default_rng(1)
  params = {
      'a': {'kernel': jnp.asarray(rng.normal(size=(20, 10)))},
      'b': {'kernel': jnp.asarray(rng.normal(size=(10, 30)) * 5)},
  }
  prunable = pruning.prunable_tree(params, exclude=())
  ref = pruning.init_mask(params)
  for _ in range(3):
    ref = pruning.magnitude_prune(params, ref, prunable, 0.2)
  rand = pruning.random_prune_like(jax.random.PRNGKey(0), ref, prunable)
  for r, m in zip(jax.tree.leaves(ref), jax.tree.leaves(rand)):
    assert int(np.sum(r)) == int(np.sum(m))
  assert not all(
      np.array_equal(r, m)
      for r, m in zip(jax.tree.leaves(ref), jax.tree.leaves(rand))
  )


def test_layerwise_prunes_only_the_listed_layers():
  params = small_params()
  prunable = pruning.restrict_to_layers(
      pruning.prunable_tree(params), [('conv', 'kernel')]
  )
  new = as_np(
      pruning.magnitude_prune(params, pruning.init_mask(params), prunable, 0.2)
  )
  # ceil(0.2 * 10) = 2 of conv: 0.01 and 0.05; dense untouched.
  np.testing.assert_array_equal(
      new['conv']['kernel'],
      [[True, True, True, False, True], [True, True, True, True, False]],
  )
  assert new['dense']['kernel'].all()
  with pytest.raises(ValueError, match='Unknown parameter paths'):
    pruning.restrict_to_layers(prunable, [('nope', 'kernel')])


def test_rewind_restores_saved_weights_under_the_new_mask():
  saved = small_params()
  trained = jax.tree.map(lambda x: x * 3.0 + 1.0, saved)
  prunable = pruning.prunable_tree(trained)
  mask = pruning.magnitude_prune(
      trained, pruning.init_mask(trained), prunable, 0.2
  )
  rewound = pruning.rewind(saved, mask)
  for s, m, r in zip(
      jax.tree.leaves(saved), jax.tree.leaves(mask), jax.tree.leaves(rewound)
  ):
    s, m, r = map(np.asarray, (s, m, r))
    np.testing.assert_array_equal(r[m], s[m])
    assert np.all(r[~m] == 0.0)


def test_reinit_draws_fresh_weights_under_the_mask():
  shapes = {'k': {'kernel': (4, 4)}}

  def init_fn(rng):
    return {'k': {'kernel': jax.random.normal(rng, shapes['k']['kernel'])}}

  mask = {'k': {'kernel': jnp.eye(4, dtype=bool)}}
  a = pruning.reinit(init_fn, jax.random.PRNGKey(0), mask)
  b = pruning.reinit(init_fn, jax.random.PRNGKey(1), mask)
  a, b = np.asarray(a['k']['kernel']), np.asarray(b['k']['kernel'])
  assert np.all(a[~np.eye(4, dtype=bool)] == 0) and np.all(np.diag(a) != 0)
  assert not np.array_equal(a, b)


def test_sparsity_report():
  params = small_params()
  prunable = pruning.prunable_tree(params)
  mask = pruning.magnitude_prune(
      params, pruning.init_mask(params), prunable, 0.2
  )
  report = pruning.sparsity_report(mask, prunable)
  assert [
      (l['name'], l['remaining'], l['total']) for l in report['layers']
  ] == [('conv/kernel', 7, 10), ('dense/kernel', 5, 6)]
  assert report['remaining'] == 12 and report['total'] == 16
  assert report['fraction_left'] == pytest.approx(0.75)
  text = pruning.format_report(report)
  assert 'conv/kernel' in text and '75.00%' in text


def test_apply_mask_zeroes_exactly():
  params = small_params()
  mask = pruning.magnitude_prune(
      params, pruning.init_mask(params), pruning.prunable_tree(params), 0.5
  )
  masked = pruning.apply_mask(params, mask)
  for p, m in zip(jax.tree.leaves(masked), jax.tree.leaves(mask)):
    assert np.all(np.asarray(p)[~np.asarray(m)] == 0.0)


def test_natural_sparsity_on_a_hand_made_tree():
  params = {
      'conv': {
          'kernel': jnp.array([[0.0, 5e-4], [-2e-4, 0.3]]),
          'bias': jnp.array([0.0, 0.0]),
      },
      'bn': {'scale': jnp.array([0.0, 1e-5])},
      'dense': {'kernel': jnp.array([[1.0, -1e-3, 2e-3]])},
      'classifier': {'kernel': jnp.zeros((3, 2))},
  }
  prunable = pruning.prunable_tree(params)
  report = pruning.natural_sparsity(params, prunable, threshold=1e-3)
  # conv: 0, 5e-4 and -2e-4 are below 1e-3 (3 of 4); dense: none of 3
  # (|-1e-3| is not below 1e-3). Biases, batch norm and the classifier are
  # left out even though they are all zero.
  assert [
      (l['name'], l['near_zero'], l['total']) for l in report['layers']
  ] == [('conv/kernel', 3, 4), ('dense/kernel', 0, 3)]
  assert (report['near_zero'], report['total']) == (3, 7)
  assert report['fraction'] == pytest.approx(3 / 7)
  with pytest.raises(ValueError, match='threshold'):
    pruning.natural_sparsity(params, prunable, threshold=-1.0)


def test_natural_sparsity_counts_only_kept_weights():
  params = {'conv': {'kernel': jnp.array([0.0, 0.0, 5e-4, 0.5])}}
  mask = {'conv': {'kernel': jnp.array([False, True, True, True])}}
  prunable = {'conv': {'kernel': True}}
  report = pruning.natural_sparsity(params, prunable, 1e-3, mask)
  # The pruned zero is not natural: 2 of the 3 kept weights are near zero.
  assert (report['near_zero'], report['total']) == (2, 3)


def _reference_keep(scores, num_pruned):
  """Removes the `num_pruned` smallest scores, ties in position order."""
  keep = np.ones(scores.shape, bool)
  keep[np.argsort(scores, kind='stable')[:num_pruned]] = False
  return keep


@pytest.mark.parametrize('case', range(12))
def test_rank_selection_matches_a_stable_sort(case):
  # On CPU the threshold comes from a radix selection on the float bits;
  # it must remove exactly what a stable sort removes: heavy ties, signed
  # zeros, infinities and pruned (-inf) entries included.
  rng = np.random.default_rng(case)
  n = int(rng.integers(1, 5000))
  pool = np.array(
      [0.0, -0.0, 1.0, -1.0, 0.5, np.inf, -np.inf, 1e-30, 3.0], np.float32
  )
  scores = (
      rng.choice(pool, n) if case % 2 else rng.normal(size=n).astype(np.float32)
  )
  scores[rng.random(n) < 0.2] = -np.inf
  for num_pruned in {0, 1, n // 3, n // 2, n - 1, n}:
    keep = np.asarray(
        pruning.ranking.keep_above_rank(
            jnp.asarray(scores), jnp.asarray(num_pruned)
        )
    )
    np.testing.assert_array_equal(keep, _reference_keep(scores, num_pruned))
