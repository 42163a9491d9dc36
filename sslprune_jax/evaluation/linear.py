"""Linear classifiers on the frozen features of a pruning run's subnetworks.

For each finished round r of the pruning run in `config.source.workdir`,
the round's trained, masked trunk is frozen (batch norm in inference mode)
and its features are read (`feature_fn`): the global average pool the head
sits on, or with `linear.layer` the output of any module (e.g. 'layer4_2',
ResNet-50's res5), averaged over space or, with `linear.pool = (k, s)`,
average-pooled in k x k windows at stride s and flattened. Then, on
`config.data`:

* single-label data (ImageNet, Places365, CIFAR-10, Fashion-MNIST): a linear
  classifier (softmax, with bias) trained with SGD on the training split;
  top-1 accuracy on the eval split. With `linear.cache_features` the
  training features are read once without augmentation and the classifier
  trains on them in memory (fast; for datasets whose features fit on the
  host); without, every step reads an augmented batch through the frozen
  trunk (ImageNet, Places).
* multi-label VOC 2007: per-class linear SVMs, costs chosen by
  cross-validation on trainval, mAP on test (`evaluation.svm`, Goyal et
  al.'s protocol).

The ImageNet / Places classifier follows Goyal et al. (2019)'s benchmark,
fair_self_supervision_benchmark configs/legacy_tasks/imagenet_linear_tune/
resnet50_*_finetune_linear.yaml and configs/benchmark_tasks/
image_classification/places205/resnet50_*_finetune_linear.yaml with the
head of self_supervision_benchmark/modeling/*/resnet_*_finetune_linear.py:
res5 average-pooled with a 6 x 6 window at stride 1 (2 x 2 x 2048 at 224
pixels), batch norm without scale or shift (`linear.norm='batch_norm'`:
batch statistics in training, running averages with momentum 0.9 at test),
a linear layer from N(0, 0.01^2) weights and zero bias, cross-entropy;
SGD with Nesterov momentum 0.9 (the learning rate inside the momentum, as
Caffe2's MomentumSGDUpdate), weight decay 1e-4 added to the gradients (bias
included), batch 256, lr 0.01 multiplied by 0.1 after 40k, 80k and 120k of
140k iterations. Where this differs: the benchmark's batch norm takes its
statistics per GPU (32 images), here over the global batch; its training
augmentation adds colour jitter and lighting noise to the random-size crops
and flips of the 'imagenet' data pipeline.

`results.csv` has one line per source round with `fraction_left` as in the
source run, so `report` plots it; a restarted run skips finished rounds.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

from absl import logging
from etils import epath
from flax import linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import optax

from sslprune_jax import checkpoint
from sslprune_jax import config_lib
from sslprune_jax import data
from sslprune_jax import models
from sslprune_jax import parallel
from sslprune_jax import pruning
from sslprune_jax import train
from sslprune_jax.evaluation import svm
from sslprune_jax.rundir import results
from sslprune_jax.rundir import sources

PyTree = Any

# How features are normalised before the linear layer: Goyal et al.'s batch
# norm without scale or shift, or a fixed standardisation by the mean and
# standard deviation of the first training features (quick variants).
NORMS = ('batch_norm', 'standardize')


def validate(config: ml_collections.ConfigDict) -> None:
  """Refuses bad `source` / `linear` values before anything is read."""
  s, lin = config.get('source'), config.get('linear')
  problems = []
  if config.get('num_seeds', 1) != 1:
    problems.append(
        'num_seeds must be 1 for a linear evaluation (run one ' 'per seed).'
    )
  if s is None or not s.get('workdir'):
    problems.append('source.workdir must name a finished pruning run.')
  elif any(not isinstance(r, int) or r < 0 for r in s.rounds):
    problems.append(f'source.rounds must be rounds >= 0, got {s.rounds}.')
  if lin is None:
    problems.append('config.linear is missing.')
  else:
    problems += _linear_problems(lin)
  if config.data.name not in data.DATASETS:
    problems.append(
        f'Unknown data.name {config.data.name!r}; valid: ' f'{data.DATASETS}.'
    )
  if config.model.name not in models.MODELS:
    problems.append(f'Unknown model.name {config.model.name!r}.')
  if problems:
    raise ValueError('Invalid config:\n  ' + '\n  '.join(problems))


def _linear_problems(lin: ml_collections.ConfigDict) -> list[str]:
  """What is wrong with `config.linear`, as sentences."""
  problems = []
  if lin.batch_size <= 0:
    problems.append(f'linear.batch_size must be > 0, got {lin.batch_size}.')
  if lin.num_steps < 0 or (lin.num_steps == 0 and lin.num_epochs <= 0):
    problems.append(
        'linear.num_steps (iterations) or else linear.num_epochs '
        'must be > 0.'
    )
  if lin.schedule not in train.SCHEDULES:
    problems.append(
        f'Unknown linear.schedule {lin.schedule!r}; valid: '
        f'{train.SCHEDULES}.'
    )
  elif lin.num_steps > 0 and lin.schedule != 'step':
    problems.append(
        'linear.num_steps needs linear.schedule="step" (decays '
        f'at linear.decay_steps), got {lin.schedule!r}.'
    )
  if lin.learning_rate <= 0:
    problems.append(
        f'linear.learning_rate must be > 0, got {lin.learning_rate}.'
    )
  if lin.pool and (len(lin.pool) != 2 or min(lin.pool) <= 0):
    problems.append(
        'linear.pool must be () or (window, stride) > 0, got ' f'{lin.pool}.'
    )
  if lin.pool and not lin.layer:
    problems.append(
        'linear.pool needs a spatial feature map: set '
        'linear.layer (e.g. "layer4_2", ResNet-50\'s res5).'
    )
  if lin.norm not in NORMS:
    problems.append(f'Unknown linear.norm {lin.norm!r}; valid: {NORMS}.')
  if not lin.svm_costs or min(lin.svm_costs) <= 0:
    problems.append(f'linear.svm_costs must be > 0, got {lin.svm_costs}.')
  if lin.svm_folds < 2:
    problems.append(f'linear.svm_folds must be >= 2, got {lin.svm_folds}.')
  if lin.svm_workers < 0:
    problems.append(f'linear.svm_workers must be >= 0, got {lin.svm_workers}.')
  return problems


def load_trunk(
    config: ml_collections.ConfigDict, round_idx: int
) -> tuple[dict, PyTree]:
  """Round `round_idx`'s trained trunk: masked variables without the head.

  Returns:
    (variables, mask) of `models.create_model(config.model, None)`.
  """
  _, saved = sources.read_source_round(config, config.source.workdir, round_idx)
  params = {k: v for k, v in saved['params'].items() if k != models.HEAD}
  mask = {k: v for k, v in saved['mask'].items() if k != models.HEAD}
  return (
      {
          'params': pruning.apply_mask(params, mask),
          'batch_stats': saved['batch_stats'],
      },
      mask,
  )


def pool_features(out: jax.Array, pool=()) -> jax.Array:
  """A module's output as [B, D] float32 features.

  Args:
    out: [B, H, W, C] or [B, ...].
    pool: () to average a feature map over space; (k, s) to average it in
      k x k windows at stride s without padding, flattened channel-major
      (the layout of Caffe2's NCHW blobs). Goyal et al.'s ResNet-50 res5
      features are (6, 1): 7 x 7 -> 2 x 2 at 224 pixels (fair_self_
      supervision_benchmark configs/benchmark_tasks/image_classification/
      voc07/resnet50_*_extract_features.yaml, res5_2_branch2c_bn_s1k6_resize).

  Returns:
    [B, D] float32.
  """
  if out.ndim == 4 and pool:
    window, stride = pool
    if window > min(out.shape[1:3]):
      raise ValueError(
          f'linear.pool window {window} is larger than the '
          f'{out.shape[1]} x {out.shape[2]} feature map.'
      )
    out = nn.avg_pool(
        out, (window, window), strides=(stride, stride), padding='VALID'
    )
    out = jnp.transpose(out, (0, 3, 1, 2))
  elif out.ndim == 4:
    out = out.mean(axis=(1, 2))
  elif pool:
    raise ValueError(
        'linear.pool needs a spatial feature map; got features '
        f'of shape {out.shape}.'
    )
  return out.reshape(out.shape[0], -1).astype(jnp.float32)


def feature_fn(
    model_config: ml_collections.ConfigDict, layer: str, mesh, pool=()
):
  """Jitted, data-parallel (variables, images) -> [B, D] float32 features.

  Args:
    model_config: the source's model config.
    layer: '' for the pooled features the head sits on, or the '/'-joined
      path of a module whose output is taken.
    mesh: the data mesh; images are split over it, variables replicated.
    pool: how a module's feature map is pooled (see `pool_features`).
  """
  model = models.create_model(model_config, None)
  path = tuple(layer.split('/')) if layer else ()

  def features(variables, images):
    if not path:
      out = model.apply(variables, images, train=False)
    else:
      _, state = model.apply(
          variables,
          images,
          train=False,
          mutable=['intermediates'],
          capture_intermediates=lambda m, name: (
              name == '__call__' and tuple(m.scope.path) == path
          ),
      )
      node = state.get('intermediates', {})
      for key in path:
        if key not in node:
          names = sorted(variables['params'])
          raise ValueError(
              f'linear.layer={layer!r} is not a module of the '
              f'model; top-level modules: {names}.'
          )
        node = node[key]
      out = node['__call__'][0]
    return pool_features(out, tuple(pool))

  return jax.jit(
      jax.shard_map(
          features,
          mesh=mesh,
          in_specs=(P(), P(parallel.AXIS)),
          out_specs=P(parallel.AXIS),
      )
  )


def extract(
    features, variables, batches: Iterator[dict], mesh
) -> tuple[np.ndarray, np.ndarray]:
  """Features and labels of every real example of an eval-style iterator."""
  feats, labels = [], []
  for batch in batches:
    f = parallel.to_host(
        features(variables, parallel.shard_batch(batch['image'], mesh))
    )
    keep = parallel.to_host(parallel.shard_batch(batch['mask'], mesh))
    label = parallel.to_host(parallel.shard_batch(batch['label'], mesh))
    feats.append(f[keep])
    labels.append(label[keep])
  return np.concatenate(feats), np.concatenate(labels)


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


def _optimizer(lin, learning_rate_fn) -> optax.GradientTransformation:
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


def _make_step(tx, lin):
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
  tx = _optimizer(lin, learning_rate_fn)
  step = _make_step(tx, lin)
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


def _streamed_classifier(config, features_of, variables, info, mesh):
  """SGD with each step's features read through the frozen trunk from an
  augmented training batch (for datasets too large to cache)."""
  lin = config.linear
  steps_per_epoch = info.num_train_examples // lin.batch_size
  steps, learning_rate_fn = learning_rate_schedule(lin, steps_per_epoch)
  batches = data.train_iterator(
      config.data,
      global_batch_size=lin.batch_size,
      seed=config.seed,
      start_step=0,
  )

  def next_features():
    batch = next(batches)
    f = features_of(variables, parallel.shard_batch(batch['image'], mesh))
    label = parallel.shard_batch(batch['label'], mesh)
    return parallel.to_host(f), parallel.to_host(label)

  # A fixed standardisation comes from the first batches' features.
  num_first = min(10, steps) if lin.norm == 'standardize' else 1
  first = [next_features() for _ in range(num_first)]
  norm_state = init_norm(lin, np.concatenate([f for f, _ in first]))
  tx = _optimizer(lin, learning_rate_fn)
  step = _make_step(tx, lin)
  params = init_classifier(
      first[0][0].shape[1],
      info.num_classes,
      jax.random.key(config.seed),
      lin.init_std,
  )
  opt_state = tx.init(params)
  for i in range(steps):
    f, y = first[i] if i < len(first) else next_features()
    params, opt_state, norm_state, loss = step(
        params, opt_state, norm_state, jnp.asarray(f), jnp.asarray(y)
    )
    if (i + 1) % config.log_every_steps == 0:
      logging.info('linear step %d/%d: loss %.4f', i + 1, steps, float(loss))
  return params, inference_stats(lin, norm_state)


def evaluate_round(
    config: ml_collections.ConfigDict,
    round_idx: int,
    info: data.DatasetInfo,
    mesh,
    features_of,
) -> dict:
  """The linear evaluation of one source round: its metrics."""
  lin = config.linear
  variables, _ = load_trunk(config, round_idx)
  variables = parallel.replicate(variables, mesh)
  eval_bs = config.train.eval_batch_size
  test = extract(
      features_of,
      variables,
      data.eval_iterator(config.data, global_batch_size=eval_bs),
      mesh,
  )
  if info.multi_label or lin.cache_features:
    train_data = ml_collections.ConfigDict(config.data.to_dict())
    train_data.eval_split = config.data.train_split
    trainset = extract(
        features_of,
        variables,
        data.eval_iterator(train_data, global_batch_size=eval_bs),
        mesh,
    )
  if info.multi_label:
    result = svm.evaluate(
        *trainset,
        *test,
        costs=tuple(lin.svm_costs),
        num_folds=lin.svm_folds,
        seed=config.seed,
        workers=lin.svm_workers,
    )
    return {
        'test_mAP': result['mAP'],
        **{f'test_AP_{c:02d}': float(ap) for c, ap in enumerate(result['ap'])},
    }
  if lin.cache_features:
    params, stats = train_classifier(
        *trainset, info.num_classes, lin, config.seed
    )
    train_acc = accuracy(params, stats, *trainset)
  else:
    params, stats = _streamed_classifier(
        config, features_of, variables, info, mesh
    )
    train_acc = float('nan')
  return {
      'test_accuracy': accuracy(params, stats, *test),
      'train_accuracy': train_acc,
  }


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Linear evaluation of every chosen source round; resumable by round.

  Args:
    config: see configs/linear_eval.py.
    workdir: where config.json and results.csv go.

  Returns:
    One row per source round: round, fraction_left, remaining, the test
    metric (test_accuracy, or test_mAP and per-class test_AP_cc), seconds.
  """
  validate(config)
  mesh = parallel.create_mesh()
  parallel.check_batch_size(config.train.eval_batch_size, mesh)
  if not config.linear.cache_features:
    parallel.check_batch_size(config.linear.batch_size, mesh)
  info = data.get_info(config.data)
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  rounds = sources.source_rounds(config.source.workdir, config.source.rounds)
  sources.check_source(config, config.source.workdir)
  checkpoint.check_or_write_config(str(workdir), config)
  with checkpoint.RunCheckpoints(config.source.workdir) as ckpts:
    source_rows = {r: ckpts.round_metrics(r) for r in rounds}
  features_of = feature_fn(
      config.model, config.linear.layer, mesh, tuple(config.linear.pool)
  )
  rows = [r for r in results.read(workdir) if r['round'] in rounds]
  done = {r['round'] for r in rows}
  for r in rounds:
    if r in done:
      continue
    t0 = time.time()
    metrics = evaluate_round(config, r, info, mesh, features_of)
    rows.append(
        {
            'round': r,
            'fraction_left': source_rows[r]['fraction_left'],
            'remaining': source_rows[r]['remaining'],
            **metrics,
            'seconds': time.time() - t0,
        }
    )
    rows.sort(key=lambda row: row['round'])
    results.write(workdir, rows, is_writer=jax.process_index() == 0)
    if jax.process_index() == 0:
      print(
          f'Round {r} ({100 * rows[-1]["fraction_left"]:.2f}% left): '
          + ', '.join(
              f'{k} {v:.4f}'
              for k, v in metrics.items()
              if not k.startswith('test_AP_')
          ),
          flush=True,
      )
  return rows


# Also importable from here, as before.
add_linear = config_lib.add_linear
