"""Per-example preprocessing and augmentation used in the paper.

Every function works on a single example and is pure TensorFlow, so it can
run inside `tf.data.Dataset.map`. Randomness is stateless: each random op gets
an explicit `[2]` integer seed, so an example's augmentation depends only on
its seed and not on how tf.data schedules the map.

Images may come either encoded (a scalar `tf.string`, as stored by TFDS) or
already decoded (uint8 `[H, W, C]`, e.g. from `tfds.testing.mock_data`);
decoding happens only when needed. Outputs are float32 `[S, S, C]` in [0, 1];
`normalize` then standardises them per channel.

Policies (`AUGMENTATIONS`, named in `data.schema`):

  'cifar'     pad 4, random 32 x 32 crop, flip (`cifar_train`).
  'imagenet'  Inception-style random crop, resize, flip (`imagenet_train`).
  'npid'      Wu et al.'s NPID recipe, lemniscate.pytorch's `main.py`
              (github.com/zhirongw/lemniscate.pytorch): RandomResizedCrop
              with area 20%-100%, RandomGrayscale(p=0.2),
              ColorJitter(0.4, 0.4, 0.4, 0.4), RandomHorizontalFlip, in that
              order (`npid_train`).
  'none'      the image only fitted to the output size.
"""

import functools
import math

import tensorflow as tf

# pylint: disable=unused-import
from sslprune_jax.data.schema import AUGMENTATIONS
from sslprune_jax.data.schema import check_augment

# pylint: enable=unused-import

# Per-channel mean and standard deviation of [0, 1] pixels.
MEAN_STD = {
    'fashion_mnist': ((0.2860,), (0.3530,)),
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'imagenet2012': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# Places365 and VOC images are photographs like ImageNet's and are commonly
# normalised with its statistics; VOC then matches networks trained on
# ImageNet and transferred to it.
MEAN_STD['places365_small'] = MEAN_STD['imagenet2012']
MEAN_STD['voc2007'] = MEAN_STD['imagenet2012']

# 'cifar' policy: zero padding on each side before the random crop.
CIFAR_PADDING = 4
# 'imagenet' policy: range of the crop's area (as a fraction of the image) and
# of its aspect ratio (width / height), as in torchvision's RandomResizedCrop.
CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
# How many crop windows to try before falling back to the whole image.
CROP_MAX_ATTEMPTS = 10
# 'npid' policy, lemniscate.pytorch's main.py: RandomResizedCrop(size,
# scale=(0.2, 1.)) (its cifar.py uses the same range at size 32), with
# torchvision's default aspect-ratio range and attempts (the constants above).
NPID_CROP_AREA_RANGE = (0.2, 1.0)
# RandomGrayscale(p=0.2).
NPID_GRAYSCALE_PROBABILITY = 0.2
# ColorJitter(brightness, contrast, saturation, hue).
NPID_COLOR_JITTER = (0.4, 0.4, 0.4, 0.4)
# RandomHorizontalFlip's default probability.
FLIP_PROBABILITY = 0.5
# The colour-jitter operations, in the order of `NPID_COLOR_JITTER` and of
# the factors `sample_color_jitter` returns.
JITTER_OPS = ('brightness', 'contrast', 'saturation', 'hue')
# ITU-R 601-2 luma weights of PIL's `convert('L')`, which torchvision's
# grayscale, contrast and saturation use.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# 'imagenet' evaluation: the shorter side is resized to image_size / 0.875
# (256 for 224), then the centre image_size square is kept.
EVAL_CROP_FRACTION = 0.875


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


def _to_float(image):
  """Converts uint8 pixels to float32 in [0, 1]."""
  return tf.image.convert_image_dtype(image, tf.float32)


def _has_size(image, size):
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
    image = _to_float(image)
  if not _has_size(image, size):
    # Bilinear resizing to the same size is the identity, so images whose
    # size is only known at run time need no special case.
    image = center_crop(resize_shorter_side(image, size), size)
  return tf.ensure_shape(image, (size, size, image.shape[-1]))


def cifar_train(image, seed, image_size, channels, shape=None):
  """CIFAR augmentation: zero-pad 4 pixels, random crop, random flip.

  This is torchvision's `RandomCrop(image_size, padding=4)` followed by
  `RandomHorizontalFlip()`.

  Args:
    image: encoded scalar string or uint8 `[H, W, C]`.
    seed: int tensor `[2]`, the example's stateless seed.
    image_size: output side; images of another size are first fitted to it.
    channels: number of channels.
    shape: static image shape of the dataset, if fixed (see `decode`).

  Returns:
    float32 `[image_size, image_size, channels]` in [0, 1].
  """
  crop_seed, flip_seed = split_seed(seed)
  image = fit(decode(image, channels, shape), image_size)
  pad = CIFAR_PADDING
  # Padding happens in pixel space (black), before normalisation, as with
  # torchvision's transforms on PIL images.
  image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  image = tf.image.stateless_random_crop(
      image, (image_size, image_size, channels), seed=crop_seed
  )
  return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


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
    decoded = decode(image, channels)
    return _crop(decoded, sample_window(tf.shape(decoded), seed))

  return tf.cond(tf.io.is_jpeg(image), crop_jpeg, crop_decoded)


def imagenet_train(image, seed, image_size, channels):
  """ImageNet augmentation: random-size, random-aspect crop, resize, flip.

  This is torchvision's `RandomResizedCrop(image_size)` (area 8%-100%, aspect
  ratio 3/4-4/3) followed by `RandomHorizontalFlip()`.

  Args:
    image: encoded scalar string or uint8 `[H, W, C]`.
    seed: int tensor `[2]`, the example's stateless seed.
    image_size: output side.
    channels: number of channels.

  Returns:
    float32 `[image_size, image_size, channels]` in [0, 1].
  """
  crop_seed, flip_seed = split_seed(seed)
  image = decode_and_random_crop(image, crop_seed, channels)
  image = tf.image.resize(
      _to_float(image),
      (image_size, image_size),
      method='bilinear',
      antialias=True,
  )
  image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
  return tf.ensure_shape(image, (image_size, image_size, channels))


def imagenet_eval(image, image_size, channels):
  """ImageNet evaluation: resize the shorter side, then centre crop.

  The shorter side becomes `round(image_size / 0.875)` (256 for 224).

  Args:
    image: encoded scalar string or uint8 `[H, W, C]`.
    image_size: output side.
    channels: number of channels.

  Returns:
    float32 `[image_size, image_size, channels]` in [0, 1].
  """
  image = _to_float(decode(image, channels))
  resize_to = int(round(image_size / EVAL_CROP_FRACTION))
  image = center_crop(resize_shorter_side(image, resize_to), image_size)
  return tf.ensure_shape(image, (image_size, image_size, channels))


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


def _coin(seed, probability):
  """A stateless draw that is True with `probability`."""
  return tf.random.stateless_uniform([], seed) < probability


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
  return tf.where(_coin(seed, probability), grayscale(image), image)


def random_flip(image, seed, probability=FLIP_PROBABILITY):
  """torchvision's `RandomHorizontalFlip(p=probability)`.

  Args:
    image: `[H, W, C]`.
    seed: int tensor `[2]`.
    probability: of mirroring the image left to right.

  Returns:
    The mirrored image with `probability`, else `image`.
  """
  return tf.where(_coin(seed, probability), tf.reverse(image, axis=[1]), image)


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
  factor_seed, order_seed = split_seed(seed)
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


def npid_train(image, seed, image_size, channels):
  """NPID's augmentation, as lemniscate.pytorch's `main.py` (Wu et al.).

  In order: `RandomResizedCrop(image_size, scale=(0.2, 1.))`
  (`sample_resized_crop_window`, then a bilinear resize),
  `RandomGrayscale(p=0.2)`, `ColorJitter(0.4, 0.4, 0.4, 0.4)`,
  `RandomHorizontalFlip()`. lemniscate's `cifar.py` crops to 32 x 32, the
  dataset's size, with the same range, but applies the jitter before the
  grayscale and does not flip; this policy follows `main.py` at every size
  (for a single-channel image the first difference vanishes, see below).

  On a single-channel image such as Fashion-MNIST's, grayscale, saturation
  and hue are the identity, as torchvision makes them for a PIL 'L' image:
  only the crop, brightness, contrast and flip change it.

  Args:
    image: encoded scalar string or uint8 `[H, W, C]`.
    seed: int tensor `[2]`, the example's stateless seed.
    image_size: output side.
    channels: number of channels (1 or 3).

  Returns:
    float32 `[image_size, image_size, channels]` in [0, 1].
  """
  crop_seed, grey_seed, jitter_seed, flip_seed = split_seed(seed, 4)
  sample_window = functools.partial(
      sample_resized_crop_window, area_range=NPID_CROP_AREA_RANGE
  )
  image = decode_and_random_crop(image, crop_seed, channels, sample_window)
  # PIL's bilinear resize antialiases when it shrinks.
  image = tf.image.resize(
      _to_float(image),
      (image_size, image_size),
      method='bilinear',
      antialias=True,
  )
  image = tf.ensure_shape(image, (image_size, image_size, channels))
  image = random_grayscale(image, grey_seed, NPID_GRAYSCALE_PROBABILITY)
  image = color_jitter(image, jitter_seed, NPID_COLOR_JITTER)
  return random_flip(image, flip_seed)


def npid_eval(image, image_size, channels, shape=None):
  """NPID's evaluation transform, as lemniscate.pytorch's.

  `main.py` resizes the shorter side to 256 and keeps the centre 224 square
  (`imagenet_eval`); `cifar.py` uses the 32 x 32 images as they are. Images
  already `image_size` square are therefore left as they are, others get
  `imagenet_eval`.

  Args:
    image: encoded scalar string or uint8 `[H, W, C]`.
    image_size: output side.
    channels: number of channels.
    shape: static image shape of the dataset, if fixed (see `decode`).

  Returns:
    float32 `[image_size, image_size, channels]` in [0, 1].
  """
  image = decode(image, channels, shape)
  if _has_size(image, image_size):
    return _to_float(image)
  return imagenet_eval(image, image_size, channels)


def preprocess_train(image, seed, *, augment, image_size, channels, shape=None):
  """Applies a training augmentation policy to one image.

  Args:
    image: encoded scalar string or uint8 `[H, W, C]`.
    seed: int tensor `[2]`, the example's stateless seed.
    augment: one of `AUGMENTATIONS`.
    image_size: output side.
    channels: number of channels.
    shape: static image shape of the dataset, if fixed (see `decode`).

  Returns:
    float32 `[image_size, image_size, channels]` in [0, 1].
  """
  check_augment(augment)
  if augment == 'cifar':
    return cifar_train(image, seed, image_size, channels, shape)
  if augment == 'imagenet':
    return imagenet_train(image, seed, image_size, channels)
  if augment == 'npid':
    return npid_train(image, seed, image_size, channels)
  return fit(decode(image, channels, shape), image_size)


def preprocess_eval(image, *, augment, image_size, channels, shape=None):
  """Deterministic evaluation preprocessing matching a training policy.

  Args:
    image: encoded scalar string or uint8 `[H, W, C]`.
    augment: the training policy: 'imagenet' gets the resize-and-centre-crop
      evaluation transform, 'npid' too unless the images already have the
      output size (`npid_eval`), the others only fit the image to
      `image_size`.
    image_size: output side.
    channels: number of channels.
    shape: static image shape of the dataset, if fixed (see `decode`).

  Returns:
    float32 `[image_size, image_size, channels]` in [0, 1].
  """
  check_augment(augment)
  if augment == 'imagenet':
    return imagenet_eval(image, image_size, channels)
  if augment == 'npid':
    return npid_eval(image, image_size, channels, shape)
  return fit(decode(image, channels, shape), image_size)


def normalize(image, mean, std):
  """Standardises each channel of a [0, 1] image.

  Args:
    image: float32 `[..., C]`.
    mean: C per-channel means.
    std: C per-channel standard deviations.

  Returns:
    `(image - mean) / std`, float32.
  """
  mean = tf.constant(mean, tf.float32)
  std = tf.constant(std, tf.float32)
  return (image - mean) / std
