"""Multi-label classification (PASCAL VOC 2007): one sigmoid per class.

Targets are per image and class in {1, 0, -1} (`evaluation.voc`): positive,
only difficult objects of that class (left out of the loss and of the
average precision, as in the VOC rules), negative. The loss is the binary
cross-entropy averaged over the (image, class) pairs that count; the eval
metric is the VOC 2007 mean average precision over the whole test split.
"""

import dataclasses

import flax
from clu import metrics
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sslprune_jax import voc
from sslprune_jax.tasks import base


@flax.struct.dataclass
class Metrics(metrics.Collection):
  loss: base.mean('loss')


def binary_cross_entropy(
    logits: jax.Array, targets: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Per-image loss over the classes that count, and which images count.

  Args:
    logits: [B, C].
    targets: [B, C] in {1, 0, -1}; 0 (difficult only) is left out.

  Returns:
    ([B] mean binary cross-entropy over the image's counted classes,
     [B] whether the image has any counted class).
  """
  counted = targets != voc.DIFFICULT
  per_class = optax.sigmoid_binary_cross_entropy(
      logits.astype(jnp.float32), (targets == voc.POSITIVE).astype(jnp.float32)
  )
  num = jnp.sum(counted, axis=-1)
  losses = jnp.sum(jnp.where(counted, per_class, 0.0), axis=-1) / jnp.maximum(
      num, 1
  )
  return losses, num > 0


@dataclasses.dataclass(frozen=True)
class MultiLabel(base.Task):
  """Sigmoid cross-entropy on multi-hot targets; VOC 2007 mAP."""

  name = 'multilabel'
  train_metrics = Metrics
  eval_metrics = Metrics

  def num_outputs(self, num_classes: int) -> int:
    """One logit per class."""
    return num_classes

  def loss(self, outputs, batch, task_state, rng):
    del task_state, rng
    losses, counted = binary_cross_entropy(outputs, batch['label'])
    loss = jnp.sum(jnp.where(counted, losses, 0.0)) / jnp.maximum(
        jnp.sum(counted), 1
    )
    return loss, {'losses': losses, 'counted': counted}

  def train_metrics_of(self, outputs, batch, aux):
    return self.train_metrics.single_from_model_output(
        loss=(aux['losses'], aux['counted'])
    )

  def eval_metrics_of(self, outputs, batch, task_state):
    del task_state
    losses, counted = binary_cross_entropy(outputs, batch['label'])
    return self.eval_metrics.single_from_model_output(
        loss=(losses, counted & base.valid(batch))
    )

  def eval_outputs(self, outputs, batch):
    return {
        'scores': outputs.astype(jnp.float32),
        'targets': batch['label'].astype(jnp.int8),
    }

  def eval_summary(self, collected):
    m_ap, _ = voc.mean_average_precision(
        collected['scores'], collected['targets'].astype(np.int8)
    )
    return {'mAP': m_ap}
