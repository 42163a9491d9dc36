"""The train step without masks, which the masked step is compared with."""

from __future__ import annotations

from flax.training import train_state
import jax

from sslprune_jax import train


class UnmaskedTrainState(train.TrainState):
  """A train state without masks: flax's plain `apply_gradients`.

  `train.TrainState` differs from it only in masking the gradients, so
  `train.make_train_step` over this state is the step without masks.
  """

  def apply_gradients(self, *, grads, **kwargs):
    return train_state.TrainState.apply_gradients(self, grads=grads, **kwargs)


def create_unmasked_state(
    model, variables: dict, tx, rng: jax.Array
) -> UnmaskedTrainState:
  """A fresh `UnmaskedTrainState` (empty mask) at step 0."""
  return UnmaskedTrainState.create(
      apply_fn=model.apply,
      params=variables['params'],
      batch_stats=variables.get('batch_stats', {}),
      mask={},
      rng=rng,
      tx=tx,
      task_state={},
  )
