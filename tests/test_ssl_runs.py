"""Each self- and semi-supervised `:quick` config prunes end to end, shrunk.

Also: NPID's memory bank is rewound with the weights and resumed with the
rest of the state after an interruption.
"""

import jax
import numpy as np
import pytest

from sslprune_jax import checkpoint
from sslprune_jax import imp
from sslprune_jax import pruning
from test_imp import OVERRIDES, load_config, round_masks

# Per task: extra shrinking, and the least headline metric expected after
# ~16-32 steps on 2048 images (chance: exemplar retrieval 1/399, class
# accuracy 0.1). NPID's kNN accuracy is still at chance after one epoch,
# whose positives are all random bank entries; its kNN rule is checked by
# hand in test_tasks.py, its bank below.
CASES = {
    'exemplar': (
        {
            'train.batch_size': 64,
            'train.num_epochs': 0.5,
            'train.eval_batch_size': 200,
        },
        0.02,
    ),
    'npid': ({'task.num_negatives': 256, 'train.num_epochs': 1.0}, 0.0),
    # S4L's class head learns every rotated copy of its 16 labelled images
    # a step (as google-research/s4l): slower to fit than upright ones.
    's4l': (
        {
            'train.batch_size': 64,
            'train.labelled_batch_size': 16,
            'train.num_epochs': 1.0,
            'pruning.rewind_samples': 256,
        },
        0.2,
    ),
    'few_labels': (
        {
            'train.batch_size': 64,
            'train.num_epochs': 8.0,
            'pruning.rewind_samples': 256,
        },
        0.2,
    ),
}


def shrunk(name, data_dir, **extra):
  config = load_config('quick', name)
  config.update_from_flattened_dict(
      {
          **OVERRIDES,
          'data.data_dir': data_dir,
          'pruning.num_rounds': 1,
          # One read shard: the small labelled subsets are not split in two.
          'data.read_shards': 0,
          **CASES[name][0],
          **extra,
      }
  )
  return config


@pytest.mark.parametrize('name', sorted(CASES))
def test_quick_config_prunes_end_to_end(name, data_dir, tmp_path):
  results = imp.run(shrunk(name, data_dir), str(tmp_path / name))
  total = results[0]['sparsity']['total']
  assert [r['remaining'] for r in results] == [
      total,
      total - pruning.num_to_prune(0.2, total),
  ]
  for r in results:
    assert r['test_accuracy'] > CASES[name][1], r
    assert np.isfinite(r['train_loss'])
  if name == 's4l':
    assert all(r['test_rotation_accuracy'] > 0.4 for r in results)
    header = (tmp_path / name / 'results.csv').read_text().splitlines()[0]
    assert 'test_rotation_accuracy' in header


def test_few_labels_trains_on_the_labelled_subset_only(data_dir):
  exp = imp.build(shrunk('few_labels', data_dir))
  # 10% of each class of train[:2048], 8 epochs of it at batch 64.
  assert 190 <= exp.info.num_labelled_examples <= 220
  assert exp.num_steps == 8 * (exp.info.num_labelled_examples // 64)


@pytest.fixture(scope='module')
def npid_run(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('npid') / 'run'
  # In-round checkpoints for test_npid_resumes_with_its_memory_bank.
  config = shrunk('npid', data_dir, checkpoint_every_steps=4)
  return config, workdir, imp.run(config, str(workdir))


def test_npid_rewinds_the_memory_bank_with_the_weights(npid_run):
  config, workdir, _ = npid_run
  exp = imp.build(config)
  ckpts = checkpoint.RunCheckpoints(str(workdir))
  try:
    saved = ckpts.restore_rewind(
        {
            'params': exp.variables['params'],
            'batch_stats': exp.variables['batch_stats'],
            'task_state': exp.task_state,
        }
    )
    state = imp.round_start(exp, ckpts, 1)
  finally:
    ckpts.close()
  # The bank at the rewind point (4 steps of 128 images) is what round 1
  # starts from.
  seen = np.asarray(saved['task_state']['labels']) >= 0
  assert seen.sum() == exp.rewind_step * config.train.batch_size
  for key in ('bank', 'labels', 'z'):
    np.testing.assert_array_equal(
        np.asarray(state.task_state[key]), np.asarray(saved['task_state'][key])
    )
  assert float(state.task_state['z']) > 0


def test_npid_resumes_with_its_memory_bank(npid_run, tmp_path, monkeypatch):
  config, reference, _ = npid_run
  workdir = tmp_path / 'interrupted'
  real_save = checkpoint.RunCheckpoints.save_in_round

  def save_then_stop(self, round_idx, state):
    real_save(self, round_idx, state)
    if round_idx == 1:
      raise KeyboardInterrupt('preempted')

  # Interrupted right after round 1's first in-round checkpoint, whose bank
  # has moved on from the rewind point...
  monkeypatch.setattr(
      checkpoint.RunCheckpoints, 'save_in_round', save_then_stop
  )
  with pytest.raises(KeyboardInterrupt):
    imp.run(config, str(workdir))
  monkeypatch.undo()
  assert list((workdir / 'round_01').iterdir())
  # ... and run again: the same final masks and weights as uninterrupted.
  imp.run(config, str(workdir))
  expected, got = round_masks(reference), round_masks(workdir)
  assert sorted(got) == [0, 1]
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)
  ckpts = [checkpoint.RunCheckpoints(str(w)) for w in (reference, workdir)]
  try:
    a, b = (c.load_round(1)['params'] for c in ckpts)
  finally:
    for c in ckpts:
      c.close()
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize(
    'name,variant,epoch_examples,steps,rewind_step',
    [
        # ImageNet, batch 256: 5,004 steps per epoch; rewind after one epoch.
        ('exemplar', '', 1_281_167, 90 * 5_004, 5_004),
        ('npid', '', 1_281_167, 200 * 5_004, 5_004),
        # S4L: 200 epochs of the labelled subset (S4L's count: 500 steps of
        # 256 labelled images) = 100,000 steps; a step sees 256 labelled + 256
        # unlabelled images, so one epoch of samples is step 2,502.
        ('s4l', '', 1_281_167, 100_000, 2_502),
        ('s4l', 'classes', 1_281_167, 100_000, 2_502),
        # Epochs of the 10% subset (128,116 images: 500 steps of 256).
        ('few_labels', '', 128_116, 200 * 500, 5_004),
        # CIFAR-10, batch 128: 390 steps per epoch.
        ('exemplar', 'cifar10', 50_000, 160 * 390, 390),
    ],
)
def test_paper_configs(name, variant, epoch_examples, steps, rewind_step):
  config = load_config(variant, name)
  imp.validate_config(config)
  assert imp.round_schedule(config, epoch_examples) == (steps, rewind_step)
  assert config.pruning.fraction == 0.2 and config.pruning.num_rounds == 30
  assert config.task.name == name
  if name in ('s4l', 'few_labels'):
    assert config.data.labelled == ('classes' if variant else 'per_class')
    assert config.data.labelled_fraction == 0.1
  if name == 'npid':
    assert config.train.schedule == 'cosine'
    assert (
        config.task.dim,
        config.task.temperature,
        config.task.num_negatives,
        config.task.momentum,
    ) == (128, 0.07, 4096, 0.5)


@pytest.mark.parametrize(
    'name,key,value,message',
    [
        ('exemplar', 'task.copies', 1, 'copies must be >= 2'),
        ('npid', 'task.momentum', 1.0, r'momentum must be in \[0, 1\)'),
        ('s4l', 'train.labelled_batch_size', 0, 'labelled_batch_size > 0'),
        ('s4l', 'data.labelled', 'some', 'Unknown labelled'),
        ('few_labels', 'data.labelled_fraction', 0.0, 'labelled_fraction'),
    ],
)
def test_bad_task_settings_are_refused_before_compute(
    name, key, value, message, data_dir, tmp_path
):
  config = shrunk(name, data_dir, **{key: value})
  with pytest.raises(ValueError, match=message):
    imp.run(config, str(tmp_path / 'w'))
  assert not (tmp_path / 'w' / 'rounds').exists()


def test_unknown_task_field_is_refused(data_dir):
  config = shrunk('exemplar', data_dir)
  config.task.temperature = 0.1
  with pytest.raises(ValueError, match=r"Unknown fields \['temperature'\]"):
    imp.validate_config(config)
