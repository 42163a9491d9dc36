"""Section 12: inference of channel-pruned networks exported smaller
(`export.slim`) against the dense network.

Each network's inner channels (`models.channel_groups`) are pruned by the
L1 norm of their filters, 20% of each layer's remaining channels a round
(`pruning.channel_scope='layer'`), and each round's mask is cut into a
smaller dense ResNet. The eval-mode forward pass of a batch is timed for
the dense network and each smaller one in alternating blocks; the
speedup is dense time over smaller time. Masked networks (unstructured or
N:M) run the dense network's convolutions, so they take the dense time
on a device without sparse kernels: XLA has none for N:M on CPU, and
jax exposes no 2:4 sparse tensor-core convolution.
"""

from __future__ import annotations

import statistics

import jax
import ml_collections
import numpy as np

from sslprune_jax import models
from sslprune_jax.bench.networks import _pruned_variables
from sslprune_jax.bench.networks import get_spec
from sslprune_jax.bench.networks import random_batch
from sslprune_jax.bench.timing import _Cache
from sslprune_jax.bench.timing import _times
from sslprune_jax.export import slim
from sslprune_jax.pruning import channels

ROUNDS = 4
FRACTION = 0.2


def _forward(spec, model_config: dict, variables: dict):
  model = models.create_model(
      ml_collections.ConfigDict(model_config), spec.num_classes
  )
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  image = random_batch(spec, eval_mask=True)['image']
  return lambda: apply(variables, image)


def _network(cache: _Cache, name: str) -> dict:
  settings = cache.settings
  spec = get_spec(name, settings)
  model = models.create_model(
      ml_collections.ConfigDict(spec.model), spec.num_classes
  )
  variables, mask = _pruned_variables(spec, model, 0, 0.0)
  variables = jax.tree.map(np.asarray, variables)
  groups = models.channel_groups(spec.model, variables['params'])
  total = sum(int(np.size(x)) for x in jax.tree.leaves(variables['params']))
  variants = {'dense': _forward(spec, spec.model, variables)}
  rows = {}
  for r in range(1, ROUNDS + 1):
    scores = channels.channel_scores(variables['params'], mask, groups, 'l1')
    mask = channels.prune_channels(scores, mask, groups, FRACTION, 'layer')
    small, widths = slim.slim(variables, jax.tree.map(np.asarray, mask), groups)
    key = f'round{r}'
    variants[key] = _forward(
        spec, {**spec.model, 'inner_widths': widths}, small
    )
    rows[key] = {
        'channels_left': channels.channel_report(mask, groups)['channels_left'],
        'weights_left': sum(
            int(np.size(x)) for x in jax.tree.leaves(small['params'])
        )
        / total,
    }
  for fn in variants.values():
    for _ in range(max(settings.warmup, 1)):
      jax.block_until_ready(fn())
  times = {k: [] for k in variants}
  for _ in range(max(settings.repeats, 1)):
    for k, fn in variants.items():
      times[k].extend(_times(fn, max(settings.steps, 1)))
  dense = statistics.median(times['dense'])
  out = {
      'batch_size': spec.batch_size,
      'dense': {'forward_s': dense, 'images_per_s': spec.batch_size / dense},
      'rounds': {},
  }
  for key, row in rows.items():
    seconds = statistics.median(times[key])
    out['rounds'][key] = {
        **row,
        'forward_s': seconds,
        'images_per_s': spec.batch_size / seconds,
        'speedup_over_dense': dense / seconds,
    }
  return out


def section_structured(cache: _Cache) -> dict:
  """Section 12: per network, the dense forward pass and that of each
  round's smaller network (medians of the timed passes)."""
  return {name: _network(cache, name) for name in cache.settings.models}
