"""The linear classifier on frozen features and its SGD (`evaluation.linear`).

Softmax over a linear layer with bias, on features normalised by a batch
norm without scale or shift or by a fixed standardisation (`NORMS`), trained
with Caffe2's momentum SGD as in Goyal et al.'s benchmark (`optimizer`; see
`evaluation.linear` for the protocol and its reference files), on features
held in memory (`train_classifier`) or one step at a time (`make_step`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sslprune_jax import train

# How features are normalised before the linear layer: Goyal et al.'s batch
# norm without scale or shift, or a fixed standardisation by the mean and
# standard deviation of the first training features (quick variants).
NORMS = ('batch_norm', 'standardize')


def _standardizer(features: np.ndarray) -> dict:
  return {
      'mean': features.mean(0),
      'scale': 1.0 / np.maximum(features.std(0), 1e-6),
  }


def init_classifier(
    num_features: int, num_classes: int, rng=None, init_std: float = 0.0
) -> dict:
  """The linear layer: N(0, init_std^2) weights (zeros if 0), zero bias.

  Goyal et al.'s heads start from std 0.01 (MODEL.FC_INIT_STD, GaussianFill
  in fair_self_supervision_benchmark self_supervision_benchmark/modeling/
  supervised/resnet_supervised_finetune_linear.py).
  """
  kernel = jnp.zeros((num_features, num_classes))
  if init_std > 0:
    kernel = init_std * jax.random.normal(rng, kernel.shape)
  return {'kernel': kernel, 'bias': jnp.zeros((num_classes,))}


def logits(params: dict, stats: dict, features: jax.Array) -> jax.Array:
  """The linear classifier on normalised features.

  Args:
    params: `init_classifier`'s.
    stats: 'mean' and 'scale' [D]: features are `(f - mean) * scale`.
    features: [B, D].
  """
  x = (features - stats['mean']) * stats['scale']
  return x @ params['kernel'] + params['bias']


def init_norm(lin: ml_collections.ConfigDict, features: np.ndarray) -> dict:
  """The normalisation state before training.

  Args:
    lin: `norm` (see `NORMS`).
    features: [N, D] training features, for 'standardize'; for
      'batch_norm' only their width is read.

  Returns:
    'batch_norm': running 'mean' 0 and 'var' 1 (Caffe2's start);
    'standardize': the fixed 'mean' and 'scale' of `features`.
  """
  if lin.norm == 'batch_norm':
    width = features.shape[1]
    return {'mean': jnp.zeros((width,)), 'var': jnp.ones((width,))}
  return jax.tree.map(jnp.asarray, _standardizer(features))


def inference_stats(lin: ml_collections.ConfigDict, state: dict) -> dict:
  """`logits`'s stats from a trained normalisation state.

  Batch norm at test uses its running averages, as the benchmark's heads
  (SpatialBN with is_test on the test split).
  """
  if lin.norm == 'batch_norm':
    return {
        'mean': state['mean'],
        'scale': jax.lax.rsqrt(state['var'] + lin.bn_epsilon),
    }
  return state


def learning_rate_schedule(
    lin: ml_collections.ConfigDict, steps_per_epoch: int
) -> tuple[int, optax.Schedule]:
  """The classifier's number of steps and learning-rate schedule.

  With `lin.num_steps` > 0 both are in iterations, as Goyal et al.'s
  SOLVER.NUM_ITERATIONS and (cumulative) SOLVER.STEP_SIZES
  (fair_self_supervision_benchmark self_supervision_benchmark/utils/
  lr_utils.py): the rate is multiplied by `decay_factor` after each of
  `lin.decay_steps`. Otherwise in epochs (`train.create_learning_rate_fn`).

  Returns:
    (total steps, schedule: step -> learning rate).
  """
  if lin.num_steps > 0:
    return lin.num_steps, optax.piecewise_constant_schedule(
        lin.learning_rate,
        {int(step): lin.decay_factor for step in lin.decay_steps},
    )
  steps = max(1, int(round(lin.num_epochs * steps_per_epoch)))
  return steps, train.create_learning_rate_fn(lin, steps_per_epoch)


def optimizer(lin, learning_rate_fn) -> optax.GradientTransformation:
  """SGD as Caffe2's MomentumSGDUpdate in Goyal et al.'s benchmark.

  Weight decay is added to the gradients, then the learning rate is
  applied inside the momentum buffer (m <- mu m + lr g; the step is m, or
  (1 + mu) m - mu m_previous with Nesterov), as fair_self_supervision_
  benchmark self_supervision_benchmark/modeling/model_builder.py does.
  """
  return optax.chain(
      optax.add_decayed_weights(lin.weight_decay),
      optax.scale_by_learning_rate(learning_rate_fn),
      optax.trace(decay=lin.momentum, nesterov=lin.nesterov),
  )


def make_step(tx, lin):
  """The jitted SGD step on a batch of features.

  With batch norm, the batch is normalised by its own mean and (biased)
  variance and the running averages move by `1 - lin.bn_momentum` towards
  them; otherwise by the fixed stats in the state.
  """
  batch_norm = lin.norm == 'batch_norm'
  momentum, eps = lin.bn_momentum, lin.bn_epsilon

  @jax.jit
  def step(params, opt_state, norm_state, features, labels):
    if batch_norm:
      mean, var = features.mean(0), features.var(0)
      stats = {'mean': mean, 'scale': jax.lax.rsqrt(var + eps)}
      norm_state = jax.tree.map(
          lambda old, new: momentum * old + (1 - momentum) * new,
          norm_state,
          {'mean': mean, 'var': var},
      )
    else:
      stats = norm_state

    def loss_fn(p):
      return optax.softmax_cross_entropy_with_integer_labels(
          logits(p, stats, features), labels
      ).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, norm_state, loss

  return step


def train_classifier(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    lin: ml_collections.ConfigDict,
    seed: int,
) -> tuple[dict, dict]:
  """SGD on features in memory: shuffled passes until the last step.

  Args:
    features: [N, D].
    labels: [N] int.
    num_classes: outputs of the classifier.
    lin: `batch_size`, `momentum`, `nesterov`, `weight_decay`, `norm`,
      `init_std` and the schedule's fields (`learning_rate_schedule`).
    seed: shuffling and initialisation seed.

  Returns:
    (params, stats) for `logits`.
  """
  n = len(features)
  batch = min(lin.batch_size, n)
  steps_per_epoch = n // batch
  steps, learning_rate_fn = learning_rate_schedule(lin, steps_per_epoch)
  tx = optimizer(lin, learning_rate_fn)
  step = make_step(tx, lin)
  norm_state = init_norm(lin, features)
  params = init_classifier(
      features.shape[1], num_classes, jax.random.key(seed), lin.init_std
  )
  opt_state = tx.init(params)
  rng = np.random.default_rng(seed)
  done = 0
  while done < steps:
    order = rng.permutation(n)
    for i in range(min(steps_per_epoch, steps - done)):
      idx = order[i * batch : (i + 1) * batch]
      params, opt_state, norm_state, _ = step(
          params,
          opt_state,
          norm_state,
          jnp.asarray(features[idx]),
          jnp.asarray(labels[idx]),
      )
    done += min(steps_per_epoch, steps - done)
  return params, inference_stats(lin, norm_state)


def accuracy(
    params: dict, stats: dict, features: np.ndarray, labels: np.ndarray
) -> float:
  """Top-1 accuracy of the classifier."""
  pred = np.asarray(
      jnp.argmax(logits(params, stats, jnp.asarray(features)), -1)
  )
  return float(np.mean(pred == labels))
