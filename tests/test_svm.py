"""Linear-SVM probe: optimality of the solver, difficult images, CV, mAP."""

import numpy as np
import pytest
from scipy import optimize

from sslprune_jax.evaluation import svm
from sslprune_jax.evaluation import voc


def _primal(x, target, cost, w, b):
  """Squared-hinge objective and its gradient, in float64, for one class."""
  x = np.asarray(x, np.float64)
  keep = target != voc.DIFFICULT
  y = np.where(target == voc.POSITIVE, 1.0, -1.0)
  slack = keep * np.maximum(0.0, 1.0 - y * (x @ w + b))
  value = 0.5 * w @ w + cost * np.sum(slack ** 2)
  coef = -2.0 * cost * y * slack
  return value, np.r_[w + x.T @ coef, coef.sum()]


def _relative_gradient(x, target, cost, w, b):
  _, grad = _primal(x, target, cost, np.asarray(w, np.float64), float(b))
  _, grad0 = _primal(x, target, cost, np.zeros(x.shape[1]), 0.0)
  return np.linalg.norm(grad) / np.linalg.norm(grad0)


def _noisy_problem(seed=0, n=240, d=12, num_classes=3):
  """Overlapping classes, so that no SVM separates its data."""
  rng = np.random.default_rng(seed)
  positive = rng.random((n, num_classes)) < 0.3
  x = rng.normal(size=(n, d)) + positive @ rng.normal(size=(num_classes, d))
  target = np.where(positive, voc.POSITIVE, voc.NEGATIVE).astype(np.int8)
  target[rng.random((n, num_classes)) < 0.05] = voc.DIFFICULT
  return svm.l2_normalize(np.maximum(x, 0.0) + 0.1), target


def _separable_problem(rng, n, d=40, num_classes=20):
  """Each image shows one or two classes, each class a direction."""
  first = rng.integers(num_classes, size=n)
  second = np.where(rng.random(n) < 0.3, rng.integers(num_classes, size=n),
                    first)
  positive = np.zeros((n, num_classes), bool)
  positive[np.arange(n), first] = True
  positive[np.arange(n), second] = True
  x = 0.05 * rng.normal(size=(n, d))
  x[:, :num_classes] += positive
  target = np.where(positive, voc.POSITIVE, voc.NEGATIVE).astype(np.int8)
  return x.astype(np.float32), target


def test_two_points_by_hand():
  # x = 3 (positive), x = 1 (negative). About x = 2 the problem is
  # symmetric, so w (x - 2) is the decision value and both points have
  # slack 1 - w: minimising 0.5 w^2 + 2C (1 - w)^2 gives w = 4C / (1 + 4C),
  # and b = -2w since the bias is not regularised. A third image, difficult,
  # must change nothing.
  x = np.array([[3.0], [1.0], [-7.0]], np.float32)
  target = np.array([[1], [-1], [0]], np.int8)
  for cost in (0.25, 1.0, 10.0):
    w, b = svm.train_svms(x, target, cost)
    expected = 4 * cost / (1 + 4 * cost)
    np.testing.assert_allclose(w[0, 0], expected, rtol=1e-4)
    np.testing.assert_allclose(b[0], -2 * expected, rtol=1e-4)


def test_solution_is_optimal_for_each_class_and_cost():
  x, target = _noisy_problem()
  for cost in (0.01, 1.0, 100.0):
    w, b = svm.train_svms(x, target, cost)
    for c in range(target.shape[1]):
      assert _relative_gradient(x, target[:, c], cost, w[c], b[c]) < 3e-4
  # Against an independent float64 solver.
  cost = 1.0
  w, b = svm.train_svms(x, target, cost)
  for c in range(target.shape[1]):
    def objective(v, c=c):
      return _primal(x, target[:, c], cost, v[:-1], v[-1])
    exact = optimize.minimize(objective, np.zeros(x.shape[1] + 1), jac=True,
                              method='L-BFGS-B',
                              options={'gtol': 1e-10, 'ftol': 1e-15})
    np.testing.assert_allclose(np.r_[w[c], b[c]], exact.x, atol=2e-3)


def test_one_cost_per_class():
  x, target = _noisy_problem()
  costs = np.array([0.1, 10.0, 1.0], np.float32)
  w, b = svm.train_svms(x, target, costs)
  for c, cost in enumerate(costs):
    assert _relative_gradient(x, target[:, c], cost, w[c], b[c]) < 3e-4
  # Solved alone, a class gets the same solution up to rounding and the
  # solver's tolerance.
  alone_w, alone_b = svm.train_svms(x, target[:, 1:2], costs[1])
  np.testing.assert_allclose(np.r_[w[1], b[1]],
                             np.r_[alone_w[0], alone_b[0]],
                             atol=3e-3 * np.linalg.norm(w[1]))


def test_difficult_images_do_not_influence_their_class():
  x, target = _noisy_problem()
  rng = np.random.default_rng(1)
  w, b = svm.train_svms(x, target, 1.0)
  # Images difficult for every class are left out of every problem: moving
  # them changes nothing, to the bit.
  target_all = target.copy()
  target_all[:10] = voc.DIFFICULT
  w_all, b_all = svm.train_svms(x, target_all, 1.0)
  moved = x.copy()
  moved[:10] = rng.normal(size=(10, x.shape[1])) * 5
  w_moved, b_moved = svm.train_svms(moved, target_all, 1.0)
  np.testing.assert_array_equal(w_moved, w_all)
  np.testing.assert_array_equal(b_moved, b_all)
  # Images difficult for class 0 only still train classes 1 and 2; moving
  # them changes class 0 only up to the solver's tolerance.
  difficult = np.flatnonzero(target[:, 0] == voc.DIFFICULT)
  assert difficult.size
  moved = x.copy()
  moved[difficult] = rng.normal(size=(difficult.size, x.shape[1])) * 5
  w_moved, b_moved = svm.train_svms(moved, target, 1.0)
  np.testing.assert_allclose(np.r_[w_moved[0], b_moved[0]], np.r_[w[0], b[0]],
                             atol=1e-3 * np.linalg.norm(w[0]))
  assert np.abs(w_moved[1:] - w[1:]).max() > 0.05
  # Were they negatives, they would matter for class 0 too.
  negative = target.copy()
  negative[difficult, 0] = voc.NEGATIVE
  w_neg, _ = svm.train_svms(moved, negative, 1.0)
  assert np.abs(w_neg[0] - w[0]).max() > 0.05


def test_folds_are_seeded_balanced_and_hold_positives():
  _, target = _noisy_problem(n=300)
  target[:7, 2] = voc.POSITIVE
  target[7:, 2] = voc.NEGATIVE
  fold = svm.assign_folds(target, 3, seed=0)
  np.testing.assert_array_equal(fold, svm.assign_folds(target, 3, seed=0))
  assert not np.array_equal(fold, svm.assign_folds(target, 3, seed=1))
  sizes = np.bincount(fold, minlength=3)
  assert sizes.max() - sizes.min() <= 2
  for f in range(3):
    assert np.all(np.sum(target[fold == f] == voc.POSITIVE, axis=0) >= 2)


def test_cross_validation_prefers_a_large_cost_when_it_helps():
  # Class 0 is separated by a small feature (0.1 vs -0.1) while a large,
  # noisy one only correlates with it: a small cost leans on the large one
  # (the weights then follow the difference of the class means) and ranks
  # badly, larger costs find the separating direction. Class 1 is
  # separated by a wide margin, so every cost ranks it perfectly and the
  # tie goes to the smallest. Class 2 has no positive: NaN APs and the
  # middle cost. Class 3 has one positive, so only its fold gives an AP.
  rng = np.random.default_rng(0)
  n = 300
  first = rng.random(n) < 0.4
  second = rng.random(n) < 0.3
  x = np.stack([np.where(first, 0.1, -0.1),
                rng.normal(size=n) + np.where(first, 0.5, -0.5),
                np.where(second, 1.0, -1.0)], 1)
  target = np.stack([np.where(first, 1, -1), np.where(second, 1, -1),
                     np.full(n, -1), np.full(n, -1)], 1).astype(np.int8)
  target[0, 3] = voc.POSITIVE
  costs = (100.0, 0.01, 1.0)
  best, cv_ap = svm.cross_validate(x, target, costs, num_folds=3, seed=0)
  assert cv_ap.shape == (4, 3)
  assert cv_ap[0, 0] < 0.9
  # Costs 1 and 100 both rank class 0 perfectly; the smaller is taken.
  np.testing.assert_allclose(cv_ap[0, 1:], 1.0)
  assert best[0] == np.float32(1.0)
  np.testing.assert_allclose(cv_ap[1], 1.0)
  assert best[1] == np.float32(0.01)
  assert np.all(np.isnan(cv_ap[2]))
  assert best[2] == np.float32(1.0)
  assert np.all((cv_ap[3] > 0) & (cv_ap[3] <= 1))
  assert best[3] in np.float32(costs)


def test_costs_and_folds_are_checked():
  x, target = _noisy_problem(n=30)
  with pytest.raises(ValueError, match='positive'):
    svm.train_svms(x, target, np.array([1.0, 0.0, 1.0]))
  with pytest.raises(ValueError, match='positive'):
    svm.cross_validate(x, target, costs=(1.0, -1.0))
  with pytest.raises(ValueError, match='folds'):
    svm.cross_validate(x, target, num_folds=1)


def test_evaluate_separable_classes_reach_ap_one():
  rng = np.random.default_rng(0)
  train_x, train_target = _separable_problem(rng, 400)
  test_x, test_target = _separable_problem(rng, 300)
  train_target[rng.random(train_target.shape) < 0.03] = voc.DIFFICULT
  test_target[rng.random(test_target.shape) < 0.03] = voc.DIFFICULT
  out = svm.evaluate(train_x, train_target, test_x, test_target,
                     costs=(0.1, 1.0, 10.0))
  np.testing.assert_allclose(out['ap'], 1.0)
  assert out['mAP'] == pytest.approx(1.0)
  assert out['cv_ap'].shape == (20, 3)
  assert np.all(np.isin(out['cost'], np.float32([0.1, 1.0, 10.0])))
  assert out['scores'].shape == (300, 20)


def test_evaluate_map_is_voc_map_of_its_scores():
  x, target = _noisy_problem(n=300)
  train, test = slice(0, 200), slice(200, None)
  out = svm.evaluate(x[train] * 3.0, target[train], x[test], target[test],
                     costs=(0.1, 1.0, 10.0), num_folds=3, seed=0)
  mean_ap, ap = voc.mean_average_precision(out['scores'], target[test])
  assert out['mAP'] == mean_ap
  np.testing.assert_array_equal(out['ap'], ap)
  assert 0.5 < out['mAP'] < 1.0
  # The scores are those of SVMs trained on the L2-normalised trainval
  # features with the chosen costs.
  w, b = svm.train_svms(svm.l2_normalize(x[train]), target[train],
                        out['cost'])
  np.testing.assert_allclose(out['scores'],
                             svm.l2_normalize(x[test]) @ w.T + b, atol=1e-5)
