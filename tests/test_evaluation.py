"""Evaluation metrics against hand-computed cases."""

import json
import subprocess
import sys

import numpy as np
import pytest

from sslprune_jax import report
from sslprune_jax import voc


def test_voc07_ap_by_hand_with_a_difficult_image_and_a_tie():
  # Ranked: 0.9 hit; 0.8 miss and 0.8 hit (tied); 0.7 difficult; 0.6 hit;
  # 0.5 miss. 3 positives. (recall, precision) at each threshold:
  # (1/3, 1), (2/3, 2/3), (2/3, 2/3) (the difficult one changes nothing),
  # (1, 3/4), (1, 3/5). Recall levels 0-0.3 reach precision 1, levels
  # 0.4-1.0 at most 3/4: AP = (4 * 1 + 7 * 0.75) / 11.
  scores = np.array([0.5, 0.8, 0.9, 0.7, 0.8, 0.6])
  target = np.array([-1, -1, 1, 0, 1, 1])
  assert voc.average_precision(scores, target) == pytest.approx(9.25 / 11)
  # Without the difficult flag the 0.7 image would be a miss: precision at
  # recall 1 drops to 3/5 and 3/6, and recall 2/3 is reached at 2/3.
  flagged = target.copy()
  flagged[3] = -1
  assert voc.average_precision(scores, flagged) == pytest.approx(
      (4 * 1 + 3 * (2 / 3) + 4 * 0.6) / 11
  )


def test_tied_scores_are_one_threshold_whatever_their_order():
  # A hit and a miss tied: one point (recall 1, precision 1/2), so AP 1/2
  # in either order (a stable sort would give 1 or 1/2).
  assert voc.average_precision(
      np.array([0.5, 0.5]), np.array([1, -1])
  ) == pytest.approx(0.5)
  assert voc.average_precision(
      np.array([0.5, 0.5]), np.array([-1, 1])
  ) == pytest.approx(0.5)
  assert voc.average_precision(
      np.array([0.2, 0.5]), np.array([-1, 1])
  ) == pytest.approx(1.0)


def test_targets_and_map():
  # Image 0: a dog (class 1) and a difficult cat (class 0); image 1: a
  # difficult dog only; image 2: a cat.
  target = voc.targets([[1, 0], [1], [0]], [[1], [], [0]], num_classes=3)
  np.testing.assert_array_equal(target, [[0, 1, -1], [-1, 0, -1], [1, -1, -1]])
  scores = np.array([[0.9, 0.2, 0.1], [0.1, 0.8, 0.3], [0.4, 0.1, 0.2]])
  mean, aps = voc.mean_average_precision(scores, target)
  # Cat: image 0 (0.9) is difficult; image 2 (0.4), the only positive, is
  # ranked above the miss (image 1, 0.1): AP 1. Dog: image 1 (0.8) is
  # ignored; image 0 (0.2), the positive, is above the miss image 2 (0.1).
  # Class 2 has no positive: NaN, left out of the mean.
  assert aps[0] == pytest.approx(1.0) and aps[1] == pytest.approx(1.0)
  assert np.isnan(aps[2])
  assert mean == pytest.approx(1.0)
  with pytest.raises(ValueError, match='No class'):
    voc.mean_average_precision(scores[:, 2:], target[:, 2:])


def _write_run(path, seed, accuracies, **config):
  path.mkdir(parents=True)
  (path / 'config.json').write_text(
      json.dumps(
          {
              'seed': seed,
              'task': {'name': 'labels'},
              'log_every_steps': 10,
              **config,
          }
      )
  )
  lines = ['round,fraction_left,test_accuracy']
  lines += [f'{r},{0.8 ** r},{a}' for r, a in enumerate(accuracies)]
  (path / 'results.csv').write_text('\n'.join(lines) + '\n')
  return report.load_run(str(path))


def test_report_mean_and_standard_error_by_hand(tmp_path):
  runs = [
      _write_run(tmp_path / 's0', 0, [0.90, 0.80, 0.70]),
      _write_run(tmp_path / 's1', 1, [0.92, 0.84, 0.71]),
      _write_run(tmp_path / 's2', 2, [0.94, 0.82]),
  ]
  rows = report.summarize(runs, 'test_accuracy')
  # Rounds all three finished: 0 and 1. Round 0: mean 0.92, sample std 0.02,
  # s.e. 0.02 / sqrt(3); round 1: mean 0.82, std 0.02 as well.
  assert [r['round'] for r in rows] == [0, 1]
  assert rows[0]['mean'] == pytest.approx(0.92)
  assert rows[0]['sem'] == pytest.approx(0.02 / np.sqrt(3))
  assert rows[1]['mean'] == pytest.approx(0.82)
  assert rows[1]['sem'] == pytest.approx(0.02 / np.sqrt(3))
  assert rows[1]['fraction_left'] == pytest.approx(0.8) and rows[1]['n'] == 3
  csv_text, markdown = report.tables(
      {'labels': runs, 'one seed': [runs[0]]}, 'test_accuracy'
  )
  assert csv_text.splitlines()[0] == 'curve,round,fraction_left,mean,sem,n'
  assert '| 100.00% | 0.9200 ± 0.0115 | 0.9000 |' in markdown
  assert '| 64.00% |  | 0.7000 |' in markdown


def test_report_rows_are_fractions_left_for_curves_of_other_rates(tmp_path):
  fast = [_write_run(tmp_path / 'fast', 0, [0.9, 0.8, 0.7])]
  slow = [_write_run(tmp_path / 'slow', 0, [0.9, 0.85, 0.8, 0.75, 0.7])]
  for run, left in (
      (fast[0], (1.0, 0.64, 0.4096)),
      (slow[0], (1.0, 0.8, 0.64, 0.512, 0.4096)),
  ):
    for row, f in zip(run.rows, left):
      row['fraction_left'] = str(f)
  _, markdown = report.tables({'fast': fast, 'slow': slow}, 'test_accuracy')
  rows = markdown.splitlines()[2:]
  # Round 1 is 64% left for one curve and 80% for the other: two rows.
  assert rows == [
      '| 100.00% | 0.9000 | 0.9000 |',
      '| 80.00% |  | 0.8500 |',
      '| 64.00% | 0.8000 | 0.8000 |',
      '| 51.20% |  | 0.7500 |',
      '| 40.96% | 0.7000 | 0.7000 |',
  ]


def test_report_refuses_runs_that_differ_in_more_than_the_seed(tmp_path):
  a = _write_run(tmp_path / 'a', 0, [0.9], task={'name': 'labels'})
  b = _write_run(tmp_path / 'b', 1, [0.9], task={'name': 'rotnet'})
  with pytest.raises(ValueError, match=r"task.name: 'labels' -> 'rotnet'"):
    report.summarize([a, b], 'test_accuracy')
  with pytest.raises(ValueError, match='no column'):
    report.summarize([a], 'test_rotation_accuracy')
  with pytest.raises(FileNotFoundError, match='config.json does not exist'):
    report.load_run(str(tmp_path))


def test_report_command_writes_table_and_plot(tmp_path):
  for seed, accs in enumerate(([0.9, 0.8], [0.92, 0.84])):
    _write_run(tmp_path / f'labels_{seed}', seed, accs)
  _write_run(tmp_path / 'random_0', 0, [0.9, 0.5], pruning='random')
  out = tmp_path / 'out'
  done = subprocess.run(
      [
          sys.executable,
          '-m',
          'sslprune_jax.report',
          f'--out={out}',
          f'--curve=labels={tmp_path}/labels_0,{tmp_path}/labels_1',
          f'--curve=random={tmp_path}/random_0',
      ],
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert '| 80.00% | 0.8200 ± 0.0200 | 0.5000 |' in done.stdout
  png = (out / 'test_accuracy.png').read_bytes()
  assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 5000
  assert (out / 'test_accuracy.csv').read_text().count('\n') == 5
  bad = subprocess.run(
      [
          sys.executable,
          '-m',
          'sslprune_jax.report',
          f'--out={out}',
          f'--curve=mixed={tmp_path}/labels_0,{tmp_path}/random_0',
      ],
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert bad.returncode != 0 and 'differ in more than the seed' in bad.stderr
