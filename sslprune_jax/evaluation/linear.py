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

The features come from `evaluation.features`, the classifier and its SGD
from `evaluation.classifier`; this module runs them over the source's rounds.

`results.csv` has one line per source round with `fraction_left` as in the
source run, so `report` plots it; a restarted run skips finished rounds.
"""

from __future__ import annotations

import time

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sslprune_jax import checkpoint
from sslprune_jax import config_lib
from sslprune_jax import data
from sslprune_jax import models
from sslprune_jax import parallel
from sslprune_jax import train
from sslprune_jax.evaluation import classifier
from sslprune_jax.evaluation import features
from sslprune_jax.evaluation import svm
from sslprune_jax.rundir import results
from sslprune_jax.rundir import sources


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
  if lin.norm not in classifier.NORMS:
    problems.append(
        f'Unknown linear.norm {lin.norm!r}; valid: {classifier.NORMS}.'
    )
  if not lin.svm_costs or min(lin.svm_costs) <= 0:
    problems.append(f'linear.svm_costs must be > 0, got {lin.svm_costs}.')
  if lin.svm_folds < 2:
    problems.append(f'linear.svm_folds must be >= 2, got {lin.svm_folds}.')
  if lin.svm_workers < 0:
    problems.append(f'linear.svm_workers must be >= 0, got {lin.svm_workers}.')
  return problems


def _streamed_classifier(config, features_of, variables, info, mesh):
  """SGD with each step's features read through the frozen trunk from an
  augmented training batch (for datasets too large to cache)."""
  lin = config.linear
  steps_per_epoch = info.num_train_examples // lin.batch_size
  steps, learning_rate_fn = classifier.learning_rate_schedule(
      lin, steps_per_epoch
  )
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
  norm_state = classifier.init_norm(lin, np.concatenate([f for f, _ in first]))
  tx = classifier.optimizer(lin, learning_rate_fn)
  step = classifier.make_step(tx, lin)
  params = classifier.init_classifier(
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
  return params, classifier.inference_stats(lin, norm_state)


def evaluate_round(
    config: ml_collections.ConfigDict,
    round_idx: int,
    info: data.DatasetInfo,
    mesh,
    features_of,
) -> dict:
  """The linear evaluation of one source round: its metrics."""
  lin = config.linear
  variables, _ = features.load_trunk(config, round_idx)
  variables = parallel.replicate(variables, mesh)
  eval_bs = config.train.eval_batch_size
  test = features.extract(
      features_of,
      variables,
      data.eval_iterator(config.data, global_batch_size=eval_bs),
      mesh,
  )
  if info.multi_label or lin.cache_features:
    train_data = ml_collections.ConfigDict(config.data.to_dict())
    train_data.eval_split = config.data.train_split
    trainset = features.extract(
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
    params, stats = classifier.train_classifier(
        *trainset, info.num_classes, lin, config.seed
    )
    train_acc = classifier.accuracy(params, stats, *trainset)
  else:
    params, stats = _streamed_classifier(
        config, features_of, variables, info, mesh
    )
    train_acc = float('nan')
  return {
      'test_accuracy': classifier.accuracy(params, stats, *test),
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
  features_of = features.feature_fn(
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
