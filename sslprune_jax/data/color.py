"""Colour augmentations as torchvision computes them on PIL images.

Grayscale with PIL's luma weights, brightness, contrast, saturation and hue
adjustments, and `ColorJitter`'s random factors and random order
(`color_jitter`), for NPID's policy (`data.augment.npid_train`).
"""

import functools

import tensorflow as tf

from sslprune_jax.data import image_ops

# ColorJitter(brightness, contrast, saturation, hue).
NPID_COLOR_JITTER = (0.4, 0.4, 0.4, 0.4)
# The colour-jitter operations, in the order of `NPID_COLOR_JITTER` and of
# the factors `sample_color_jitter` returns.
JITTER_OPS = ('brightness', 'contrast', 'saturation', 'hue')
# ITU-R 601-2 luma weights of PIL's `convert('L')`, which torchvision's
# grayscale, contrast and saturation use.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def _luma(image):
  """The `[..., 1]` grey level of an `[..., C]` image (itself if C is 1)."""
  if image.shape[-1] == 1:
    return image
  weights = tf.constant(LUMA_WEIGHTS, image.dtype)
  return tf.reduce_sum(image * weights, axis=-1, keepdims=True)


def grayscale(image):
  """torchvision's grayscale, keeping the number of channels.

  Args:
    image: float `[H, W, C]`, C being 1 or 3.

  Returns:
    The image with each channel replaced by its luma; a single-channel image
    (a PIL 'L' image to torchvision) is already grey and returned as is.
  """
  if image.shape[-1] == 1:
    return image
  return tf.broadcast_to(_luma(image), tf.shape(image))


def random_grayscale(image, seed, probability):
  """torchvision's `RandomGrayscale(p=probability)`.

  Args:
    image: float `[H, W, C]`.
    seed: int tensor `[2]`.
    probability: of turning the image grey.

  Returns:
    `grayscale(image)` with `probability`, else `image`.
  """
  return tf.where(image_ops.coin(seed, probability), grayscale(image), image)


def adjust_brightness(image, factor):
  """PIL's `ImageEnhance.Brightness`: blends with black (0 is black).

  Args:
    image: float `[H, W, C]` in [0, 1].
    factor: scalar >= 0; 1 keeps the image.

  Returns:
    The adjusted image, clipped to [0, 1].
  """
  return tf.clip_by_value(image * factor, 0.0, 1.0)


def adjust_contrast(image, factor):
  """PIL's `ImageEnhance.Contrast`: blends with the image's mean grey level.

  Args:
    image: float `[H, W, C]` in [0, 1].
    factor: scalar >= 0; 0 gives a uniform grey, 1 keeps the image.

  Returns:
    The adjusted image, clipped to [0, 1].
  """
  # One mean over the luma for all channels, as PIL (tf.image's
  # adjust_contrast would use a mean per channel).
  mean = tf.reduce_mean(_luma(image))
  return tf.clip_by_value(mean + factor * (image - mean), 0.0, 1.0)


def adjust_saturation(image, factor):
  """PIL's `ImageEnhance.Color`: blends with the image's grey version.

  Args:
    image: float `[H, W, C]` in [0, 1].
    factor: scalar >= 0; 0 gives the grey image, 1 keeps the image.

  Returns:
    The adjusted image, clipped to [0, 1]; a single-channel image is its own
    grey version, so it is returned as is.
  """
  if image.shape[-1] == 1:
    return image
  grey = _luma(image)
  return tf.clip_by_value(grey + factor * (image - grey), 0.0, 1.0)


def adjust_hue(image, delta):
  """torchvision's `adjust_hue`: shifts the HSV hue by `delta` turns.

  Args:
    image: float `[H, W, C]` in [0, 1].
    delta: scalar in [-0.5, 0.5].

  Returns:
    The adjusted image; torchvision returns single-channel ('L') images
    unchanged, and so does this.
  """
  if image.shape[-1] == 1:
    return image
  return tf.clip_by_value(tf.image.adjust_hue(image, delta), 0.0, 1.0)


# The operations of `JITTER_OPS`, in its order.
_JITTER_FUNCTIONS = (
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    adjust_hue,
)


def sample_color_jitter(seed, strengths=NPID_COLOR_JITTER):
  """Samples torchvision's `ColorJitter` parameters.

  Args:
    seed: int tensor `[2]`.
    strengths: `(brightness, contrast, saturation, hue)` as ColorJitter's
      arguments.

  Returns:
    `(factors, order)`: float32 `[4]` in `JITTER_OPS` order, the first three
    uniform in `[max(0, 1 - s), 1 + s]` and the hue shift uniform in
    `[-hue, hue]`; int32 `[4]`, a uniformly random permutation of
    `range(4)`, the order in which the operations apply.
  """
  brightness, contrast, saturation, hue = strengths
  if min(strengths) < 0 or hue > 0.5:
    raise ValueError(
        'Colour jitter strengths must be >= 0 and hue <= 0.5, '
        f'got {strengths}.'
    )
  factor_seed, order_seed = image_ops.split_seed(seed)
  low = tf.constant(
      [
          max(0.0, 1.0 - brightness),
          max(0.0, 1.0 - contrast),
          max(0.0, 1.0 - saturation),
          -hue,
      ],
      tf.float32,
  )
  high = tf.constant(
      [1.0 + brightness, 1.0 + contrast, 1.0 + saturation, hue], tf.float32
  )
  factors = low + (high - low) * tf.random.stateless_uniform([4], factor_seed)
  # Sorting i.i.d. uniforms gives each of the 24 orders the same chance, as
  # torchvision's shuffle of the four operations.
  order = tf.argsort(tf.random.stateless_uniform([4], order_seed))
  return factors, tf.cast(order, tf.int32)


def _apply_jitter_op(image, op, factors):
  """Applies operation `op` (an index into `JITTER_OPS`) with its factor."""
  branches = [
      functools.partial(fn, image, factors[i])
      for i, fn in enumerate(_JITTER_FUNCTIONS)
  ]
  return tf.ensure_shape(tf.switch_case(op, branches), image.shape)


def color_jitter(image, seed, strengths=NPID_COLOR_JITTER):
  """torchvision's `ColorJitter(*strengths)`.

  Brightness, contrast, saturation and hue are adjusted with the factors of
  `sample_color_jitter`, in its random order. With strength 0 an operation
  has factor 1 (shift 0), which leaves the image as torchvision's skipping
  it does. Pixels stay float: PIL would round them to 8 bits after each
  operation.

  Args:
    image: float `[H, W, C]` in [0, 1], with a static C.
    seed: int tensor `[2]`.
    strengths: `(brightness, contrast, saturation, hue)`.

  Returns:
    The jittered image, float `[H, W, C]` in [0, 1].
  """
  factors, order = sample_color_jitter(seed, strengths)
  for position in range(len(JITTER_OPS)):
    image = _apply_jitter_op(image, order[position], factors)
  return image
