"""Channel pruning: scores and masks on hand-made layers, exact counts over
rounds in both scopes, the groups of ResNets, and the smaller exported
network equal to the masked one on ResNets with residual blocks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslprune_jax import config_lib
from sslprune_jax import models
from sslprune_jax import validation
from sslprune_jax.export import slim
from sslprune_jax.pruning import channels
from test_models import random_variables


def _two_layers():
  """conv_a (3 channels) read by conv_b; conv_b (4 channels) read by fc."""
  a = np.zeros((1, 1, 2, 3), np.float32)
  a[..., 0], a[..., 1], a[..., 2] = 1.0, 3.0, -2.0  # L1: 2, 6, 4.
  b = np.ones((1, 1, 3, 4), np.float32) * np.array([1.0, 0.5, 4.0, 0.5])
  params = {
      'a': {'kernel': a},
      'bn_a': {'scale': np.array([0.1, -5.0, 1.0]), 'bias': np.ones(3)},
      'b': {'kernel': b},
      'bn_b': {'scale': np.ones(4), 'bias': np.ones(4)},
      'fc': {'kernel': np.ones((4, 2), np.float32)},
  }
  groups = [
      {
          'block': 'x',
          'producer': ('a', 'kernel'),
          'norm': ('bn_a',),
          'consumers': (('b', 'kernel'),),
      },
      {
          'block': 'x',
          'producer': ('b', 'kernel'),
          'norm': ('bn_b',),
          'consumers': (('fc', 'kernel'),),
      },
  ]
  mask = jax.tree.map(lambda p: np.ones(np.shape(p), bool), params)
  return params, mask, groups


def test_scores_by_hand():
  params, mask, groups = _two_layers()
  l1 = channels.channel_scores(params, mask, groups, 'l1')
  np.testing.assert_allclose(l1[0], [2.0, 6.0, 4.0])
  # conv_b's filters: 3 inputs each, of 1, .5, 4, .5.
  np.testing.assert_allclose(l1[1], [3.0, 1.5, 12.0, 1.5])
  bn = channels.channel_scores(params, mask, groups, 'bn_scale')
  np.testing.assert_allclose(bn[0], [0.1, 5.0, 1.0])


def test_a_removed_channel_leaves_its_filter_norm_and_readers():
  params, mask, groups = _two_layers()
  scores = channels.channel_scores(params, mask, groups, 'l1')
  # 3 of the 7 channels: the lowest are b's 1.5, 1.5 (the earlier first)
  # and a's 2.0.
  new = channels.prune_channels(scores, mask, groups, 0.4, 'global')
  assert np.asarray(new['bn_a']['scale']).tolist() == [False, True, True]
  assert np.asarray(new['bn_b']['scale']).tolist() == [True, False, True, False]
  np.testing.assert_array_equal(new['bn_a']['bias'], new['bn_a']['scale'])
  assert not np.asarray(new['a']['kernel'])[..., 0].any()
  assert np.asarray(new['a']['kernel'])[..., 1:].all()
  b = np.asarray(new['b']['kernel'])
  assert not b[:, :, 0, :].any()  # Reads a's removed channel.
  assert not b[..., [1, 3]].any()  # Its own removed filters.
  assert b[:, :, 1:, :][..., [0, 2]].all()
  fc = np.asarray(new['fc']['kernel'])
  assert fc[[0, 2]].all() and not fc[[1, 3]].any()


def test_ties_go_by_position_and_each_layer_keeps_its_best():
  params, mask, groups = _two_layers()
  flat = [jnp.ones(3), jnp.ones(4)]
  new = channels.prune_channels(flat, mask, groups, 0.99, 'global')
  # 7 of 7 would go; each layer keeps its best (the first of the ties).
  keeps = channels.kept_channels(new, groups)
  assert [np.asarray(k).tolist() for k in keeps] == [
      [True, False, False],
      [True, False, False, False],
  ]


@pytest.mark.parametrize('scope', ['global', 'layer'])
def test_exact_counts_over_rounds(scope):
  rng = np.random.default_rng(0)
  widths = (16, 24, 40)
  params, groups = {}, []
  for i, w in enumerate(widths):
    params[f'c{i}'] = {'kernel': rng.standard_normal((3, 3, 8, w))}
    params[f'n{i}'] = {'scale': rng.standard_normal(w), 'bias': np.zeros(w)}
    params[f'r{i}'] = {'kernel': rng.standard_normal((3, 3, w, 5))}
    groups.append(
        {
            'block': f'b{i}',
            'producer': (f'c{i}', 'kernel'),
            'norm': (f'n{i}',),
            'consumers': ((f'r{i}', 'kernel'),),
        }
    )
  mask = jax.tree.map(lambda p: np.ones(np.shape(p), bool), params)
  left = list(widths)
  for _ in range(4):
    scores = channels.channel_scores(params, mask, groups, 'l1')
    new = channels.prune_channels(scores, mask, groups, 0.3, scope)
    counts = [int(np.sum(k)) for k in channels.kept_channels(new, groups)]
    if scope == 'layer':
      left = [c - int(np.ceil(0.3 * c)) for c in left]
      assert counts == left
    else:
      total = sum(left)
      assert sum(counts) == total - int(np.ceil(0.3 * total))
      left = counts
    before = channels.kept_channels(mask, groups)
    for k, b in zip(channels.kept_channels(new, groups), before):
      assert not (np.asarray(k) & ~np.asarray(b)).any()
    mask = new
  assert channels.rounds_problem(widths, 0.3, 4, scope) is None
  assert 'loses its last' in channels.rounds_problem((2,), 0.5, 2, 'layer')
  assert 'fewer than the 2 layers' in channels.rounds_problem(
      (2, 2), 0.5, 2, 'global'
  )


@pytest.mark.parametrize('depth, per_block', [(10, 1), (50, 2)])
def test_resnet_groups_are_the_channels_inside_blocks(depth, per_block):
  model = models.resnet(depth, 10, width=0.125, cifar_stem=True)
  params = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  )['params']
  groups = models.channel_groups({'name': 'resnet_cifar'}, params)
  names = [g['producer'] for g in groups]
  assert len(groups) == per_block * sum(
      {10: (1, 1, 1, 1), 50: (3, 4, 6, 3)}[depth]
  )
  assert names[0] == ('layer1_0', 'conv1', 'kernel')
  for g in groups:
    produced = params
    for key in g['producer']:
      produced = produced[key]
    for consumer in g['consumers']:
      read = params
      for key in consumer:
        read = read[key]
      assert read.shape[-2] == produced.shape[-1]
  with pytest.raises(ValueError, match='defined for'):
    models.channel_groups({'name': 'vgg'}, params)


@pytest.mark.parametrize('depth', [10, 50])
def test_the_smaller_network_computes_what_the_masked_one_does(depth):
  config = {'name': 'resnet_cifar', 'depth': depth, 'width': 0.125}
  model = models.create_model(config, 10)
  x = np.random.default_rng(1).standard_normal((2, 8, 8, 3), np.float32)
  # Batch-norm statistics away from their initial values: a removed
  # channel's would show if it were left in.
  variables = random_variables(model, x.shape, statistics=True)
  params = variables['params']
  groups = models.channel_groups(config, params)
  mask = jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)
  for round_idx in range(2):
    scores = channels.random_scores(jax.random.key(round_idx), groups, mask)
    mask = channels.prune_channels(scores, mask, groups, 0.4, 'layer')
  masked = {
      'params': jax.tree.map(lambda p, m: p * m, params, mask),
      'batch_stats': variables['batch_stats'],
  }
  small, widths = slim.slim(
      jax.tree.map(np.asarray, masked), jax.tree.map(np.asarray, mask), groups
  )
  assert len(widths) == len({g['block'] for g in groups})
  small_model = models.create_model({**config, 'inner_widths': widths}, 10)
  forward = lambda m: jax.jit(lambda v: m.apply(v, x, train=False))
  full = forward(model)
  got, want = forward(small_model)(small), full(masked)
  assert np.all(np.isfinite(want)) and np.abs(want).max() > 0.1
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  # The mask matters: the dense network computes something else.
  assert np.abs(full(variables) - want).max() > 1e-2
  # And it is smaller.
  size = lambda t: sum(np.size(l) for l in jax.tree.leaves(t))
  assert size(small['params']) < size(params)


def test_bad_channel_configs_are_refused():
  config = config_lib.load('labels', 'quick')
  config.pruning.granularity = 'channel'
  validation.validate_config(config)
  config.pruning.channel_score = 'taylor'
  config.pruning.channel_scope = 'block'
  config.model.name = 'vgg'
  with pytest.raises(ValueError) as e:
    validation.validate_config(config)
  for message in ('channel_score', 'channel_scope', "not model.name='vgg'"):
    assert message in str(e.value)


def test_random_like_keeps_each_layers_channel_count():
  params, mask, groups = _two_layers()
  scores = channels.channel_scores(params, mask, groups, 'l1')
  reference = channels.prune_channels(scores, mask, groups, 0.4, 'global')
  drawn = [
      channels.random_like(jax.random.key(i), reference, groups)
      for i in range(8)
  ]
  want = [int(np.sum(k)) for k in channels.kept_channels(reference, groups)]
  for d in drawn:
    assert [int(np.sum(k)) for k in channels.kept_channels(d, groups)] == want
    # The channels' filters, norms and readers go together.
    keep = np.asarray(channels.kept_channels(d, groups)[0])
    assert not np.asarray(d['b']['kernel'])[:, :, ~keep, :].any()
  patterns = {
      tuple(np.asarray(channels.kept_channels(d, groups)[1]).tolist())
      for d in drawn
  }
  assert len(patterns) > 1
