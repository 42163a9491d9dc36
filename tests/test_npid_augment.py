"""Tests of the 'npid' augmentation (lemniscate.pytorch's main.py recipe).

Statistics are taken over many fixed seeds, so every test is deterministic;
the binomial tolerances are four standard deviations wide.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from sslprune_jax import config_lib
from sslprune_jax import data
from sslprune_jax.data import augment
from sslprune_jax.data import color
from sslprune_jax.data import crops
from sslprune_jax.data import image_ops
from test_data import _assert_same_batches, _take

# Draws per statistical test.
_DRAWS = 2000


def _binomial_tolerance(n, p, sds=4.0):
  """Half-width of an interval around n * p holding the count (4 sd)."""
  return sds * math.sqrt(n * p * (1.0 - p))


def _over_seeds(fn, n=_DRAWS, offset=0):
  """Maps `fn(seed)` over `n` distinct `[2]` seeds; returns numpy, batched.

  A tf.data map traces `fn` once, which keeps thousands of draws fast.
  """
  seeds = tf.stack(
      [
          tf.range(offset, offset + n, dtype=tf.int64),
          tf.fill([n], tf.constant(11, tf.int64)),
      ],
      axis=1,
  )
  ds = tf.data.Dataset.from_tensor_slices(seeds).map(fn).batch(n)
  return tf.nest.map_structure(lambda x: x.numpy(), ds.get_single_element())


def _colour_image(height=40, width=48):
  """uint8 [H, W, 3]: red rises to the right, green downwards, blue fixed.

  Every crop of it has three distinct channels, and its values (25-153)
  leave room for brightness and contrast without clipping everything.
  """
  red = np.tile(np.linspace(25, 153, width), (height, 1))
  green = np.tile(np.linspace(25, 153, height)[:, None], (1, width))
  blue = np.full((height, width), 80.0)
  return np.stack([red, green, blue], axis=-1).round().astype(np.uint8)


def _npid(image, size, channels):
  """The 'npid' training policy on `image` as a function of the seed."""
  image = tf.constant(image)
  return lambda seed: augment.preprocess_train(
      image, seed, augment='npid', image_size=size, channels=channels
  )


# ---------------------------------------------------------------------------
# RandomResizedCrop(size, scale=(0.2, 1.)).


def test_crop_windows_have_the_area_and_aspect_ratio_of_torchvision():
  # Square, so that the attempts which do not fit are as often too wide as
  # too tall and the ratios that remain stay symmetric.
  height, width = 600, 600
  windows = _over_seeds(
      lambda seed: crops.sample_resized_crop_window(
          tf.constant([height, width, 3]), seed, area_range=(0.2, 1.0)
      )
  )
  top, left, h, w = windows.T
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + h <= height).all() and (left + w <= width).all()
  area = h * w / (height * width)
  ratio = w / h
  # Sides are rounded to whole pixels (>= 230 here): 1% of slack.
  assert area.min() > 0.2 * 0.99 and area.max() <= 1.0
  assert ratio.min() > 0.75 * 0.99 and ratio.max() < 4 / 3 * 1.01
  # The ranges are used to their ends, not a narrower part of them.
  assert area.min() < 0.22 and area.max() > 0.95
  assert ratio.min() < 0.76 and ratio.max() > 1.31
  # Log-uniform ratios: half are below 1 (uniform ones: 0.25 / 0.58 = 43%).
  below = int((ratio < 1.0).sum())
  assert abs(below - _DRAWS / 2) < _binomial_tolerance(_DRAWS, 0.5)
  # The positions cover the image: windows reach both edges.
  assert top.min() == 0 and (top + h).max() == height
  assert left.min() == 0 and (left + w).max() == width


def test_crop_windows_on_small_images_fit():
  windows = _over_seeds(
      lambda seed: crops.sample_resized_crop_window(
          tf.constant([28, 28, 1]), seed, area_range=(0.2, 1.0)
      )
  )
  top, left, h, w = windows.T
  assert (h >= 1).all() and (w >= 1).all()
  assert (top + h <= 28).all() and (left + w <= 28).all()
  assert len({tuple(window) for window in windows}) > 500


@pytest.mark.parametrize(
    'shape, expected',
    [
        # No window of 20%+ of the area fits a 10 x 1000 strip: the fallback is
        # the centred crop at the nearest aspect ratio in range, 4/3.
        ((10, 1000), [0, 493, 10, 13]),
        ((1000, 10), [493, 0, 13, 10]),
    ],
)
def test_crop_falls_back_to_a_centred_crop(shape, expected):
  windows = _over_seeds(
      lambda seed: crops.sample_resized_crop_window(
          tf.constant([*shape, 3]), seed, area_range=(0.2, 1.0)
      ),
      n=20,
  )
  np.testing.assert_array_equal(windows, [expected] * 20)


# ---------------------------------------------------------------------------
# RandomGrayscale(p=0.2).


def test_grayscale_frequency_on_a_colour_image():
  images = _over_seeds(_npid(_colour_image(), 32, 3))
  assert images.shape == (_DRAWS, 32, 32, 3)
  # Jitter keeps a grey image grey (and cannot make a colour one grey: its
  # saturation factor is >= 0.6), so grey outputs are the grayscale draws.
  grey = np.all(images == images[..., :1], axis=(1, 2, 3))
  expected = augment.NPID_GRAYSCALE_PROBABILITY * _DRAWS
  assert abs(grey.sum() - expected) < _binomial_tolerance(_DRAWS, 0.2)


def test_grayscale_keeps_three_channels_and_is_identity_on_one():
  colour = tf.constant(_colour_image(), tf.float32) / 255.0
  grey = color.grayscale(colour).numpy()
  assert grey.shape == colour.shape
  np.testing.assert_allclose(
      grey[..., 0], colour.numpy() @ np.array(color.LUMA_WEIGHTS), rtol=1e-6
  )
  np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
  single = colour[..., :1]
  np.testing.assert_array_equal(color.grayscale(single), single)
  np.testing.assert_array_equal(color.adjust_saturation(single, 0.0), single)
  np.testing.assert_array_equal(color.adjust_hue(single, 0.3), single)


# ---------------------------------------------------------------------------
# ColorJitter(0.4, 0.4, 0.4, 0.4).


def test_color_jitter_factors_are_in_range_and_the_order_random():
  factors, orders = _over_seeds(color.sample_color_jitter, n=3000)
  scaling, hue = factors[:, :3], factors[:, 3]
  assert scaling.min() >= 0.6 and scaling.max() <= 1.4
  assert hue.min() >= -0.4 and hue.max() <= 0.4
  # Uniform over the whole ranges.
  assert (scaling.min(axis=0) < 0.61).all()
  assert (scaling.max(axis=0) > 1.39).all()
  assert hue.min() < -0.39 and hue.max() > 0.39
  np.testing.assert_allclose(scaling.mean(axis=0), 1.0, atol=0.02)
  # Every order is a permutation of the four operations, and all 24 occur
  # about equally often.
  np.testing.assert_array_equal(
      np.sort(orders, axis=1), np.tile(np.arange(4), (3000, 1))
  )
  _, counts = np.unique(orders, axis=0, return_counts=True)
  assert len(counts) == 24
  tolerance = _binomial_tolerance(3000, 1 / 24)
  assert np.all(np.abs(counts - 3000 / 24) < tolerance), counts


def _jitter_in_order(image, factors, order):
  """Applies the jitter operations one by one in `order`."""
  functions = {
      'brightness': color.adjust_brightness,
      'contrast': color.adjust_contrast,
      'saturation': color.adjust_saturation,
      'hue': color.adjust_hue,
  }
  for op in order:
    image = functions[color.JITTER_OPS[op]](image, factors[op])
  return image


def test_color_jitter_applies_the_operations_in_the_sampled_order():
  image = tf.constant(_colour_image(), tf.float32) / 255.0
  differs_from_fixed_order = 0
  for i in range(8):
    seed = tf.constant([i, 3])
    factors, order = color.sample_color_jitter(seed)
    jittered = color.color_jitter(image, seed).numpy()
    assert 0.0 <= jittered.min() and jittered.max() <= 1.0
    np.testing.assert_allclose(
        jittered, _jitter_in_order(image, factors, order.numpy()), atol=1e-6
    )
    fixed = _jitter_in_order(image, factors, range(4)).numpy()
    differs_from_fixed_order += not np.allclose(jittered, fixed, atol=1e-4)
  # The operations do not commute, so the order shows in the pixels.
  assert differs_from_fixed_order >= 4


def test_adjustments_follow_pil():
  image = tf.constant(_colour_image(), tf.float32) / 255.0
  np.testing.assert_allclose(
      color.adjust_brightness(image, 0.5), image * 0.5, rtol=1e-6
  )
  # Contrast 0 gives the mean grey level everywhere, saturation 0 the grey
  # image; factor 1 keeps the image.
  grey_mean = (image.numpy() @ np.array(color.LUMA_WEIGHTS)).mean()
  np.testing.assert_allclose(
      color.adjust_contrast(image, 0.0), grey_mean, rtol=1e-5
  )
  np.testing.assert_allclose(
      color.adjust_saturation(image, 0.0), color.grayscale(image), rtol=1e-6
  )
  for adjust in (
      color.adjust_brightness,
      color.adjust_contrast,
      color.adjust_saturation,
  ):
    np.testing.assert_allclose(adjust(image, 1.0), image, atol=1e-6)
  np.testing.assert_allclose(color.adjust_hue(image, 0.0), image, atol=1e-5)


# ---------------------------------------------------------------------------
# RandomHorizontalFlip, the whole policy, determinism.


def test_flip_frequency():
  # A ramp rising to the right, on one channel as Fashion-MNIST: the crop,
  # brightness and contrast keep it rising, so only a flip makes the left
  # half brighter than the right one.
  ramp = np.tile(np.linspace(30, 150, 28), (28, 1))[..., None]
  images = _over_seeds(_npid(ramp.round().astype(np.uint8), 28, 1))
  flipped = images[:, :, :14].mean(axis=(1, 2, 3)) > images[:, :, 14:].mean(
      axis=(1, 2, 3)
  )
  assert abs(flipped.sum() - _DRAWS / 2) < _binomial_tolerance(_DRAWS, 0.5)


def test_policy_applies_main_py_order():
  image = _colour_image()
  seed = tf.constant([4, 2])
  crop_seed, grey_seed, jitter_seed, flip_seed = image_ops.split_seed(seed, 4)
  window = crops.sample_resized_crop_window(
      tf.shape(image), crop_seed, area_range=augment.NPID_CROP_AREA_RANGE
  )
  top, left, h, w = window.numpy()
  expected = tf.image.resize(
      tf.constant(image[top : top + h, left : left + w], tf.float32) / 255.0,
      (32, 32),
      method='bilinear',
      antialias=True,
  )
  expected = color.random_grayscale(expected, grey_seed, 0.2)
  expected = color.color_jitter(expected, jitter_seed)
  expected = image_ops.random_flip(expected, flip_seed)
  np.testing.assert_allclose(_npid(image, 32, 3)(seed), expected, atol=1e-6)


def test_same_seed_same_image_other_seed_other_image():
  image = _colour_image()
  policy = _npid(image, 32, 3)
  first = policy(tf.constant([1, 2])).numpy()
  np.testing.assert_array_equal(first, policy(tf.constant([1, 2])))
  assert not np.array_equal(first, policy(tf.constant([1, 3])))
  # An encoded (PNG) image gets the same crop and the same pixels.
  png = tf.io.encode_png(image)
  np.testing.assert_allclose(
      _npid(png, 32, 3)(tf.constant([1, 2])), first, atol=1e-6
  )
  # Thousands of seeds, thousands of different images.
  images = _over_seeds(policy, n=500)
  assert len({x.tobytes() for x in images}) == 500


def test_eval_keeps_images_of_the_output_size():
  image = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28, 1)
  out = augment.preprocess_eval(
      tf.constant(image),
      augment='npid',
      image_size=28,
      channels=1,
      shape=(28, 28, 1),
  )
  np.testing.assert_allclose(out, image / 255.0, rtol=1e-6)
  # Larger images get main.py's resize-and-centre-crop.
  large = tf.constant(_colour_image(64, 80))
  np.testing.assert_array_equal(
      augment.preprocess_eval(large, augment='npid', image_size=32, channels=3),
      augment.imagenet_eval(large, 32, 3),
  )


# ---------------------------------------------------------------------------
# configs/npid.py and the resumable training stream.


@pytest.mark.parametrize(
    'variant, size', [('', 224), ('imagenet', 224), ('quick', 28)]
)
def test_every_npid_variant_uses_the_npid_policy(variant, size):
  config = config_lib.load('npid', variant)
  assert config.data.augment == 'npid'
  assert config.data.image_size == size


@pytest.mark.parametrize('cache', [True, False])
def test_npid_stream_resumes_exactly(data_dir, cache):
  config = config_lib.load('npid', 'quick').data
  # 512 examples in batches of 128: 4 steps per epoch.
  config.update(data_dir=data_dir, train_split='train[:512]', cache=cache)
  kwargs = dict(global_batch_size=128, seed=5)
  stream = _take(data.train_iterator(config, **kwargs), 7)
  # Step 5 is inside the second epoch; the comparison crosses no boundary,
  # the one from step 4 starts on it.
  _assert_same_batches(
      stream[5:], _take(data.train_iterator(config, start_step=5, **kwargs), 2)
  )
  _assert_same_batches(
      stream[4:6], _take(data.train_iterator(config, start_step=4, **kwargs), 2)
  )
  # The images are augmented: the same examples read without augmentation
  # differ from them.
  plain = config.copy_and_resolve_references()
  plain.augment = 'none'
  unaugmented = _take(data.train_iterator(plain, **kwargs), 1)[0]
  np.testing.assert_array_equal(unaugmented['index'], stream[0]['index'])
  assert not np.allclose(unaugmented['image'], stream[0]['image'])
