"""The whole benchmark: running the sections, the targets, the summary."""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import time
from typing import Any, Callable

import flax
import jax
import numpy as np

from sslprune_jax import data
from sslprune_jax import host_memory
from sslprune_jax.bench.pipeline import section_pipeline
from sslprune_jax.bench.rounds import section_prune
from sslprune_jax.bench.rounds import section_round
from sslprune_jax.bench.rounds import section_startup
from sslprune_jax.bench.settings import NETWORKS
from sslprune_jax.bench.settings import parse_sections
from sslprune_jax.bench.settings import Settings
from sslprune_jax.bench.settings import TARGETS
from sslprune_jax.bench.steps import section_flops
from sslprune_jax.bench.steps import section_seeds
from sslprune_jax.bench.steps import section_step
from sslprune_jax.bench.structured import section_structured
from sslprune_jax.bench.timing import _Cache
from sslprune_jax.bench.variants import section_options
from sslprune_jax.bench.variants import section_kernels
from sslprune_jax.bench.variants import section_pytorch


def environment() -> dict:
  devices = jax.devices()
  return {
      'backend': jax.default_backend(),
      'device_kind': devices[0].device_kind,
      'num_devices': len(devices),
      'num_processes': jax.process_count(),
      'jax_version': jax.__version__,
      'flax_version': flax.__version__,
      'python': platform.python_version(),
      'host_cpus': os.cpu_count(),
      'host_malloc': host_memory.applied(),
  }


def _target(value: float | None, key: str, **extra) -> dict:
  comparison, target = TARGETS[key]
  met = None
  if value is not None:
    met = value >= target if comparison == '>=' else value <= target
  return {
      'value': value,
      'target': target,
      'comparison': comparison,
      'met': met,
      **extra,
  }


def targets_of(results: dict) -> dict:
  """Every project target the results say something about."""
  out = {}
  for name, step in results.get('step', {}).items():
    if 'masked_over_unmasked' in step:
      out[f'masked_over_unmasked_{name}'] = _target(
          step['masked_over_unmasked'], 'masked_over_unmasked'
      )
  flops = results.get('flops', {}).get('models', {})
  for name in ('resnet18', 'resnet18_small', 'quick'):
    if name in flops:
      out[f'fraction_of_peak_{name}'] = _target(
          flops[name].get('fraction_of_peak'), f'fraction_of_peak_{name}'
      )
  if 'prune' in results:
    out['prune_seconds'] = _target(
        results['prune']['prune_s'],
        'prune_seconds',
        tree=results['prune']['tree'],
        note='the target is for a ResNet-50 tree on a 2-core CPU',
    )
  if 'overhead_fraction' in results.get('round', {}):
    out['round_overhead_fraction'] = _target(
        results['round']['overhead_fraction'], 'round_overhead_fraction'
    )
  for name, row in results.get('pytorch', {}).get('models', {}).items():
    if 'jax_over_pytorch' in row:
      out[f'jax_over_pytorch_{name}'] = _target(
          row['jax_over_pytorch'], 'jax_over_pytorch'
      )
  for name, result in results.get('pipeline', {}).items():
    if isinstance(result, dict) and 'pipeline_over_step' in result:
      out[f'pipeline_over_step_{name}'] = _target(
          result['pipeline_over_step'], 'pipeline_over_step'
      )
  return out


def run(settings: Settings) -> dict:
  """Runs the selected sections; returns the JSON-able results."""
  sections = parse_sections(settings.sections)
  for name in (*settings.models, settings.prune_model):
    if name not in NETWORKS:
      raise ValueError(f'Unknown network {name!r}; valid: {NETWORKS}.')
  if not 0 <= settings.fraction_pruned < 1:
    raise ValueError(
        'fraction_pruned must be in [0, 1), got ' f'{settings.fraction_pruned}.'
    )
  if settings.steps < 1:
    raise ValueError(f'steps must be >= 1, got {settings.steps}.')
  t0 = time.perf_counter()
  cache = _Cache(settings)
  results: dict[str, Any] = {
      'environment': environment(),
      'settings': _jsonable(dataclasses.asdict(settings)),
  }
  if 'step' in sections or 'unmasked' in sections:
    results['step'] = section_step(cache, 'unmasked' in sections)
  if 'flops' in sections:
    results['flops'] = section_flops(cache)
  if 'prune' in sections:
    # It clears JAX's caches: steps measured later compile again.
    results['prune'] = section_prune(settings)
  if 'pipeline' in sections:
    results['pipeline'] = _unless_no_data(section_pipeline, cache)
  if 'seeds' in sections:
    results['seeds'] = section_seeds(cache)
  if 'options' in sections:
    results['options'] = section_options(cache)
  if 'round' in sections:
    # Near the end: it clears JAX's caches.
    results['round'] = _unless_no_data(section_round, cache)
  if 'startup' in sections:
    results['startup'] = _unless_no_data(section_startup, cache)
  if 'kernels' in sections:
    results['kernels'] = section_kernels(cache)
  if 'pytorch' in sections:
    results['pytorch'] = section_pytorch(cache)
  if 'structured' in sections:
    results['structured'] = section_structured(cache)
  if 'quick' in cache.steps and 'quick' not in results.get('step', {}):
    results.setdefault('step', {})['quick'] = cache.steps['quick']
  results['targets'] = targets_of(results)
  results['seconds'] = time.perf_counter() - t0
  return _jsonable(results)


def _unless_no_data(section: Callable[[_Cache], dict], cache: _Cache) -> dict:
  """The section's results, or why it could not run without the data."""
  try:
    return section(cache)
  except data.DatasetNotFoundError as e:
    return {'available': False, 'reason': str(e)}


def _jsonable(tree):
  if isinstance(tree, dict):
    return {str(k): _jsonable(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_jsonable(v) for v in tree]
  if isinstance(tree, (np.integer,)):
    return int(tree)
  if isinstance(tree, (np.floating, float)):
    return None if not math.isfinite(float(tree)) else float(tree)
  return tree


def _variants_line(
    section: str, name: str, by: dict, variants, baseline: str, auto: str
) -> str:
  """One network's row of a `_time_variants` section."""
  return (
      f'  {section} {name}: '
      + ', '.join(
          f"{v} {by[v]['images_per_s']:.1f} img/s "
          f"({by[v][f'speedup_over_{baseline}']:.2f} x)"
          for v in variants
      )
      + f' (auto: {auto})'
  )


def summary(results: dict) -> str:
  """A readable table of the headline numbers."""
  lines = [
      f"{results['environment']['device_kind']} x "
      f"{results['environment']['num_devices']} "
      f"({results['environment']['backend']}, jax "
      f"{results['environment']['jax_version']})"
  ]
  for name, step in results.get('step', {}).items():
    line = (
        f"  step {name:<15} batch {step['network']['batch_size']:>4} "
        f"masked {step['masked']['step_s'] * 1e3:9.1f} ms "
        f"{step['masked']['images_per_s']:9.1f} img/s"
    )
    if 'unmasked' in step:
      line += (
          f" | unmasked {step['unmasked']['images_per_s']:9.1f} img/s"
          f" ratio {step['masked_over_unmasked']:.3f}"
      )
    lines.append(line)
  flops = results.get('flops')
  if flops:
    lines.append(
        f'  matmul peak '
        f"{flops['matmul_peak']['flops_per_s_per_device'] / 1e9:.1f}"
        ' GFLOP/s per device'
    )
    for name, f in flops['models'].items():
      if f.get('flops_per_device'):
        lines.append(
            f'  flops {name:<14} '
            f"{f['flops_per_s_per_device'] / 1e9:8.1f} GFLOP/s per "
            f"device, {f['fraction_of_peak']:.2f} of peak"
        )
    for model in ('resnet18', 'resnet18_small'):
      for shape, c in flops.get(f'{model}_convs', {}).items():
        lines.append(
            f'    {model} conv {shape:<12} of peak: '
            + ', '.join(
                f"{name} {c[f'{name}_fraction_of_peak']:.2f}"
                for name in ('forward', 'input_grad', 'weight_grad')
            )
        )
  if 'prune' in results:
    p = results['prune']
    lines.append(
        f"  prune {p['tree']} ({p['num_prunable']} prunable): "
        f"{p['prune_s']:.3f} s, rewind {p['rewind_s']:.3f} s"
    )
  if 'overhead_fraction' in results.get('round', {}):
    r = results['round']
    lines.append(
        f"  round: {r['round_s']:.1f} s, overhead "
        f"{r['overhead_s']:.3f} s = "
        f"{100 * r['overhead_fraction']:.2f}%"
    )
  for name, p in results.get('pipeline', {}).items():
    if not isinstance(p, dict) or 'pipeline_over_step' not in p:
      continue
    lines.append(
        f"  pipeline {name}: {p['images_per_s']:.0f} img/s = "
        f"{p['pipeline_over_step']:.1f} x the {p['step']} step"
    )
  for name in ('round', 'pipeline'):
    if results.get(name, {}).get('available') is False:
      lines.append(f"  {name}: unavailable ({results[name]['reason']})")
  seeds = results.get('seeds')
  if seeds:
    for k, by in seeds['by_seeds'].items():
      if k == '1':
        lines.append(f"  seeds 1: {by['images_per_s']:.1f} img/s")
        continue
      lines.append(
          f'  seeds {k}: '
          + ', '.join(
              f"{name} {r['images_per_s']:.1f} img/s "
              f"({r['speedup_over_one_seed']:.2f} x one seed)"
              for name, r in by.items()
          )
          + f" (auto: {seeds['auto']})"
      )
  options = results.get('options')
  if options:
    for name, by in options['models'].items():
      lines.append(
          _variants_line(
              'options', name, by, options['presets'], 'none', options['auto']
          )
      )
    for shape, row in options['conv_forms_fraction_of_peak'].items():
      lines.append(
          f'    conv {shape:<10} fwd+bwd of peak: '
          + ', '.join(f'{form} {v:.2f}' for form, v in row.items())
      )
  startup = results.get('startup')
  if startup and 'build_s' in startup:
    lines.append(
        f"  startup quick: build {startup['build_s']:.1f} s, first state "
        f"{startup['first_state_s']:.1f} s, train step compile "
        f"{startup['train_step_compile_s']:.1f} s, eval step compile "
        f"{startup['eval_step_compile_s']:.1f} s; a finished run "
        f"{startup['finished_run_s']:.1f} s"
    )
  kernel_rows = results.get('kernels')
  if kernel_rows:
    for name, by in kernel_rows['models'].items():
      lines.append(
          _variants_line(
              'kernels',
              name,
              by,
              kernel_rows['impls'],
              'xla',
              kernel_rows['auto'],
          )
      )
  torch_rows = results.get('pytorch')
  if torch_rows and 'skipped' in torch_rows:
    lines.append(f"  pytorch: skipped ({torch_rows['skipped']})")
  for name, row in (torch_rows or {}).get('models', {}).items():
    if 'skipped' in row:
      continue
    lines.append(
        f"  pytorch {name}: jax {row['jax']['images_per_s']:.1f} "
        f"img/s; pytorch {torch_rows['torch_version']} "
        f"{row['pytorch_system']['images_per_s']:.1f} img/s, with "
        f"malloc 'retain' {row['pytorch_retain']['images_per_s']:.1f}"
        f" img/s; jax / fastest {row['jax_over_pytorch']:.2f}"
    )
  for name, row in results.get('structured', {}).items():
    lines.append(
        f"  structured {name}: dense {row['dense']['images_per_s']:.1f} "
        'img/s; channels left / speedup: '
        + ', '.join(
            f"{100 * r['channels_left']:.0f}% {r['speedup_over_dense']:.2f}x"
            for r in row['rounds'].values()
        )
    )
  lines.append('  targets:')
  for name, t in results['targets'].items():
    value = 'n/a' if t['value'] is None else f"{t['value']:.4g}"
    met = {True: 'met', False: 'NOT met', None: 'n/a'}[t['met']]
    lines.append(
        f"    {name:<40} {value:>10} {t['comparison']} "
        f"{t['target']:<6} {met}"
    )
  lines.append(f"  total {results['seconds']:.0f} s")
  return '\n'.join(lines)
