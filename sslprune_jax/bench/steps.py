"""The train-step sections: masked and unmasked steps, FLOP/s, seeds.

Sections 1-2 (`section_step`), 3 (`section_flops`) and 7
(`section_seeds`).
"""

from __future__ import annotations

import jax

from sslprune_jax import parallel
from sslprune_jax import tasks
from sslprune_jax import train
from sslprune_jax.bench.convolutions import conv_profile
from sslprune_jax.bench.networks import _model
from sslprune_jax.bench.networks import _optimizer
from sslprune_jax.bench.networks import _pruned_variables
from sslprune_jax.bench.networks import get_spec
from sslprune_jax.bench.networks import random_batch
from sslprune_jax.bench.timing import _Cache
from sslprune_jax.bench.timing import _step_stats
from sslprune_jax.bench.timing import _Stepper
from sslprune_jax.bench.timing import _timed


def section_step(cache: _Cache, unmasked: bool) -> dict:
  """Sections 1 and 2: the masked (and unmasked) step of every model."""
  return {name: cache.step(name, unmasked) for name in cache.settings.models}


def section_flops(cache: _Cache) -> dict:
  """Section 3: achieved FLOP/s of the masked step against a matmul's.

  FLOPs are the per-device program's (see `compiled_flops`) and the peak
  is one device's, so the fraction compares one device with itself; the
  totals over the mesh are both `num_devices` times larger. The peak of
  `fraction_of_peak` is the best matmul timed between the model's step
  blocks (the same load, on a machine shared with other work);
  `fraction_of_best_peak` uses the best matmul of the whole run.
  """
  n = jax.device_count()
  out = {'models': {}}
  for name in cache.settings.models:
    step = cache.step(name)
    flops = step['flops_per_device']
    seconds = step['masked']['step_s']
    if flops is None:
      out['models'][name] = {
          'flops_per_device': None,
          'note': 'no cost analysis on this backend',
      }
      continue
    achieved = flops / seconds
    peak = step['peak_flops_per_s_per_device']
    out['models'][name] = {
        'flops_per_device': flops,
        'flops_per_step': flops * n,
        'flops_per_image': flops * n / step['network']['batch_size'],
        'flops_per_s_per_device': achieved,
        'flops_per_s': achieved * n,
        'peak_flops_per_s_per_device': peak,
        'fraction_of_peak': achieved / peak,
    }
  out['matmul_peak'] = cache.peak().result(cache.settings.matmul_repeats)
  peak = out['matmul_peak']['flops_per_s_per_device']
  for f in out['models'].values():
    if f.get('flops_per_device'):
      f['fraction_of_best_peak'] = f['flops_per_s_per_device'] / peak
  for name in ('resnet18', 'resnet18_small'):
    if name in cache.settings.models:
      step = cache.step(name)
      out[f'{name}_convs'] = conv_profile(
          step['network']['batch_size'] // n,
          peak,
          width=step['network']['model']['width'],
          xla_options=cache.settings.xla_options,
          conv_impl=step['network']['model']['conv_impl'],
      )
  return out


def section_seeds(cache: _Cache) -> dict:
  """Section 7: k seeds in one program, on the quick network.

  Each k > 1 is timed with both ways the step trains several seeds
  (`train.seed_batching_for`): 'vmap' and 'unroll'; 'auto' says which one
  runs do on this backend.
  """
  settings = cache.settings
  spec = get_spec('quick', settings)
  mesh = cache.mesh
  model, tx, task = _model(spec), _optimizer(spec), tasks.get_task('labels')
  auto = train.seed_batching_for('auto', mesh.devices.flat[0].platform)
  out = {'network': spec.describe(), 'auto': auto, 'by_seeds': {}}
  one = dict(cache.step('quick')['masked'])
  base = one['images_per_s']
  for k in settings.seeds:
    if k == 1:
      # The quick network's masked step: one seed, the usual program.
      out['by_seeds']['1'] = dict(
          one, images_per_s_per_seed=base, speedup_over_one_seed=1.0
      )
      continue
    states = []
    for i in range(k):
      variables, mask = _pruned_variables(
          spec, model, i, settings.fraction_pruned
      )
      states.append(
          train.create_train_state(
              model, variables, mask, tx, jax.random.PRNGKey(100 + i)
          )
      )
    by_batching = {}
    for batching in ('vmap', 'unroll'):
      step = train.make_train_step(
          task,
          mesh,
          num_seeds=k,
          seed_batching=batching,
          xla_options=settings.xla_options,
          conv_impl=model.conv_impl,
      )
      state = parallel.replicate(train.stack_trees(states), mesh)
      batch = parallel.shard_batch(
          random_batch(spec, num_seeds=k), mesh, num_seeds=k
      )
      stepper = _Stepper(step, state, batch)
      timed = _timed({'s': stepper}, settings)
      result = _step_stats(timed['s'], k * spec.batch_size, stepper.compile_s)
      result['steps_per_block'] = timed['steps_per_block']
      result['images_per_s_per_seed'] = result['images_per_s'] / k
      result['speedup_over_one_seed'] = result['images_per_s'] / base
      by_batching[batching] = result
      del stepper
    out['by_seeds'][str(k)] = by_batching
  return out
