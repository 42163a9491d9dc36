"""sslprune_jax.pretrained: the runs comparing IMP from a network
pre-trained on classes 0-4 with IMP from scratch, on classes 5-9."""

import pytest

from sslprune_jax import pretrained
from sslprune_jax import validation


@pytest.mark.parametrize('objective', ['labels', 'rotnet'])
def test_curves_pair_each_granularity_from_scratch_and_pre_trained(objective):
  runs = pretrained.curves('/w', 2, objective)
  assert list(runs) == ['pretrain'] + [
      f'{g}, {s}' for g in pretrained.GRANULARITIES for s in pretrained.STARTS
  ]
  for seed, (config, workdir) in enumerate(runs['pretrain']):
    assert config.task.name == objective and config.seed == seed
    assert config.pruning.num_rounds == 0
    assert tuple(config.data.classes) == pretrained.PRETRAIN_CLASSES
    assert workdir == f'/w/seed_{seed}/pretrain_{objective}'
    validation.validate_config(config)
  for granularity in pretrained.GRANULARITIES:
    scratch = runs[f'{granularity}, from scratch']
    warm = runs[f'{granularity}, pre-trained']
    for seed in range(2):
      for (config, _), source in [
          (scratch[seed], ''),
          (warm[seed], runs['pretrain'][seed][1]),
      ]:
        assert config.init_from.workdir == source
        assert config.pruning.granularity == granularity
        assert tuple(config.data.classes) == pretrained.PRUNE_CLASSES
        assert config.task.name == 'labels' and config.seed == seed
        validation.validate_config(config)
      # The two starts differ in nothing else.
      a, b = scratch[seed][0].to_dict(), warm[seed][0].to_dict()
      a['init_from'] = b['init_from'] = None
      assert a == b
  assert len({d for r in runs.values() for _, d in r}) == 14


def test_bad_objective_is_refused():
  with pytest.raises(ValueError, match='Unknown objective'):
    pretrained.curves('/w', 1, 'jigsaw')


def test_channel_rounds_keep_a_channel_in_every_layer():
  import jax
  import jax.numpy as jnp

  from sslprune_jax import models
  from sslprune_jax.pruning import channels

  config = pretrained.prune_config('channel', 0)
  model = models.create_model(config.model, 5)
  params = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  )['params']
  widths = [
      params[g['producer'][0]][g['producer'][1]]['kernel'].shape[-1]
      for g in models.channel_groups(config.model, params)
  ]
  p = config.pruning
  assert (
      channels.rounds_problem(widths, p.fraction, p.num_rounds, 'global')
      is None
  )
  assert channels.rounds_problem(widths, 0.6, 5, 'global') is not None


@pytest.mark.parametrize('granularity', ['nm', 'channel'])
def test_figure3_at_a_granularity_prunes_and_draws_random_masks_in_it(
    granularity,
):
  from sslprune_jax import figure3

  runs = figure3.curves('/w', 2, granularity)
  random = {'nm': 'random n:m', 'channel': 'random channels'}[granularity]
  assert list(runs) == [
      'prune labels',
      'prune rotnet',
      'labels, winning ticket',
      'labels, reinit',
      'rotnet, winning ticket',
      'rotnet, reinit',
      f'{random}, winning ticket',
      f'{random}, reinit',
  ]
  settings = figure3.GRANULARITIES[granularity]
  for name, seeds in runs.items():
    for seed, (config, workdir) in enumerate(seeds):
      assert workdir.startswith(f'/w/{granularity}/seed_{seed}/')
      assert config.seed == seed
      validation.validate_config(config)
      if name.startswith('prune '):
        assert config.pruning.granularity == granularity
        for key, value in settings.items():
          assert config[key.split('.')[0]][key.split('.')[1]] == value
      elif name.startswith('random'):
        assert config.source.mask == 'random_like'
        assert config.source.workdir == runs['prune labels'][seed][1]
      else:
        source = name.split(',')[0]
        assert config.source.mask == 'source'
        assert config.source.workdir == runs[f'prune {source}'][seed][1]
  assert ':' not in ''.join(d for r in runs.values() for _, d in r)
  # The unstructured layout is unchanged.
  assert figure3.curves('/w', 1)['random per-layer, reinit'][0][1] == (
      '/w/seed_0/retrain_random_per-layer_reinit'
  )


def test_figure3_refuses_an_unknown_granularity():
  from sslprune_jax import figure3

  with pytest.raises(ValueError, match='Unknown granularity'):
    figure3.curves('/w', 1, 'block')
