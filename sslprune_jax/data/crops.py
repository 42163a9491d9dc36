"""Random crop windows: TF's Inception-style sampler and torchvision's.

`decode_and_random_crop` crops JPEGs while decoding them; the window comes
from `_sample_crop_window` ('imagenet' policy) or
`sample_resized_crop_window` (torchvision's `RandomResizedCrop`, 'npid').
"""

import math

import tensorflow as tf

from sslprune_jax.data import image_ops

# 'imagenet' policy: range of the crop's area (as a fraction of the image) and
# of its aspect ratio (width / height), as in torchvision's RandomResizedCrop.
CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
# How many crop windows to try before falling back to the whole image.
CROP_MAX_ATTEMPTS = 10


def _sample_crop_window(image_shape, seed):
  """Samples an Inception-style crop window.

  Args:
    image_shape: int32 `[3]`, the full image's `[H, W, C]`.
    seed: int tensor `[2]`.

  Returns:
    int32 `[4]`: `[top, left, height, width]`.
  """
  whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=(1, 1, 4))
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_shape,
      bounding_boxes=whole_image,
      seed=seed,
      # torchvision bounds only the crop's area and aspect ratio; TF's
      # default would also demand that it cover 10% of the image.
      min_object_covered=0.0,
      aspect_ratio_range=CROP_ASPECT_RATIO_RANGE,
      area_range=CROP_AREA_RANGE,
      max_attempts=CROP_MAX_ATTEMPTS,
      use_image_if_no_bounding_boxes=True,
  )
  top, left, _ = tf.unstack(begin)
  height, width, _ = tf.unstack(size)
  return tf.stack([top, left, height, width])


def _crop(image, window):
  """Crops a decoded image to `[top, left, height, width]`."""
  top, left, height, width = tf.unstack(window)
  return tf.image.crop_to_bounding_box(image, top, left, height, width)


def decode_and_random_crop(
    image, seed, channels, sample_window=_sample_crop_window
):
  """Decodes an image and takes a random crop of it.

  JPEGs are cropped while decoding, which skips decoding most of the pixels
  that are thrown away; other encodings and decoded images are cropped after
  decoding.

  Args:
    image: encoded scalar string or uint8 `[H, W, C]`.
    seed: int tensor `[2]`.
    channels: number of channels.
    sample_window: `(image_shape, seed) -> [top, left, height, width]`; by
      default TF's Inception-style sampler of the 'imagenet' policy.

  Returns:
    uint8 `[h, w, channels]`, the crop.
  """
  if image.dtype != tf.string:
    return _crop(image, sample_window(tf.shape(image), seed))

  def crop_jpeg():
    window = sample_window(tf.image.extract_jpeg_shape(image), seed)
    return tf.io.decode_and_crop_jpeg(image, window, channels=channels)

  def crop_decoded():
    decoded = image_ops.decode(image, channels)
    return _crop(decoded, sample_window(tf.shape(decoded), seed))

  return tf.cond(tf.io.is_jpeg(image), crop_jpeg, crop_decoded)


def sample_resized_crop_window(
    image_shape,
    seed,
    *,
    area_range,
    aspect_ratio_range=CROP_ASPECT_RATIO_RANGE,
    max_attempts=CROP_MAX_ATTEMPTS,
):
  """Samples a crop window as torchvision's `RandomResizedCrop` does.

  Each attempt draws the crop's area, as a fraction of the image's, uniformly
  from `area_range` and its aspect ratio (width / height) log-uniformly from
  `aspect_ratio_range`, then rounds its sides to whole pixels. The first
  attempt that fits in the image is placed uniformly at random in it. If none
  of `max_attempts` fits, the window is the centred crop of the whole image,
  narrowed to the nearest aspect ratio in range (the whole image if its own
  is). This is torchvision >= 0.3's `get_params`; the 0.2 of lemniscate's
  PyTorch 0.4 drew the ratio uniformly and swapped the sides half of the time
  (the same range), and fell back to the centred square.

  All attempts are drawn at once from `seed`, so the window depends on
  nothing else.

  Args:
    image_shape: int `[3]` (or `[2]`), the image's `[H, W, ...]`.
    seed: int tensor `[2]`.
    area_range: `(low, high)` fractions of the image's area.
    aspect_ratio_range: `(low, high)` of width / height.
    max_attempts: windows to try before the fallback.

  Returns:
    int32 `[4]`: `[top, left, height, width]`.
  """
  height = tf.cast(image_shape[0], tf.float64)
  width = tf.cast(image_shape[1], tf.float64)
  # Rows: area fraction, log aspect ratio, vertical and horizontal position.
  uniform = tf.random.stateless_uniform(
      [4, max_attempts], seed, dtype=tf.float64
  )
  low, high = area_range
  target_area = height * width * (low + (high - low) * uniform[0])
  log_low, log_high = (math.log(r) for r in aspect_ratio_range)
  ratio = tf.exp(log_low + (log_high - log_low) * uniform[1])
  # tf.round rounds halves to even, as Python's round in torchvision does.
  crop_w = tf.round(tf.sqrt(target_area * ratio))
  crop_h = tf.round(tf.sqrt(target_area / ratio))
  fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
  # The first attempt that fits (argmax returns the first maximum).
  first = tf.argmax(tf.cast(fits, tf.int32))
  crop_h, crop_w = crop_h[first], crop_w[first]
  # random.randint(0, H - h) includes both ends; the minimum only guards
  # against a uniform draw rounding up to 1.
  top = tf.minimum(
      tf.floor(uniform[2, first] * (height - crop_h + 1)), height - crop_h
  )
  left = tf.minimum(
      tf.floor(uniform[3, first] * (width - crop_w + 1)), width - crop_w
  )

  low_ratio, high_ratio = aspect_ratio_range
  image_ratio = width / height
  fallback_w = tf.where(
      image_ratio > high_ratio, tf.round(height * high_ratio), width
  )
  fallback_h = tf.where(
      image_ratio < low_ratio, tf.round(width / low_ratio), height
  )
  fallback = tf.stack(
      [
          tf.floor((height - fallback_h) / 2),
          tf.floor((width - fallback_w) / 2),
          fallback_h,
          fallback_w,
      ]
  )
  window = tf.where(
      tf.reduce_any(fits), tf.stack([top, left, crop_h, crop_w]), fallback
  )
  return tf.cast(window, tf.int32)
