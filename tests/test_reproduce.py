"""The reproduction's regime: dense learning curves and the plateau rule.

The rule on hand-made curves, and the command end to end on a shrunk
setting (a few hundred real Fashion-MNIST images, two short epoch counts,
labels only).
"""

import csv

import pytest

from sslprune_jax import report
from sslprune_jax import reproduce


def test_plateau_is_the_first_count_whose_doubling_adds_little():
  curve = {2: 0.80, 4: 0.85, 8: 0.862, 16: 0.864, 32: 0.8655}
  # 2->4 +5.0, 4->8 +1.2, 8->16 +0.2 points: 8 is where it flattens.
  assert reproduce.plateau(curve) == 8
  assert reproduce.plateau(curve, gain=0.013) == 4
  assert reproduce.plateau({2: 0.5, 4: 0.6, 8: 0.7}) is None
  # A curve that falls has plateaued.
  assert reproduce.plateau({2: 0.9, 4: 0.89}) == 2


def test_the_regime_waits_for_the_slowest_objective():
  curves = {'labels': {2: 0.80, 4: 0.801, 8: 0.802},
            'rotnet': {2: 0.60, 4: 0.70, 8: 0.702}}
  assert reproduce.choose(curves) == 4
  curves['rotnet'][8] = 0.75
  assert reproduce.choose(curves) is None


def test_table_shows_gains_in_points():
  md = reproduce.table({'labels': {2: 0.8, 4: 0.8123}})
  assert '| 2 | 0.8000 |' in md
  assert '| 4 | 0.8123 (+1.23) |' in md


def test_dense_config_trains_round_zero_only():
  config = reproduce.dense_config('rotnet', 8, 6000, seed=2)
  assert config.pruning.num_rounds == 0
  assert config.train.num_epochs == 8.0
  assert config.data.train_split == 'train[:6000]'
  assert config.data.eval_split == 'test[:5000]'
  assert config.seed == 2
  assert config.task.name == 'rotnet'


def test_regime_end_to_end(tmp_path, data_dir, monkeypatch):
  real = reproduce.dense_config

  def shrunk(objective, epochs, train_images, seed=0):
    config = real(objective, epochs, train_images, seed)
    config.data.data_dir = data_dir
    config.data.eval_split = 'test[:256]'
    config.train.batch_size = 32
    config.train.eval_batch_size = 128
    return config

  monkeypatch.setattr(reproduce, 'dense_config', shrunk)
  curves = reproduce.learning_curves(str(tmp_path), ['labels'], [0.5, 1],
                                     train_images=320)
  assert set(curves['labels']) == {0.5, 1}
  for e in (0.5, 1):
    run = report.load_run(reproduce.run_dir(str(tmp_path), 'labels', e))
    assert [r['round'] for r in run.rows] == ['0']
    assert run.config['train']['num_epochs'] == e
    assert 0 <= curves['labels'][e] <= 1
  paths = reproduce.write(curves, str(tmp_path / 'out'))
  rows = list(csv.DictReader(open(paths['csv'])))
  assert [(r['objective'], r['epochs']) for r in rows] == [
      ('labels', '0.5'), ('labels', '1')]
  assert 'labels' in open(paths['md']).read()
  # Resuming does no more work: both runs are complete.
  again = reproduce.learning_curves(str(tmp_path), ['labels'], [0.5, 1],
                                    train_images=320)
  assert again == curves
