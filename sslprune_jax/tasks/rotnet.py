"""RotNet (Gidaris et al., 2018): predict which of 4 rotations was applied.

Every image of the batch appears at 0, 90, 180 and 270 degrees in the same
batch (the batch grows x4), rotated exactly with `rot90`, so no pixel is
interpolated. The head is a 4-way classifier; the reported accuracy is the
rotation accuracy.
"""

import dataclasses

import jax
import jax.numpy as jnp

from sslprune_jax.tasks import labels

NUM_ROTATIONS = 4


def rotate_batch(images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """All four rotations of every image.

  Args:
    images: [B, H, W, C] with H == W.

  Returns:
    ([4B, H, W, C] images, [4B] int32 labels): the k-th block of B images is
    the batch rotated k times by 90 degrees counter-clockwise (as
    `np.rot90(image, k)`), labelled k.
  """
  if images.shape[1] != images.shape[2]:
    raise ValueError(f'RotNet needs square images, got {images.shape[1:3]}.')
  rotated = jnp.concatenate(
      [jnp.rot90(images, k, axes=(1, 2)) for k in range(NUM_ROTATIONS)]
  )
  targets = jnp.repeat(
      jnp.arange(NUM_ROTATIONS, dtype=jnp.int32), images.shape[0]
  )
  return rotated, targets


@dataclasses.dataclass(frozen=True)
class RotNet(labels.Labels):
  """Cross-entropy on the rotation index; rotation accuracy."""

  name = 'rotnet'

  def num_outputs(self, num_classes: int) -> int:
    del num_classes  # The dataset's labels are not used.
    return NUM_ROTATIONS

  def prepare(self, batch: dict, rng: jax.Array | None) -> dict:
    """x4 batch of rotated images; the rotation index is the label."""
    del rng
    images, targets = rotate_batch(batch['image'])
    prepared = {'image': images, 'label': targets}
    if 'mask' in batch:
      prepared['mask'] = jnp.tile(batch['mask'], NUM_ROTATIONS)
    return prepared
