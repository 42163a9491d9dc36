"""The input-pipeline section (6): the pipelines alone, against the steps."""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

from sslprune_jax import data
from sslprune_jax.bench.networks import quick_config
from sslprune_jax.bench.timing import _Cache
from sslprune_jax.data import augment as augment_lib


def _time_iterator(iterator, warmup: int, batches: int) -> dict:
  t0 = time.perf_counter()
  first = next(iterator)
  first_s = time.perf_counter() - t0
  for _ in range(max(warmup - 1, 0)):
    next(iterator)
  t0 = time.perf_counter()
  images = 0
  for _ in range(batches):
    images += len(next(iterator)['image'])
  seconds = time.perf_counter() - t0
  return {
      'images_per_s': images / seconds,
      'seconds': seconds,
      'images': images,
      'first_batch_s': first_s,
      'batch_shape': list(first['image'].shape),
  }


def cifar_like_batches(
    batch_size: int, seed: int = 0, num_images: int = 50_000
):
  """CIFAR-10's training pipeline over synthetic 32x32x3 uint8 images.

  The structure of `data.train_iterator` for a cached dataset (shuffle,
  per-example stateless seeds, the project's 'cifar' augmentation: pad 4,
  random crop, random flip; normalisation; batching, prefetching; its
  tf.data options), on random images in memory, since CIFAR-10 cannot be
  downloaded here.
  """
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (num_images, 32, 32, 3), np.uint8)
  labels = rng.integers(0, 10, num_images, np.int64)
  mean, std = augment_lib.MEAN_STD['cifar10']
  key = tf.constant([seed, 1], tf.int64)

  def prepare(position, example):
    example_seed = tf.random.experimental.stateless_fold_in(
        key, position, alg='philox'
    )
    image = augment_lib.preprocess_train(
        example['image'],
        example_seed,
        augment='cifar',
        image_size=32,
        channels=3,
        shape=(32, 32, 3),
    )
    return {
        'image': augment_lib.normalize(image, mean, std),
        'label': tf.cast(example['label'], tf.int32),
    }

  ds = tf.data.Dataset.from_tensor_slices({'image': images, 'label': labels})
  ds = ds.shuffle(num_images, seed=seed).repeat().enumerate()
  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return iter(ds.with_options(data.pipeline_options()).as_numpy_iterator())


def section_pipeline(cache: _Cache) -> dict:
  """Section 6: input pipelines alone against the steps they feed.

  Fashion-MNIST: the real `data.train_iterator` of the quick config (its
  data config; unaugmented) against the quick network's step. CIFAR-like:
  `cifar_like_batches` (the 'cifar' augmentation on synthetic images)
  against CIFAR ResNet-18's step (or the first CIFAR model measured).
  """
  settings = cache.settings
  quick = cache.step('quick')
  config = quick_config(settings.data_dir, settings.conv_impl)
  batch = quick['network']['batch_size']
  fmnist = _time_iterator(
      data.train_iterator(config.data, global_batch_size=batch, seed=0),
      settings.pipeline_warmup,
      settings.pipeline_batches,
  )
  fmnist.update(
      source='data.train_iterator, configs/labels.py:quick data',
      step='quick',
      step_images_per_s=quick['masked']['images_per_s'],
  )
  cifar_models = [m for m in settings.models if m.startswith('resnet18')]
  step_name = (
      'resnet18'
      if 'resnet18' in cifar_models or not cifar_models
      else cifar_models[0]
  )
  step = cache.step(step_name)
  cifar = _time_iterator(
      cifar_like_batches(step['network']['batch_size']),
      settings.pipeline_warmup,
      settings.pipeline_batches,
  )
  cifar.update(
      source=(
          'synthetic uint8 32x32x3 images through '
          "augment.preprocess_train(augment='cifar') "
          '(CIFAR-10 is not on disk)'
      ),
      step=step_name,
      step_images_per_s=step['masked']['images_per_s'],
  )
  for result in (fmnist, cifar):
    result['pipeline_over_step'] = (
        result['images_per_s'] / result['step_images_per_s']
    )
  return {'fashion_mnist': fmnist, 'cifar_like': cifar}
