"""S4L-Rotation (Zhai et al., 2019): labels where there are some, rotations.

Follows google-research/s4l `semi_supervised/rotation.py` (its `model_fn`)
with `config/s4l_rotation.sh`'s flags (`--rot_loss_sup 1 --rot_loss_unsup 1
--rot_loss_weight 1.0`). Every step holds a batch of labelled images and a
batch of images used without labels (`data.labelled` chooses the labelled
subset; the unlabelled stream reads all the training images, as S4L's does).
Every image appears at the four rotations, as in RotNet, and the loss is

  class     = mean over the labelled images x 4 rotations of the class
              cross-entropy: the label is tiled over the four rotated copies
              (S4L's `labels_class_repeat`), not only the upright one;
  rotation  = the mean of two means of the rotation cross-entropy, one over
              the unlabelled images x 4 and one over the labelled images x 4
              (S4L's `tf.reduce_mean(losses_rot)`: with as many labelled as
              unlabelled images per step, as in S4L's `--unsup_batch_mult 1`,
              this is the mean over all the rows);
  loss      = class + rotation_weight x rotation.

At evaluation every image is labelled (the eval batches carry no
`labelled`), so the rotation term is its one mean over the eval images x 4,
as S4L's evaluation, which feeds the same images to both streams, computes.

The two heads are one dense layer of num_classes + 4 outputs (the same as
S4L's two linear layers on the same pre-logits): the first num_classes are
the class logits, the last 4 the rotation logits.

Metrics (train and eval alike):
  accuracy            class top-1 on the upright copies of the labelled
                      images only: S4L's 'classification/unrotated top1
                      accuracy', and the usual top-1 of an upright test set.
  rot_avg_accuracy    class top-1 of the class logits averaged over the four
                      rotations (S4L's 'classification/rot_avg top1
                      accuracy').
  rotation_accuracy   rotation top-1 over every copy of every image.
  loss                the loss above.
"""

import dataclasses

import flax
from clu import metrics
import jax
import jax.numpy as jnp

from sslprune_jax.tasks import base
from sslprune_jax.tasks import labels
from sslprune_jax.tasks import rotnet


@flax.struct.dataclass
class Metrics(metrics.Collection):
  loss: base.mean('loss')
  accuracy: base.mean('accuracy')
  rot_avg_accuracy: base.mean('rot_avg_accuracy')
  rotation_accuracy: base.mean('rotation_accuracy')


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `values` over the rows where `mask` is True.

  Args:
    values: [N] per-row values.
    mask: [N] bool.

  Returns:
    The scalar mean; 0 when no row is selected (a stream absent from the
    batch contributes nothing rather than NaN).
  """
  total = jnp.sum(jnp.where(mask, values, 0.0))
  return total / jnp.maximum(jnp.sum(mask), 1)


def mean_of_present(
    means: list[jax.Array], present: list[jax.Array]
) -> jax.Array:
  """The average of the `means` whose stream has rows in the batch.

  S4L averages one mean per stream (`tf.reduce_mean(losses_rot)`); here a
  stream can be empty (evaluation has no unlabelled images), and an empty
  stream must not pull the average towards 0.

  Args:
    means: scalar means, one per stream.
    present: scalar bools, whether each stream has any row.

  Returns:
    The scalar average over the present streams (0 if none is).
  """
  weights = jnp.stack([p.astype(jnp.float32) for p in present])
  return jnp.sum(jnp.stack(means) * weights) / jnp.maximum(
      jnp.sum(weights), 1.0
  )


def upright_rows(num_rows: int) -> jax.Array:
  """Which rows of a `rotnet.rotate_batch` batch are the unrotated copies.

  Args:
    num_rows: rows of the x4 batch.

  Returns:
    [num_rows] bool: True on the first quarter (rotation 0).
  """
  return jnp.arange(num_rows) < num_rows // rotnet.NUM_ROTATIONS


def rotation_averaged_hits(
    class_logits: jax.Array, label: jax.Array
) -> jax.Array:
  """Top-1 hits of the class logits averaged over each image's rotations.

  Args:
    class_logits: [4B, C], rotation k of image i on row k * B + i.
    label: [4B] class labels (tiled, so row i holds image i's).

  Returns:
    [4B] bool: image i's hit on row i (< B), repeated on its other rows.
  """
  per_rotation = class_logits.reshape(
      rotnet.NUM_ROTATIONS, -1, class_logits.shape[-1]
  )
  averaged = jnp.mean(per_rotation.astype(jnp.float32), axis=0)
  hits = labels.correct(averaged, label[: averaged.shape[0]])
  return jnp.tile(hits, rotnet.NUM_ROTATIONS)


@dataclasses.dataclass(frozen=True)
class S4LRotation(base.Task):
  """Supervised + rotation loss, as google-research/s4l's rotation model.

  Attributes:
    num_classes: the dataset's classes.
    rotation_weight: w, the weight of the rotation loss (S4L's
      `--rot_loss_weight`).
  """

  num_classes: int = 0
  rotation_weight: float = 1.0

  name = 's4l'
  stream = 'mixed'
  train_metrics = Metrics
  eval_metrics = Metrics

  def __post_init__(self):
    if self.num_classes < 1:
      raise ValueError('S4L needs the number of classes of the dataset.')
    if self.rotation_weight < 0:
      raise ValueError(
          'task.rotation_weight must be >= 0, got ' f'{self.rotation_weight}.'
      )

  def num_outputs(self, num_classes: int) -> int:
    return num_classes + rotnet.NUM_ROTATIONS

  def prepare(self, batch, rng):
    """x4 rotated batch; labels and the labelled flag tiled over rotations.

    Args:
      batch: {'image' [B, H, W, C], 'label' [B], and 'labelled' [B] at
        training time or 'mask' [B] at evaluation}.
      rng: unused (the rotations are deterministic).

    Returns:
      {'image' [4B, ...], 'label' [4B], 'rotation' [4B], 'labelled' [4B]
      (real labelled images, on all four copies), 'valid' [4B]}: rotation k
      of image i is row k * B + i.
    """
    del rng
    b = batch['image'].shape[0]
    images, rotations = rotnet.rotate_batch(batch['image'])
    valid = base.valid(batch, b)
    # Evaluation batches carry no 'labelled': every real image is labelled.
    labelled = batch.get('labelled', valid) & valid
    return {
        'image': images,
        'label': jnp.tile(batch['label'], rotnet.NUM_ROTATIONS),
        'rotation': rotations,
        'labelled': jnp.tile(labelled, rotnet.NUM_ROTATIONS),
        'valid': jnp.tile(valid, rotnet.NUM_ROTATIONS),
    }

  def _logits(self, outputs):
    return outputs[:, : self.num_classes], outputs[:, self.num_classes :]

  def loss_parts(self, outputs, batch) -> tuple[jax.Array, jax.Array]:
    """The class and rotation terms of the loss.

    Args:
      outputs: [4B, num_classes + 4] head outputs of a `prepare`d batch.
      batch: the `prepare`d batch.

    Returns:
      (class CE averaged over the labelled images x 4 rotations, rotation CE
      averaged per stream and then over the streams present).
    """
    class_logits, rotation_logits = self._logits(outputs)
    class_ce = labels.cross_entropy(class_logits, batch['label'])
    rotation_ce = labels.cross_entropy(rotation_logits, batch['rotation'])
    labelled = batch['labelled']
    unlabelled = batch['valid'] & ~labelled
    supervised = masked_mean(class_ce, labelled)
    rotation = mean_of_present(
        [
            masked_mean(rotation_ce, unlabelled),
            masked_mean(rotation_ce, labelled),
        ],
        [jnp.any(unlabelled), jnp.any(labelled)],
    )
    return supervised, rotation

  def loss(self, outputs, batch, task_state, rng):
    del task_state, rng
    supervised, rotation = self.loss_parts(outputs, batch)
    loss = supervised + self.rotation_weight * rotation
    return loss, {'loss': loss}

  def _metrics(self, collection, outputs, batch, loss):
    class_logits, rotation_logits = self._logits(outputs)
    upright_labelled = batch['labelled'] & upright_rows(outputs.shape[0])
    # The loss is not a per-row mean (it averages streams), so every real
    # row carries the batch's loss: the metric then weighs batches and
    # devices by their images, and is the loss itself for one batch.
    return collection.single_from_model_output(
        loss=(jnp.broadcast_to(loss, batch['valid'].shape), batch['valid']),
        accuracy=(
            labels.correct(class_logits, batch['label']),
            upright_labelled,
        ),
        rot_avg_accuracy=(
            rotation_averaged_hits(class_logits, batch['label']),
            upright_labelled,
        ),
        rotation_accuracy=(
            labels.correct(rotation_logits, batch['rotation']),
            batch['valid'],
        ),
    )

  def train_metrics_of(self, outputs, batch, aux):
    return self._metrics(self.train_metrics, outputs, batch, aux['loss'])

  def eval_metrics_of(self, outputs, batch, task_state):
    loss, _ = self.loss(outputs, batch, task_state, None)
    return self._metrics(self.eval_metrics, outputs, batch, loss)
