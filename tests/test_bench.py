"""The benchmark command, on tiny settings: its JSON and its unmasked step.

Speed itself is not tested (see DESIGN.md): only that every section runs,
reports sane positive numbers and the targets, and that the mask-free step
the masked one is compared with computes the same update.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from sslprune_jax import bench
from sslprune_jax import kernels
from sslprune_jax import parallel
from sslprune_jax import pruning
from sslprune_jax import tasks
from sslprune_jax import train
from sslprune_jax import xla_options

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The quick network (ResNet-10 at width 1/4) at batch 8 everywhere.
TINY = dict(
    models=('quick',),
    quick_batch_size=8,
    steps=2,
    min_block_s=0.0,
    warmup=1,
    repeats=1,
    matmul_size=256,
    matmul_repeats=1,
    prune_model='quick',
    prune_repeats=1,
    seeds=(1, 2),
)


def _positive(x) -> bool:
  return isinstance(x, (int, float)) and x > 0 and np.isfinite(x)


def test_tiny_run_reports_every_section(num_devices):
  results = bench.run(
      bench.Settings(
          sections=('step', 'unmasked', 'flops', 'prune', 'seeds'), **TINY
      )
  )
  json.dumps(results)  # JSON-able as it is.
  env = results['environment']
  assert env['num_devices'] == num_devices
  assert env['backend'] == jax.default_backend()
  assert {'device_kind', 'jax_version'} <= set(env)

  step = results['step']['quick']
  assert step['network']['batch_size'] == 8
  assert step['steps_per_block'] == 2
  assert step['fraction_pruned'] == pytest.approx(0.8, abs=1e-3)
  for variant in ('masked', 'unmasked'):
    assert _positive(step[variant]['step_s'])
    assert step[variant]['images_per_s'] == pytest.approx(
        8 / step[variant]['step_s']
    )
  assert _positive(step['masked_over_unmasked'])

  flops = results['flops']
  assert _positive(flops['matmul_peak']['flops_per_s_per_device'])
  f = flops['models']['quick']
  assert _positive(f['flops_per_device'])
  assert f['flops_per_step'] == pytest.approx(
      f['flops_per_device'] * num_devices
  )
  assert _positive(f['fraction_of_peak'])

  prune = results['prune']
  assert prune['tree'] == 'quick'
  assert prune['remaining_after'] == prune['remaining_before'] - (
      pruning.num_to_prune(0.2, prune['remaining_before'])
  )
  assert _positive(prune['prune_s']) and _positive(prune['rewind_s'])

  seeds = results['seeds']
  assert seeds['auto'] == train.seed_batching_for('auto')
  assert set(seeds['by_seeds']) == {'1', '2'}
  assert _positive(seeds['by_seeds']['1']['images_per_s'])
  for batching in ('vmap', 'unroll'):
    s = seeds['by_seeds']['2'][batching]
    assert s['images_per_s'] == pytest.approx(16 / s['step_s'])
    assert s['images_per_s_per_seed'] == pytest.approx(s['images_per_s'] / 2)

  targets = results['targets']
  assert {'masked_over_unmasked_quick', 'prune_seconds'} <= set(targets)
  for t in targets.values():
    assert {'value', 'target', 'comparison', 'met'} <= set(t)
    assert isinstance(t['met'], bool)


def test_options_and_startup_sections(num_devices, data_dir):
  results = bench.run(
      bench.Settings(sections=('options', 'startup'), data_dir=data_dir, **TINY)
  )
  json.dumps(results)
  options = results['options']
  assert options['auto'] == xla_options.preset_for(
      'auto', jax.default_backend(), kernels.resolve_conv_impl('auto')
  )
  assert 'none' in options['presets'] and options['auto'] in (
      options['presets']
  )
  by = options['models']['quick']
  for preset in options['presets']:
    assert by[preset]['images_per_s'] == pytest.approx(8 / by[preset]['step_s'])
  assert by['none']['speedup_over_none'] == 1.0
  startup = results['startup']
  for key in (
      'build_s',
      'first_state_s',
      'train_step_compile_s',
      'eval_step_compile_s',
      'finished_run_s',
      'to_first_step_s',
  ):
    assert _positive(startup[key]), key
  assert 'startup quick' in bench.summary(results)


def test_kernels_section_and_the_flops_of_custom_calls(num_devices):
  """Each convolution implementation timed; a step whose convolutions are
  oneDNN's custom calls is counted the FLOPs of the same step with XLA's."""
  if kernels.check_conv_impl('onednn') is not None:
    pytest.skip(kernels.check_conv_impl('onednn'))
  results = bench.run(
      bench.Settings(sections=('kernels', 'flops'), conv_impl='onednn', **TINY)
  )
  json.dumps(results)
  section = results['kernels']
  assert section['impls'] == ['xla', 'onednn']
  assert section['auto'] == 'onednn'
  by = section['models']['quick']
  assert by['xla']['speedup_over_xla'] == 1.0
  assert by['onednn']['speedup_over_xla'] == pytest.approx(
      by['xla']['step_s'] / by['onednn']['step_s']
  )
  assert 'kernels quick' in bench.summary(results)
  assert results['step']['quick']['network']['model']['conv_impl'] == ('onednn')
  # With the same compiler options (XLA's defaults, which 'auto' gives
  # oneDNN's steps): YNNPACK's fusions count a few elementwise FLOPs apart.
  xla = bench.run(
      bench.Settings(
          sections=('flops',), conv_impl='xla', xla_options='none', **TINY
      )
  )
  assert results['flops']['models']['quick']['flops_per_device'] == (
      pytest.approx(
          xla['flops']['models']['quick']['flops_per_device'], rel=1e-6
      )
  )


def test_unmasked_step_matches_masked_step_under_a_full_mask():
  spec = bench.get_spec('quick', bench.Settings(**TINY))
  mesh = parallel.create_mesh()
  model, tx = bench._model(spec), bench._optimizer(spec)  # pylint: disable=protected-access
  task = tasks.get_task('labels')
  # Nothing pruned: the mask keeps every weight.
  variables, mask = bench._pruned_variables(spec, model, 0, 0.0)  # pylint: disable=protected-access
  assert all(np.asarray(m).all() for m in jax.tree.leaves(mask))
  rng = jax.random.PRNGKey(1)
  batch = parallel.shard_batch(bench.random_batch(spec), mesh)
  masked = parallel.replicate(
      train.create_train_state(model, variables, mask, tx, rng), mesh
  )
  unmasked = parallel.replicate(
      bench.create_unmasked_state(model, variables, tx, rng), mesh
  )
  masked_step = train.make_train_step(task, mesh)
  unmasked_step = train.make_train_step(task, mesh)
  for _ in range(2):
    masked, m_metrics = masked_step(masked, batch)
    unmasked, u_metrics = unmasked_step(unmasked, batch)
  assert unmasked.mask == {}
  for name in ('params', 'batch_stats', 'opt_state'):
    for a, b in zip(
        jax.tree.leaves(getattr(masked, name)),
        jax.tree.leaves(getattr(unmasked, name)),
    ):
      np.testing.assert_allclose(
          np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6
      )
  for k, v in m_metrics.compute().items():
    np.testing.assert_allclose(
        float(v), float(u_metrics.compute()[k]), rtol=1e-5
    )


def test_command_prints_one_json_line_then_the_summary(tmp_path):
  out = tmp_path / 'bench.json'
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'sslprune_jax.bench',
          '--sections=4',
          '--prune_model=quick',
          '--prune_repeats=1',
          f'--json_out={out}',
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
      env={
          **os.environ,
          'PYTHONPATH': os.pathsep.join(
              [str(ROOT), *filter(None, [os.environ.get('PYTHONPATH')])]
          ),
      },
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  assert len(lines) == 1
  results = json.loads(lines[0])
  assert results == json.loads(out.read_text())
  assert results['targets']['prune_seconds']['met'] in (True, False)
  assert 'prune quick' in proc.stderr
  with pytest.raises(ValueError, match='Unknown section'):
    bench.parse_sections(['nope'])
  assert bench.parse_sections(['1', 'seeds']) == ('step', 'seeds')


def test_conv_profile_counts_every_stage():
  profile = bench.conv_profile(batch_size=2, peak=1e9, repeats=1)
  assert list(profile) == ['32x32x64', '16x16x128', '8x8x256', '4x4x512']
  row = profile['8x8x256']
  assert row['flops'] == 2 * 2 * 8 * 8 * 9 * 256 * 256
  for name in ('forward', 'input_grad', 'weight_grad'):
    assert _positive(row[f'{name}_flops_per_s'])
    assert row[f'{name}_fraction_of_peak'] == pytest.approx(
        row[f'{name}_flops_per_s'] / 1e9
    )


class _FakeTorchStep:
  """Stands in for PyTorch's step where PyTorch is not installed: each
  step takes 1 ms with glibc's malloc defaults, 0.5 ms with 'retain'."""

  def __init__(self, *args, host_malloc, **kwargs):
    del args, kwargs
    self.seconds = 1e-3 if host_malloc == 'system' else 5e-4
    self.compile_s = 0.1

  def run(self, n):
    return n * self.seconds

  def version(self):
    return 'fake'

  def close(self):
    pass


def test_pytorch_section_compares_with_the_faster_pytorch(monkeypatch):
  from sslprune_jax.bench import torch_side as bench_torch

  monkeypatch.setattr(bench_torch, 'available', lambda: None)
  monkeypatch.setattr(bench_torch, 'Remote', _FakeTorchStep)
  results = bench.run(bench.Settings(sections=('pytorch',), **TINY))
  json.dumps(results)
  row = results['pytorch']['models']['quick']
  assert row['pytorch_system']['step_s'] == pytest.approx(1e-3)
  assert row['pytorch_retain']['step_s'] == pytest.approx(5e-4)
  assert row['jax_over_pytorch'] == pytest.approx(5e-4 / row['jax']['step_s'])
  target = results['targets']['jax_over_pytorch_quick']
  assert target['value'] == row['jax_over_pytorch']
  assert target['met'] == (row['jax_over_pytorch'] >= 1.0)
  assert 'pytorch quick: jax' in bench.summary(results)


def test_pytorch_section_without_pytorch(monkeypatch):
  from sslprune_jax.bench import torch_side as bench_torch

  monkeypatch.setattr(bench_torch, 'available', lambda: 'no torch here')
  results = bench.run(bench.Settings(sections=('pytorch',), **TINY))
  assert results['pytorch'] == {'skipped': 'no torch here'}
  assert not any(k.startswith('jax_over_pytorch') for k in results['targets'])
  assert 'pytorch: skipped (no torch here)' in bench.summary(results)


def test_pytorch_network_is_the_projects(num_devices):
  """The yardstick trains the same network: as many parameters as the
  project's, and the real step runs through the pipe."""
  from sslprune_jax import bench_torch

  if bench_torch.available():
    pytest.skip(bench_torch.available())
  spec = bench.get_spec('quick', bench.Settings(**TINY))
  model = bench._model(spec)
  variables = bench._pruned_variables(spec, model, 0, 0.0)[0]
  args = (
      model.stage_sizes,
      [bench.scale_width(w, model.width) for w in bench.BASE_WIDTHS],
      spec.image_shape,
      spec.num_classes,
      spec.batch_size,
      spec.config.train,
      0.8,
  )
  local = bench_torch.Stepper(*args)
  assert sum(p.numel() for p in local.model.parameters()) == sum(
      np.size(x) for x in jax.tree.leaves(variables['params'])
  )
  remote = bench_torch.Remote(*args)
  try:
    assert remote.run(2) > 0
  finally:
    remote.close()


def test_dtype_setting_reaches_the_networks():
  spec = bench.get_spec('quick', bench.Settings(dtype='bfloat16', **TINY))
  assert spec.model['dtype'] == 'bfloat16'
  # oneDNN's kernel is float32 only: 'auto' gives XLA's convolutions.
  assert spec.model['conv_impl'] == 'xla'
  assert bench._model(spec).dtype == jax.numpy.bfloat16


def test_structured_section_times_the_smaller_networks():
  results = bench.run(bench.Settings(sections=('structured',), **TINY))
  row = results['structured']['quick']
  assert _positive(row['dense']['forward_s'])
  lefts = [r['channels_left'] for r in row['rounds'].values()]
  assert len(lefts) == 4 and lefts == sorted(lefts, reverse=True)
  assert all(0 < left < 1 for left in lefts)
  for r in row['rounds'].values():
    assert 0 < r['weights_left'] < 1
    assert r['speedup_over_dense'] == pytest.approx(
        row['dense']['forward_s'] / r['forward_s']
    )
  assert 'structured quick' in bench.summary(results)
