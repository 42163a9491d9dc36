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

Their pieces live in `data.image_ops` (decode, resize, crop to size, flip),
`data.crops` (random crop windows) and `data.color` (grayscale and colour
jitter).
"""

import functools

import tensorflow as tf

from sslprune_jax.data import color
from sslprune_jax.data import crops
from sslprune_jax.data import image_ops
from sslprune_jax.data.schema import check_augment

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
# 'npid' policy, lemniscate.pytorch's main.py: RandomResizedCrop(size,
# scale=(0.2, 1.)) (its cifar.py uses the same range at size 32), with
# torchvision's default aspect-ratio range and attempts (`data.crops`).
NPID_CROP_AREA_RANGE = (0.2, 1.0)
# RandomGrayscale(p=0.2).
NPID_GRAYSCALE_PROBABILITY = 0.2
# 'imagenet' evaluation: the shorter side is resized to image_size / 0.875
# (256 for 224), then the centre image_size square is kept.
EVAL_CROP_FRACTION = 0.875


def cifar_train(image, seed, image_size, channels, shape=None):
  """CIFAR augmentation: zero-pad 4 pixels, random crop, random flip.

  This is torchvision's `RandomCrop(image_size, padding=4)` followed by
  `RandomHorizontalFlip()`.

  Args:
    image: encoded scalar string or uint8 `[H, W, C]`.
    seed: int tensor `[2]`, the example's stateless seed.
    image_size: output side; images of another size are first fitted to it.
    channels: number of channels.
    shape: static image shape of the dataset, if fixed (see `image_ops.decode`).

  Returns:
    float32 `[image_size, image_size, channels]` in [0, 1].
  """
  crop_seed, flip_seed = image_ops.split_seed(seed)
  image = image_ops.fit(image_ops.decode(image, channels, shape), image_size)
  pad = CIFAR_PADDING
  # Padding happens in pixel space (black), before normalisation, as with
  # torchvision's transforms on PIL images.
  image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  image = tf.image.stateless_random_crop(
      image, (image_size, image_size, channels), seed=crop_seed
  )
  return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


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
  crop_seed, flip_seed = image_ops.split_seed(seed)
  image = crops.decode_and_random_crop(image, crop_seed, channels)
  image = tf.image.resize(
      image_ops.to_float(image),
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
  image = image_ops.to_float(image_ops.decode(image, channels))
  resize_to = int(round(image_size / EVAL_CROP_FRACTION))
  image = image_ops.center_crop(
      image_ops.resize_shorter_side(image, resize_to), image_size
  )
  return tf.ensure_shape(image, (image_size, image_size, channels))


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
  crop_seed, grey_seed, jitter_seed, flip_seed = image_ops.split_seed(seed, 4)
  sample_window = functools.partial(
      crops.sample_resized_crop_window, area_range=NPID_CROP_AREA_RANGE
  )
  image = crops.decode_and_random_crop(
      image, crop_seed, channels, sample_window
  )
  # PIL's bilinear resize antialiases when it shrinks.
  image = tf.image.resize(
      image_ops.to_float(image),
      (image_size, image_size),
      method='bilinear',
      antialias=True,
  )
  image = tf.ensure_shape(image, (image_size, image_size, channels))
  image = color.random_grayscale(image, grey_seed, NPID_GRAYSCALE_PROBABILITY)
  image = color.color_jitter(image, jitter_seed, color.NPID_COLOR_JITTER)
  return image_ops.random_flip(image, flip_seed)


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
    shape: static image shape of the dataset, if fixed (see `image_ops.decode`).

  Returns:
    float32 `[image_size, image_size, channels]` in [0, 1].
  """
  image = image_ops.decode(image, channels, shape)
  if image_ops.has_size(image, image_size):
    return image_ops.to_float(image)
  return imagenet_eval(image, image_size, channels)


def preprocess_train(image, seed, *, augment, image_size, channels, shape=None):
  """Applies a training augmentation policy to one image.

  Args:
    image: encoded scalar string or uint8 `[H, W, C]`.
    seed: int tensor `[2]`, the example's stateless seed.
    augment: one of `AUGMENTATIONS`.
    image_size: output side.
    channels: number of channels.
    shape: static image shape of the dataset, if fixed (see `image_ops.decode`).

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
  return image_ops.fit(image_ops.decode(image, channels, shape), image_size)


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
    shape: static image shape of the dataset, if fixed (see `image_ops.decode`).

  Returns:
    float32 `[image_size, image_size, channels]` in [0, 1].
  """
  check_augment(augment)
  if augment == 'imagenet':
    return imagenet_eval(image, image_size, channels)
  if augment == 'npid':
    return npid_eval(image, image_size, channels, shape)
  return image_ops.fit(image_ops.decode(image, channels, shape), image_size)


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
