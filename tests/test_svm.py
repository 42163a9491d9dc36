"""VOC07 linear SVMs: Goyal et al.'s benchmark protocol, checked by hand.

The reference is fair_self_supervision_benchmark tools/svm/
(train_svm_kfold.py, test_svm.py, svm_helper.py). Here it is rebuilt from
sklearn directly, configured as those scripts configure it, and compared
with `svm`.
"""

import numpy as np
import pytest
from sklearn import model_selection
from sklearn import svm as sk_svm

from sslprune_jax.evaluation import svm
from sslprune_jax import voc

# At large costs liblinear stops at the benchmark's max_iter=2000 before its
# tolerance, as it does in the benchmark: expected, and not what is tested.
pytestmark = pytest.mark.filterwarnings(
    'ignore::sklearn.exceptions.ConvergenceWarning'
)


def _reference_svm(cost):
  """LinearSVC as train_svm_kfold.py builds it (plus a fixed seed)."""
  return sk_svm.LinearSVC(
      C=cost,
      class_weight={1: 2, -1: 1},
      intercept_scaling=1.0,
      penalty='l2',
      loss='squared_hinge',
      tol=0.0001,
      dual=True,
      max_iter=2000,
      random_state=0,
  )


def _reference_normalize(x):
  x = np.asarray(x, np.float64)
  return x / (np.linalg.norm(x, axis=1) + 1e-5)[:, None]


def _ap_from_positives(scores, target):
  """The envelope AP, written another way: each positive (in the ranking
  without difficult images) adds 1/num_positives times the best precision
  at its rank or below."""
  keep = target != 0
  scores, hit = scores[keep], target[keep] == 1
  hit = hit[np.argsort(scores)[::-1]]
  precision = np.cumsum(hit) / np.arange(1, hit.size + 1)
  best_below = np.array([precision[i:].max() for i in range(hit.size)])
  return float(best_below[hit].sum() / hit.sum())


def _problem(seed=0, n_train=150, n_test=120, d=24, num_classes=4):
  """Overlapping classes, post-ReLU-like features, ~8% difficult targets."""
  rng = np.random.default_rng(seed)
  n = n_train + n_test
  positive = rng.random((n, num_classes)) < 0.3
  directions = rng.normal(size=(num_classes, d))
  x = np.maximum(rng.normal(size=(n, d)) + 0.8 * positive @ directions, 0.0)
  target = np.where(positive, voc.POSITIVE, voc.NEGATIVE).astype(np.int8)
  target[rng.random((n, num_classes)) < 0.08] = voc.DIFFICULT
  return (x[:n_train], target[:n_train]), (x[n_train:], target[n_train:])


def test_cost_grid_is_the_benchmarks():
  grid = svm.cost_grid()
  # GETTING_STARTED.md's --costs_list, then parse_cost_list's 0.5^4..0.5^19.
  assert grid[:10] == (
      1e-7,
      1e-6,
      1e-5,
      1e-4,
      1e-3,
      0.01,
      0.1,
      1.0,
      10.0,
      100.0,
  )
  assert grid[10:] == tuple(0.5**k for k in range(4, 20))
  assert svm.cost_grid((0.1, 0.01))[:2] == (0.1, 0.01)
  with pytest.raises(ValueError, match='positive'):
    svm.cost_grid((1.0, 0.0))


def test_normalization_and_training_labels():
  x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
  out = svm.normalize_features(x)
  assert out.dtype == np.float64
  np.testing.assert_allclose(out[0], [3 / 5.00001, 4 / 5.00001], rtol=1e-12)
  np.testing.assert_array_equal(out[1], [0.0, 0.0])
  # Difficult (0) trains as a negative, as the benchmark's 0 -> -1 map of
  # its own targets (where difficult is -1) does.
  np.testing.assert_array_equal(
      svm.train_labels(np.array([1, 0, -1])), [1, -1, -1]
  )


def test_average_precision_by_hand():
  # Ranked by score: 0.9 hit, 0.8 miss, 0.7 difficult (left out), 0.6 hit,
  # 0.5 miss, 0.4 hit; 3 positives. After each kept image:
  #   precision 1, 1/2, 2/3, 1/2, 3/5; recall 1/3, 1/3, 2/3, 2/3, 1.
  # calculate_ap pads recall with 0 ... 1 and precision with 0 ... 0 and
  # takes the envelope from the right: 1, 1, 2/3, 2/3, 3/5, 3/5, 0 on the
  # padded points. Recall grows at the 1st, 3rd and 5th kept images:
  #   AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/5 = 34/45.
  scores = np.array([0.5, 0.9, 0.4, 0.7, 0.8, 0.6])
  target = np.array([-1, 1, 1, 0, -1, 1])
  assert voc.benchmark_average_precision(scores, target) == pytest.approx(
      34 / 45
  )
  # Were the difficult image a negative: precision 1, 1/2, 1/3, 1/2, 2/5,
  # 1/2 at recall 1/3, 1/3, 1/3, 2/3, 2/3, 1; envelope 1 at 1/3 and 1/2
  # at 2/3 and 1: AP = 1/3 + 1/3 * 1/2 + 1/3 * 1/2 = 2/3.
  flagged = target.copy()
  flagged[3] = -1
  assert voc.benchmark_average_precision(scores, flagged) == pytest.approx(
      2 / 3
  )
  # The envelope: hit, miss, hit, hit. Precision 1, 1/2, 2/3, 3/4 at
  # recall 1/3, 1/3, 2/3, 1; at recall 2/3 the envelope is 3/4 (reached
  # later), so AP = 1/3 + 1/3 * 3/4 + 1/3 * 3/4 = 5/6, where sklearn's
  # non-interpolated AP (the cross-validation score) is 1/3 + 2/9 + 1/4.
  scores = np.array([4.0, 3.0, 2.0, 1.0])
  target = np.array([1, -1, 1, 1])
  assert voc.benchmark_average_precision(scores, target) == pytest.approx(5 / 6)
  assert np.isnan(
      voc.benchmark_average_precision(scores, np.array([-1, 0, -1, -1]))
  )
  # Scores of difficult images do not matter.
  scores, target = np.array([0.5, 0.9, 0.4, 0.7, 0.8, 0.6]), np.array(
      [-1, 1, 1, 0, -1, 1]
  )
  moved = scores.copy()
  moved[3] = -5.0
  assert voc.benchmark_average_precision(moved, target) == pytest.approx(
      34 / 45
  )


def test_mean_average_precision_leaves_out_classes_without_positives():
  scores = np.array([[0.9, 0.2], [0.1, 0.8], [0.4, 0.3]])
  target = np.array([[1, -1], [-1, 0], [-1, -1]])
  mean_ap, aps = voc.benchmark_mean_average_precision(scores, target)
  assert aps[0] == pytest.approx(1.0) and np.isnan(aps[1])
  assert mean_ap == pytest.approx(1.0)
  with pytest.raises(ValueError, match='No class'):
    voc.benchmark_mean_average_precision(scores[:, 1:], target[:, 1:])


def test_cross_validation_is_sklearns_with_average_precision():
  (x, target), _ = _problem(seed=1, n_train=120, num_classes=2)
  x = _reference_normalize(x)
  costs = (0.01, 1.0, 100.0)
  best, cv_ap = svm.cross_validate(
      x, target, costs, num_folds=3, seed=0, workers=2
  )
  grid = svm.cost_grid(costs)
  assert cv_ap.shape == (2, len(grid))
  for c in range(2):
    y = np.where(target[:, c] == 1, 1, -1)
    expected = [
        model_selection.cross_val_score(
            _reference_svm(cost), x, y, cv=3, scoring='average_precision'
        ).mean()
        for cost in grid
    ]
    np.testing.assert_allclose(cv_ap[c], expected, rtol=0, atol=1e-12)
    assert best[c] == grid[int(np.argmax(expected))]


def test_cost_choice_known_best_and_ties_in_grid_order():
  # Class 0 is separated by a small feature (+-0.1) while a large, noisy
  # one only correlates with it: small costs lean on the large feature and
  # rank badly; costs from about 1 find the separating direction and rank
  # every fold perfectly, so the best is the first such cost in grid order,
  # 1.0 (which comes before the appended powers of 0.5). Class 1 is
  # separated by a wide margin: every cost ranks it perfectly, and the tie
  # goes to the grid's first cost.
  rng = np.random.default_rng(0)
  n = 240
  first = rng.random(n) < 0.4
  second = rng.random(n) < 0.3
  x = np.stack(
      [
          np.where(first, 0.1, -0.1),
          rng.normal(size=n) + np.where(first, 0.5, -0.5),
          np.where(second, 1.0, -1.0),
          np.ones(n),
      ],
      1,
  )
  target = np.stack(
      [np.where(first, 1, -1), np.where(second, 1, -1)], 1
  ).astype(np.int8)
  costs = (1e-3, 0.1, 1.0, 100.0)
  best, cv_ap = svm.cross_validate(x, target, costs, seed=0, workers=1)
  assert cv_ap[0, 0] < 0.9
  np.testing.assert_allclose(cv_ap[0, 2:4], 1.0)
  assert best[0] == 1.0
  np.testing.assert_allclose(cv_ap[1], 1.0)
  assert best[1] == 1e-3


def test_evaluate_equals_linear_svc_configured_by_hand():
  (train_x, train_t), (test_x, test_t) = _problem(seed=0)
  out = svm.evaluate(train_x, train_t, test_x, test_t, seed=0, workers=2)
  grid = svm.cost_grid()
  assert out['costs'] == grid and len(grid) == 26
  xtr, xte = _reference_normalize(train_x), _reference_normalize(test_x)
  aps = []
  for c in range(train_t.shape[1]):
    # train_svm_kfold.py: difficult trains as a negative.
    y = np.where(train_t[:, c] == voc.POSITIVE, 1, -1)
    cv = [
        model_selection.cross_val_score(
            _reference_svm(cost), xtr, y, cv=3, scoring='average_precision'
        ).mean()
        for cost in grid
    ]
    # test_svm.py: the argmax of the cross-validation APs.
    cost = grid[int(np.argmax(cv))]
    assert out['cost'][c] == cost
    clf = _reference_svm(cost).fit(xtr, y)
    scores = clf.decision_function(xte)
    np.testing.assert_allclose(out['scores'][:, c], scores, rtol=0, atol=1e-9)
    aps.append(_ap_from_positives(scores, test_t[:, c]))
    assert abs(out['ap'][c] - aps[-1]) < 1e-4
  assert out['mAP'] == pytest.approx(np.mean(aps), abs=1e-4)
  # A non-trivial problem: the costs chosen differ, the APs are not 1.
  assert len(set(out['cost'])) > 1
  assert 0.4 < out['mAP'] < 0.99


def test_difficult_images_are_negatives_in_training_only():
  (x, target), _ = _problem(seed=2)
  x = svm.normalize_features(x)
  assert np.any(target == voc.DIFFICULT)
  w, b = svm.train_svms(x, target, 0.1, workers=1)
  as_negative = np.where(target == voc.DIFFICULT, voc.NEGATIVE, target)
  w_neg, b_neg = svm.train_svms(x, as_negative, 0.1, workers=1)
  np.testing.assert_array_equal(w, w_neg)
  np.testing.assert_array_equal(b, b_neg)
  # Leaving them out instead would change the SVMs.
  keep = target[:, 0] != voc.DIFFICULT
  w_out, _ = svm.train_svms(x[keep], target[keep, :1], 0.1, workers=1)
  assert np.abs(w_out[0] - w[0]).max() > 1e-3


def test_class_without_positives_is_left_out():
  (train_x, train_t), (test_x, test_t) = _problem(seed=3, num_classes=3)
  train_t[:, 2] = voc.NEGATIVE
  out = svm.evaluate(
      train_x, train_t, test_x, test_t, costs=(0.1, 1.0), workers=1
  )
  assert np.isnan(out['cost'][2]) and np.all(np.isnan(out['cv_ap'][2]))
  assert np.isnan(out['ap'][2]) and np.all(np.isnan(out['scores'][:, 2]))
  assert out['mAP'] == pytest.approx(np.mean(out['ap'][:2]))


def test_bad_arguments_are_refused():
  (x, target), _ = _problem(n_train=30)
  with pytest.raises(ValueError, match='positive'):
    svm.cross_validate(x, target, costs=(1.0, -1.0))
  with pytest.raises(ValueError, match='folds'):
    svm.cross_validate(x, target, num_folds=1)
  with pytest.raises(ValueError, match='positive'):
    svm.train_svms(x, target, np.array([1.0, 0.0, 1.0, 1.0]))
