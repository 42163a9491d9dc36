"""Image basics shared by the augmentation policies (`data.augment`).

Decoding (only when the image is still encoded), conversion to [0, 1]
floats, resizing and cropping to a size, stateless seeds and coins, and the
random flip. Pure TensorFlow on one example, as `data.augment` explains.
"""

import tensorflow as tf

# RandomHorizontalFlip's default probability.
FLIP_PROBABILITY = 0.5


def split_seed(seed, num=2):
  """Derives `num` independent stateless seeds from one.

  Args:
    seed: int32/int64 tensor of shape `[2]`.
    num: how many seeds to derive.

  Returns:
    A list of `num` int64 tensors of shape `[2]`.
  """
  return tf.unstack(
      tf.random.experimental.stateless_split(seed, num=num, alg='philox')
  )


def decode(image, channels, shape=None):
  """Decodes an encoded image; passes a decoded one through.

  Args:
    image: scalar `tf.string` (PNG, JPEG, ...), or uint8 `[H, W, C]`.
    channels: number of channels wanted.
    shape: the image's static shape when every image of the dataset has it,
      e.g. `(28, 28, 1)`; None if the size varies.

  Returns:
    A uint8 tensor `[H, W, channels]`.
  """
  if image.dtype == tf.string:
    image = tf.io.decode_image(
        image, channels=channels, dtype=tf.uint8, expand_animations=False
    )
  if shape is not None and None not in tuple(shape):
    image = tf.ensure_shape(image, shape)
  return image


def to_float(image):
  """Converts uint8 pixels to float32 in [0, 1]."""
  return tf.image.convert_image_dtype(image, tf.float32)


def has_size(image, size):
  """Returns True if the image is statically known to be `size` x `size`."""
  return tuple(image.shape[:2]) == (size, size)


def resize_shorter_side(image, size):
  """Resizes an image so that its shorter side is `size`, keeping its aspect.

  Args:
    image: `[H, W, C]` image.
    size: target length of the shorter side.

  Returns:
    float32 `[H', W', C]` with `min(H', W') == size`.
  """
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = size / tf.reduce_min(hw)
  # Rounding can never bring the shorter side below `size`, but clamp anyway
  # so that the centre crop that follows always fits.
  new_hw = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), size)
  # Antialiasing matches PIL's bilinear downscaling in torchvision.
  return tf.image.resize(image, new_hw, method='bilinear', antialias=True)


def center_crop(image, size):
  """Keeps the centre `size` x `size` square of an image.

  Args:
    image: `[H, W, C]` image with `H, W >= size`.
    size: side of the square.

  Returns:
    `[size, size, C]` image.
  """
  hw = tf.shape(image)[:2]
  top = (hw[0] - size) // 2
  left = (hw[1] - size) // 2
  return tf.image.crop_to_bounding_box(image, top, left, size, size)


def fit(image, size):
  """Makes a decoded image `size` x `size` with as little change as possible.

  Images that already have that size are returned unchanged; others have
  their shorter side resized to `size` and are centre-cropped.

  Args:
    image: `[H, W, C]` uint8 or float image.
    size: side of the output.

  Returns:
    float32 `[size, size, C]` in [0, 1] (if the input was uint8).
  """
  if image.dtype == tf.uint8:
    image = to_float(image)
  if not has_size(image, size):
    # Bilinear resizing to the same size is the identity, so images whose
    # size is only known at run time need no special case.
    image = center_crop(resize_shorter_side(image, size), size)
  return tf.ensure_shape(image, (size, size, image.shape[-1]))


def coin(seed, probability):
  """A stateless draw that is True with `probability`."""
  return tf.random.stateless_uniform([], seed) < probability


def random_flip(image, seed, probability=FLIP_PROBABILITY):
  """torchvision's `RandomHorizontalFlip(p=probability)`.

  Args:
    image: `[H, W, C]`.
    seed: int tensor `[2]`.
    probability: of mirroring the image left to right.

  Returns:
    The mirrored image with `probability`, else `image`.
  """
  return tf.where(coin(seed, probability), tf.reverse(image, axis=[1]), image)
