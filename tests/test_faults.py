"""Faults and bad input, as a user meets them through `main`.

Covers: a kill -9 between the last round's checkpoint and its results row
(made deterministic by `preemption.kill_point`); a second process on a
running workdir, and the lock a killed one leaves; refusals of damaged
config.json files, of checkpoints without one, and of unusable workdirs;
flag and config-file errors said in a line; and each recovery message,
followed to the letter, leading to a run that finishes with the masks of
an uninterrupted one.
"""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from sslprune_jax import checkpoint
from sslprune_jax import export
from sslprune_jax import imp
from sslprune_jax import lock
from sslprune_jax import preemption
from test_imp import OVERRIDES, ROOT, assert_same_masks, tiny_config

# Smaller than test_imp's shrunk run: 8 steps a round, 2 rounds, in-round
# checkpoints every 2 steps.
SMALL = {
    **OVERRIDES,
    'data.train_split': 'train[:1024]',
    'train.num_epochs': 1.0,
    'pruning.num_rounds': 1,
    'pruning.rewind_samples': 256,
    'checkpoint_every_steps': 2,
}


def _main(workdir, data_dir, *extra, **popen):
  flags = [f'--config.{k}={v}' for k, v in SMALL.items()]
  cmd = [
      sys.executable,
      '-m',
      'sslprune_jax.main',
      '--config=configs/labels.py:quick',
      f'--workdir={workdir}',
      f'--config.data.data_dir={data_dir}',
      *flags,
      *extra,
  ]
  return subprocess.Popen(
      cmd,
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      **popen,
  )


def _finish(proc, timeout=600):
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, out, err


def _rows(workdir):
  with open(workdir / 'results.csv') as f:
    return list(csv.DictReader(f))


@pytest.mark.slow  # `main` in subprocesses.
def test_kill_after_the_last_checkpoint_loses_no_row(data_dir, tmp_path):
  workdir = tmp_path / 'w'
  code, _, err = _finish(
      _main(
          workdir,
          data_dir,
          env={**os.environ, preemption.KILL_AT: 'round_saved:1'},
      )
  )
  assert code == -signal.SIGKILL, err[-3000:]
  # Killed after round 1's checkpoint, before its row and clean-up.
  assert [r['round'] for r in _rows(workdir)] == ['0']
  assert (workdir / 'round_01').exists()
  assert not (workdir / 'COMPLETE').exists()
  # A damaged export is found and written again too.
  network = workdir / 'export' / 'round_00' / 'network.npz'
  network.write_bytes(network.read_bytes()[:100])
  code, _, err = _finish(_main(workdir, data_dir))
  assert code == 0, err[-3000:]
  rows = _rows(workdir)
  assert [r['round'] for r in rows] == ['0', '1']
  ckpts = checkpoint.RunCheckpoints(str(workdir))
  try:
    for r in (0, 1):
      saved = ckpts.round_metrics(r)
      assert float(rows[r]['test_accuracy']) == pytest.approx(
          saved['test_accuracy']
      )
      variables, mask = export.load(str(workdir / 'export' / f'round_{r:02d}'))
      for a, b in zip(
          jax.tree.leaves(mask), jax.tree.leaves(ckpts.load_round(r)['mask'])
      ):
        np.testing.assert_array_equal(a, np.asarray(b))
      assert variables['params']
  finally:
    ckpts.close()
  assert not (workdir / 'round_01').exists()
  assert (workdir / 'COMPLETE').exists()


@pytest.mark.slow  # `main` in subprocesses.
def test_second_process_is_refused_and_a_killed_one_blocks_nothing(
    data_dir, tmp_path
):
  workdir = tmp_path / 'w'
  first = _main(workdir, data_dir)
  start = time.time()
  while not (workdir / 'rewind').exists():
    assert first.poll() is None, first.communicate()[1][-3000:]
    assert time.time() - start < 300
    time.sleep(0.05)
  code, _, err = _finish(_main(workdir, data_dir))
  assert code == 1
  assert f'is in use by process {first.pid} on ' in err
  assert 'main.py --config=configs/labels.py:quick' in err
  assert 'Traceback' not in err
  first.kill()  # kill -9: the kernel drops its lock.
  first.wait()
  code, _, err = _finish(_main(workdir, data_dir))
  assert code == 0, err[-3000:]
  assert [r['round'] for r in _rows(workdir)] == ['0', '1']


def test_lock_is_held_once_and_refusal_names_the_holder(tmp_path):
  with lock.held(str(tmp_path / 'w')):
    holder = json.loads((tmp_path / 'w' / 'lock').read_text())
    assert holder['pid'] == os.getpid()
    with lock.held(str(tmp_path / 'w')):  # Re-entrant in one process.
      pass
    taken = subprocess.run(
        [
            sys.executable,
            '-c',
            'import sys; from sslprune_jax import lock\n'
            'with lock.held(sys.argv[1]): pass',
            str(tmp_path / 'w'),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert taken.returncode == 1
    assert f'is in use by process {os.getpid()}' in taken.stderr
  with lock.held(str(tmp_path / 'w')):  # Released.
    pass


def test_a_new_workdir_left_by_bad_input_is_removed(tmp_path):
  with pytest.raises(ValueError, match='bad'):
    with lock.held(str(tmp_path / 'w')):
      raise ValueError('bad')
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize(
    'content,message',
    [
        ('', 'is damaged \\(not JSON'),
        ('{"seed": ', 'is damaged \\(not JSON'),
        ('[]', 'it holds \\[\\], not a config'),
        ('{}', 'it holds \\{\\}, not a config'),
    ],
)
def test_damaged_config_json_is_named(tmp_path, content, message):
  (tmp_path / 'config.json').write_text(content)
  with pytest.raises(
      checkpoint.ConfigMismatchError,
      match=re.escape(str(tmp_path / 'config.json')) + '.*' + message,
  ):
    checkpoint.check_or_write_config(str(tmp_path), tiny_config('/nowhere'))


def test_checkpoints_without_config_json_are_refused(
    labels_run, data_dir, tmp_path
):
  _, reference, _ = labels_run
  copy = tmp_path / 'copy'
  shutil.copytree(reference, copy)
  (copy / 'config.json').unlink()
  with pytest.raises(
      checkpoint.ConfigMismatchError,
      match='holds checkpoints \\(rewind, rounds\\) but no ' 'config.json',
  ):
    imp.run(tiny_config(data_dir, seed=1), str(copy))
  assert not (copy / 'config.json').exists()


def test_damaged_rewind_point_advice_leads_to_the_same_masks(
    labels_run, tmp_path
):
  config, reference, _ = labels_run
  copy = tmp_path / 'copy'
  shutil.copytree(reference, copy)
  shutil.rmtree(copy / 'rounds' / '2')
  for f in (copy / 'rewind').rglob('*'):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(b'\0' * 7)
  with pytest.raises(checkpoint.CorruptCheckpointError) as error:
    imp.run(config, str(copy))
  message = str(error.value)
  assert len(message.splitlines()) == 2, message
  assert f'Delete {copy}/rewind and {copy}/rounds/0 and run again' in message
  for path in (f'{copy}/rewind', f'{copy}/rounds/0'):
    shutil.rmtree(path)
  imp.run(config, str(copy))
  assert_same_masks(reference, copy)


QUICK = '--config=configs/labels.py:quick'
# name: (flags after --workdir, what stderr says); {data} is the data_dir.
BAD_COMMANDS = {
    'variant': (
        ['--config=configs/labels.py:quik'],
        "Unknown variant 'quik' of labels.py; valid: (",
    ),
    'field': (
        [QUICK, '--config.train.momentun=0.5'],
        "--config.train.momentun: the config has no field 'momentun'. "
        'Did you mean "momentum"',
    ),
    'file': (
        ['--config=configs/nothere.py'],
        "--config: No such file or directory: 'configs/nothere.py'",
    ),
    'nan': (
        [
            QUICK,
            '--config.data.data_dir={data}',
            '--config.train.num_epochs=nan',
        ],
        'train.num_epochs must be a finite number > 0, got nan',
    ),
    'workdir_is_a_file': (
        [QUICK, '--config.data.data_dir={data}'],
        'is a file, not a directory',
    ),
    'workdir_under_a_file': (
        [QUICK, '--config.data.data_dir={data}'],
        'cannot be written: NotADirectoryError',
    ),
    'config_json': (
        [QUICK, '--config.data.data_dir={data}'],
        'config.json is damaged: it holds [], not a config',
    ),
    'empty_workdir': (
        [QUICK, '--config.data.data_dir={data}'],
        '--workdir is empty',
    ),
    # Without Fashion-MNIST's files (`SSLPRUNE_FASHION_MNIST_DIR` below): no
    # advice to run the quick variant, which is the one that needs them.
    'no_fashion_mnist': (
        [QUICK, '--config.data.data_dir={empty}'],
        'its source files are not in',
    ),
}


@pytest.mark.slow  # `main` in subprocesses.
def test_bad_commands_get_a_message_and_no_traceback(data_dir, tmp_path):
  procs = {}
  for name, (args, _) in BAD_COMMANDS.items():
    workdir = tmp_path / name / 'w'
    workdir.parent.mkdir()
    if name == 'workdir_is_a_file':
      workdir.write_text('')
    elif name == 'workdir_under_a_file':
      workdir.parent.rmdir()
      workdir.parent.write_text('')
    elif name == 'config_json':
      workdir.mkdir()
      (workdir / 'config.json').write_text('[]')
    elif name == 'empty_workdir':
      workdir = ''
    empty = tmp_path / name / 'empty'
    procs[name] = subprocess.Popen(
        [
            sys.executable,
            '-m',
            'sslprune_jax.main',
            f'--workdir={workdir}',
            *(a.format(data=data_dir, empty=empty) for a in args),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, 'SSLPRUNE_FASHION_MNIST_DIR': str(empty)},
    )
  errs = {}
  for name, proc in procs.items():
    _, errs[name] = proc.communicate(timeout=300)
    assert proc.returncode == 1, (name, errs[name][-3000:])
    assert BAD_COMMANDS[name][1] in errs[name], (name, errs[name][-3000:])
    assert 'Traceback' not in errs[name], (name, errs[name][-3000:])
  assert ':quick' not in errs['no_fashion_mnist']
  assert not (tmp_path / 'no_fashion_mnist' / 'w').exists()
  assert not (ROOT / 'lock').exists()  # The empty --workdir made nothing.


def test_sigterm_while_starting_says_so(tmp_path):
  proc = subprocess.Popen(
      [
          sys.executable,
          '-m',
          'sslprune_jax.main',
          '--config=configs/labels.py:quick',
          f'--workdir={tmp_path / "w"}',
      ],
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )
  time.sleep(1.0)  # Inside the imports, which take several seconds.
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 1
  assert 'Stopped by SIGTERM while starting' in err
  assert not (tmp_path / 'w').exists()


def test_bucket_lease_refuses_a_live_holder_and_takes_a_stale_one(
    tmp_path, monkeypatch
):
  # Buckets have no flock: the lease path, run here on a local folder.
  monkeypatch.setattr(lock, 'LEASE_SETTLE_S', 0.0)
  path = tmp_path / lock.FILENAME
  live = {
      'pid': 12,
      'host': 'tpu-vm-3',
      'started': 'then',
      'command': 'main.py --config=c',
      'token': 'x',
      'renewed': time.time(),
  }
  path.write_text(json.dumps(live))
  with pytest.raises(
      lock.WorkdirInUseError, match='in use by process 12 on tpu-vm-3'
  ):
    with lock._lease(tmp_path):  # pylint: disable=protected-access
      pass
  path.write_text(
      json.dumps({**live, 'renewed': time.time() - lock.LEASE_EXPIRY_S - 1})
  )
  with lock._lease(tmp_path):  # pylint: disable=protected-access
    assert json.loads(path.read_text())['pid'] == os.getpid()
  assert not path.exists()
