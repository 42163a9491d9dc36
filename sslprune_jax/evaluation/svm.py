"""Per-class linear SVMs on frozen features: the VOC07 classification probe.

The protocol of Goyal et al. (2019)'s self-supervision benchmark, as used by
the paper: features are L2-normalised; for each class a linear SVM with a
bias is trained one-vs-rest on trainval, leaving out the images whose only
objects of that class are difficult (target 0); its cost C is chosen per
class by k-fold cross-validation on trainval (the C with the best mean VOC07
AP on the held-out folds, the smaller C on a tie) and the SVM is retrained on
all of trainval with it; the test scores are its decision values, and the
result is their VOC07 mAP.

Each SVM minimises the L2-loss (squared hinge) primal, with the bias left
out of the regulariser:

  0.5 * |w|^2 + C * sum_i max(0, 1 - y_i (w . x_i + b))^2.

It is once differentiable and strongly convex in w, so a Newton method
with a generalised Hessian converges in a few steps (Keerthi & DeCoste,
2005; Lin et al.'s trust-region Newton for LIBLINEAR). Each step here solves
the Newton system by conjugate gradient with a diagonal preconditioner,
using Hessian-vector products only, then minimises the objective exactly
along the step (a piecewise quadratic of the step length, so this needs no
pass over the features). The solver is deterministic, in float32, and stops
on the gradient norm (`TOL`).

Speed comes from batching and from conditioning:
  * The SVMs of all classes (and, in cross-validation, all folds) are
    vmapped over a shared feature matrix, so each pass over the features is
    one matrix product for all of them.
  * The costs are solved in increasing order, each starting from the
    solution for the previous cost (a regularisation path), rather than side
    by side: a large cost from a cold start takes many Newton steps, and in
    a batch every problem pays for the slowest.
  * Features are centred, which changes nothing since the bias is free
    (w . (x - mu) + b' is w . x + b with b = b' - w . mu) but takes the large
    common direction of post-ReLU features out of the Hessian, and rotated
    onto the eigenvectors of their scatter, which changes nothing either
    (the rotation is orthogonal) but makes the Hessian close to diagonal, so
    the diagonal preconditioner captures most of its spread.
"""

import functools

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from sslprune_jax.evaluation import voc

# Log grid of costs searched by cross-validation.
DEFAULT_COSTS = (0.01, 0.1, 1.0, 10.0, 100.0)

# Solver defaults: stop when the gradient norm is below `TOL` times its norm
# at w = 0, b = 0, or after `MAX_NEWTON` Newton steps of at most `MAX_CG`
# conjugate gradient iterations each.
TOL = 1e-4
MAX_NEWTON = 50
MAX_CG = 400
# `train_svms` reaches its costs along a path starting at this cost or below
# (on unit-norm features, a cold start there takes a few Newton steps).
_PATH_START = 1e-2


def l2_normalize(features: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  """Scales each row to unit Euclidean norm (rows of zeros stay zero).

  Args:
    features: [N, D].
    eps: floor of the norm, so that zero rows do not divide by zero.

  Returns:
    float32 [N, D].
  """
  features = np.asarray(features, np.float32)
  norms = np.linalg.norm(features, axis=1, keepdims=True)
  return features / np.maximum(norms, eps)


def _solve_one(x, xsq, y, mask, cost, w, b, g0unit, tol, max_newton,
               max_cg):
  """Newton-CG on one squared-hinge primal, from a given start.

  Args:
    x: [N, D] features (centred and rotated, see `_fit`).
    xsq: x ** 2, for the diagonal of the Hessian.
    y: [N] labels in {-1, 1}.
    mask: [N] 1 for the training images, 0 for the others.
    cost: the cost C.
    w: [D] starting weights.
    b: starting bias.
    g0unit: the gradient norm at w = 0, b = 0 for C = 1/2 (it is
      proportional to 2C).
    tol: relative tolerance on the gradient norm.
    max_newton: most Newton steps.
    max_cg: most conjugate gradient iterations per Newton step.

  Returns:
    (w [D], b, |grad| / |grad at 0|, Newton steps taken, conjugate
    gradient iterations taken in all).
  """
  two_c = 2.0 * cost
  g0norm = jnp.maximum(two_c * g0unit, 1e-30)

  def gradient(w, z):
    # d/dz of C * max(0, 1 - y z)^2 is -2C y max(0, 1 - y z).
    coef = -two_c * y * mask * jnp.maximum(0.0, 1.0 - y * z)
    return w + x.T @ coef, jnp.sum(coef)

  def norm(gw, gb):
    return jnp.sqrt(jnp.sum(gw * gw) + gb * gb)

  def newton_step(state):
    w, b, z, gw, gb, gnorm, step, total_cg = state
    active = mask * (y * z < 1.0)
    # Jacobi preconditioner: the diagonal of the generalised Hessian. The
    # bias entry is floored, as it is 0 when no image is active.
    diag_w = 1.0 + two_c * (xsq.T @ active)
    diag_b = jnp.maximum(two_c * jnp.sum(active), 1e-6)

    def hessian_times(pw, pb):
      u = x @ pw + pb
      au = two_c * active * u
      return pw + x.T @ au, jnp.sum(au), u

    # Inexact Newton: the forcing term shrinks with the gradient, which
    # keeps the late steps accurate.
    cg_tol = jnp.minimum(0.1, jnp.sqrt(gnorm / g0norm)) * gnorm
    # A problem that has converged is carried along by the batched loop;
    # it must not keep the batch's conjugate gradient loop running.
    running = gnorm > tol * g0norm

    def cg_cond(cg):
      rw, rb = cg[2], cg[3]
      return running & (cg[-1] < max_cg) & (norm(rw, rb) > cg_tol)

    def cg_body(cg):
      dw, db, rw, rb, pw, pb, rz, xd, it = cg
      hw, hb, u = hessian_times(pw, pb)
      php = jnp.sum(pw * hw) + pb * hb
      alpha = jnp.where(php > 0, rz / jnp.where(php > 0, php, 1.0), 0.0)
      dw, db = dw + alpha * pw, db + alpha * pb
      # x . d + d_b, kept up to date for the line search.
      xd = xd + alpha * u
      rw, rb = rw - alpha * hw, rb - alpha * hb
      sw, sb = rw / diag_w, rb / diag_b
      rz_new = jnp.sum(rw * sw) + rb * sb
      beta = jnp.where(rz > 0, rz_new / jnp.where(rz > 0, rz, 1.0), 0.0)
      pw, pb = sw + beta * pw, sb + beta * pb
      return dw, db, rw, rb, pw, pb, rz_new, xd, it + 1

    rw, rb = -gw, -gb
    sw, sb = rw / diag_w, rb / diag_b
    cg = (jnp.zeros_like(w), jnp.zeros_like(b), rw, rb, sw, sb,
          jnp.sum(rw * sw) + rb * sb, jnp.zeros_like(z), 0)
    dw, db, _, _, _, _, _, xd, its = jax.lax.while_loop(cg_cond, cg_body,
                                                         cg)

    # Exact line search. Along w + t dw, b + t db the objective is convex
    # and piecewise quadratic in t, so its derivative is piecewise linear
    # and increasing: Newton's method on it is exact once on the root's
    # piece, and falling back to bisection whenever it leaves the bracket
    # of the root makes it converge from anywhere.
    slack = 1.0 - y * z
    slope = y * xd
    wd, dd = jnp.sum(w * dw), jnp.sum(dw * dw)

    def derivatives(t):
      on = mask * (slack - t * slope > 0)
      first = wd + t * dd - two_c * jnp.sum(on * slope * (slack - t * slope))
      second = dd + two_c * jnp.sum(on * slope * slope)
      return first, second

    def too_short(hi):
      return (derivatives(hi)[0] < 0) & (hi < 2.0 ** 30)

    hi = jax.lax.while_loop(too_short, lambda hi: 2.0 * hi, jnp.ones_like(b))
    lo = jnp.where(hi > 1.0, 0.5 * hi, 0.0)

    def search(_, interval):
      lo, hi, t = interval
      first, second = derivatives(t)
      lo = jnp.where(first < 0, t, lo)
      hi = jnp.where(first > 0, t, hi)
      guess = t - first / jnp.maximum(second, 1e-30)
      inside = (guess >= lo) & (guess <= hi)
      return lo, hi, jnp.where(inside, guess, 0.5 * (lo + hi))

    _, _, t = jax.lax.fori_loop(0, 30, search, (lo, hi, jnp.ones_like(b)))
    # A converged problem keeps its point (t is 0 for it anyway, up to
    # rounding).
    t = jnp.where(running, t, 0.0)

    w, b = w + t * dw, b + t * db
    # Recomputed rather than updated, so float32 errors do not build up.
    z = x @ w + b
    gw, gb = gradient(w, z)
    return w, b, z, gw, gb, norm(gw, gb), step + 1, total_cg + its

  def newton_cond(state):
    gnorm, step = state[-3], state[-2]
    return (step < max_newton) & (gnorm > tol * g0norm)

  z = x @ w + b
  gw, gb = gradient(w, z)
  state = (w, b, z, gw, gb, norm(gw, gb), 0, 0)
  w, b, _, _, _, gnorm, steps, total_cg = jax.lax.while_loop(
      newton_cond, newton_step, state)
  return w, b, gnorm / g0norm, steps, total_cg


# Problems [P] over one feature matrix.
_solve_many = jax.vmap(
    _solve_one, in_axes=(None, None, 0, 0, 0, 0, 0, 0, None, None, None))
# Groups [G] of problems [G, P], each group with its own feature matrix.
_solve_groups = jax.vmap(
    _solve_many, in_axes=(0, 0, 0, 0, 0, 0, 0, 0, None, None, None))


@jax.jit
def _eigenvectors(x, weight):
  xc = (x - weight @ x / jnp.maximum(jnp.sum(weight), 1.0)) * weight[:, None]
  return jnp.linalg.eigh(xc.T @ xc)[1]


def _rotation(x: np.ndarray, targets: np.ndarray) -> jax.Array:
  """Coordinates in which the SVMs' Hessians are close to diagonal.

  Args:
    x: [N, D] features.
    targets: [N, num_classes] in {1, 0, -1}.

  Returns:
    [D, D] orthogonal: the eigenvectors of the scatter of the images that
    some class trains on (those not difficult for every class).
  """
  weight = np.any(np.asarray(targets) != voc.DIFFICULT, axis=1)
  return _eigenvectors(x, weight.astype(np.float32))


@functools.partial(jax.jit, static_argnames=('max_newton', 'max_cg'))
def _fit(x, y, mask, costs, basis, tol, max_newton, max_cg):
  """Squared-hinge SVMs along a path of costs.

  The costs are taken in turn, each solve starting from the solution for
  the previous one: with increasing costs the solutions move little from
  one cost to the next, and solving the costs in turn rather than side by
  side means the few slow problems (large costs) do not hold the many fast
  ones in the batched loops.

  Args:
    x: [G, N, D] features, one matrix per group (not centred).
    y: [G, P, N] labels in {-1, 1}.
    mask: [G, P, N] 1 for the images a problem trains on, 0 otherwise.
    costs: [K, G, P] costs, best increasing along K.
    basis: [D, D] orthogonal, the coordinates to solve in (`_rotation`).
    tol: relative tolerance on the gradient norm.
    max_newton: most Newton steps.
    max_cg: most conjugate gradient iterations per Newton step.

  Returns:
    (w [K, G, P, D], b [K, G, P], relative gradient norm [K, G, P], Newton
    steps [K, G, P], conjugate gradient iterations [K, G, P]).
  """
  # Centring and rotating change the problem only by a change of variables
  # (see the module docstring). The centre is the mean of the images that
  # some problem trains on; padding and images left out of every problem
  # are zeroed.
  weight = jnp.max(mask, axis=1)
  mu = jnp.einsum('gn,gnd->d', weight, x) / jnp.maximum(jnp.sum(weight),
                                                         1.0)
  xr = ((x - mu) * weight[:, :, None]) @ basis
  xsq = xr * xr
  my = mask * y
  g0unit = jnp.sqrt(jnp.sum(jnp.einsum('gpn,gnd->gpd', my, xr) ** 2, -1)
                    + jnp.sum(my, -1) ** 2)

  def one_cost(start, cost):
    w, b, rel, steps, cg = _solve_groups(xr, xsq, y, mask, cost, *start,
                                         g0unit, tol, max_newton, max_cg)
    return (w, b), (w, b, rel, steps, cg)

  start = (jnp.zeros(y.shape[:2] + x.shape[-1:], x.dtype),
           jnp.zeros(y.shape[:2], x.dtype))
  _, (w, b, rel, steps, cg) = jax.lax.scan(one_cost, start, costs)
  w = w @ basis.T
  return w, b - w @ mu, rel, steps, cg


def _labels_and_mask(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """±1 labels and training masks [num_classes, N] from VOC targets."""
  targets = np.asarray(targets).T
  y = np.where(targets == voc.POSITIVE, 1.0, -1.0).astype(np.float32)
  mask = (targets != voc.DIFFICULT).astype(np.float32)
  return y, mask


def _check_converged(rel, tol: float):
  """Warns when some problem stopped on the iteration limits."""
  worst = float(np.max(np.asarray(rel)))
  # Float32 rounding can leave the last step a little short of `tol`.
  if worst > 10 * tol:
    logging.warning('SVM solver stopped at a relative gradient norm of %.2g '
                    '(tolerance %.2g): raise max_newton or max_cg.', worst,
                    tol)


def train_svms(features: np.ndarray, targets: np.ndarray, cost,
               *, tol: float = TOL, max_newton: int = MAX_NEWTON,
               max_cg: int = MAX_CG) -> tuple[np.ndarray, np.ndarray]:
  """One-vs-rest squared-hinge SVMs, one per class.

  Features are used as given (`evaluate` L2-normalises them). For each
  class, images with target 0 (difficult) are left out of its training.

  Args:
    features: [N, D].
    targets: [N, num_classes] in {1, 0, -1} (see `voc.targets`).
    cost: the cost C, a scalar or one per class [num_classes].
    tol: stop when the gradient norm is below `tol` times its value at
      w = 0, b = 0.
    max_newton: most Newton steps.
    max_cg: most conjugate gradient iterations per Newton step.

  Returns:
    (weights [num_classes, D], biases [num_classes]), float32; the decision
    values are `features @ weights.T + biases`.
  """
  x = np.asarray(features, np.float32)
  return _train(x, targets, cost, _rotation(x, targets), tol, max_newton,
                max_cg)


def _train(x, targets, cost, basis, tol, max_newton, max_cg):
  """`train_svms` in the coordinates `basis` (see `_fit`)."""
  y, mask = _labels_and_mask(targets)
  cost = np.broadcast_to(np.asarray(cost, np.float32), y.shape[:1])
  if np.any(cost <= 0):
    raise ValueError(f'Costs must be positive, got {cost}.')
  # A large cost is reached through smaller ones (see `_fit`), as a cold
  # start there takes many more Newton steps: the distinct costs and steps
  # of a factor 10 down from the largest to at most `_PATH_START`, each
  # class stopping at its own cost.
  top, bottom = cost.max(), min(cost.min(), _PATH_START)
  steps = np.ceil(np.log10(top / bottom) - 1e-6)
  ladder = top / 10.0 ** np.arange(1, 1 + steps)
  levels = np.unique(np.concatenate([cost, ladder]).astype(np.float32))
  # Near-equal levels (a rung of the ladder next to a cost) are one.
  levels = levels[np.r_[levels[1:] > levels[:-1] * 1.001, True]]
  path = np.minimum(levels[:, None], cost[None, :])
  w, b, rel, _, _ = _fit(x[None], y[None], mask[None], path[:, None],
                         basis, tol, max_newton, max_cg)
  _check_converged(rel, tol)
  return np.asarray(w[-1, 0]), np.asarray(b[-1, 0])


def assign_folds(targets: np.ndarray, num_folds: int,
                 seed: int = 0) -> np.ndarray:
  """Deterministic, seeded split of the images into folds.

  Greedy, rarest class first: the images of a class that are not placed yet
  go, in a seeded random order, each to the fold holding the fewest
  positives of that class (then the fewest images, then the lowest index).
  So a class with at least `num_folds` positives normally has positives in
  every fold; this is not guaranteed when most of its positives were
  already placed with rarer classes. Images without any positive then fill
  the smallest folds.

  Args:
    targets: [N, num_classes] in {1, 0, -1}.
    num_folds: number of folds.
    seed: seed of the order in which images are placed.

  Returns:
    int [N], the fold of each image.
  """
  positive = np.asarray(targets) == voc.POSITIVE
  order = np.random.default_rng(seed).permutation(positive.shape[0])
  fold = np.full(positive.shape[0], -1)
  per_fold = np.zeros((num_folds, positive.shape[1]), np.int64)
  sizes = np.zeros(num_folds, np.int64)
  counts = positive.sum(axis=0)
  folds = np.arange(num_folds)

  def place(i, f):
    fold[i] = f
    sizes[f] += 1
    per_fold[f] += positive[i]

  for c in np.argsort(counts, kind='stable'):
    for i in order[positive[order, c]]:
      if fold[i] < 0:
        place(i, np.lexsort((folds, sizes, per_fold[:, c]))[0])
  for i in order:
    if fold[i] < 0:
      place(i, int(np.argmin(sizes)))
  return fold


def cross_validate(features: np.ndarray, targets: np.ndarray,
                   costs=DEFAULT_COSTS, num_folds: int = 3, seed: int = 0,
                   *, tol: float = TOL, max_newton: int = MAX_NEWTON,
                   max_cg: int = MAX_CG) -> tuple[np.ndarray, np.ndarray]:
  """Chooses each class's cost by k-fold cross-validation.

  For every fold, class and cost, an SVM is trained on the other folds
  (difficult images of the class left out) and scored by VOC07 AP on the
  fold. A fold without a positive of a class gives a NaN AP, left out of
  that class's mean; a class with no positive at all has NaN mean APs and
  gets the middle cost of the grid (its SVMs are still trained, all on
  negatives).

  Args:
    features: [N, D], used as given (`evaluate` L2-normalises them).
    targets: [N, num_classes] in {1, 0, -1}.
    costs: the grid of costs.
    num_folds: number of folds (see `assign_folds`).
    seed: seed of the folds.
    tol: see `train_svms`.
    max_newton: see `train_svms`.
    max_cg: see `train_svms`.

  Returns:
    (best cost per class [num_classes], mean held-out AP per class and cost
    [num_classes, len(costs)], with the costs sorted in increasing order).
  """
  x = np.asarray(features, np.float32)
  return _cross_validate(x, targets, costs, num_folds, seed,
                         _rotation(x, targets), tol, max_newton, max_cg)


def _cross_validate(x, targets, costs, num_folds, seed, basis, tol,
                    max_newton, max_cg):
  """`cross_validate` in the coordinates `basis` (see `_fit`)."""
  targets = np.asarray(targets)
  costs = np.sort(np.asarray(costs, np.float32).reshape(-1))
  if costs.size == 0 or np.any(costs <= 0):
    raise ValueError(f'Costs must be positive, got {costs}.')
  if num_folds < 2:
    raise ValueError(f'Need at least 2 folds, got {num_folds}.')
  num_classes, num_costs = targets.shape[1], costs.size
  fold = assign_folds(targets, num_folds, seed)
  y, mask = _labels_and_mask(targets)

  # One group per fold, its training images padded with masked-out rows to
  # a common length.
  train = [np.flatnonzero(fold != f) for f in range(num_folds)]
  length = max(idx.size for idx in train)
  xs, ys, masks = [], [], []
  for idx in train:
    pad = length - idx.size
    rows = np.concatenate([idx, np.zeros(pad, idx.dtype)])
    keep = np.concatenate([np.ones(idx.size), np.zeros(pad)])
    xs.append(x[rows] * keep[:, None].astype(np.float32))
    ys.append(y[:, rows])
    masks.append(mask[:, rows] * keep.astype(np.float32))
  cost = np.broadcast_to(costs[:, None, None],
                         (num_costs, num_folds, num_classes))
  w, b, rel, _, _ = _fit(np.stack(xs), np.stack(ys), np.stack(masks),
                         cost, basis, tol, max_newton, max_cg)
  _check_converged(rel, tol)
  w, b = np.asarray(w), np.asarray(b)

  ap = np.full((num_folds, num_classes, num_costs), np.nan)
  for f in range(num_folds):
    held = fold == f
    for k in range(num_costs):
      scores = x[held] @ w[k, f].T + b[k, f]
      for c in range(num_classes):
        ap[f, c, k] = voc.average_precision(scores[:, c], targets[held, c])
  valid = ~np.isnan(ap)
  with np.errstate(invalid='ignore'):
    cv_ap = np.where(valid, ap, 0.0).sum(0) / valid.sum(0)
  best = np.empty(num_classes, np.float32)
  for c in range(num_classes):
    if np.all(np.isnan(cv_ap[c])):
      best[c] = costs[num_costs // 2]
    else:
      # argmax takes the first maximum: the smaller cost on a tie.
      best[c] = costs[int(np.argmax(cv_ap[c]))]
  return best, cv_ap


def evaluate(train_features: np.ndarray, train_targets: np.ndarray,
             test_features: np.ndarray, test_targets: np.ndarray,
             *, costs=DEFAULT_COSTS, num_folds: int = 3,
             seed: int = 0) -> dict:
  """VOC07 linear-SVM classification mAP of frozen features.

  Both feature sets are L2-normalised here (`l2_normalize`); the cost of
  each class is chosen by `cross_validate` on trainval and its SVM is then
  retrained on all of trainval (`train_svms`).

  Args:
    train_features: [N_train, D] trainval features.
    train_targets: [N_train, num_classes] in {1, 0, -1}.
    test_features: [N_test, D] test features.
    test_targets: [N_test, num_classes] in {1, 0, -1}.
    costs: the grid of costs.
    num_folds: number of cross-validation folds.
    seed: seed of the folds.

  Returns:
    dict with 'mAP' (float, over the classes with a positive test image),
    'ap' ([num_classes] test APs, NaN for classes without positives),
    'cost' ([num_classes] chosen costs), 'cv_ap' ([num_classes,
    len(costs)] cross-validation APs, costs in increasing order) and
    'scores' ([N_test, num_classes] test decision values).
  """
  train_x = l2_normalize(train_features)
  test_x = l2_normalize(test_features)
  # Cross-validation and the final training share one rotation, computed
  # once.
  basis = _rotation(train_x, train_targets)
  cost, cv_ap = _cross_validate(train_x, train_targets, costs, num_folds,
                                seed, basis, TOL, MAX_NEWTON, MAX_CG)
  weights, biases = _train(train_x, train_targets, cost, basis, TOL,
                           MAX_NEWTON, MAX_CG)
  scores = test_x @ weights.T + biases
  mean_ap, ap = voc.mean_average_precision(scores, np.asarray(test_targets))
  return {'mAP': mean_ap, 'ap': ap, 'cost': cost, 'cv_ap': cv_ap,
          'scores': scores}
