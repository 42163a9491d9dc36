"""Per-example preprocessing and augmentation used in the paper.

Every function works on a single example and is pure TensorFlow, so it can
run inside `tf.data.Dataset.map`. Randomness is stateless: each random op gets
an explicit `[2]` integer seed, so an example's augmentation depends only on
its seed and not on how tf.data schedules the map.

Images may come either encoded (a scalar `tf.string`, as stored by TFDS) or
already decoded (uint8 `[H, W, C]`, e.g. from `tfds.testing.mock_data`);
decoding happens only when needed. Outputs are float32 `[S, S, C]` in [0, 1];
`normalize` then standardises them per channel.
"""

import tensorflow as tf

# Names of the augmentation policies.
AUGMENTATIONS = ('cifar', 'imagenet', 'none')

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
# 'imagenet' evaluation: the shorter side is resized to image_size / 0.875
# (256 for 224), then the centre image_size square is kept.
EVAL_CROP_FRACTION = 0.875


def check_augment(augment):
  """Raises ValueError unless `augment` names a known policy.

  Args:
    augment: the policy name.
  """
  if augment not in AUGMENTATIONS:
    raise ValueError(
        f'Unknown augment {augment!r}; expected one of {AUGMENTATIONS}.'
    )


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


def decode_and_random_crop(image, seed, channels):
  """Decodes an image and takes a random Inception-style crop of it.

  JPEGs are cropped while decoding, which skips decoding most of the pixels
  that are thrown away; other encodings and decoded images are cropped after
  decoding.

  Args:
    image: encoded scalar string or uint8 `[H, W, C]`.
    seed: int tensor `[2]`.
    channels: number of channels.

  Returns:
    uint8 `[h, w, channels]`, the crop.
  """
  if image.dtype != tf.string:
    return _crop(image, _sample_crop_window(tf.shape(image), seed))

  def crop_jpeg():
    window = _sample_crop_window(tf.image.extract_jpeg_shape(image), seed)
    return tf.io.decode_and_crop_jpeg(image, window, channels=channels)

  def crop_decoded():
    decoded = decode(image, channels)
    return _crop(decoded, _sample_crop_window(tf.shape(decoded), seed))

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
      _to_float(image), (image_size, image_size), method='bilinear',
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


def preprocess_train(image, seed, *, augment, image_size, channels, shape=None):
  """Applies a training augmentation policy to one image.

  Args:
    image: encoded scalar string or uint8 `[H, W, C]`.
    seed: int tensor `[2]`, the example's stateless seed.
    augment: 'cifar', 'imagenet' or 'none'.
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
  return fit(decode(image, channels, shape), image_size)


def preprocess_eval(image, *, augment, image_size, channels, shape=None):
  """Deterministic evaluation preprocessing matching a training policy.

  Args:
    image: encoded scalar string or uint8 `[H, W, C]`.
    augment: the training policy: 'imagenet' gets the resize-and-centre-crop
      evaluation transform, the others only fit the image to `image_size`.
    image_size: output side.
    channels: number of channels.
    shape: static image shape of the dataset, if fixed (see `decode`).

  Returns:
    float32 `[image_size, image_size, channels]` in [0, 1].
  """
  check_augment(augment)
  if augment == 'imagenet':
    return imagenet_eval(image, image_size, channels)
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
