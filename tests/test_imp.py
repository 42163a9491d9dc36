"""The round loop end to end on real Fashion-MNIST, shrunk to run in seconds.

Covers: per-round results and exact weight counts, rewind checkpoints,
finishing twice is a no-op, refusing a different config in the same workdir,
bad configs refused before compute, NaN loss stopping the run, a damaged
checkpoint, and SIGTERM (preemption), kill -9 and restarts ending with the
same masks.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslprune_jax import checkpoint
from sslprune_jax import config_lib
from sslprune_jax import export
from sslprune_jax import imp
from sslprune_jax import models
from sslprune_jax import preemption
from sslprune_jax import pruning
from sslprune_jax import round_state
from sslprune_jax import rundir
from sslprune_jax import train
from sslprune_jax.evaluation import natural_sparsity

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The quick config, shrunk: 2048 training images, 32 steps per round, rewind
# after 4 steps, 2 pruning rounds.
OVERRIDES = {
    'data.train_split': 'train[:2048]',
    'data.eval_split': 'test[:1000]',
    'data.shuffle_buffer': 2048,
    'model.width': 0.125,
    'train.num_epochs': 2.0,
    'train.batch_size': 128,
    'train.eval_batch_size': 200,
    'pruning.num_rounds': 2,
    'pruning.rewind_samples': 512,
    'log_every_steps': 4,
    # End-of-round checkpoints only: in-round ones cost a sixth of a shrunk
    # run's time. The kill and resume tests ask for them (`_command`).
    'checkpoint_every_steps': 0,
    # Two read shards and device-order gradient sums: what a run on two
    # processes computes, to the bit (tests/test_multihost.py).
    'data.read_shards': 2,
    'train.exact_reduction': True,
}


def load_config(arg='quick', name='labels'):
  return config_lib.load(name, arg)


def tiny_config(data_dir, **extra):
  config = load_config()
  config.update_from_flattened_dict(
      {**OVERRIDES, 'data.data_dir': data_dir, **extra}
  )
  return config


def expected_fractions(total, rounds, fraction=0.2):
  remaining, out = total, []
  for _ in range(rounds + 1):
    out.append(remaining / total)
    remaining -= pruning.num_to_prune(fraction, remaining)
  return out


def round_masks(workdir):
  """The mask of every finished round, as numpy, keyed by round."""
  ckpts = checkpoint.RunCheckpoints(str(workdir))
  out = {
      r: jax.tree.map(np.asarray, ckpts.load_round(r)['mask'])
      for r in ckpts.completed_rounds()
  }
  ckpts.close()
  return out


def assert_same_masks(reference, workdir, rounds=(0, 1, 2)):
  """Every round of `workdir` finished, with the masks of `reference`."""
  expected, got = round_masks(reference), round_masks(workdir)
  assert sorted(got) == list(rounds)
  for r in expected:
    for a, b in zip(jax.tree.leaves(expected[r]), jax.tree.leaves(got[r])):
      np.testing.assert_array_equal(a, b)


@pytest.fixture
def finished_run(labels_run):
  """(config, workdir, results) of the shrunk quick run (conftest.py)."""
  return labels_run


def test_quick_run_reports_every_round(finished_run):
  config, workdir, results = finished_run
  assert [r['round'] for r in results] == [0, 1, 2]
  total = results[0]['sparsity']['total']
  assert [r['fraction_left'] for r in results] == pytest.approx(
      expected_fractions(total, 2)
  )
  assert results[1]['remaining'] == total - pruning.num_to_prune(0.2, total)
  for r in results:
    # 32 steps on 2048 images, batch-norm scales starting at U[0, 1): far
    # from converged (0.42-0.53), but well above chance (0.1).
    assert r['test_accuracy'] > 0.3, r
    assert np.isfinite(r['test_loss'])
  lines = (workdir / 'results.csv').read_text().strip().splitlines()
  assert lines[0].startswith('round,fraction_left,remaining,test_accuracy')
  assert len(lines) == 4
  assert (workdir / 'rewind').exists()
  assert (workdir / 'tb' / 'rounds').exists()
  # Finished rounds drop their (large) resumption checkpoints.
  assert not list(workdir.glob('round_*'))


def test_saved_params_are_zero_where_masked(finished_run):
  _, workdir, _ = finished_run
  ckpts = checkpoint.RunCheckpoints(str(workdir))
  restored = ckpts.load_round(2)
  ckpts.close()
  params, mask = restored['params'], restored['mask']
  for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)):
    p, m = np.asarray(p), np.asarray(m)
    assert np.all(p[~m] == 0.0)
  # Each round's compact export holds the same network, and shrinks.
  exported, exported_mask = export.load(str(workdir / 'export' / 'round_02'))
  for a, b in zip(jax.tree.leaves(exported['params']), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, np.asarray(b))
  for a, b in zip(jax.tree.leaves(exported_mask), jax.tree.leaves(mask)):
    np.testing.assert_array_equal(a, np.asarray(b))
  sizes = [r['export_bytes'] for r in finished_run[2]]
  assert sizes == sorted(sizes, reverse=True) and sizes[2] < sizes[0]
  for r, size in enumerate(sizes):
    assert (
        workdir / 'export' / f'round_{r:02d}' / 'network.npz'
    ).stat().st_size == size
  masks = round_masks(workdir)
  for r in (1, 2):
    for old, new in zip(
        jax.tree.leaves(masks[r - 1]), jax.tree.leaves(masks[r])
    ):
      assert not np.any(new & ~old)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_seeds_in_one_run_match_separate_runs(finished_run, data_dir, tmp_path):
  # Seeds 0 and 1 trained together against seed 0's ordinary run (the
  # session's) and a separate run of seed 1, over rounds 0 and 1. On CPU
  # the seeds' step is unrolled (train.seed_batching='auto'): the weights
  # and masks are the same to the bit; XLA fuses the batch-norm statistics
  # differently in the larger program, to an ulp (they only feed eval).
  rounds = {'pruning.num_rounds': 1}
  together = tmp_path / 'seeds'
  results = imp.run(tiny_config(data_dir, num_seeds=2, **rounds), str(together))
  seed1 = tmp_path / 'seed1'
  separate = [
      finished_run[2][:2],
      imp.run(tiny_config(data_dir, seed=1, **rounds), str(seed1)),
  ]
  assert json.loads((together / 'config.json').read_text())['num_seeds'] == 2
  # Seed 1's workdir is that of a run of seed 1 alone.
  assert (together / 'seed_1' / 'config.json').read_text() == (
      seed1 / 'config.json'
  ).read_text()
  for seed, alone in zip((0, 1), (finished_run[1], seed1)):
    mine = together / f'seed_{seed}'
    ckpts, theirs = (checkpoint.RunCheckpoints(str(d)) for d in (mine, alone))
    try:
      saved = [[ckpts.load_rewind(), theirs.load_rewind()]]
      saved += [[c.load_round(r) for c in (ckpts, theirs)] for r in (0, 1)]
    finally:
      ckpts.close()
      theirs.close()
    for a, b in saved:
      for key in ('params', 'mask'):
        for x, y in zip(_leaves(a.get(key, {})), _leaves(b.get(key, {}))):
          np.testing.assert_array_equal(x, y)
      for x, y in zip(_leaves(a['batch_stats']), _leaves(b['batch_stats'])):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-8)
    for row, other in zip(results[seed], separate[seed]):
      for key in (
          'remaining',
          'fraction_left',
          'export_bytes',
          'sparsity',
          'train_loss',
          'train_accuracy',
      ):
        assert row[key] == other[key], key
      for key in ('test_accuracy', 'test_loss'):
        assert row[key] == pytest.approx(other[key], rel=1e-4), key
    assert (mine / 'results.csv').exists()
    assert (mine / 'export' / 'round_01' / 'network.npz').exists()
  # The seeds really are different runs.
  assert results[0][0]['test_accuracy'] != results[1][0]['test_accuracy']
  # Resuming the finished run does no work and gives the same rows.
  assert (
      imp.run(tiny_config(data_dir, num_seeds=2, **rounds), str(together))
      == results
  )


def test_rerun_of_a_finished_run_does_no_work(finished_run):
  config, workdir, results = finished_run
  start = time.time()
  again = imp.run(config, str(workdir))
  assert [(r['round'], r['remaining'], r['test_accuracy']) for r in again] == [
      (r['round'], r['remaining'], r['test_accuracy']) for r in results
  ]
  assert time.time() - start < 60


def test_workdir_with_another_config_is_refused(finished_run, data_dir):
  _, workdir, _ = finished_run
  other = tiny_config(data_dir, seed=1)
  with pytest.raises(checkpoint.ConfigMismatchError, match='seed: 0 -> 1'):
    imp.run(other, str(workdir))


def test_workdir_saved_before_a_field_was_added_resumes(data_dir, tmp_path):
  config = tiny_config(data_dir)
  checkpoint.check_or_write_config(str(tmp_path), config)
  saved = json.loads((tmp_path / 'config.json').read_text())
  for name in checkpoint.ADDED_FIELDS:
    *parents, leaf = name.split('.')
    node = saved
    for p in parents:
      node = node[p]
    del node[leaf]
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  # At the value that does what runs did before, the old workdir resumes.
  checkpoint.check_or_write_config(str(tmp_path), config)
  # Any other value is another run.
  config.data.classes = (0, 1)
  with pytest.raises(
      checkpoint.ConfigMismatchError, match=r'data.classes: \[\] -> \[0, 1\]'
  ):
    checkpoint.check_or_write_config(str(tmp_path), config)


def test_damaged_checkpoint_advice_leads_to_the_same_masks(
    finished_run, tmp_path
):
  config, workdir, _ = finished_run
  copy = tmp_path / 'copy'
  shutil.copytree(workdir, copy)
  shutil.rmtree(copy / 'rounds' / '2')
  for f in (copy / 'rounds' / '1').rglob('*'):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(b'\0' * 7)
  with pytest.raises(
      checkpoint.CorruptCheckpointError, match='rounds/1'
  ) as error:
    imp.run(config, str(copy))
  # Its advice, followed, redoes that round and the next: the same masks.
  assert f'Delete {copy}/rounds/1 to redo the work' in str(error.value)
  shutil.rmtree(copy / 'rounds' / '1')
  imp.run(config, str(copy))
  assert_same_masks(workdir, copy)


def test_random_like_copies_the_reference_layer_sparsity(
    finished_run, data_dir, tmp_path
):
  _, reference, _ = finished_run
  config = tiny_config(
      data_dir,
      **{
          'pruning.method': 'random_like',
          'pruning.num_rounds': 1,
          'pruning.reference_workdir': str(reference),
      },
  )
  results = imp.run(config, str(tmp_path / 'random_like'))
  ref_masks, masks = round_masks(reference), round_masks(
      tmp_path / 'random_like'
  )
  assert [r['round'] for r in results] == [0, 1]
  counts = lambda tree: [int(m.sum()) for m in jax.tree.leaves(tree)]
  assert counts(masks[1]) == counts(ref_masks[1])
  assert any(
      not np.array_equal(a, b)
      for a, b in zip(jax.tree.leaves(masks[1]), jax.tree.leaves(ref_masks[1]))
  )


def test_reinit_with_random_natural_pruning(data_dir, tmp_path):
  config = tiny_config(
      data_dir,
      **{
          'pruning.reset': 'reinit',
          'pruning.method': 'random_natural',
          'pruning.natural_threshold': 3e-3,
          'pruning.num_rounds': 1,
      },
  )
  results = imp.run(config, str(tmp_path / 'w'))
  total = results[0]['sparsity']['total']
  assert [r['remaining'] for r in results] == [
      total,
      total - pruning.num_to_prune(0.2, total),
  ]
  # Re-initialisation needs no rewind point.
  assert not list((tmp_path / 'w' / 'rewind').glob('*'))
  ckpts = checkpoint.RunCheckpoints(str(tmp_path / 'w'))
  trained, pruned = ckpts.load_round(0), ckpts.load_round(1)
  ckpts.close()
  # Every prunable weight that round 0 left below the threshold goes first
  # (there are fewer of them than the 20% to prune).
  prunable = pruning.prunable_tree(trained['params'])
  near_zero = 0
  for p, m, ok in zip(
      jax.tree.leaves(trained['params']),
      jax.tree.leaves(pruned['mask']),
      jax.tree.leaves(prunable),
  ):
    if ok:
      small = np.abs(np.asarray(p)) < 3e-3
      near_zero += small.sum()
      assert not np.any(np.asarray(m) & small)
  assert 0 < near_zero < pruning.num_to_prune(0.2, total)


def test_rotnet_quick_prunes_end_to_end(data_dir, tmp_path):
  config = load_config('quick', 'rotnet')
  config.update_from_flattened_dict(
      {
          **OVERRIDES,
          'data.data_dir': data_dir,
          'train.batch_size': 64,
          'train.num_epochs': 1.0,
          'pruning.num_rounds': 1,
      }
  )
  results = imp.run(config, str(tmp_path / 'rotnet'))
  total = results[0]['sparsity']['total']
  assert [r['remaining'] for r in results] == [
      total,
      total - pruning.num_to_prune(0.2, total),
  ]
  for r in results:
    # Rotation accuracy after 32 steps; chance is 0.25.
    assert r['test_accuracy'] > 0.4, r
  ckpts = checkpoint.RunCheckpoints(str(tmp_path / 'rotnet'))
  head = ckpts.load_round(1)['params']['classifier']['kernel']
  ckpts.close()
  assert head.shape[-1] == 4


@pytest.mark.parametrize(
    'variant,num_train,steps,rewind_step',
    [
        # CIFAR-10: 50,000 // 128 = 390 steps per epoch, 160 epochs; rewind
        # after 50,000 samples = step 390.
        ('', 50_000, 62_400, 390),
        ('vgg19', 50_000, 62_400, 390),
        # ImageNet: 1,281,167 // 256 = 5,004 steps per epoch, 90 epochs; rewind
        # after one epoch of samples = step 5,004.
        ('imagenet', 1_281_167, 450_360, 5_004),
    ],
)
def test_paper_configs(variant, num_train, steps, rewind_step):
  config = load_config(variant, 'labels')
  imp.validate_config(config)
  assert imp.round_schedule(config, num_train) == (steps, rewind_step)
  assert config.pruning.fraction == 0.2 and config.pruning.num_rounds == 30
  assert config.train.momentum == 0.9 and config.train.weight_decay == 1e-4


def test_layerwise_pruning_targets_the_first_layers(data_dir):
  exp = imp.build(tiny_config(data_dir, **{'pruning.layers': 2}))
  flat = jax.tree_util.tree_flatten_with_path(exp.prunable)[0]
  chosen = [pruning.path_name(pruning.path_tuple(p)) for p, ok in flat if ok]
  # The stem conv and the first conv of the first block, in network order.
  assert chosen == ['conv1/kernel', 'layer1_0/conv1/kernel']
  with pytest.raises(ValueError, match='only 12 prunable layers'):
    imp.build(tiny_config(data_dir, **{'pruning.layers': 13}))


@pytest.mark.parametrize(
    'key,value,message',
    [
        ('pruning.fraction', 1.5, r'fraction must be in \(0, 1\)'),
        ('pruning.fraction', 0.0, r'fraction must be in \(0, 1\)'),
        ('pruning.num_rounds', -1, r'num_rounds must be an int >= 0'),
        ('pruning.num_rounds', -30, r'num_rounds must be an int >= 0'),
        ('model.name', 'resnet_tiny', 'Unknown model.name'),
        ('data.name', 'mnist', 'Unknown data.name'),
        ('train.schedule', 'exponential', 'Unknown train.schedule'),
        ('pruning.method', 'taylor', 'Unknown pruning.method'),
        ('pruning.reset', 'none', 'Unknown pruning.reset'),
        ('pruning.method', 'random_like', 'needs pruning.reference_workdir'),
        ('pruning.rewind_samples', 10**6, 'not before the end of the run'),
        ('train.batch_size', 100, 'multiple of the number of devices'),
        ('task.name', 'jigsaw', 'Unknown task'),
        ('train.xla_options', 'fastest', 'Unknown train.xla_options'),
        ('model.width', 0.0, 'model.width must be a finite number > 0'),
        (
            'train.momentum',
            -5.0,
            'train.momentum must be a finite number >= 0 ' 'and < 1',
        ),
        ('train.warmup_epochs', -1.0, 'train.warmup_epochs must be'),
        ('train.num_epochs', float('inf'), 'train.num_epochs must be a finite'),
        ('train.num_epochs', float('nan'), 'got nan'),
        ('train.decay_epochs', ('abc',), 'train.decay_epochs must be epochs'),
        ('seed', -1, 'seed must be an integer >= 0'),
        (
            'pruning.num_rounds',
            10**9,
            'the model.s 76488 prunable weights; at most 45 '
            'rounds leave any',
        ),
    ],
)
def test_bad_config_is_refused_before_compute(
    data_dir, tmp_path, key, value, message
):
  config = tiny_config(data_dir, **{key: value})
  with pytest.raises(ValueError, match=message):
    imp.run(config, str(tmp_path / 'w'))
  assert not (tmp_path / 'w' / 'rounds').exists()


def test_nan_loss_stops_the_run(data_dir, tmp_path):
  config = tiny_config(
      data_dir, **{'train.learning_rate': 1e30, 'log_every_steps': 1}
  )
  with pytest.raises(train.NonFiniteLossError, match='round 0'):
    imp.run(config, str(tmp_path / 'w'))
  assert (tmp_path / 'w' / 'config.json').exists()
  assert not (tmp_path / 'w' / 'results.csv').exists()


@pytest.mark.parametrize(
    'name', ['rotnet', 'exemplar', 'npid', 's4l', 'few_labels']
)
def test_missing_imagenet_stops_at_once_naming_the_quick_variant(
    name, tmp_path
):
  done = subprocess.run(
      [
          sys.executable,
          '-m',
          'sslprune_jax.main',
          f'--config=configs/{name}.py',
          f'--workdir={tmp_path / "w"}',
          f'--config.data.data_dir={tmp_path / "tfds"}',
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert done.returncode != 0
  assert 'imagenet2012' in done.stderr and 'downloads/manual' in done.stderr
  assert f'--config=configs/{name}.py:quick' in done.stderr
  assert not (tmp_path / 'w').exists()


def _command(workdir, data_dir):
  """`main` on the shrunk config, with in-round checkpoints every 4 steps
  (a later `--config.checkpoint_every_steps` overrides it)."""
  flags = [f'--config.{k}={v}' for k, v in OVERRIDES.items()]
  return [
      sys.executable,
      '-m',
      'sslprune_jax.main',
      '--config=configs/labels.py:quick',
      f'--workdir={workdir}',
      f'--config.data.data_dir={data_dir}',
      *flags,
      '--config.checkpoint_every_steps=4',
  ]


def _signal_when(proc, ready, signum, timeout=300):
  start = time.time()
  while not ready():
    if proc.poll() is not None:
      raise AssertionError(f'run ended early: {proc.returncode}')
    if time.time() - start > timeout:
      proc.kill()
      raise AssertionError('timed out waiting for a checkpoint')
    time.sleep(0.05)
  os.kill(proc.pid, signum)
  return proc.wait(timeout=300)


def _steps(directory):
  if not directory.exists():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def test_preempt_kill_and_resume_give_identical_masks(
    finished_run, data_dir, tmp_path
):
  _, reference, _ = finished_run
  workdir = tmp_path / 'interrupted'
  cmd = _command(workdir, data_dir)
  log = tmp_path / 'stderr.log'
  quiet = dict(cwd=ROOT, stdout=subprocess.DEVNULL)
  # SIGTERM in round 0, once the rewind point is saved (step 4). With no
  # periodic checkpoints, the one it leaves is the preemption's own.
  with open(log, 'w') as err:
    proc = subprocess.Popen(
        [*cmd, '--config.checkpoint_every_steps=0'], stderr=err, **quiet
    )
    code = _signal_when(
        proc, lambda: _steps(workdir / 'rewind'), signal.SIGTERM
    )
  stderr = log.read_text()
  assert code == preemption.EXIT_CODE, stderr[-3000:]
  assert 'Run the same command again to resume' in stderr
  (step,) = _steps(workdir / 'round_00')
  assert 4 <= step < 32
  # Killed -9 inside round 1, after an in-round checkpoint...
  proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, **quiet)
  _signal_when(proc, lambda: _steps(workdir / 'round_01'), signal.SIGKILL)
  # ... and then left to finish.
  done = subprocess.run(
      cmd, cwd=ROOT, capture_output=True, text=True, timeout=600
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert_same_masks(reference, workdir)
  assert (workdir / 'COMPLETE').exists()


def test_natural_sparsity_of_a_finished_run(finished_run):
  _, workdir, results = finished_run
  reports = natural_sparsity.of_run(str(workdir), threshold=1e-2)
  assert sorted(reports) == [0, 1, 2]
  for r, report in reports.items():
    assert report['total'] == results[r]['remaining']
  # Round 0 by hand: prunable kernels (conv and dense, not the classifier).
  ckpts = checkpoint.RunCheckpoints(str(workdir))
  params = ckpts.load_round(0)['params']
  ckpts.close()
  small = sum(
      int(np.sum(np.abs(np.asarray(leaf)) < 1e-2))
      for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
      if np.ndim(leaf) >= 2 and 'classifier' not in str(path)
  )
  assert reports[0]['near_zero'] == small > 0
  with pytest.raises(ValueError, match='no finished round'):
    natural_sparsity.of_run(str(workdir), rounds=[5])


@flax.struct.dataclass
class _Counter:
  step: jax.Array
  value: jax.Array


def test_seeds_resume_at_the_step_they_all_saved(tmp_path):
  # Killed between two seeds' saves: seed 0 saved step 8, seed 1 only 4.
  members = []
  for seed, steps in ((0, (4, 8)), (1, (4,))):
    ckpts = checkpoint.RunCheckpoints(
        str(tmp_path / f'seed_{seed}'), in_round_keep=2
    )
    for step in steps:
      ckpts.save_in_round(
          1,
          _Counter(
              step=jnp.asarray(step), value=jnp.asarray(10.0 * step + seed)
          ),
      )
    ckpts.close()
    members.append(
        round_state.Member(
            exp=None,
            workdir=tmp_path / f'seed_{seed}',
            summary_writer=None,
            completed=[],
            ckpts=checkpoint.RunCheckpoints(
                str(tmp_path / f'seed_{seed}'), in_round_keep=2
            ),
        )
    )

  def start(exp, ckpts, r):
    fresh = _Counter(step=jnp.asarray(0), value=jnp.asarray(-1.0))
    return ckpts.restore_in_round(r, fresh) or fresh

  states = round_state.start_states(members, 1, start)
  assert [(int(s.step), float(s.value)) for s in states] == [
      (4, 40.0),
      (4, 41.0),
  ]
  # With no step in common, the round starts over for every seed.
  members[1].ckpts.clear_in_round(1)
  states = round_state.start_states(members, 1, start)
  assert [int(s.step) for s in states] == [0, 0]
  assert not (tmp_path / 'seed_0' / 'round_01').exists()
  for m in members:
    m.ckpts.close()


def test_nm_rounds_tighten_n_with_exact_counts(data_dir, tmp_path):
  """pruning.granularity='nm': round r's mask is n[r-1]:m in every kernel
  with a whole group, nested in the last; the rest stays dense."""
  config = tiny_config(
      data_dir,
      **{
          'pruning.granularity': 'nm',
          'pruning.n': (2, 1),
          'pruning.m': 4,
          'train.num_epochs': 0.5,
          'pruning.rewind_samples': 256,
      },
  )
  results = imp.run(config, str(tmp_path / 'nm'))
  masks = round_masks(tmp_path / 'nm')
  ckpts = checkpoint.RunCheckpoints(str(tmp_path / 'nm'))
  params = ckpts.load_round(0)['params']
  ckpts.close()
  grouped = pruning.nm.nm_prunable(params, pruning.prunable_tree(params), 4)
  assert any(jax.tree.leaves(grouped)) and not all(jax.tree.leaves(grouped))
  for r, n in [(1, 2), (2, 1)]:
    for mask, before, p, ok in zip(
        jax.tree.leaves(masks[r]),
        jax.tree.leaves(masks[r - 1]),
        jax.tree.leaves(params),
        jax.tree.leaves(grouped),
    ):
      expected = pruning.nm.nm_kept(p.shape, n, 4) if ok else p.size
      assert mask.sum() == expected
      assert not (mask & ~before).any()
    report = results[r]['sparsity']
    assert report['pattern'] == f'{n}:4' and report['conformance'] == 1.0
    # The round's export stores its N:M kernels as N:M, exactly.
    where = str(rundir.export_dir(tmp_path / 'nm', r))
    encodings = [e['encoding'] for e in export.read_manifest(where)['leaves']]
    assert encodings.count('nm') == sum(jax.tree.leaves(grouped))
    _, exported = export.load(where)
    for a, b in zip(jax.tree.leaves(exported), jax.tree.leaves(masks[r])):
      np.testing.assert_array_equal(a, b)
  assert 'pattern' not in results[0]['sparsity']


def test_channel_rounds_remove_whole_channels(data_dir, tmp_path):
  """pruning.granularity='channel': each round removes ceil(fraction *
  remaining) channels inside the blocks, with their batch norms and the
  next conv's inputs; the trained network keeps them at zero."""
  config = tiny_config(
      data_dir,
      **{
          'pruning.granularity': 'channel',
          'pruning.channel_score': 'bn_scale',
          'train.num_epochs': 0.5,
          'pruning.rewind_samples': 256,
      },
  )
  results = imp.run(config, str(tmp_path / 'channel'))
  masks = round_masks(tmp_path / 'channel')
  ckpts = checkpoint.RunCheckpoints(str(tmp_path / 'channel'))
  final = ckpts.load_round(2)['params']
  ckpts.close()
  groups = models.channel_groups(config.model, final)
  total = sum(k.size for k in pruning.channels.kept_channels(masks[0], groups))
  left = total
  for r in (1, 2):
    left -= pruning.num_to_prune(0.2, left)
    keeps = pruning.channels.kept_channels(masks[r], groups)
    assert sum(int(k.sum()) for k in keeps) == left
    assert results[r]['sparsity']['channels']['channels_left'] == left / total
    for k, before in zip(
        keeps, pruning.channels.kept_channels(masks[r - 1], groups)
    ):
      assert k.any() and not (k & ~before).any()
  for g, keep in zip(groups, pruning.channels.kept_channels(masks[2], groups)):
    node = final
    for key in g['norm']:
      node = node[key]
    assert not np.asarray(node['scale'])[~keep].any()
    assert not np.asarray(node['bias'])[~keep].any()
