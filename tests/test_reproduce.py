"""The reproduction: its regime's learning curves and plateau rule, the
verdict logic, and each figure's command end to end.

Rules on hand-made curves and tables; commands on a shrunk setting (a few
hundred real Fashion-MNIST images, one epoch, one round of pruning).
"""

import csv
import importlib
import json
import pkgutil
import re
import subprocess
import sys

import numpy as np
import pytest

from sslprune_jax import config_lib
from sslprune_jax import data
from sslprune_jax import source_network
from sslprune_jax import imp
from sslprune_jax import report
import sslprune_jax.reproduce
from sslprune_jax.evaluation import retrain
from sslprune_jax.reproduce import fig1
from sslprune_jax.reproduce import fig2
from sslprune_jax.reproduce import fig3
from sslprune_jax.reproduce import fig4
from sslprune_jax.reproduce import fig5
from sslprune_jax.reproduce import fig6
from sslprune_jax.reproduce import fig7
from sslprune_jax.reproduce import regime as reproduce
from sslprune_jax.reproduce import settings
from sslprune_jax.reproduce import verdicts

from test_sweep import imported_modules


def test_plateau_is_the_first_count_whose_doubling_adds_little():
  curve = {2: 0.80, 4: 0.85, 8: 0.862, 16: 0.864, 32: 0.8655}
  # 2->4 +5.0, 4->8 +1.2, 8->16 +0.2 points: 8 is where it flattens.
  assert reproduce.plateau(curve) == 8
  assert reproduce.plateau(curve, gain=0.013) == 4
  assert reproduce.plateau({2: 0.5, 4: 0.6, 8: 0.7}) is None
  # A curve that falls has plateaued.
  assert reproduce.plateau({2: 0.9, 4: 0.89}) == 2


def test_the_regime_waits_for_the_slowest_objective():
  curves = {
      'labels': {2: 0.80, 4: 0.801, 8: 0.802},
      'rotnet': {2: 0.60, 4: 0.70, 8: 0.702},
  }
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


@pytest.mark.slow
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
  curves = reproduce.learning_curves(
      str(tmp_path), ['labels'], [0.5, 1], train_images=320
  )
  assert set(curves['labels']) == {0.5, 1}
  for e in (0.5, 1):
    run = report.load_run(reproduce.run_dir(str(tmp_path), 'labels', e))
    assert [r['round'] for r in run.rows] == [0]
    assert run.config['train']['num_epochs'] == e
    assert 0 <= curves['labels'][e] <= 1
  paths = reproduce.write(curves, str(tmp_path / 'out'))
  rows = list(csv.DictReader(open(paths['csv'])))
  assert [(r['objective'], r['epochs']) for r in rows] == [
      ('labels', '0.5'),
      ('labels', '1'),
  ]
  assert 'labels' in open(paths['md']).read()
  # Resuming does no more work: both runs are complete.
  again = reproduce.learning_curves(
      str(tmp_path), ['labels'], [0.5, 1], train_images=320
  )
  assert again == curves


# Verdicts on hand-made tables: seed -> fraction left -> accuracy.


def _curve(values_by_seed, fractions=(0.5, 0.25, 0.01)):
  return {
      s: dict(zip(fractions, values)) for s, values in enumerate(values_by_seed)
  }


def test_estimate_is_the_paired_mean_with_a_t_interval():
  e = verdicts.estimate([0.02, 0.04, 0.03])
  assert e.mean == pytest.approx(0.03)
  assert e.sem == pytest.approx(0.01 / np.sqrt(3))
  # t(0.975, 2 dof) = 4.303.
  assert e.low == pytest.approx(0.03 - 4.3027 * e.sem, abs=1e-5)
  assert e.high == pytest.approx(0.03 + 4.3027 * e.sem, abs=1e-5)
  assert verdicts.estimate([0.5]).n == 1
  assert verdicts.estimate([]).n == 0


def test_differences_pair_seeds_and_average_over_the_levels():
  a = _curve([(0.9, 0.8, 0.5), (0.9, 0.7, 0.6)])
  b = _curve([(0.9, 0.8, 0.4), (0.8, 0.7, 0.5)])
  d = verdicts.differences(a, b, verdicts.pruned)
  assert d == pytest.approx({0: 0.1 / 3, 1: 0.2 / 3})
  assert verdicts.differences(a, b, verdicts.severe) == pytest.approx(
      {0: 0.1, 1: 0.1}
  )
  # A seed only one curve has is left out.
  b.pop(1)
  assert list(verdicts.differences(a, b, verdicts.pruned)) == [0]


def _hand_made():
  """Three seeds of a base curve 'b', one 5 points above it ('above'), one
  scattered around it by ±10 points ('noisy'), and two within a fraction
  of a point of it ('same', 'close')."""
  return {
      'b': _curve([(0.80, 0.70, 0.50)] * 3),
      'above': _curve(
          [(0.85, 0.75, 0.55), (0.86, 0.76, 0.56), (0.84, 0.74, 0.54)]
      ),
      'noisy': _curve([(0.9, 0.8, 0.6), (0.7, 0.6, 0.4), (0.85, 0.75, 0.55)]),
      'same': _curve(
          [(0.80, 0.70, 0.501), (0.80, 0.70, 0.499), (0.80, 0.70, 0.50)]
      ),
      'close': _curve(
          [(0.802, 0.70, 0.50), (0.799, 0.70, 0.50), (0.80, 0.701, 0.50)]
      ),
  }


def test_better_holds_fails_or_is_inconclusive():
  curves = _hand_made()
  assert verdicts.better('f', curves, 'above', 'b').verdict == 'holds'
  assert verdicts.better('f', curves, 'same', 'b').verdict == 'does not hold'
  assert verdicts.better('f', curves, 'noisy', 'b').verdict == 'inconclusive'
  # B above A: the claim that A is above does not hold.
  assert verdicts.better('f', curves, 'b', 'above').verdict == ('does not hold')
  one = {k: {0: c[0]} for k, c in curves.items()}
  assert verdicts.better('f', one, 'above', 'b').verdict == 'inconclusive'


def test_similar_needs_the_interval_inside_one_point():
  curves = _hand_made()
  assert verdicts.similar('f', curves, 'close', 'b').verdict == 'holds'
  assert verdicts.similar('f', curves, 'above', 'b').verdict == (
      'does not hold'
  )
  assert verdicts.similar('f', curves, 'b', 'above').verdict == (
      'does not hold'
  )
  assert verdicts.similar('f', curves, 'noisy', 'b').verdict == ('inconclusive')


def test_gap_grows_compares_severe_with_moderate_levels():
  fractions = (0.5, 0.25, 0.02, 0.01)
  random = {s: dict(zip(fractions, (0.8, 0.7, 0.4, 0.3))) for s in range(3)}
  grows = {
      s: dict(zip(fractions, (0.8, 0.71, 0.5 + s / 100, 0.4))) for s in range(3)
  }
  flat = {s: dict(zip(fractions, (0.81, 0.71, 0.41, 0.31))) for s in range(3)}
  curves = {'random': random, 'grows': grows, 'flat': flat}
  v = verdicts.gap_grows('f', curves, 'grows', 'random')
  # Severe gap 0.1 + s/200 against moderate 0.005: ~ +10 points.
  assert v.estimate.mean == pytest.approx(0.1, abs=0.01)
  assert v.verdict == 'holds'
  assert verdicts.gap_grows('f', curves, 'flat', 'random').verdict == (
      'does not hold'
  )
  # No severe level yet: inconclusive, not an error.
  early = {
      k: {s: {f: x for f, x in c.items() if f > 0.1} for s, c in curve.items()}
      for k, curve in curves.items()
  }
  assert verdicts.gap_grows('f', early, 'grows', 'random').verdict == (
      'inconclusive'
  )


def test_verdict_table_reports_points_and_seeds():
  curves = {
      'a': _curve([(0.85, 0.75, 0.55), (0.86, 0.76, 0.56)]),
      'b': _curve([(0.80, 0.70, 0.50)] * 2),
  }
  md = verdicts.table([verdicts.better('A beats B', curves, 'a', 'b')])
  assert '| A beats B | a > b | +5.50 ± 0.50' in md
  # Two seeds: t(0.975, 1 dof) = 12.7 widens the interval past 0.
  assert '[-0.85, +11.85], 2 seeds | **inconclusive** |' in md


# Each figure's command, shrunk.


@pytest.fixture
def shrunk(data_dir, monkeypatch):
  """The regime at a few hundred images, one epoch, one round of pruning."""
  real = settings.apply

  def apply(config, **kwargs):
    config = real(config, **kwargs)
    config.data.data_dir = data_dir
    config.data.train_split = 'train[:256]'
    config.data.eval_split = 'test[:200]'
    config.train.num_epochs = 1.0
    config.train.eval_batch_size = 200
    config.pruning.num_rounds = 1
    config.pruning.rewind_samples = settings.REWIND_SAMPLES
    if config.task.name == 'few_labels':
      # The labelled 10% is 27 images: as many seen as the others.
      config.train.batch_size = 16
      config.train.num_epochs = 10.0
    return config

  monkeypatch.setattr(settings, 'apply', apply)
  # Fig. 7's rewind points, (0, 8, 32, 128) samples, all within the 2 steps
  # of 128 images.
  monkeypatch.setattr(settings, 'REWIND_SAMPLES', 32)


def test_fig3_end_to_end(shrunk, shared):
  out = shared / 'report' / 'fig3'
  paths = fig3.make(str(shared / 'w'), str(out), seeds=1)
  table = open(paths['md']).read()
  for curve in fig3.CURVES:
    assert curve in table
  rows = list(csv.DictReader(open(paths['csv'])))
  by_curve = {}
  for r in rows:
    by_curve.setdefault(r['curve'], []).append(r)
  # The labels run has its dense round; the re-trainings the pruned one.
  assert len(by_curve['labels, winning ticket']) == 2
  assert all(len(by_curve[c]) == 1 for c in fig3.CURVES[1:])
  assert all(r['n'] == '1' for r in rows)
  section = open(paths['section']).read()
  assert section.count('| **') == len(
      fig3.findings({c: {} for c in fig3.CURVES})
  )
  assert (out / 'test_accuracy.png').stat().st_size > 0


def test_fig2_transfers_across_disjoint_halves(data_dir):
  assert sorted(fig2.PRETRAIN + fig2.TRANSFER) == list(range(10))
  halves = []
  for classes in (fig2.PRETRAIN, fig2.TRANSFER):
    config = settings.config('labels', seeds=1)
    config.data.data_dir = data_dir
    config.update_from_flattened_dict(fig2.data(classes))
    info = data.get_info(config.data)
    # Fashion-MNIST is balanced: each half holds about the regime's images.
    assert info.num_classes == 5
    assert abs(info.num_train_examples - settings.TRAIN_IMAGES) < 100
    assert info.num_eval_examples == settings.EVAL_IMAGES
    halves.append(set(data.class_subset(config.data)))
  assert not halves[0] & halves[1]
  assert len(halves[0] | halves[1]) == 2 * settings.TRAIN_IMAGES


def test_fig2_end_to_end(shrunk, shared, monkeypatch):
  # Halves of ~256 training images: two steps of 128 per epoch.
  monkeypatch.setattr(settings, 'TRAIN_IMAGES', 256)
  monkeypatch.setattr(settings, 'EVAL_IMAGES', 100)
  out = shared / 'report' / 'fig2'
  paths = fig2.make(str(shared / 'w'), str(out), seeds=1)
  curves = _curves_of(paths)
  assert set(curves) == {
      f'{o}, pruned {when}'
      for o in fig2.OBJECTIVES
      for when in ('during pre-training', 'during transfer')
  }
  # Both arms have the dense round and the pruned one.
  assert all(len(rows) == 2 for rows in curves.values())
  runs = fig2.runs(str(shared / 'w'), 1)
  for o in fig2.OBJECTIVES:
    pretrain = report.load_run(
        runs[f'{o}, pruned during pre-training'].config.source.workdir
    )
    transfer = report.load_run(runs[f'{o}, pruned during transfer'].directory)
    assert tuple(pretrain.config['data']['classes']) == fig2.PRETRAIN
    assert tuple(transfer.config['data']['classes']) == fig2.TRANSFER
    assert transfer.config['init_from']['workdir'] == (
        runs[f'{o}, pruned during pre-training'].config.source.workdir
    )
  section = open(paths['section']).read()
  assert section.count('| **') == len(fig2.OBJECTIVES)


def test_retraining_a_packed_source_reads_its_own_seed(tmp_path):
  source = tmp_path / 'source'
  for d in (source, source / 'seed_3', source / 'seed_4'):
    d.mkdir()
  (source / 'config.json').write_text(
      json.dumps({'seed': 3, 'num_seeds': 2, 'model': {}})
  )
  config = settings.apply(config_lib.load('retrain', 'quick'), seeds=2)
  config.seed = 3
  config.source.workdir = str(source)
  seeds = [retrain.seed_source(c) for c in imp.seed_configs(config)]
  assert [c.source.workdir for c in seeds] == [
      str(source / 'seed_3'),
      str(source / 'seed_4'),
  ]
  assert config.source.workdir == str(source)  # Not changed in place.
  # Pruning that starts from a packed run (init_from) pairs seeds likewise.
  prune = settings.config('labels', seeds=2)
  prune.seed = 3
  prune.init_from.workdir = str(source)
  assert [
      source_network.own_seed_init(c).init_from.workdir
      for c in imp.seed_configs(prune)
  ] == [str(source / 'seed_3'), str(source / 'seed_4')]
  config.num_seeds = 1
  config.seed = 7
  with pytest.raises(ValueError, match='trained seeds 3..4; it has no seed 7'):
    retrain.seed_source(config)
  # A source of one seed is read as it is.
  (source / 'config.json').write_text(json.dumps({'seed': 0, 'model': {}}))
  assert retrain.seed_source(config).source.workdir == str(source)


def test_command_refuses_an_unknown_figure(tmp_path):
  """Before the figures and TensorFlow are imported (seconds), before
  anything is written."""
  result = subprocess.run(
      [
          sys.executable,
          '-X',
          'importtime',
          '-m',
          'sslprune_jax.reproduce',
          '--figure=9',
          f'--workdir={tmp_path}',
      ],
      capture_output=True,
      text=True,
      check=False,
  )
  assert result.returncode != 0
  assert "--figure='9': choose regime or one of 1, 2, 3" in result.stderr
  imported = imported_modules(result.stderr)
  assert 'absl.flags' in imported
  assert not {'tensorflow', 'sslprune_jax.reproduce.fig1'} & set(imported)
  assert not list(tmp_path.iterdir())
  # The figures it names are the package's figure modules.
  listed = re.search(r'one of ([\d, ]+)\.', result.stderr).group(1)
  modules = {
      m.name
      for m in pkgutil.iter_modules(sslprune_jax.reproduce.__path__)
      if re.fullmatch(r'fig\d+', m.name)
  }
  assert {f'fig{n}' for n in listed.split(', ')} == modules
  for name in modules:
    module = importlib.import_module(f'sslprune_jax.reproduce.{name}')
    assert callable(module.make)


@pytest.fixture(scope='module')
def shared(tmp_path_factory):
  """One workdir for the one-seed figures, which share their IMP runs."""
  return tmp_path_factory.mktemp('repro')


def _curves_of(paths):
  rows = list(csv.DictReader(open(paths['csv'])))
  out = {}
  for r in rows:
    out.setdefault(r['curve'], []).append(r)
  return out


@pytest.mark.parametrize(
    'module',
    [fig6, fig1, fig4, fig5, fig7],
    ids=lambda m: m.__name__.rsplit('.', 1)[-1],
)
def test_figure_end_to_end(module, shrunk, shared):
  out = shared / 'report' / module.__name__.rsplit('.', 1)[-1]
  paths = module.make(str(shared / 'w'), str(out), seeds=1)
  curves = _curves_of(paths)
  shown = module.CURVES or [f'rewind {s} samples' for s in fig7._rewinds()]
  assert set(curves) == set(shown)
  for name, rows in curves.items():
    assert all(r['n'] == '1' for r in rows), name
    assert 1 <= len(rows) <= 2, name
  section = open(paths['section']).read()
  assert '| finding |' in section and 'inconclusive' in section
  assert (out / 'test_accuracy.png').stat().st_size > 0
  assert (
      shared / 'w' / 'wall_seconds' / module.__name__.rsplit('.', 1)[-1]
  ).exists()


def test_fig6_reports_every_objectives_natural_sparsity(shrunk, shared):
  paths = fig6.make(str(shared / 'w'), str(shared / 'fig6'), seeds=1)
  table = open(shared / 'fig6' / 'natural_sparsity.md').read()
  for objective in fig6.OBJECTIVES:
    assert f'| {objective} |' in table
  runs = fig6.runs(str(shared / 'w'), 1)
  unadjusted = report.load_run(runs['random, unadjusted'].directory)
  assert unadjusted.config['pruning']['natural_threshold'] == 0.0
  assert 'random, unadjusted' in open(paths['md']).read()


def test_fig4_prunes_only_the_first_layers(shrunk, shared):
  fig4.make(str(shared / 'w'), str(shared / 'fig4'), seeds=1)
  runs = fig4.runs(str(shared / 'w'), 1)
  for k in fig4.LAYERS:
    run = report.load_run(runs[f'labels, first {k}'].directory)
    assert run.config['pruning']['layers'] == k


def test_few_labels_sees_as_many_images_per_round():
  config = settings.config('few_labels', seeds=1)
  assert config.train.num_epochs == settings.EPOCHS / 0.1
  assert settings.config('labels').train.num_epochs == settings.EPOCHS
  assert settings.num_rounds(0.5, 0.005) == 8
  assert settings.num_rounds(0.2, 0.005) == 24
