"""The benchmarked networks: configs, models, optimisers, masks, batches."""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from sslprune_jax import config_lib
from sslprune_jax import models
from sslprune_jax import parallel
from sslprune_jax import pruning
from sslprune_jax import train
from sslprune_jax.bench.settings import NETWORKS
from sslprune_jax.bench.settings import Settings

PyTree = Any


def quick_config(
    data_dir: str | None = None, conv_impl: str = 'auto'
) -> ml_collections.ConfigDict:
  """The `configs/labels.py:quick` config, with `conv_impl`'s convolutions."""
  config = config_lib.load('labels', 'quick')
  if data_dir:
    config.data.data_dir = data_dir
  config.model.conv_impl = conv_impl
  return config


@dataclasses.dataclass(frozen=True)
class Spec:
  """A network to benchmark and the config its optimiser comes from."""

  name: str
  model: dict
  image_shape: tuple[int, int, int]
  num_classes: int
  batch_size: int
  config: ml_collections.ConfigDict

  def describe(self) -> dict:
    return {
        'model': dict(self.model),
        'image_shape': list(self.image_shape),
        'num_classes': self.num_classes,
        'batch_size': self.batch_size,
    }


def get_spec(name: str, settings: Settings) -> Spec:
  """The network `name` ('resnet18', 'resnet18_small', 'resnet50', 'quick').

  Raises:
    ValueError: unknown name, or a batch the devices do not divide.
  """
  cifar = config_lib.base('labels')
  if name in ('resnet18', 'resnet18_small'):
    width = 1.0 if name == 'resnet18' else settings.small_width
    spec = Spec(
        name,
        dict(name='resnet_cifar', depth=18, width=width),
        (32, 32, 3),
        10,
        settings.cifar_batch_size,
        cifar,
    )
  elif name == 'resnet50':
    batch = settings.imagenet_batch_size or (
        8 if jax.default_backend() == 'cpu' else 128
    )
    spec = Spec(
        name,
        dict(name='resnet', depth=50, width=1.0),
        (224, 224, 3),
        1000,
        batch,
        config_lib.imagenet(cifar),
    )
  elif name == 'quick':
    config = quick_config(settings.data_dir, settings.conv_impl)
    if settings.quick_batch_size:
      config.train.batch_size = settings.quick_batch_size
    spec = Spec(
        name,
        {k: config.model[k] for k in ('name', 'depth', 'width')},
        (28, 28, 1),
        10,
        config.train.batch_size,
        config,
    )
  else:
    raise ValueError(f'Unknown model {name!r}; valid: {NETWORKS}.')
  parallel.check_batch_size(spec.batch_size, parallel.create_mesh())
  model = {
      **spec.model,
      'dtype': settings.dtype,
      'conv_impl': settings.conv_impl,
  }
  model['conv_impl'] = models.conv_impl_of(model)
  return dataclasses.replace(spec, model=model)


def _model(spec: Spec):
  return models.create_model(
      ml_collections.ConfigDict(spec.model), spec.num_classes
  )


def _optimizer(spec: Spec):
  train_config = spec.config.train
  return train.create_optimizer(
      train_config, train.create_learning_rate_fn(train_config, 1000)
  )


# Jitted initialisations, one per network (compiled once).
_INIT_FNS: dict[str, Callable] = {}


def _pruned_variables(
    spec: Spec, model, seed: int, fraction: float
) -> tuple[dict, PyTree]:
  """Fresh variables of the network and a mask pruning `fraction` of its
  prunable weights by magnitude (in one go)."""
  key = json.dumps([spec.model, spec.image_shape, spec.num_classes])
  if key not in _INIT_FNS:
    _INIT_FNS[key] = jax.jit(
        functools.partial(
            train.init_variables, model, image_shape=spec.image_shape
        )
    )
  variables = _INIT_FNS[key](jax.random.PRNGKey(seed))
  params = variables['params']
  prunable = pruning.prunable_tree(params)
  mask = pruning.init_mask(params)
  if fraction > 0:
    mask = pruning.magnitude_prune(params, mask, prunable, fraction)
  return variables, mask


def random_batch(
    spec: Spec,
    seed: int = 0,
    num_seeds: int = 1,
    batch_size: int | None = None,
    eval_mask: bool = False,
) -> dict:
  """This host's share of a random batch, as numpy (see `train_iterator`).

  With `num_seeds` > 1 every array gets a leading seed axis.
  """
  rng = np.random.default_rng(seed)
  batch = (batch_size or spec.batch_size) // jax.process_count()
  lead = (num_seeds,) if num_seeds > 1 else ()
  out = {
      'image': rng.standard_normal(
          (*lead, batch, *spec.image_shape), np.float32
      ),
      'label': rng.integers(0, spec.num_classes, (*lead, batch), np.int32),
  }
  if eval_mask:
    out['mask'] = np.ones((*lead, batch), bool)
  else:
    out['index'] = np.broadcast_to(
        np.arange(batch, dtype=np.int32), (*lead, batch)
    ).copy()
    out['labelled'] = np.ones((*lead, batch), bool)
  return out
