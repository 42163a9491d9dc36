"""How rounds after the first start: rewinding continues round 0's training
run from step k to T (open_lth's lottery runner), learning-rate rewinding
and fine-tuning (Renda et al. 2020) start from the previous round's end, and
re-initialisation trains from step 0; the rewind step counts dataset images.

The runs are the shrunk quick labels config of tests/test_imp.py: T = 32
steps of 128 images (2048 images, 2 epochs), k = 512 // 128 = 4, a cosine
schedule after 2 warm-up steps.
"""

import math
import pathlib

import jax
import numpy as np
import optax
import pytest
import tensorflow as tf

from sslprune_jax import checkpoint
from sslprune_jax import config_lib
from sslprune_jax import imp
from sslprune_jax import pruning
from sslprune_jax import train
from sslprune_jax.evaluation import retrain
from test_imp import tiny_config

K, T = 4, 32
LOG_EVERY = 4  # OVERRIDES['log_every_steps'].


def schedule(step):
  """The tiny config's learning rate at `step`, by hand: lr 0.1, linear
  warm-up over round(0.1 epochs x 16 steps) = 2 steps, then cosine decay to
  0 over the remaining 30."""
  if step < 2:
    return 0.1 * step / 2
  return 0.05 * (1 + math.cos(math.pi * (step - 2) / 30))


def _np(tree):
  return jax.tree.map(np.asarray, tree)


def logged(workdir: pathlib.Path, round_idx: int, tag: str) -> dict:
  """step -> value of a scalar in a round's TensorBoard events."""
  out = {}
  for events in (workdir / 'tb' / f'round_{round_idx:02d}').glob('events*'):
    for event in tf.compat.v1.train.summary_iterator(str(events)):
      for value in event.summary.value:
        if value.tag == tag:
          out[event.step] = float(tf.make_ndarray(value.tensor))
  return dict(sorted(out.items()))


def start_of(config, workdir, round_idx):
  """(experiment, round `round_idx`'s start state, the checkpoints it was
  made from: rewind point, previous round's end, this round's end)."""
  exp = imp.build(config)
  ckpts = checkpoint.RunCheckpoints(str(workdir))
  try:
    state = imp.round_start(exp, ckpts, round_idx)
    saved = {
        'rewind': ckpts.load_rewind() if ckpts.has_rewind() else None,
        'prev': ckpts.load_round(round_idx - 1),
        'end': ckpts.load_round(round_idx),
    }
  finally:
    ckpts.close()
  return exp, state, _np(saved)


def check_fresh_optimizer_at(state, step):
  counts = optax.tree_utils.tree_get_all_with_path(state.opt_state, 'count')
  assert counts and all(int(c) == step for _, c in counts)
  traces = optax.tree_utils.tree_get_all_with_path(state.opt_state, 'trace')
  for _, trace in traces:
    assert all(not np.any(np.asarray(t)) for t in jax.tree.leaves(trace))
  assert int(state.step) == step


def check_first_update(state, rate, weight_decay=5e-4):
  """One update with a gradient of ones, against SGD by hand: fresh
  momentum, so w <- w - rate * (g + wd * w); pruned weights stay 0."""
  params = _np(state.params)
  grads = jax.tree.map(np.ones_like, params)
  new = _np(state.apply_gradients(grads=grads).params)
  for p, m, q in zip(
      jax.tree.leaves(params),
      jax.tree.leaves(_np(state.mask)),
      jax.tree.leaves(new),
  ):
    expected = np.where(m, p - rate * (1.0 + weight_decay * p), 0.0)
    np.testing.assert_allclose(q, expected, rtol=1e-5, atol=1e-7)


def test_the_tiny_schedule_by_hand():
  rate = train.create_learning_rate_fn(tiny_config('unused').train, 16)
  for step in range(T):
    assert float(rate(step)) == pytest.approx(
        schedule(step), rel=1e-5, abs=1e-8
    )


def test_rewound_round_starts_at_k_with_the_rate_of_k(labels_run):
  config, workdir, _ = labels_run
  exp, state, saved = start_of(config, workdir, 1)
  assert (exp.rewind_step, exp.num_steps) == (K, T)
  check_fresh_optimizer_at(state, K)
  assert float(state.learning_rate_fn(K)) == pytest.approx(schedule(K))
  # The rewind point's weights under round 1's mask, and its statistics.
  mask = saved['end']['mask']
  jax.tree.map(np.testing.assert_array_equal, _np(state.mask), mask)
  jax.tree.map(
      lambda a, b, m: np.testing.assert_array_equal(a, b * m),
      _np(state.params),
      saved['rewind']['params'],
      mask,
  )
  jax.tree.map(
      np.testing.assert_array_equal,
      _np(state.batch_stats),
      saved['rewind']['batch_stats'],
  )
  check_first_update(state, schedule(K))


def test_every_round_ends_at_T_and_logs_its_rate(labels_run):
  _, workdir, _ = labels_run
  for r in (0, 1, 2):
    rates = logged(workdir, r, 'learning_rate')
    # Round 0 trains steps 1..T; a rewound round K+1..T, numbered as in
    # round 0, so its curves start at step K.
    first = LOG_EVERY if r == 0 else K + LOG_EVERY
    assert list(rates) == list(range(first, T + 1, LOG_EVERY)), r
    for step, rate in rates.items():
      # Update `step` used the rate of step - 1.
      assert rate == pytest.approx(schedule(step - 1), rel=1e-5, abs=1e-8)
    assert max(logged(workdir, r, 'train_loss')) == T


@pytest.mark.parametrize('reset', ['lr_rewind', 'finetune'])
def test_renda_resets_start_from_the_previous_round_end(
    data_dir, tmp_path, reset
):
  config = tiny_config(
      data_dir, **{'pruning.reset': reset, 'pruning.num_rounds': 1}
  )
  rows = imp.run(config, str(tmp_path))
  assert [r['round'] for r in rows] == [0, 1]
  exp, state, saved = start_of(config, tmp_path, 1)
  # Only rewinding needs round 0's state at step k.
  assert saved['rewind'] is None
  check_fresh_optimizer_at(state, K)
  mask = saved['end']['mask']
  jax.tree.map(
      lambda a, b, m: np.testing.assert_array_equal(a, b * m),
      _np(state.params),
      saved['prev']['params'],
      mask,
  )
  jax.tree.map(
      np.testing.assert_array_equal,
      _np(state.batch_stats),
      saved['prev']['batch_stats'],
  )
  rates = logged(tmp_path, 1, 'learning_rate')
  assert list(rates) == list(range(K + LOG_EVERY, T + 1, LOG_EVERY))
  if reset == 'lr_rewind':
    # The schedule of steps k..T-1, replayed.
    rate = schedule(K)
    expected = {s: schedule(s - 1) for s in rates}
  else:
    # T - k steps at the schedule's last rate.
    rate = schedule(T - 1)
    expected = {s: schedule(T - 1) for s in rates}
  assert float(state.learning_rate_fn(K)) == pytest.approx(rate, rel=1e-5)
  assert rates == pytest.approx(expected, rel=1e-5, abs=1e-9)
  check_first_update(state, rate)
  assert exp.num_steps == T


def test_round_end_keeps_the_task_state_only_where_a_round_starts_there():
  bank = {'bank': np.zeros((4, 2))}
  config = tiny_config('unused')
  for reset, keeps in (
      ('rewind', False),
      ('reinit', False),
      ('lr_rewind', True),
      ('finetune', True),
  ):
    config.pruning.reset = reset
    assert imp.saves_task_state(config, bank) == keeps
    assert not imp.saves_task_state(config, {})


def test_reinit_trains_from_step_0(data_dir):
  # 'reinit' rounds take no rewind step: k may be anything, even T.
  config = tiny_config(
      data_dir,
      **{'pruning.reset': 'reinit', 'pruning.rewind_samples': 32 * 128},
  )
  exp = imp.build(config)
  assert exp.num_steps == T


def test_a_rewind_point_at_or_after_T_is_refused(data_dir):
  for reset in ('rewind', 'lr_rewind', 'finetune'):
    config = tiny_config(
        data_dir, **{'pruning.reset': reset, 'pruning.rewind_samples': T * 128}
    )
    with pytest.raises(ValueError, match='not before the end of the run'):
      imp.build(config)


@pytest.mark.parametrize(
    'name,variant,images,rewind_step',
    [
        # RotNet's step holds 64 images (x4 rotations made in the step): the
        # 6,400 samples are 100 steps, not 25.
        ('rotnet', 'quick', 64, 6_400 // 64),
        ('rotnet', 'cifar10', 128, 50_000 // 128),
        ('rotnet', '', 256, 1_281_167 // 256),
        # Exemplar's and NPID's copies are made in the step too.
        ('exemplar', 'quick', 64, 6_400 // 64),
        ('labels', 'quick', 128, 6_400 // 128),
        ('labels', 'imagenet', 256, 5_004),
    ],
)
def test_rewind_step_counts_dataset_images(name, variant, images, rewind_step):
  config = config_lib.load(name, variant)
  assert imp.images_per_step(config) == images
  assert imp.rewind_step_of(config, config.pruning.rewind_samples) == (
      rewind_step
  )


def test_s4l_counts_labelled_and_unlabelled_images():
  config = config_lib.load('s4l', 'quick')
  per_step = config.train.batch_size + config.train.labelled_batch_size
  assert imp.images_per_step(config) == per_step
  assert imp.rewind_step_of(config, config.pruning.rewind_samples) == (
      config.pruning.rewind_samples // per_step
  )
  # The unlabelled batch alone would put the rewind point later.
  assert (
      config.pruning.rewind_samples // config.train.batch_size
      > config.pruning.rewind_samples // per_step
  )


def test_winning_ticket_retraining_continues_from_the_rewind_step(
    labels_run, data_dir, tmp_path
):
  _, source, _ = labels_run
  config = tiny_config(data_dir)
  retrain.add_source(config, init='winning_ticket')
  config.source.workdir = str(source)
  config.source.rounds = (1,)
  exp = imp.build(config)
  assert retrain.start_step(exp) == K
  (row,) = retrain.run(config, str(tmp_path))
  assert row['round'] == 1
  rates = logged(tmp_path, 1, 'learning_rate')
  assert list(rates) == list(range(K + LOG_EVERY, T + 1, LOG_EVERY))
  assert rates[K + LOG_EVERY] == pytest.approx(schedule(K + LOG_EVERY - 1))
  config.source.init = 'reinit'
  assert retrain.start_step(imp.build(config)) == 0


def test_paper_random_baseline_from_the_dense_network(labels_run, data_dir):
  _, source, _ = labels_run
  config = tiny_config(data_dir)
  retrain.add_source(config, init='reinit', mask='random_global_natural')
  config.source.workdir = str(source)
  config.pruning.natural_threshold = 1e-2
  exp = imp.build(config)
  ckpts = checkpoint.RunCheckpoints(str(source))
  try:
    dense = _np(ckpts.load_round(0)['params'])
    masks = {r: _np(ckpts.load_round(r)['mask']) for r in (1, 2)}
    for r, source_mask in masks.items():
      _, mask, _ = retrain.round_start(exp, ckpts, r)
      mask = _np(mask)
      # Exactly the source round's count, over all layers together...
      assert (
          pruning.count(mask, exp.prunable)[0]
          == pruning.count(source_mask, exp.prunable)[0]
      )
      # ... and every naturally-zero weight of the dense network goes first
      # (there are fewer of them than weights to remove here).
      flat = [
          (p, m)
          for p, m, ok in zip(
              jax.tree.leaves(dense),
              jax.tree.leaves(mask),
              jax.tree.leaves(exp.prunable),
          )
          if ok
      ]
      small = sum(int(np.sum(np.abs(p) < 1e-2)) for p, _ in flat)
      assert 0 < small < sum(m.size - m.sum() for _, m in flat)
      assert all(not np.any(m[np.abs(p) < 1e-2]) for p, m in flat)
      # Global, not per layer: the layers' rates differ from the source's.
      assert [int(m.sum()) for _, m in flat] != [
          int(m.sum())
          for m, ok in zip(
              jax.tree.leaves(source_mask), jax.tree.leaves(exp.prunable)
          )
          if ok
      ]
  finally:
    ckpts.close()
