"""S4L-Rotation (Zhai et al., 2019): labels where there are some, rotations.

Every step holds a batch of labelled images and a batch of images used
without labels (`data.labelled` chooses the labelled subset). All of them
appear at the four rotations, as in RotNet; the loss is

  cross-entropy of the class head on the labelled images (upright)
  + rotation_weight x cross-entropy of the rotation head on all the copies.

The two heads are one dense layer of num_classes + 4 outputs (the same as
two dense layers on the same features): the first num_classes are the class
logits, the last 4 the rotation logits. The reported accuracy is the class
accuracy on the eval split; rotation accuracy is reported beside it.
"""

import dataclasses

import flax
from clu import metrics
import jax.numpy as jnp

from sslprune_jax.tasks import base
from sslprune_jax.tasks import labels
from sslprune_jax.tasks import rotnet


@flax.struct.dataclass
class Metrics(metrics.Collection):
  loss: base.mean('loss')
  accuracy: base.mean('accuracy')
  rotation_accuracy: base.mean('rotation_accuracy')


@dataclasses.dataclass(frozen=True)
class S4LRotation(base.Task):
  """Supervised + rotation loss.

  Attributes:
    num_classes: the dataset's classes.
    rotation_weight: w, the weight of the rotation loss.
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
      raise ValueError('task.rotation_weight must be >= 0, got '
                       f'{self.rotation_weight}.')

  def num_outputs(self, num_classes: int) -> int:
    return num_classes + rotnet.NUM_ROTATIONS

  def prepare(self, batch, rng):
    """x4 rotated batch; class targets count only on upright labelled rows."""
    del rng
    b = batch['image'].shape[0]
    images, rotations = rotnet.rotate_batch(batch['image'])
    valid = base.valid(batch, b)
    labelled = batch.get('labelled', valid) & valid
    upright = jnp.arange(rotnet.NUM_ROTATIONS * b) < b
    return {'image': images,
            'label': jnp.tile(batch['label'], rotnet.NUM_ROTATIONS),
            'rotation': rotations,
            'labelled': jnp.tile(labelled, rotnet.NUM_ROTATIONS) & upright,
            'valid': jnp.tile(valid, rotnet.NUM_ROTATIONS)}

  def _parts(self, outputs, batch):
    class_logits = outputs[:, :self.num_classes]
    rotation_logits = outputs[:, self.num_classes:]
    return (labels.cross_entropy(class_logits, batch['label']),
            labels.cross_entropy(rotation_logits, batch['rotation']),
            labels.correct(class_logits, batch['label']),
            labels.correct(rotation_logits, batch['rotation']))

  def loss_parts(self, outputs, batch) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(mean class CE over labelled rows, mean rotation CE over all rows)."""
    class_ce, rotation_ce, _, _ = self._parts(outputs, batch)
    n_labelled = jnp.sum(batch['labelled'])
    supervised = jnp.sum(jnp.where(batch['labelled'], class_ce, 0.0)
                         ) / jnp.maximum(n_labelled, 1)
    n_valid = jnp.sum(batch['valid'])
    rotation = jnp.sum(jnp.where(batch['valid'], rotation_ce, 0.0)
                       ) / jnp.maximum(n_valid, 1)
    return supervised, rotation

  def loss(self, outputs, batch, task_state, rng):
    del task_state, rng
    supervised, rotation = self.loss_parts(outputs, batch)
    return supervised + self.rotation_weight * rotation, {}

  def _metrics(self, collection, outputs, batch):
    class_ce, rotation_ce, class_hit, rotation_hit = self._parts(outputs,
                                                                 batch)
    # Per-row loss whose masked mean is the loss: labelled rows carry their
    # class term, every row its share of the rotation term.
    return collection.single_from_model_output(
        loss=(jnp.where(batch['labelled'], class_ce, 0.0)
              * jnp.sum(batch['valid']) / jnp.maximum(
                  jnp.sum(batch['labelled']), 1)
              + self.rotation_weight * rotation_ce, batch['valid']),
        accuracy=(class_hit, batch['labelled']),
        rotation_accuracy=(rotation_hit, batch['valid']))

  def train_metrics_of(self, outputs, batch, aux):
    del aux
    return self._metrics(self.train_metrics, outputs, batch)

  def eval_metrics_of(self, outputs, batch, task_state):
    del task_state
    return self._metrics(self.eval_metrics, outputs, batch)
