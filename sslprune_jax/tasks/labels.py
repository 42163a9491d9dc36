"""Supervised classification with labels: the reference pruning objective."""


import dataclasses

import flax
import jax
import optax
from clu import metrics


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Accuracy


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Accuracy


@dataclasses.dataclass(frozen=True)
class Labels:
  """Cross-entropy on the dataset's labels; top-1 accuracy."""

  name: str = 'labels'
  train_metrics = TrainMetrics
  eval_metrics = EvalMetrics

  def num_outputs(self, num_classes: int) -> int:
    """Size of the head on the trunk: one logit per class."""
    return num_classes

  def prepare(self, batch: dict, rng: jax.Array | None) -> dict:
    """Images and labels go to the network as they are."""
    del rng
    return batch

  def loss(self, logits: jax.Array, batch: dict,
           per_example: bool = False) -> jax.Array:
    """Softmax cross-entropy; the batch mean unless `per_example`."""
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jax.numpy.float32), batch['label'])
    return losses if per_example else losses.mean()

  def metrics(self, logits: jax.Array, batch: dict, collection,
              mask=None):
    """One batch's metrics as an (unreduced-over-devices) clu collection."""
    losses = self.loss(logits, batch, per_example=True)
    return collection.single_from_model_output(
        loss=losses, logits=logits, labels=batch['label'], mask=mask)
