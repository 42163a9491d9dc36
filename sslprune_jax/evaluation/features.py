"""Features of a pruning run's frozen, masked trunk (`evaluation.linear`).

A finished round's trunk without its head (`load_trunk`), a jitted,
data-parallel function from images to [B, D] features taken at the pooled
output or at any module (`feature_fn`, `pool_features`), and the features
of every real example of an eval-style stream (`extract`).
"""

from __future__ import annotations

from typing import Any, Iterator

from flax import linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np

from sslprune_jax import models
from sslprune_jax import parallel
from sslprune_jax import pruning
from sslprune_jax.rundir import sources

PyTree = Any


def load_trunk(
    config: ml_collections.ConfigDict, round_idx: int
) -> tuple[dict, PyTree]:
  """Round `round_idx`'s trained trunk: masked variables without the head.

  Returns:
    (variables, mask) of `models.create_model(config.model, None)`.
  """
  _, saved = sources.read_source_round(config, config.source.workdir, round_idx)
  params = {k: v for k, v in saved['params'].items() if k != models.HEAD}
  mask = {k: v for k, v in saved['mask'].items() if k != models.HEAD}
  return (
      {
          'params': pruning.apply_mask(params, mask),
          'batch_stats': saved['batch_stats'],
      },
      mask,
  )


def pool_features(out: jax.Array, pool=()) -> jax.Array:
  """A module's output as [B, D] float32 features.

  Args:
    out: [B, H, W, C] or [B, ...].
    pool: () to average a feature map over space; (k, s) to average it in
      k x k windows at stride s without padding, flattened channel-major
      (the layout of Caffe2's NCHW blobs). Goyal et al.'s ResNet-50 res5
      features are (6, 1): 7 x 7 -> 2 x 2 at 224 pixels (fair_self_
      supervision_benchmark configs/benchmark_tasks/image_classification/
      voc07/resnet50_*_extract_features.yaml, res5_2_branch2c_bn_s1k6_resize).

  Returns:
    [B, D] float32.
  """
  if out.ndim == 4 and pool:
    window, stride = pool
    if window > min(out.shape[1:3]):
      raise ValueError(
          f'linear.pool window {window} is larger than the '
          f'{out.shape[1]} x {out.shape[2]} feature map.'
      )
    out = nn.avg_pool(
        out, (window, window), strides=(stride, stride), padding='VALID'
    )
    out = jnp.transpose(out, (0, 3, 1, 2))
  elif out.ndim == 4:
    out = out.mean(axis=(1, 2))
  elif pool:
    raise ValueError(
        'linear.pool needs a spatial feature map; got features '
        f'of shape {out.shape}.'
    )
  return out.reshape(out.shape[0], -1).astype(jnp.float32)


def feature_fn(
    model_config: ml_collections.ConfigDict, layer: str, mesh, pool=()
):
  """Jitted, data-parallel (variables, images) -> [B, D] float32 features.

  Args:
    model_config: the source's model config.
    layer: '' for the pooled features the head sits on, or the '/'-joined
      path of a module whose output is taken.
    mesh: the data mesh; images are split over it, variables replicated.
    pool: how a module's feature map is pooled (see `pool_features`).
  """
  model = models.create_model(model_config, None)
  path = tuple(layer.split('/')) if layer else ()

  def features(variables, images):
    if not path:
      out = model.apply(variables, images, train=False)
    else:
      _, state = model.apply(
          variables,
          images,
          train=False,
          mutable=['intermediates'],
          capture_intermediates=lambda m, name: (
              name == '__call__' and tuple(m.scope.path) == path
          ),
      )
      node = state.get('intermediates', {})
      for key in path:
        if key not in node:
          names = sorted(variables['params'])
          raise ValueError(
              f'linear.layer={layer!r} is not a module of the '
              f'model; top-level modules: {names}.'
          )
        node = node[key]
      out = node['__call__'][0]
    return pool_features(out, tuple(pool))

  return jax.jit(
      jax.shard_map(
          features,
          mesh=mesh,
          in_specs=(P(), P(parallel.AXIS)),
          out_specs=P(parallel.AXIS),
      )
  )


def extract(
    features, variables, batches: Iterator[dict], mesh
) -> tuple[np.ndarray, np.ndarray]:
  """Features and labels of every real example of an eval-style iterator."""
  feats, labels = [], []
  for batch in batches:
    f = parallel.to_host(
        features(variables, parallel.shard_batch(batch['image'], mesh))
    )
    keep = parallel.to_host(parallel.shard_batch(batch['mask'], mesh))
    label = parallel.to_host(parallel.shard_batch(batch['label'], mesh))
    feats.append(f[keep])
    labels.append(label[keep])
  return np.concatenate(feats), np.concatenate(labels)
