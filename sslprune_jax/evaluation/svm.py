"""Per-class linear SVMs on frozen features: the VOC07 classification probe.

The protocol of Goyal et al. (2019)'s benchmark, as the paper uses it: it
follows fair_self_supervision_benchmark tools/svm/train_svm_kfold.py (cross-
validation and training), tools/svm/test_svm.py (testing) and
tools/svm/svm_helper.py (features, costs, AP); VISSL's
vissl/utils/svm_utils/svm_trainer.py and evaluate.py run the same protocol.

* Features (trainval and test alike) are cast to float64 and divided by
  their L2 norm plus 1e-5 (`normalize_features`).
* Each class gets a one-vs-rest `sklearn.svm.LinearSVC` with the benchmark's
  settings (`make_svm`): liblinear's dual solver of the L2-regularised,
  squared-hinge primal, positives weighted 2 : 1, a bias from a constant
  feature 1 (which liblinear regularises like the other weights), tolerance
  1e-4, at most 2000 iterations.
* Training labels: a positive (VOC target 1) is +1; every other image is -1,
  difficult images included (`train_labels`). Only the test leaves out
  difficult images.
* Costs: the benchmark's `--costs_list` (`BENCHMARK_COSTS`, as its
  GETTING_STARTED commands pass it) followed by 0.5^4, ..., 0.5^19, which
  the benchmark always appends (`cost_grid`).
* Each class and cost is scored by sklearn's `cross_val_score` with 3 folds
  (stratified, not shuffled: sklearn's default for a classifier) and
  `scoring='average_precision'` (sklearn's AP of the decision values); the
  class's cost is the first of the grid, in grid order, with the highest
  mean (`numpy.argmax`), and its SVM is trained on all of trainval.
* Test AP (`voc.benchmark_average_precision`): the benchmark's
  `get_precision_recall` and `calculate_ap`, i.e. the area under the
  precision envelope (all points, not VOC07's 11 points) of the test images
  that are not difficult for the class; the mAP is the mean over classes.

What this module does differently, and why:
  * liblinear's coordinate order is seeded with `seed` (`random_state`); the
    benchmark leaves it unseeded (its `--random_seed` flag is never used),
    so its results vary slightly from run to run and ours do not.
  * The (class, cost) problems run on a pool of processes, not one after
    the other; results do not depend on it. (Not threads: sklearn's
    liblinear draws from one random generator per process, so concurrent
    fits in threads would change each other's coordinate order.)
  * A class with no positive or no negative trainval image cannot train an
    SVM (the benchmark would stop with sklearn's error): it gets NaN
    scores, costs and APs and is left out of the mAP, as is a class without
    a positive test image. Neither happens on VOC07.
"""

from __future__ import annotations

import os

from absl import logging
import joblib
import numpy as np
from sklearn import model_selection
from sklearn import svm as sk_svm

from sslprune_jax import config_lib
from sslprune_jax import voc

# The `--costs_list` of the benchmark's VOC07 SVM commands;
# `cost_grid` appends its powers of 0.5.
BENCHMARK_COSTS = config_lib.SVM_BENCHMARK_COSTS
# The powers 0.5^k, k in [4, 20), that svm_helper.parse_cost_list appends.
_HALF_POWERS = range(4, 20)
# LinearSVC settings of train_svm_kfold.py.
CLASS_WEIGHT = {1: 2, -1: 1}
TOL = 1e-4
MAX_ITER = 2000
# svm_helper.normalize_features divides by the norm plus this.
NORM_EPS = 1e-5
# The benchmark's test AP, now in `voc` beside VOC07's; importable from
# here as before.
average_precision = voc.benchmark_average_precision
mean_average_precision = voc.benchmark_mean_average_precision


def cost_grid(costs=BENCHMARK_COSTS) -> tuple[float, ...]:
  """The costs the benchmark tries, in its order.

  Follows fair_self_supervision_benchmark tools/svm/svm_helper.py
  (`parse_cost_list`): the given costs, then 0.5^4, ..., 0.5^19.

  Args:
    costs: the `--costs_list` values.

  Returns:
    The grid; its order decides ties in the choice of a cost.
  """
  costs = tuple(float(c) for c in costs)
  if not costs or min(costs) <= 0:
    raise ValueError(f'Costs must be positive, got {costs}.')
  return costs + tuple(0.5**k for k in _HALF_POWERS)


def normalize_features(features: np.ndarray) -> np.ndarray:
  """Divides each row by its L2 norm plus 1e-5, in float64.

  Follows fair_self_supervision_benchmark tools/svm/svm_helper.py
  (`load_input_data`, `normalize_features`).

  Args:
    features: [N, D].

  Returns:
    float64 [N, D].
  """
  features = np.asarray(features, np.float64)
  norms = np.linalg.norm(features, axis=1)
  return features / (norms + NORM_EPS)[:, None]


def train_labels(target: np.ndarray) -> np.ndarray:
  """SVM training labels of one class: +1 for positives, -1 for the rest.

  Follows fair_self_supervision_benchmark tools/svm/train_svm_kfold.py: its
  targets mark absent as 0 and difficult as -1 (extra_scripts/
  create_voc_data_files.py) and it maps 0 to -1, so difficult images train
  as negatives.

  Args:
    target: [N] VOC targets in {1, 0, -1} (see `voc.targets`).

  Returns:
    int32 [N] in {1, -1}.
  """
  return np.where(np.asarray(target) == voc.POSITIVE, 1, -1).astype(np.int32)


def make_svm(cost: float, seed: int = 0) -> sk_svm.LinearSVC:
  """An unfitted SVM with the benchmark's settings.

  Follows fair_self_supervision_benchmark tools/svm/train_svm_kfold.py
  (`verbose=1` there only prints liblinear's log; `random_state` is our
  addition, see the module docstring).

  Args:
    cost: the cost C (positives get 2C, negatives C).
    seed: seed of liblinear's coordinate order.

  Returns:
    A `LinearSVC`.
  """
  return sk_svm.LinearSVC(
      C=cost,
      class_weight=CLASS_WEIGHT,
      intercept_scaling=1.0,
      penalty='l2',
      loss='squared_hinge',
      dual=True,
      tol=TOL,
      max_iter=MAX_ITER,
      random_state=seed,
  )


def cross_validation_ap(
    features: np.ndarray,
    labels: np.ndarray,
    cost: float,
    num_folds: int = 3,
    seed: int = 0,
) -> float:
  """Mean held-out AP of one class's SVM at one cost.

  Follows fair_self_supervision_benchmark tools/svm/train_svm_kfold.py:
  `cross_val_score(..., cv=num_folds, scoring='average_precision')`.

  Args:
    features: [N, D], normalised (`normalize_features`).
    labels: [N] in {1, -1} (`train_labels`).
    cost: the cost C.
    num_folds: number of (stratified, unshuffled) folds.
    seed: see `make_svm`.

  Returns:
    The mean of the folds' APs (NaN when a fold could not be fitted).
  """
  scores = model_selection.cross_val_score(
      make_svm(cost, seed),
      features,
      labels,
      cv=num_folds,
      scoring='average_precision',
  )
  return float(np.mean(scores))


def _trainable(labels: np.ndarray) -> bool:
  """Whether a class has both a positive and a negative training image."""
  return bool(np.any(labels == 1) and np.any(labels == -1))


def _map_tasks(fn, tasks: list, workers: int) -> list:
  """`[fn(*t) for t in tasks]`, on `workers` processes (0: one per core).

  Each process has its own liblinear random generator, so a fit's result
  depends only on its seed. joblib hands large arrays to the processes as
  shared memory maps rather than copies.
  """
  workers = min(workers or os.cpu_count() or 1, len(tasks))
  if workers <= 1:
    return [fn(*t) for t in tasks]
  return joblib.Parallel(n_jobs=workers, backend='loky')(
      joblib.delayed(fn)(*t) for t in tasks
  )


def cross_validate(
    features: np.ndarray,
    targets: np.ndarray,
    costs=BENCHMARK_COSTS,
    num_folds: int = 3,
    seed: int = 0,
    workers: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
  """Chooses each class's cost by k-fold cross-validation.

  Follows fair_self_supervision_benchmark tools/svm/train_svm_kfold.py (the
  mean cross-validation AP of every class and cost) and tools/svm/
  test_svm.py (`get_chosen_costs`: per class, the argmax over the grid, so
  the first of tied costs in grid order).

  Args:
    features: [N, D], normalised (`normalize_features`).
    targets: [N, num_classes] VOC targets in {1, 0, -1}.
    costs: the `--costs_list` values; the grid is `cost_grid(costs)`.
    num_folds: number of folds.
    seed: see `make_svm`.
    workers: processes (0: one per core).

  Returns:
    (chosen cost per class [num_classes], NaN for classes that cannot be
    trained; mean held-out AP [num_classes, len(grid)], columns in grid
    order).
  """
  grid = cost_grid(costs)
  if num_folds < 2:
    raise ValueError(f'Need at least 2 folds, got {num_folds}.')
  targets = np.asarray(targets)
  labels = [train_labels(targets[:, c]) for c in range(targets.shape[1])]
  trainable = [c for c, y in enumerate(labels) if _trainable(y)]
  for c in sorted(set(range(targets.shape[1])) - set(trainable)):
    logging.warning(
        'SVM class %d has no positive or no negative trainval '
        'image: left out.',
        c,
    )
  pairs = [(c, k) for c in trainable for k in range(len(grid))]
  aps = _map_tasks(
      cross_validation_ap,
      [(features, labels[c], grid[k], num_folds, seed) for c, k in pairs],
      workers,
  )
  cv_ap = np.full((targets.shape[1], len(grid)), np.nan)
  for (c, k), ap in zip(pairs, aps):
    cv_ap[c, k] = ap
  best = np.full(targets.shape[1], np.nan)
  for c in trainable:
    # As test_svm.py: numpy's argmax, the first maximum in grid order.
    best[c] = grid[int(np.argmax(cv_ap[c]))]
  return best, cv_ap


def _fit(
    features: np.ndarray, labels: np.ndarray, cost: float, seed: int
) -> tuple[np.ndarray, float]:
  """(weights [D], bias) of one class's SVM (a task of `train_svms`)."""
  clf = make_svm(cost, seed).fit(features, labels)
  return clf.coef_[0], float(clf.intercept_[0])


def train_svms(
    features: np.ndarray,
    targets: np.ndarray,
    cost,
    seed: int = 0,
    workers: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
  """One SVM per class on all the given images.

  Follows fair_self_supervision_benchmark tools/svm/train_svm_kfold.py
  (`clf.fit` on all of trainval after the cross-validation).

  Args:
    features: [N, D], normalised (`normalize_features`).
    targets: [N, num_classes] VOC targets in {1, 0, -1}.
    cost: the cost C, a scalar or one per class; a NaN cost leaves its
      class out.
    seed: see `make_svm`.
    workers: processes (0: one per core).

  Returns:
    (weights [num_classes, D], biases [num_classes]), float64, NaN for the
    classes left out or that cannot be trained; the decision values are
    `features @ weights.T + biases`, as `LinearSVC.decision_function`.
  """
  targets = np.asarray(targets)
  num_classes = targets.shape[1]
  cost = np.broadcast_to(np.asarray(cost, np.float64), (num_classes,))
  if np.any(cost <= 0):
    raise ValueError(f'Costs must be positive, got {cost}.')
  labels = [train_labels(targets[:, c]) for c in range(num_classes)]
  classes = [
      c
      for c in range(num_classes)
      if np.isfinite(cost[c]) and _trainable(labels[c])
  ]
  fits = _map_tasks(
      _fit,
      [(features, labels[c], float(cost[c]), seed) for c in classes],
      workers,
  )
  weights = np.full((num_classes, features.shape[1]), np.nan)
  biases = np.full(num_classes, np.nan)
  for c, (weight, bias) in zip(classes, fits):
    weights[c], biases[c] = weight, bias
  return weights, biases


def evaluate(
    train_features: np.ndarray,
    train_targets: np.ndarray,
    test_features: np.ndarray,
    test_targets: np.ndarray,
    *,
    costs=BENCHMARK_COSTS,
    num_folds: int = 3,
    seed: int = 0,
    workers: int = 0,
) -> dict:
  """VOC07 linear-SVM classification mAP of frozen features.

  Follows fair_self_supervision_benchmark tools/svm/train_svm_kfold.py and
  tools/svm/test_svm.py end to end (see the module docstring): normalise
  both feature sets, choose each class's cost by cross-validation on
  trainval, train it on all of trainval, score the test images and take
  the mAP.

  Args:
    train_features: [N_train, D] trainval features.
    train_targets: [N_train, num_classes] in {1, 0, -1}.
    test_features: [N_test, D] test features.
    test_targets: [N_test, num_classes] in {1, 0, -1}.
    costs: the `--costs_list` values; the grid is `cost_grid(costs)`.
    num_folds: number of cross-validation folds.
    seed: see `make_svm`.
    workers: processes (0: one per core); each concurrent fit holds a
      copy of its training features in liblinear's sparse format (16 bytes
      a value).

  Returns:
    dict with 'mAP' (float), 'ap' ([num_classes] test APs, NaN where left
    out), 'cost' ([num_classes] chosen costs), 'costs' (the grid),
    'cv_ap' ([num_classes, len(grid)] cross-validation APs, grid order)
    and 'scores' ([N_test, num_classes] test decision values).
  """
  train_x = normalize_features(train_features)
  test_x = normalize_features(test_features)
  cost, cv_ap = cross_validate(
      train_x, train_targets, costs, num_folds, seed, workers
  )
  weights, biases = train_svms(train_x, train_targets, cost, seed, workers)
  scores = test_x @ weights.T + biases
  mean_ap, ap = voc.benchmark_mean_average_precision(
      scores, np.asarray(test_targets)
  )
  return {
      'mAP': mean_ap,
      'ap': ap,
      'cost': cost,
      'costs': cost_grid(costs),
      'cv_ap': cv_ap,
      'scores': scores,
  }
