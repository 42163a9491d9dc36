"""Linear classifiers on the frozen features of a pruning run's subnetworks.

For each finished round r of the pruning run in `config.source.workdir`,
the round's trained, masked trunk is frozen (batch norm in inference mode)
and its features are read: the global average pool the head sits on, or
with `linear.layer` the output of any module (e.g. 'layer3_1'), averaged
over space. Then, on `config.data`:

* single-label data (ImageNet, Places365, CIFAR-10, Fashion-MNIST): a linear
  classifier (softmax, with bias, on standardised features) trained with SGD
  and momentum on the training split; top-1 accuracy on the eval split.
  With `linear.cache_features` the training features are read once without
  augmentation and the classifier trains on them in memory (fast; for
  datasets whose features fit on the host); without, every step reads an
  augmented batch through the frozen trunk (ImageNet, Places).
* multi-label VOC 2007: per-class linear SVMs on L2-normalised features,
  the cost of each chosen by cross-validation on trainval, and the VOC 2007
  mAP on test (`evaluation.svm`).

`results.csv` has one line per source round with `fraction_left` as in the
source run, so `report` plots it; a restarted run skips finished rounds.
"""

from __future__ import annotations

import csv
import io
import time
from typing import Any, Iterator

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import optax

from sslprune_jax import checkpoint
from sslprune_jax import data
from sslprune_jax import imp
from sslprune_jax import models
from sslprune_jax import parallel
from sslprune_jax import pruning
from sslprune_jax import train
from sslprune_jax.evaluation import svm

PyTree = Any


def validate(config: ml_collections.ConfigDict) -> None:
  """Refuses bad `source` / `linear` values before anything is read."""
  s, lin = config.get('source'), config.get('linear')
  problems = []
  if config.get('num_seeds', 1) != 1:
    problems.append('num_seeds must be 1 for a linear evaluation (run one '
                    'per seed).')
  if s is None or not s.get('workdir'):
    problems.append('source.workdir must name a finished pruning run.')
  elif any(not isinstance(r, int) or r < 0 for r in s.rounds):
    problems.append(f'source.rounds must be rounds >= 0, got {s.rounds}.')
  if lin is None:
    problems.append('config.linear is missing.')
  else:
    if lin.num_epochs <= 0 or lin.batch_size <= 0:
      problems.append('linear.num_epochs and linear.batch_size must be > 0.')
    if lin.schedule not in train.SCHEDULES:
      problems.append(f'Unknown linear.schedule {lin.schedule!r}; valid: '
                      f'{train.SCHEDULES}.')
    if lin.learning_rate <= 0:
      problems.append(
          f'linear.learning_rate must be > 0, got {lin.learning_rate}.')
    if not lin.svm_costs or min(lin.svm_costs) <= 0:
      problems.append(f'linear.svm_costs must be > 0, got {lin.svm_costs}.')
    if lin.svm_folds < 2:
      problems.append(f'linear.svm_folds must be >= 2, got {lin.svm_folds}.')
  if config.data.name not in data.DATASETS:
    problems.append(f'Unknown data.name {config.data.name!r}; valid: '
                    f'{data.DATASETS}.')
  if config.model.name not in models.MODELS:
    problems.append(f'Unknown model.name {config.model.name!r}.')
  if problems:
    raise ValueError('Invalid config:\n  ' + '\n  '.join(problems))


def load_trunk(config: ml_collections.ConfigDict, round_idx: int
               ) -> tuple[dict, PyTree]:
  """Round `round_idx`'s trained trunk: masked variables without the head.

  Returns:
    (variables, mask) of `models.create_model(config.model, None)`.
  """
  _, saved = imp.read_source_round(config, config.source.workdir,
                                   round_idx)
  params = {k: v for k, v in saved['params'].items() if k != models.HEAD}
  mask = {k: v for k, v in saved['mask'].items() if k != models.HEAD}
  return ({'params': pruning.apply_mask(params, mask),
           'batch_stats': saved['batch_stats']}, mask)


def feature_fn(model_config: ml_collections.ConfigDict, layer: str, mesh):
  """Jitted, data-parallel (variables, images) -> [B, D] float32 features.

  Args:
    model_config: the source's model config.
    layer: '' for the pooled features the head sits on, or the '/'-joined
      path of a module whose output is taken, averaged over space.
    mesh: the data mesh; images are split over it, variables replicated.
  """
  model = models.create_model(model_config, None)
  path = tuple(layer.split('/')) if layer else ()

  def features(variables, images):
    if not path:
      out = model.apply(variables, images, train=False)
    else:
      _, state = model.apply(
          variables, images, train=False, mutable=['intermediates'],
          capture_intermediates=lambda m, name: (
              name == '__call__' and tuple(m.scope.path) == path))
      node = state.get('intermediates', {})
      for key in path:
        if key not in node:
          names = sorted(variables['params'])
          raise ValueError(f'linear.layer={layer!r} is not a module of the '
                           f'model; top-level modules: {names}.')
        node = node[key]
      out = node['__call__'][0]
    if out.ndim == 4:
      out = out.mean(axis=(1, 2))
    return out.reshape(out.shape[0], -1).astype(jnp.float32)

  return jax.jit(jax.shard_map(features, mesh=mesh,
                               in_specs=(P(), P(parallel.AXIS)),
                               out_specs=P(parallel.AXIS)))


def extract(features, variables, batches: Iterator[dict], mesh
            ) -> tuple[np.ndarray, np.ndarray]:
  """Features and labels of every real example of an eval-style iterator."""
  feats, labels = [], []
  for batch in batches:
    f = parallel.to_host(features(variables,
                                  parallel.shard_batch(batch['image'], mesh)))
    keep = parallel.to_host(parallel.shard_batch(batch['mask'], mesh))
    label = parallel.to_host(parallel.shard_batch(batch['label'], mesh))
    feats.append(f[keep])
    labels.append(label[keep])
  return np.concatenate(feats), np.concatenate(labels)


def _standardizer(features: np.ndarray) -> dict:
  return {'mean': features.mean(0),
          'scale': 1.0 / np.maximum(features.std(0), 1e-6)}


def init_classifier(num_features: int, num_classes: int) -> dict:
  return {'kernel': jnp.zeros((num_features, num_classes)),
          'bias': jnp.zeros((num_classes,))}


def logits(params: dict, stats: dict, features: jax.Array) -> jax.Array:
  """The linear classifier on standardised features."""
  x = (features - stats['mean']) * stats['scale']
  return x @ params['kernel'] + params['bias']


def _optimizer(lin, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD with momentum and weight decay on `lin`'s schedule."""
  return optax.chain(
      optax.add_decayed_weights(lin.weight_decay),
      optax.sgd(train.create_learning_rate_fn(lin, steps_per_epoch),
                momentum=lin.momentum))


def _make_step(tx):

  @jax.jit
  def step(params, opt_state, stats, features, labels):
    def loss_fn(p):
      return optax.softmax_cross_entropy_with_integer_labels(
          logits(p, stats, features), labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def train_classifier(features: np.ndarray, labels: np.ndarray,
                     num_classes: int, lin: ml_collections.ConfigDict,
                     seed: int) -> tuple[dict, dict]:
  """SGD on features in memory: `lin.num_epochs` shuffled passes.

  Args:
    features: [N, D].
    labels: [N] int.
    num_classes: outputs of the classifier.
    lin: `num_epochs`, `batch_size`, `momentum`, `weight_decay` and the
      learning-rate schedule's fields (see `train.create_learning_rate_fn`).
    seed: shuffling seed.

  Returns:
    (params, standardisation stats) for `logits`.
  """
  n = len(features)
  batch = min(lin.batch_size, n)
  steps_per_epoch = n // batch
  steps = max(1, int(round(lin.num_epochs * steps_per_epoch)))
  tx = _optimizer(lin, steps_per_epoch)
  step = _make_step(tx)
  stats = jax.tree.map(jnp.asarray, _standardizer(features))
  params = init_classifier(features.shape[1], num_classes)
  opt_state = tx.init(params)
  rng = np.random.default_rng(seed)
  done = 0
  while done < steps:
    order = rng.permutation(n)
    for i in range(min(steps_per_epoch, steps - done)):
      idx = order[i * batch:(i + 1) * batch]
      params, opt_state, _ = step(params, opt_state, stats,
                                  jnp.asarray(features[idx]),
                                  jnp.asarray(labels[idx]))
    done += min(steps_per_epoch, steps - done)
  return params, stats


def accuracy(params: dict, stats: dict, features: np.ndarray,
             labels: np.ndarray) -> float:
  """Top-1 accuracy of the classifier."""
  pred = np.asarray(jnp.argmax(logits(params, stats, jnp.asarray(features)),
                               -1))
  return float(np.mean(pred == labels))


def _streamed_classifier(config, features_of, variables, info, mesh):
  """SGD with each step's features read through the frozen trunk from an
  augmented training batch (for datasets too large to cache)."""
  lin = config.linear
  steps_per_epoch = info.num_train_examples // lin.batch_size
  steps = max(1, int(round(lin.num_epochs * steps_per_epoch)))
  batches = data.train_iterator(config.data, global_batch_size=lin.batch_size,
                                seed=config.seed, start_step=0)

  def next_features():
    batch = next(batches)
    f = features_of(variables, parallel.shard_batch(batch['image'], mesh))
    label = parallel.shard_batch(batch['label'], mesh)
    return parallel.to_host(f), parallel.to_host(label)

  # Standardisation from the first batches' features.
  first = [next_features() for _ in range(min(10, steps))]
  stats = jax.tree.map(jnp.asarray,
                       _standardizer(np.concatenate([f for f, _ in first])))
  tx = _optimizer(lin, steps_per_epoch)
  step = _make_step(tx)
  params = init_classifier(first[0][0].shape[1], info.num_classes)
  opt_state = tx.init(params)
  for i in range(steps):
    f, y = first[i] if i < len(first) else next_features()
    params, opt_state, loss = step(params, opt_state, stats, jnp.asarray(f),
                                   jnp.asarray(y))
    if (i + 1) % config.log_every_steps == 0:
      logging.info('linear step %d/%d: loss %.4f', i + 1, steps, float(loss))
  return params, stats


def evaluate_round(config: ml_collections.ConfigDict, round_idx: int,
                   info: data.DatasetInfo, mesh, features_of) -> dict:
  """The linear evaluation of one source round: its metrics."""
  lin = config.linear
  variables, _ = load_trunk(config, round_idx)
  variables = parallel.replicate(variables, mesh)
  eval_bs = config.train.eval_batch_size
  test = extract(features_of, variables,
                 data.eval_iterator(config.data, global_batch_size=eval_bs),
                 mesh)
  if info.multi_label or lin.cache_features:
    train_data = ml_collections.ConfigDict(config.data.to_dict())
    train_data.eval_split = config.data.train_split
    trainset = extract(
        features_of, variables,
        data.eval_iterator(train_data, global_batch_size=eval_bs), mesh)
  if info.multi_label:
    result = svm.evaluate(*trainset, *test, costs=tuple(lin.svm_costs),
                          num_folds=lin.svm_folds, seed=config.seed)
    return {'test_mAP': result['mAP'],
            **{f'test_AP_{c:02d}': float(ap)
               for c, ap in enumerate(result['ap'])}}
  if lin.cache_features:
    params, stats = train_classifier(*trainset, info.num_classes, lin,
                                     config.seed)
    train_acc = accuracy(params, stats, *trainset)
  else:
    params, stats = _streamed_classifier(config, features_of, variables,
                                         info, mesh)
    train_acc = float('nan')
  return {'test_accuracy': accuracy(params, stats, *test),
          'train_accuracy': train_acc}


def _finished_rows(workdir: epath.Path) -> list[dict]:
  path = workdir / 'results.csv'
  if not path.exists():
    return []
  rows = list(csv.DictReader(io.StringIO(path.read_text())))
  parse = lambda k, v: int(v) if k in ('round', 'remaining') else float(v)
  return [{k: parse(k, v) for k, v in row.items()} for row in rows]


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
  rounds = imp.source_rounds(config.source.workdir, config.source.rounds)
  imp.check_source(config, config.source.workdir)
  checkpoint.check_or_write_config(str(workdir), config)
  ckpts = checkpoint.RunCheckpoints(config.source.workdir)
  try:
    source_rows = {r: ckpts.round_metrics(r) for r in rounds}
  finally:
    ckpts.close()
  features_of = feature_fn(config.model, config.linear.layer, mesh)
  rows = [r for r in _finished_rows(workdir) if r['round'] in rounds]
  done = {r['round'] for r in rows}
  for r in rounds:
    if r in done:
      continue
    t0 = time.time()
    metrics = evaluate_round(config, r, info, mesh, features_of)
    rows.append({'round': r,
                 'fraction_left': source_rows[r]['fraction_left'],
                 'remaining': source_rows[r]['remaining'], **metrics,
                 'seconds': time.time() - t0})
    rows.sort(key=lambda row: row['round'])
    imp.write_results_csv(workdir, rows)
    if jax.process_index() == 0:
      print(f'Round {r} ({100 * rows[-1]["fraction_left"]:.2f}% left): ' +
            ', '.join(f'{k} {v:.4f}' for k, v in metrics.items()
                      if not k.startswith('test_AP_')), flush=True)
  return rows


def add_linear(config: ml_collections.ConfigDict
               ) -> ml_collections.ConfigDict:
  """Makes a config a linear-evaluation one (source workdir unset)."""
  config.run = 'linear'
  config.source = ml_collections.ConfigDict(dict(
      workdir=ml_collections.config_dict.placeholder(str), rounds=()))
  # Goyal et al.'s linear protocol on ImageNet and Places: 28 epochs of
  # SGD, lr 0.01 (x0.1 at epochs 8, 16, 24), momentum 0.9, wd 5e-4.
  config.linear = ml_collections.ConfigDict(dict(
      # '' = the pooled features the head sits on; else a module's path.
      layer='',
      # Read the training features once, unaugmented, and train in memory.
      cache_features=False,
      num_epochs=28.0, batch_size=256, schedule='step', learning_rate=0.01,
      decay_epochs=(8, 16, 24), decay_factor=0.1, warmup_epochs=0.0,
      momentum=0.9, weight_decay=5e-4,
      # VOC07: per-class SVM costs tried by cross-validation on trainval.
      svm_costs=(0.01, 0.1, 1.0, 10.0, 100.0), svm_folds=3))
  return config

