"""The train step's per-backend compiler options change its speed only.

The same step compiled with XLA's defaults and with the CPU's measured
options (`xla_options.AUTO`) computes the same thing to float rounding, and
a short pruning run with the platform's choices ('auto' options and
convolutions) picks the same masks as one with XLA's defaults and
convolutions, but for weights tied with the pruning threshold to within the
runs' rounding.
"""

import json

import jax
import ml_collections
import numpy as np
import optax
import pytest

from sslprune_jax import checkpoint
from sslprune_jax import models
from sslprune_jax import parallel
from sslprune_jax import pruning
from sslprune_jax import tasks
from sslprune_jax import train
from sslprune_jax import xla_options

from test_imp import tiny_config
from test_train import init_variables


def test_auto_is_measured_per_platform():
  assert xla_options.preset_for('auto', 'cpu') == 'cpu_ynn'
  assert xla_options.preset_for('auto', 'gpu') == 'none'
  assert xla_options.preset_for('auto', 'tpu') == 'none'
  assert xla_options.compiler_options('none', 'cpu') is None
  assert xla_options.compiler_options('auto', 'gpu') is None
  assert xla_options.compiler_options('auto', 'cpu') == (
      xla_options.PRESETS['cpu_ynn']
  )


@pytest.mark.parametrize(
    'choice,platform,message',
    [
        ('fastest', 'cpu', 'Unknown train.xla_options'),
        ('cpu_ynn', 'gpu', 'is for the CPU'),
    ],
)
def test_bad_choice_is_refused(choice, platform, message):
  with pytest.raises(ValueError, match=message):
    xla_options.compiler_options(choice, platform)


def _state_and_batches(num_batches=3):
  model = models.create_model(
      dict(name='resnet_cifar', depth=10, width=0.125, bn_scale_init='uniform'),
      10,
  )
  variables = init_variables(model, jax.random.PRNGKey(0), (28, 28, 1))
  params = variables['params']
  mask = pruning.magnitude_prune(
      params, pruning.init_mask(params), pruning.prunable_tree(params), 0.5
  )
  tx = train.create_optimizer(
      ml_collections.ConfigDict(
          dict(momentum=0.9, nesterov=False, weight_decay=5e-4)
      ),
      optax.constant_schedule(0.1),
  )
  state = train.create_train_state(
      model, variables, mask, tx, jax.random.PRNGKey(1)
  )
  rng = np.random.default_rng(0)
  batches = [
      {
          'image': rng.normal(size=(64, 28, 28, 1)).astype(np.float32),
          'label': rng.integers(0, 10, size=64).astype(np.int32),
      }
      for _ in range(num_batches)
  ]
  return state, batches


def one_step_each(step, state, sharded_batches, mesh) -> list:
  """(params and batch stats, metrics) of one step from `state` on each
  batch (the step donates its state: a fresh copy each time)."""
  out = []
  for b in sharded_batches:
    after, metrics = step(parallel.replicate(state, mesh), b)
    out.append(
        (
            jax.tree.map(np.asarray, (after.params, after.batch_stats)),
            {k: float(v) for k, v in metrics.compute().items()},
        )
    )
  return out


def assert_same_updates(want_steps, got_steps, state) -> None:
  """Each leaf's change agrees to 1e-4 of its size, the metrics to 1e-5."""
  before = jax.tree.map(np.asarray, (state.params, state.batch_stats))
  for (want, want_metrics), (got, got_metrics) in zip(want_steps, got_steps):
    for a, b, start in zip(
        jax.tree.leaves(want), jax.tree.leaves(got), jax.tree.leaves(before)
    ):
      assert np.linalg.norm(b - a) <= 1e-4 * np.linalg.norm(a - start) + 1e-7
    for k, v in want_metrics.items():
      np.testing.assert_allclose(got_metrics[k], v, rtol=1e-5)


def test_step_with_cpu_options_matches_xla_defaults(num_devices):
  """One step from the same state on each of a few batches: the updates
  agree to float rounding. (Chained steps drift apart as any two orders of
  summation do: a difference of 1e-5 in one update is 1e-3 two steps later
  in this small batch-normed network.)"""
  mesh = parallel.create_mesh()
  task = tasks.get_task('labels')
  state, batches = _state_and_batches()
  sharded = [parallel.shard_batch(b, mesh) for b in batches]
  results, programs = {}, {}
  for choice in ('none', 'cpu_ynn'):
    step = train.make_train_step(task, mesh, xla_options=choice)
    programs[choice] = (
        step.lower(parallel.replicate(state, mesh), sharded[0])
        .compile()
        .as_text()
    )
    results[choice] = one_step_each(step, state, sharded, mesh)
  # The options reached the compiler: the programs differ.
  assert programs['none'] != programs['cpu_ynn']
  assert_same_updates(results['none'], results['cpu_ynn'], state)


def _round(workdir, r):
  ckpts = checkpoint.RunCheckpoints(str(workdir))
  try:
    return jax.tree.map(np.asarray, ckpts.load_round(r))
  finally:
    ckpts.close()


def _flat(tree, prunable):
  return np.concatenate(
      [
          np.ravel(x)
          for x, p in zip(jax.tree.leaves(tree), jax.tree.leaves(prunable))
          if p
      ]
  )


def _mask_differences(dir_a, dir_b, rounds) -> tuple[int, float]:
  """How many mask entries two runs' rounds 1..rounds disagree on, and
  the farthest of those weights from run a's pruning threshold, as a
  fraction of it."""
  count, farthest = 0, 0.0
  for r in range(1, rounds + 1):
    prev_a = _round(dir_a, r - 1)
    prunable = pruning.prunable_tree(prev_a['params'])
    w_a = np.abs(_flat(prev_a['params'], prunable))
    mask_a = _flat(_round(dir_a, r)['mask'], prunable)
    differ = mask_a != _flat(_round(dir_b, r)['mask'], prunable)
    # Run a's threshold: its smallest surviving magnitude.
    threshold = np.min(w_a[mask_a])
    count += int(differ.sum())
    if differ.any():
      farthest = max(
          farthest, float(np.max(np.abs(w_a[differ] - threshold)) / threshold)
      )
  return count, farthest


def test_short_run_masks_differ_only_near_the_threshold(
    labels_run, labels_run_xla_defaults
):
  """A short run's masks with XLA's defaults and convolutions, and with
  the platform's choices (on the CPU oneDNN's convolutions, which take
  XLA's default options; with XLA's convolutions, YNNPACK's fusions).

  One step agrees to rounding (above; tests/test_onednn_conv.py), but
  training amplifies rounding: in this small network a difference of 1e-5
  in one update is 4e-3 two steps later, and after a 32-step round a few
  weights have moved by a tenth of the threshold between the runs. So the
  masks may differ, but only for a few weights, below twice the threshold
  (oneDNN against XLA: 344 of 137,678 over two rounds, the farthest 12% of
  the threshold from it; YNNPACK's fusions against XLA's defaults: 324,
  57%; the same run from initial weights 1 ulp apart: 330, 22%).
  """
  config, auto_dir, _ = labels_run
  assert config.train.xla_options == 'auto'
  _, none_dir, _ = labels_run_xla_defaults
  rounds = config.pruning.num_rounds
  count, farthest = _mask_differences(none_dir, auto_dir, rounds)
  kept = sum(
      pruning.count(
          _round(none_dir, r - 1)['mask'],
          pruning.prunable_tree(_round(none_dir, 0)['params']),
      )[0]
      for r in range(1, rounds + 1)
  )
  print(
      f'mask entries that differ over {rounds} rounds: {count} of '
      f'{kept}, at most {farthest:.1%} of the threshold from it'
  )
  assert count <= 0.01 * kept
  assert farthest <= 1.0


def test_resuming_may_change_the_options(data_dir, tmp_path):
  config = tiny_config(data_dir)
  checkpoint.check_or_write_config(str(tmp_path), config)
  config.train.xla_options = 'none'
  checkpoint.check_or_write_config(str(tmp_path), config)
  # A workdir written before the field existed.
  saved = json.loads((tmp_path / 'config.json').read_text())
  del saved['train']['xla_options']
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  checkpoint.check_or_write_config(str(tmp_path), config)
  config.train.learning_rate *= 2
  with pytest.raises(checkpoint.ConfigMismatchError, match='learning_rate'):
    checkpoint.check_or_write_config(str(tmp_path), config)
