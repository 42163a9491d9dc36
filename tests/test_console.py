"""The console of a run: progress lines or bars, warnings once, the full
log in the workdir."""

import fcntl
import io
import logging as pylogging
import os
import pathlib
import pty
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

from sslprune_jax import console
from sslprune_jax import progress

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run_round(shown, position=0, steps=8, start=0, pause=0.0):
  bar = shown.round(
      position, f'round {position}', start_step=start, num_steps=steps
  )
  for step in range(start + 1, steps + 1):
    time.sleep(pause)
    metrics = {'loss': 0.5, 'accuracy': 0.75} if step % 4 == 0 else None
    bar.update(step, metrics)
  bar.evaluating()
  bar.close()


def test_plain_lines_without_a_terminal(monkeypatch):
  monkeypatch.setattr(progress, 'PLAIN_INTERVAL', 0.0)
  out = io.StringIO()
  shown = progress.Progress(
      3, steps_per_round=8, images_per_step=128, stream=out, terminal=False
  )
  _run_round(shown)
  lines = out.getvalue().splitlines()
  assert '\r' not in out.getvalue()
  assert lines[0] == 'round 0 · step 1/8'
  # The last step is shown once, with its metrics and both ETAs.
  assert sum(' step 8/8' in l for l in lines) == 1
  last = lines[-1]
  for part in (
      'step/s',
      'round ETA 0s',
      'img/s',
      'loss 0.5',
      'accuracy 0.75',
      'run ETA',
  ):
    assert part in last, last


def test_plain_lines_are_spaced_in_time():
  out = io.StringIO()
  shown = progress.Progress(
      1, steps_per_round=100, images_per_step=1, stream=out, terminal=False
  )
  _run_round(shown, steps=100)
  # The first step, then (well within PLAIN_INTERVAL) only the last.
  assert len(out.getvalue().splitlines()) == 2


def test_run_eta_counts_the_rounds_left_at_the_measured_pace():
  shown = progress.Progress(
      4, steps_per_round=10, images_per_step=1, enabled=False
  )
  # Before a round has finished: this round's rate.
  assert shown.run_eta(1, 5.0, rate=2.0) == pytest.approx(5 + 2 * 10 / 2)
  # After: the finished rounds' time per step, evaluation included.
  shown.finished_round(30.0, 10)
  assert shown.run_eta(1, 5.0, rate=2.0) == pytest.approx(5 + 2 * 30)
  assert shown.run_eta(3, 0.0, rate=2.0) == 0


def test_a_bar_on_a_terminal():
  leader, follower = pty.openpty()
  # A terminal window of 100 columns, as tmux or an xterm reports.
  fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack('HHHH', 24, 100, 0, 0))
  with os.fdopen(follower, 'w') as tty:
    assert tty.isatty()
    shown = progress.Progress(
        2, steps_per_round=8, images_per_step=64, stream=tty
    )
    # Slower than the bar's redraw interval (0.1 s), as real steps are.
    _run_round(shown, position=1, pause=0.05)
    tty.flush()
    text = ''
    while select.select([leader], [], [], 1)[0]:
      text += os.read(leader, 1 << 16).decode()
  os.close(leader)
  assert '\r' in text  # redrawn in place
  assert 'round 1' in text and '8/8' in text
  assert 'loss 0.5' in text and 'run ETA' in text


def test_each_warning_once():
  once = console.Once()
  record = lambda level, msg: pylogging.LogRecord(
      'tf', level, 'x.py', 1, msg, None, None
  )
  assert once.filter(record(pylogging.WARNING, 'deprecated'))
  assert not once.filter(record(pylogging.WARNING, 'deprecated'))
  assert once.filter(record(pylogging.WARNING, 'another'))
  assert once.filter(record(pylogging.INFO, 'step'))
  assert once.filter(record(pylogging.INFO, 'step'))
  assert once.filter(record(pylogging.ERROR, 'failed'))
  assert once.filter(record(pylogging.ERROR, 'failed'))


def test_log_lines_wait_for_the_workdir(tmp_path):
  handler = console.WorkdirLog(tmp_path / 'w' / 'log.txt')
  handler.setFormatter(pylogging.Formatter('%(message)s'))
  emit = lambda msg: handler.emit(
      pylogging.LogRecord('x', pylogging.INFO, 'x.py', 1, msg, None, None)
  )
  emit('before')
  assert not (tmp_path / 'w').exists()  # Bad input leaves nothing behind.
  (tmp_path / 'w').mkdir()
  emit('after')
  handler.close()
  assert (tmp_path / 'w' / 'log.txt').read_text() == 'before\nafter\n'


def _quick(workdir, data_dir, *extra):
  overrides = {
      'data.train_split': 'train[:1024]',
      'data.eval_split': 'test[:500]',
      'model.width': 0.125,
      'train.num_epochs': 1.0,
      'pruning.num_rounds': 1,
      'pruning.rewind_samples': 256,
      'log_every_steps': 4,
      'data.data_dir': data_dir,
  }
  return subprocess.run(
      [
          sys.executable,
          '-m',
          'sslprune_jax.main',
          '--config=configs/labels.py:quick',
          f'--workdir={workdir}',
          *[f'--config.{k}={v}' for k, v in overrides.items()],
          *extra,
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=600,
  )


@pytest.mark.slow
def test_quick_run_console_and_log_file(data_dir, tmp_path):
  done = _quick(tmp_path / 'w', data_dir)
  assert done.returncode == 0, done.stderr
  console_text = done.stdout + done.stderr
  # The per-round table and progress lines, but no metric-writer echoes.
  assert 'Round 1 done.' in console_text
  assert 'round 1 (2 of 2, 80% left) · step 8/8' in console_text
  assert 'logging_writer' not in console_text
  assert 'Setting work unit notes' not in console_text
  warnings = [l for l in console_text.splitlines() if l.startswith('W1')]
  assert len(warnings) == len({l.split('] ', 1)[1] for l in warnings})
  log = (tmp_path / 'w' / 'log.txt').read_text()
  assert 'logging_writer' in log and 'train_loss' in log
  assert 'main.py' in log  # absl's format: file and line of each entry
  assert 'JAX process 0/1' in log and 'JAX process' not in console_text
  # The same command again says the run is finished instead of nothing;
  # --verbosity brings the INFO lines back to the console.
  again = _quick(tmp_path / 'w', data_dir, '--verbosity=0')
  assert again.returncode == 0, again.stderr
  assert 'finished: nothing left to do' in again.stdout
  assert 'Round 1 done.' not in again.stdout + again.stderr
  assert 'JAX process 0/1, 8 local / 8 global devices' in again.stderr
