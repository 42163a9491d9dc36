"""S4L-Rotation against google-research/s4l: its loss by hand, its configs."""

import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sslprune_jax import config_lib
from sslprune_jax import imp
from sslprune_jax import tasks
from sslprune_jax import train
from test_tasks import TinyNet, _run_step, _state

NUM_CLASSES = 3


def _task(rotation_weight=1.0):
  return tasks.get_task(
      ml_collections.ConfigDict(
          dict(name='s4l', rotation_weight=rotation_weight)
      ),
      types.SimpleNamespace(num_classes=NUM_CLASSES, index_range=(0, 64)),
  )


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - np.log(np.sum(np.exp(x), axis=-1, keepdims=True))


# Hand-written head outputs of a x4 batch of 4 images: row 4k + i is image i
# at rotation k. Columns 0-2 are the class logits, 3-6 the rotation logits.
LOGITS = np.array(
    [
        # Rotation 0 (upright): images 0, 1, 2, 3.
        [2.0, 0.0, 1.0, 3.0, 0.0, 0.0, 1.0],
        [0.0, 1.0, 3.0, 2.0, 1.0, 0.0, 0.0],
        [2.0, 1.0, 0.0, 0.0, 2.0, 0.0, 0.0],
        [0.0, 2.0, 0.0, 1.0, 1.0, 1.0, 1.0],
        # Rotation 1.
        [1.0, 0.0, 0.0, 0.0, 2.0, 1.0, 0.0],
        [0.0, 0.0, 2.0, 1.0, 0.0, 0.0, 0.0],
        [2.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 2.0],
        # Rotation 2.
        [0.0, 3.0, 0.0, 1.0, 0.0, 2.0, 0.0],
        [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0],
        [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 3.0],
        # Rotation 3.
        [0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 1.0],
        [3.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 4.0],
        [2.0, 2.0, 0.0, 0.0, 1.0, 0.0, 0.0],
    ],
    np.float32,
)
LABELS = np.array([0, 2, 1, 1], np.int32)


def _prepared(task, labelled):
  images = np.arange(4 * 4 * 4, dtype=np.float32).reshape(4, 4, 4, 1)
  return task.prepare(
      {
          'image': jnp.asarray(images),
          'label': jnp.asarray(LABELS),
          'labelled': jnp.asarray(labelled),
      },
      None,
  )


def test_loss_tiles_the_labels_over_the_rotations():
  task = _task(rotation_weight=0.5)
  # 2 labelled + 2 unlabelled images, labelled first as in a mixed batch.
  batch = _prepared(task, np.array([True, True, False, False]))
  assert batch['image'].shape == (16, 4, 4, 1)
  loss, _ = task.loss(jnp.asarray(LOGITS), batch, {}, None)

  log_p = _log_softmax(LOGITS[:, :NUM_CLASSES])
  log_q = _log_softmax(LOGITS[:, NUM_CLASSES:])
  # Class term: S4L tiles each labelled image's label over its four rotated
  # copies (`labels_class_repeat`) and averages the 2 x 4 = 8 cross-entropies.
  class_ce = [-log_p[4 * k + i, LABELS[i]] for i in (0, 1) for k in range(4)]
  assert len(class_ce) == 8
  supervised = np.mean(class_ce)
  # Rotation term: the target of row 4k + i is k. S4L averages one mean per
  # stream: the unlabelled images' 2 x 4 rows, the labelled images' 2 x 4.
  rot_unsup = np.mean([-log_q[4 * k + i, k] for i in (2, 3) for k in range(4)])
  rot_sup = np.mean([-log_q[4 * k + i, k] for i in (0, 1) for k in range(4)])
  rotation = (rot_unsup + rot_sup) / 2
  # The loss: class + w x rotation, with w = 0.5 here.
  expected = supervised + 0.5 * rotation

  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
  np.testing.assert_allclose(
      [float(p) for p in task.loss_parts(jnp.asarray(LOGITS), batch)],
      [supervised, rotation],
      rtol=1e-6,
  )
  # Not the old upright-only class term.
  upright_only = np.mean([-log_p[i, LABELS[i]] for i in (0, 1)])
  assert abs(upright_only - supervised) > 0.1


def test_rotation_loss_averages_the_two_streams_means():
  task = _task()
  # 1 labelled + 3 unlabelled: the mean of the streams' means differs from
  # the mean over all 16 rows.
  batch = _prepared(task, np.array([True, False, False, False]))
  _, rotation = task.loss_parts(jnp.asarray(LOGITS), batch)
  log_q = _log_softmax(LOGITS[:, NUM_CLASSES:])
  per_row = np.array(
      [[-log_q[4 * k + i, k] for k in range(4)] for i in range(4)]
  )
  expected = (per_row[1:].mean() + per_row[:1].mean()) / 2
  np.testing.assert_allclose(float(rotation), expected, rtol=1e-6)
  assert abs(expected - per_row.mean()) > 1e-3


def test_eval_accuracy_is_on_upright_images():
  task = _task()
  # An eval batch: no 'labelled'; the last image is padding.
  mask = np.array([True, True, True, False])
  images = np.zeros((4, 4, 4, 1), np.float32)
  batch = task.prepare(
      {
          'image': jnp.asarray(images),
          'label': jnp.asarray(LABELS),
          'mask': jnp.asarray(mask),
      },
      None,
  )
  metrics = task.eval_metrics_of(jnp.asarray(LOGITS), batch, {}).compute()
  # Upright class predictions of the real images 0-2 (rows 0-2): 0, 2, 0
  # against labels 0, 2, 1; the other rotations do not count.
  np.testing.assert_allclose(metrics['accuracy'], 2 / 3, rtol=1e-6)
  # Class logits summed over the four rotations: image 0 [3, 3, 4] -> 2
  # (wrong), image 1 [4, 1, 6] -> 2 (right), image 2 [4, 2, 0] -> 0 (wrong).
  np.testing.assert_allclose(metrics['rot_avg_accuracy'], 1 / 3, rtol=1e-6)
  # Rotation predictions of images 0-2 at rotations 0..3: (0, 0, 1),
  # (1, 0, 2), (2, 2, 0), (3, 0, 3): 7 of the 12 real copies are right.
  np.testing.assert_allclose(metrics['rotation_accuracy'], 7 / 12, rtol=1e-6)
  # Loss: class CE over the 3 real images x 4 rotations; the rotation term is
  # one mean over those 12 rows (no unlabelled stream at evaluation).
  log_p = _log_softmax(LOGITS[:, :NUM_CLASSES])
  log_q = _log_softmax(LOGITS[:, NUM_CLASSES:])
  supervised = np.mean(
      [-log_p[4 * k + i, LABELS[i]] for k in range(4) for i in range(3)]
  )
  rotation = np.mean([-log_q[4 * k + i, k] for k in range(4) for i in range(3)])
  np.testing.assert_allclose(metrics['loss'], supervised + rotation, rtol=1e-5)


def test_train_step_on_eight_devices_reports_the_mean_device_loss(num_devices):
  task = _task()
  model = TinyNet(outputs=NUM_CLASSES + 4)
  state = _state(model, task)
  rng = np.random.default_rng(0)
  # Each device's slice holds one labelled and one unlabelled image, as the
  # mixed stream interleaves them.
  batch = {
      'image': rng.normal(size=(2 * num_devices, 8, 8, 1)).astype(np.float32),
      'label': rng.integers(0, NUM_CLASSES, 2 * num_devices).astype(np.int32),
      'labelled': np.tile([True, False], num_devices),
  }
  _, metrics = _run_step(task, state, batch, jax.devices())
  losses = []
  for d in range(num_devices):
    part = task.prepare(
        {k: jnp.asarray(v[2 * d : 2 * d + 2]) for k, v in batch.items()}, None
    )
    outputs = model.apply({'params': state.params}, part['image'])
    losses.append(float(task.loss(outputs, part, {}, None)[0]))
  np.testing.assert_allclose(
      float(metrics.loss.compute()), np.mean(losses), rtol=1e-5
  )


# The configs carry google-research/s4l's values.

# 1,281,167 ImageNet images // 256: this project's S4L epoch, in steps.
STEPS_PER_EPOCH = 5_004


@pytest.mark.parametrize('variant', ['', 'classes'])
def test_s4l_imagenet_config_is_s4l_rotation_sh(variant):
  config = config_lib.load('s4l', variant)
  imp.validate_config(config)
  t = config.train
  assert config.task.name == 's4l' and config.task.rotation_weight == 1.0
  # --batch_size 256 --unsup_batch_mult 1.
  assert (t.labelled_batch_size, t.batch_size) == (256, 256)
  # --lr 0.03 (--lr_scale_batch_size 0), --weight_decay 1e-3, momentum 0.9.
  assert (t.learning_rate, t.weight_decay, t.momentum) == (0.03, 1e-3, 0.9)
  assert t.schedule == 'step' and t.decay_factor == 0.1
  assert config.model.name == 'resnet' and config.model.depth == 50
  assert config.data.labelled == ('classes' if variant else 'per_class')
  assert config.data.labelled_fraction == 0.1
  # --schedule '5,140,160,180,200' in epochs of 128,000 // 256 = 500 steps:
  # 100,000 steps; the rewind point is 1,281,167 images at 512 a step.
  assert imp.round_schedule(config, 1_281_167) == (100_000, 2_502)
  lr = train.create_learning_rate_fn(t, STEPS_PER_EPOCH)
  np.testing.assert_allclose(
      [
          float(lr(s))
          for s in (
              0,
              1_250,
              2_500,
              69_999,
              70_000,
              79_999,
              80_000,
              90_000,
              99_999,
          )
      ],
      [0.0, 0.015, 0.03, 0.03, 3e-3, 3e-3, 3e-4, 3e-5, 3e-5],
      rtol=1e-5,
  )


def test_few_labels_imagenet_config_is_supervised_imagenet_10p_sh():
  config = config_lib.load('few_labels', '')
  imp.validate_config(config)
  t = config.train
  # --batch_size 256, --lr 0.1 at --lr_scale_batch_size 256, --weight_decay
  # 1e-3, momentum 0.9.
  assert t.batch_size == 256
  assert (t.learning_rate, t.weight_decay, t.momentum) == (0.1, 1e-3, 0.9)
  assert (t.num_epochs, t.warmup_epochs, tuple(t.decay_epochs)) == (
      200.0,
      5.0,
      (140, 160, 180),
  )
  # Epochs of the 10% subset (tfds: 128,116 images, 500 steps of 256, as
  # S4L's 128,000 // 256): 100,000 steps; rewind after 1,281,167 images.
  assert imp.round_schedule(config, 128_116) == (100_000, 5_004)
  lr = train.create_learning_rate_fn(t, 500)
  np.testing.assert_allclose(
      [float(lr(s)) for s in (1_250, 2_500, 70_000, 80_000, 90_000)],
      [0.05, 0.1, 0.01, 1e-3, 1e-4],
      rtol=1e-5,
  )
  assert config_lib.load('few_labels', 'classes').data.labelled == 'classes'


@pytest.mark.parametrize('name', ['s4l', 'few_labels'])
def test_quick_variants_stay_small(name):
  config = config_lib.load(name, 'quick')
  imp.validate_config(config)
  assert config.data.name == 'fashion_mnist'
  assert config.pruning.num_rounds == 3
  if name == 's4l':
    assert (config.train.batch_size, config.train.labelled_batch_size) == (
        64,
        16,
    )
    # A quarter of an epoch of Fashion-MNIST's 60,000 images.
    assert imp.round_schedule(config, 60_000) == (234, 40)
