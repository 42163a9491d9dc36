"""Exemplar (Dosovitskiy et al.), in Doersch & Zisserman's triplet-loss form.

Every image is its own class. Each image of the batch is augmented into
`copies` strongly transformed versions (random crop, flip, small rotation,
colour jitter; on device, inside the step); the head maps them to
L2-normalised embeddings, and a triplet margin loss pulls copies of one
image together and pushes copies of other images away:

  loss = mean over anchors a, positives p, negatives n of
         max(0, margin + |a - p| - |a - n|)

with Euclidean distances (PyTorch's `TripletMarginLoss`), positives the other
copies of the anchor's image and negatives every copy of every other image of
the *global* batch (gathered from all devices). The reported accuracy is
exemplar retrieval: how often an embedding's nearest neighbour in the global
batch is another copy of the same image.
"""

import dataclasses

import flax
from clu import metrics
import jax
import jax.numpy as jnp

from sslprune_jax import parallel
from sslprune_jax.tasks import base


@flax.struct.dataclass
class Metrics(metrics.Collection):
  loss: base.mean('loss')
  accuracy: base.mean('accuracy')


def _affine_warp(
    image: jax.Array, rng: jax.Array, *, min_scale: float, max_degrees: float
) -> jax.Array:
  """One random crop + flip + rotation of an [H, W, C] image, resampled once.

  The crop is a square covering a fraction in [min_scale, 1] of the image's
  area, placed uniformly inside it; it is rotated by up to `max_degrees`
  either way and mirrored with probability 1/2, then bilinearly resampled to
  the input size. Pixels from outside the image are 0 (the dataset mean once
  normalised).
  """
  h, w, _ = image.shape
  k_scale, k_x, k_y, k_flip, k_rot = jax.random.split(rng, 5)
  side = jnp.sqrt(jax.random.uniform(k_scale, (), minval=min_scale, maxval=1.0))
  # Centre of the crop, in units of the half-size, within the image.
  cy = jax.random.uniform(k_y, (), minval=side - 1.0, maxval=1.0 - side)
  cx = jax.random.uniform(k_x, (), minval=side - 1.0, maxval=1.0 - side)
  flip = jnp.where(jax.random.bernoulli(k_flip), -1.0, 1.0)
  theta = jnp.deg2rad(
      jax.random.uniform(k_rot, (), minval=-max_degrees, maxval=max_degrees)
  )
  # Output pixel centres in [-1, 1], mapped into the input image.
  v, u = jnp.meshgrid(
      jnp.linspace(-1 + 1 / h, 1 - 1 / h, h),
      jnp.linspace(-1 + 1 / w, 1 - 1 / w, w),
      indexing='ij',
  )
  u = u * flip
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  src_x = cx + side * (cos * u - sin * v)
  src_y = cy + side * (sin * u + cos * v)
  rows = (src_y + 1) * h / 2 - 0.5
  cols = (src_x + 1) * w / 2 - 0.5
  warp = lambda channel: jax.scipy.ndimage.map_coordinates(
      channel, [rows, cols], order=1, mode='constant', cval=0.0
  )
  return jax.vmap(warp, in_axes=2, out_axes=2)(image)


def _colour_jitter(
    image: jax.Array, rng: jax.Array, *, strength: float
) -> jax.Array:
  """Random brightness, contrast and (colour images) saturation.

  Works on normalised pixels: brightness adds up to `strength` standard
  deviations, contrast and saturation scale the deviations from the image
  mean and from the grey level by a factor in [1 - strength, 1 + strength].
  """
  k_b, k_c, k_s = jax.random.split(rng, 3)
  factor = lambda k: jax.random.uniform(
      k, (), minval=1.0 - strength, maxval=1.0 + strength
  )
  mean = image.mean()
  image = (image - mean) * factor(k_c) + mean
  image = image + jax.random.uniform(k_b, (), minval=-strength, maxval=strength)
  if image.shape[-1] == 3:
    grey = image.mean(axis=-1, keepdims=True)
    image = grey + (image - grey) * factor(k_s)
  return image


def _distances(a: jax.Array, b: jax.Array) -> jax.Array:
  """Euclidean distances between the rows of a [n, d] and b [m, d]."""
  sq = jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :] - 2.0 * a @ b.T
  return jnp.sqrt(jnp.maximum(sq, 1e-12))


def triplet_losses(
    anchors: jax.Array,
    positives: jax.Array,
    candidates: jax.Array,
    negative: jax.Array,
    margin: float,
) -> jax.Array:
  """Per-anchor mean of the triplet hinge over its positives x negatives.

  Args:
    anchors: [n, d] embeddings.
    positives: [n, P, d], the P positives of each anchor.
    candidates: [m, d] embeddings the negatives come from.
    negative: [n, m] bool, which candidates are negatives of each anchor.
    margin: the hinge's margin.

  Returns:
    [n]: mean over (p, n) of max(0, margin + |a - p| - |a - n|); 0 for an
    anchor without negatives.
  """
  d_pos = jnp.sqrt(
      jnp.maximum(
          jnp.sum((anchors[:, None, :] - positives) ** 2, axis=-1), 1e-12
      )
  )
  d_neg = _distances(anchors, candidates)
  hinge = jax.nn.relu(margin + d_pos[:, :, None] - d_neg[:, None, :])
  total = jnp.sum(jnp.where(negative[:, None, :], hinge, 0.0), axis=(1, 2))
  count = positives.shape[1] * jnp.sum(negative, axis=1)
  return total / jnp.maximum(count, 1)


@dataclasses.dataclass(frozen=True)
class Exemplar(base.Task):
  """Triplet margin loss between augmented copies of the batch's images.

  Attributes:
    copies: augmented copies of each image (>= 2).
    margin: margin of the triplet loss.
    embedding_dim: size of the L2-normalised embedding (the head's width).
    min_scale: smallest crop, as a fraction of the image's area.
    max_degrees: largest rotation either way.
    jitter: strength of the colour jitter.
  """

  copies: int = 2
  margin: float = 0.5
  embedding_dim: int = 128
  min_scale: float = 0.5
  max_degrees: float = 20.0
  jitter: float = 0.4

  name = 'exemplar'
  train_metrics = Metrics
  eval_metrics = Metrics

  def __post_init__(self):
    if self.copies < 2:
      raise ValueError(f'task.copies must be >= 2, got {self.copies}.')
    if not 0.0 < self.min_scale <= 1.0:
      raise ValueError(
          f'task.min_scale must be in (0, 1], got ' f'{self.min_scale}.'
      )
    if self.margin <= 0 or self.embedding_dim < 1:
      raise ValueError('task.margin and task.embedding_dim must be > 0.')

  def num_outputs(self, num_classes: int) -> int:
    del num_classes  # Every image is its own class.
    return self.embedding_dim

  def augment(self, image: jax.Array, rng: jax.Array) -> jax.Array:
    """One strongly augmented copy of an [H, W, C] normalised image."""
    k_warp, k_colour = jax.random.split(rng)
    image = _affine_warp(
        image, k_warp, min_scale=self.min_scale, max_degrees=self.max_degrees
    )
    return _colour_jitter(image, k_colour, strength=self.jitter)

  def prepare(self, batch, rng):
    """`copies` x the batch: copy c of image i at row c * B + i.

    At evaluation (`rng` None) the copies come from a fixed key, so every
    evaluation sees the same ones.
    """
    if rng is None:
      rng = jax.random.fold_in(
          jax.random.PRNGKey(0), jax.lax.axis_index(parallel.AXIS)
      )
    b = batch['image'].shape[0]
    keys = jax.random.split(rng, self.copies * b)
    images = jnp.tile(batch['image'], (self.copies, 1, 1, 1))
    prepared = {'image': jax.vmap(self.augment)(images, keys)}
    prepared['valid'] = jnp.tile(base.valid(batch, b), self.copies)
    return prepared

  def _losses(self, outputs, batch):
    """Per-anchor losses and retrieval hits of this device's copies."""
    z = base.l2_normalize(outputs)
    n = z.shape[0]
    b = n // self.copies
    # Positives: the other copies of the same image, on this device.
    by_copy = z.reshape(self.copies, b, -1)
    positives = (
        jnp.stack(
            [
                jnp.concatenate([by_copy[:c], by_copy[c + 1 :]])
                for c in range(self.copies)
            ]
        )
        .transpose(0, 2, 1, 3)
        .reshape(n, -1, z.shape[1])
    )
    # Negatives: copies of every other image of the global batch. Image ids
    # over the global batch: device d's image i is d * b + i.
    device = jax.lax.axis_index(parallel.AXIS)
    local_ids = jnp.tile(jnp.arange(b), self.copies) + device * b
    every = jax.lax.all_gather(z, parallel.AXIS, tiled=True)
    every_ids = jax.lax.all_gather(local_ids, parallel.AXIS, tiled=True)
    every_valid = jax.lax.all_gather(batch['valid'], parallel.AXIS, tiled=True)
    negative = (local_ids[:, None] != every_ids[None, :]) & every_valid[None]
    losses = triplet_losses(z, positives, every, negative, self.margin)
    self_index = device * n + jnp.arange(n)
    # Retrieval: the nearest other valid embedding is a copy of the image.
    d = _distances(z, every)
    d = jnp.where(every_valid[None, :], d, jnp.inf)
    d = d.at[jnp.arange(n), self_index].set(jnp.inf)
    hits = every_ids[jnp.argmin(d, axis=1)] == local_ids
    return losses, hits

  def loss(self, outputs, batch, task_state, rng):
    del task_state, rng
    losses, hits = self._losses(outputs, batch)
    return losses.mean(), {'losses': losses, 'hits': hits}

  def train_metrics_of(self, outputs, batch, aux):
    return self.train_metrics.single_from_model_output(
        loss=(aux['losses'], None), accuracy=(aux['hits'], None)
    )

  def eval_metrics_of(self, outputs, batch, task_state):
    del task_state
    losses, hits = self._losses(outputs, batch)
    return self.eval_metrics.single_from_model_output(
        loss=(losses, batch['valid']), accuracy=(hits, batch['valid'])
    )
