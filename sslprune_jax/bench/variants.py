"""The sections comparing builds of the masked step in alternating blocks.

Compiler options (section 8), convolution implementations (10) and
PyTorch's step (11).
"""

from __future__ import annotations

from typing import Any, Callable

import jax

from sslprune_jax import host_memory
from sslprune_jax import kernels
from sslprune_jax import models
from sslprune_jax import parallel
from sslprune_jax import tasks
from sslprune_jax import train
from sslprune_jax import xla_options as xla_options_lib
from sslprune_jax.bench import torch_side
from sslprune_jax.bench.convolutions import conv_forms
from sslprune_jax.bench.networks import _model
from sslprune_jax.bench.networks import _optimizer
from sslprune_jax.bench.networks import _pruned_variables
from sslprune_jax.bench.networks import get_spec
from sslprune_jax.bench.networks import random_batch
from sslprune_jax.bench.timing import _Cache
from sslprune_jax.bench.timing import _masked_stepper
from sslprune_jax.bench.timing import _step_stats
from sslprune_jax.bench.timing import _Stepper
from sslprune_jax.bench.timing import _timed
from sslprune_jax.models.resnet import BASE_WIDTHS
from sslprune_jax.models.resnet import scale_width


def section_options(cache: _Cache) -> dict:
  """Section 8: the masked step under each preset of compiler options.

  Per model, one program per `xla_options.PRESETS` entry that applies to
  this platform, all from the same state and batch, timed in alternating
  blocks (so that the machine's load falls on each alike).
  """
  settings, mesh = cache.settings, cache.mesh
  platform = mesh.devices.flat[0].platform
  presets = xla_options_lib.presets_for(platform)
  conv_impl = kernels.resolve_conv_impl(settings.conv_impl)
  out = {
      'platform': platform,
      'presets': list(presets),
      'conv_impl': conv_impl,
      'auto': xla_options_lib.preset_for('auto', platform, conv_impl),
      'models': {},
  }
  task = tasks.get_task('labels')
  for name in settings.models:
    out['models'][name] = _time_variants(
        cache,
        name,
        'none',
        {
            preset: lambda model, state, preset=preset: (
                train.make_train_step(
                    task, mesh, xla_options=preset, conv_impl=model.conv_impl
                ),
                state,
            )
            for preset in presets
        },
    )
  batch = get_spec('resnet18', settings).batch_size // jax.device_count()
  out['conv_forms_fraction_of_peak'] = conv_forms(
      batch,
      ((32, 16), (32, 64), (16, 128)),
      cache.peak().result(settings.matmul_repeats)['flops_per_s_per_device'],
      settings.xla_options,
  )
  return out


def section_kernels(cache: _Cache) -> dict:
  """Section 10: the masked step with each convolution implementation.

  Per model, one program per implementation this platform can run
  (`kernels.CONV_IMPLS` less 'auto'), from the same state and batch, timed
  in alternating blocks.
  """
  settings, mesh = cache.settings, cache.mesh
  impls = [
      impl
      for impl in kernels.CONV_IMPLS[1:]
      if kernels.check_conv_impl(impl) is None
  ]
  out = {
      'impls': impls,
      'auto': kernels.resolve_conv_impl('auto'),
      'unavailable': {
          impl: kernels.check_conv_impl(impl)
          for impl in kernels.CONV_IMPLS[1:]
          if impl not in impls
      },
      'models': {},
  }
  task = tasks.get_task('labels')
  for name in settings.models:
    out['models'][name] = _time_variants(
        cache,
        name,
        'xla',
        {
            impl: lambda model, state, impl=impl: (
                train.make_train_step(
                    task, mesh, xla_options=settings.xla_options, conv_impl=impl
                ),
                state.replace(apply_fn=model.clone(conv_impl=impl).apply),
            )
            for impl in impls
        },
    )
  return out


def section_pytorch(cache: _Cache) -> dict:
  """Section 11: the masked step against PyTorch's (`torch_side`).

  Per BasicBlock CIFAR network among the models (the others are skipped),
  the project's masked step as training builds it and PyTorch's, timed in
  alternating blocks. PyTorch runs twice: as installed ('pytorch_system',
  glibc's malloc defaults) and with the project's malloc policy
  ('pytorch_retain', `host_memory`), which speeds it up too.
  'jax_over_pytorch' is the project's images/s over the faster of the two.
  Without PyTorch installed the section says so.
  """
  why = torch_side.available()
  if why:
    return {'skipped': why}
  settings = cache.settings
  out: dict[str, Any] = {'models': {}}
  for name in settings.models:
    spec = get_spec(name, settings)
    model = _model(spec)
    if not (
        isinstance(model, models.ResNet)
        and model.cifar_stem
        and model.block_cls is models.BasicBlock
    ):
      out['models'][name] = {'skipped': 'not a BasicBlock CIFAR ResNet'}
      continue
    masked = _masked_stepper(spec, settings, cache.mesh)[0]
    torch_steps = {
        f'pytorch_{policy}': torch_side.Remote(
            model.stage_sizes,
            [scale_width(w, model.width) for w in BASE_WIDTHS],
            spec.image_shape,
            spec.num_classes,
            spec.batch_size,
            spec.config.train,
            settings.fraction_pruned,
            host_malloc=policy,
        )
        for policy in host_memory.POLICIES
    }
    out['torch_version'] = torch_steps['pytorch_system'].version()
    blocks = _timed({'jax': masked, **torch_steps}, settings)
    row = {
        'network': spec.describe(),
        'steps_per_block': blocks['steps_per_block'],
        'jax': _step_stats(blocks['jax'], spec.batch_size, masked.compile_s),
    }
    for variant, torch_step in torch_steps.items():
      row[variant] = _step_stats(
          blocks[variant], spec.batch_size, torch_step.compile_s
      )
      torch_step.close()
    row['jax_over_pytorch'] = min(row[v]['step_s'] for v in torch_steps) / (
        row['jax']['step_s']
    )
    out['models'][name] = row
    del masked
  return out


def _time_variants(
    cache: _Cache, name: str, baseline: str, variants: dict[str, Callable]
) -> dict:
  """The masked step of network `name` built several ways, timed in
  alternating blocks (so that the machine's load falls on each alike).

  Args:
    cache: the run's shared settings and mesh.
    name: the network.
    baseline: the variant the others' speedups are over.
    variants: per name, (model, state) -> (step, state): how that variant
      builds its step and state from the network's model and a fresh state
      (the same mask and batch for all).

  Returns:
    {'network', 'steps_per_block', variant: {step_s, images_per_s, ...,
     'speedup_over_<baseline>'}}.
  """
  settings, mesh = cache.settings, cache.mesh
  spec = get_spec(name, settings)
  model = _model(spec)
  variables, mask = _pruned_variables(spec, model, 0, settings.fraction_pruned)
  batch = parallel.shard_batch(random_batch(spec), mesh)
  state = train.create_train_state(
      model, variables, mask, _optimizer(spec), jax.random.PRNGKey(1)
  )
  steppers = {}
  for variant, build in variants.items():
    step, start = build(model, state)
    steppers[variant] = _Stepper(step, parallel.replicate(start, mesh), batch)
  blocks = _timed(steppers, settings)
  rows = {
      variant: _step_stats(blocks[variant], spec.batch_size, s.compile_s)
      for variant, s in steppers.items()
  }
  for row in rows.values():
    row[f'speedup_over_{baseline}'] = rows[baseline]['step_s'] / row['step_s']
  return {
      'network': spec.describe(),
      'steps_per_block': blocks['steps_per_block'],
      **rows,
  }
