"""Supervised classification with labels: the reference pruning objective."""

import dataclasses

import flax
from clu import metrics
import jax
import jax.numpy as jnp
import optax

from sslprune_jax.tasks import base


@flax.struct.dataclass
class Metrics(metrics.Collection):
  loss: base.mean('loss')
  accuracy: base.mean('accuracy')


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy, in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels
  )


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example top-1 hits."""
  return jnp.argmax(logits, axis=-1) == labels


@dataclasses.dataclass(frozen=True)
class Labels(base.Task):
  """Cross-entropy on the dataset's labels; top-1 accuracy."""

  name = 'labels'
  train_metrics = Metrics
  eval_metrics = Metrics

  def num_outputs(self, num_classes: int) -> int:
    """One logit per class."""
    return num_classes

  def loss(self, outputs, batch, task_state, rng):
    del task_state, rng
    losses = cross_entropy(outputs, batch['label'])
    return losses.mean(), {'losses': losses}

  def train_metrics_of(self, outputs, batch, aux):
    return self.train_metrics.single_from_model_output(
        loss=(aux['losses'], None),
        accuracy=(correct(outputs, batch['label']), None),
    )

  def eval_metrics_of(self, outputs, batch, task_state):
    del task_state
    mask = base.valid(batch)
    return self.eval_metrics.single_from_model_output(
        loss=(cross_entropy(outputs, batch['label']), mask),
        accuracy=(correct(outputs, batch['label']), mask),
    )
