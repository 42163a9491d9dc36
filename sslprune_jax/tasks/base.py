"""What every training objective provides to the train and eval steps.

A task sees a batch of `{'image', 'label', 'index', 'labelled'}` (plus
`'mask'` at evaluation, False on padding) and the network's outputs: the
trunk's features through the task's head, a dense layer named 'classifier'
that pruning never touches. All methods run on one device inside
`shard_map` over `parallel.AXIS`, so a task may use collectives over it
(Exemplar's negatives from the whole global batch, NPID's bank update).
"""

import abc
import dataclasses
from typing import Any, ClassVar

from clu import metrics as clu_metrics
import flax
import jax
import jax.numpy as jnp

PyTree = Any

# The data streams a task can ask for (see `imp.train_batches`):
#   'all': every training example; 'labelled': only the labelled subset;
#   'mixed': a labelled batch and an unlabelled batch in every step.
STREAMS = ('all', 'labelled', 'mixed')


def mean(name: str):
  """A clu average metric read from the model output `name`.

  The output is a pair `(per-example values, mask or None)`, so every metric
  of a collection can count its own examples (S4L's class accuracy counts
  the labelled images, its rotation accuracy all of them).
  """

  @flax.struct.dataclass
  class Mean(clu_metrics.Average):

    @classmethod
    def from_model_output(cls, **outputs):
      values, mask = outputs[name]
      return super().from_model_output(
          jnp.asarray(values, jnp.float32), mask=mask
      )

  return Mean


def valid(batch: dict, size: int | None = None) -> jax.Array:
  """Which examples of the batch are real (all at training time)."""
  if 'mask' in batch:
    return batch['mask']
  return jnp.ones((size or batch['image'].shape[0],), jnp.bool_)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Rows scaled to unit Euclidean norm (in float32)."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(
      jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps)
  )


@dataclasses.dataclass(frozen=True)
class Task(abc.ABC):
  """The interface every task implements.

  Subclasses implement the abstract methods and override the others where
  their objective needs to.

  Class attributes:
    name: the config's `task.name`.
    stream: which training stream the task trains on (see `STREAMS`).
    train_metrics / eval_metrics: clu collections; both have a 'loss' or an
      'accuracy' (the task's headline metric) or both.
  """

  name: ClassVar[str] = ''
  stream: ClassVar[str] = 'all'
  train_metrics: ClassVar[Any] = None
  eval_metrics: ClassVar[Any] = None

  @abc.abstractmethod
  def num_outputs(self, num_classes: int) -> int:
    """Width of the head on the trunk."""

  def init_state(self, rng: jax.Array) -> PyTree:
    """The task's own part of the train state (NPID's memory bank)."""
    del rng
    return {}

  def prepare(self, batch: dict, rng: jax.Array | None) -> dict:
    """Turns a data batch into network inputs and targets.

    `rng` is None at evaluation, which must be deterministic.
    """
    del rng
    return batch

  @abc.abstractmethod
  def loss(
      self, outputs: jax.Array, batch: dict, task_state: PyTree, rng: jax.Array
  ) -> tuple[jax.Array, dict]:
    """This device's scalar loss, and what metrics and updates reuse."""

  def update_state(
      self, task_state: PyTree, outputs: jax.Array, batch: dict, aux: dict
  ) -> PyTree:
    """The task state after a step; identical on every device."""
    del outputs, batch, aux
    return task_state

  @abc.abstractmethod
  def train_metrics_of(self, outputs: jax.Array, batch: dict, aux: dict):
    """One step's metrics on this device (summed over devices later)."""

  @abc.abstractmethod
  def eval_metrics_of(
      self, outputs: jax.Array, batch: dict, task_state: PyTree
  ):
    """One eval batch's metrics on this device, ignoring padding."""

  def eval_outputs(self, outputs: jax.Array, batch: dict) -> dict:
    """Per-example arrays kept over the whole eval split, for metrics that
    are not means over examples (VOC's average precision); {} for none.

    Padding is dropped using `batch['mask']` before `eval_summary` sees them.
    """
    del outputs, batch
    return {}

  def eval_summary(self, collected: dict) -> dict:
    """Metrics of the whole eval split from `eval_outputs` concatenated."""
    del collected
    return {}
