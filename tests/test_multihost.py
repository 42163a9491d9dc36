"""Two processes on localhost (`jax.distributed`, gloo CPU collectives) run
the shrunk quick config and end with the masks of the one-process run.

Both runs have 8 devices in all (4 per process here) and the same per-device
batches: the one-process run reads the training split in two parts
(`data.read_shards=2` in `test_imp.OVERRIDES`), exactly as the two processes
each read their own half, and gradients are averaged in device order
(`train.exact_reduction`). Each process reads only its half, checkpoints are
written by both together, and only process 0 writes results and summaries.

XLA's CPU backend splits a convolution's weight gradient over its thread
pool, which has max(cores, devices of the process) threads, so one device's
gradient of the same batch differs in the last bits between a process with
4 devices and one with 8 unless both pools are the same size; the `NPROC`
environment variable sets it. (Without that, training amplified the
rounding: 170 of 77,858 mask entries differed after 2 rounds of 32 steps.)
With it, the two runs are identical to the bit.
"""

import os
import socket
import subprocess

import jax
import numpy as np

from sslprune_jax import checkpoint
from test_imp import ROOT, _command, round_masks


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _differing(expected, got):
  """Number of mask entries that differ, per round."""
  return {
      r: sum(
          int(np.sum(a != b))
          for a, b in zip(jax.tree.leaves(expected[r]), jax.tree.leaves(got[r]))
      )
      for r in expected
  }


def _thread_pool_size():
  """The size of this process's XLA CPU thread pool."""
  cores = int(os.environ.get('NPROC') or len(os.sched_getaffinity(0)))
  return max(cores, jax.local_device_count())


def test_two_processes_match_one(labels_run, data_dir, tmp_path):
  _, reference, results = labels_run
  workdir = tmp_path / 'two_processes'
  port = _free_port()
  env = dict(
      os.environ,
      NPROC=str(_thread_pool_size()),
      XLA_FLAGS='--xla_force_host_platform_device_count=4',
  )
  logs = [tmp_path / f'process_{i}.log' for i in range(2)]
  procs = []
  for i, log in enumerate(logs):
    with open(log, 'w') as out:
      procs.append(
          subprocess.Popen(
              [
                  *_command(workdir, data_dir),
                  f'--coordinator_address=localhost:{port}',
                  '--num_processes=2',
                  f'--process_id={i}',
              ],
              cwd=ROOT,
              env=env,
              stdout=out,
              stderr=subprocess.STDOUT,
          )
      )
  try:
    codes = [p.wait(timeout=900) for p in procs]
  finally:
    for p in procs:
      p.kill()
  texts = [log.read_text() for log in logs]
  assert codes == [0, 0], '\n\n'.join(t[-3000:] for t in texts)
  # Each process logs to its own file in the workdir.
  for i, name in enumerate(['log.txt', 'log_process1.txt']):
    assert (
        f'JAX process {i}/2, 4 local / 8 global devices'
        in (workdir / name).read_text()
    )

  one, two = (checkpoint.RunCheckpoints(str(d)) for d in (reference, workdir))
  rewind_gap = max(
      float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
      for a, b in zip(
          jax.tree.leaves(one.load_rewind()), jax.tree.leaves(two.load_rewind())
      )
  )
  one.close()
  two.close()
  expected, got = round_masks(reference), round_masks(workdir)
  assert sorted(got) == sorted(expected) == [0, 1, 2]
  differing = _differing(expected, got)
  print(
      'rewind point max |difference|:',
      rewind_gap,
      '; mask entries differing from the one-process run:',
      differing,
  )
  assert rewind_gap == 0.0
  assert set(differing.values()) == {0}, differing

  # The same results, but for the time taken (the last column); metric sums
  # over devices (not training) may add up in another order.
  def table(run):
    lines = (run / 'results.csv').read_text().splitlines()
    assert lines[0].endswith(',seconds')
    return np.array([line.split(',')[:-1] for line in lines[1:]], float)

  np.testing.assert_allclose(table(workdir), table(reference), rtol=1e-6)
  # Summaries come from process 0 alone.
  assert len(list((workdir / 'tb' / 'rounds').iterdir())) == 1
  assert (workdir / 'COMPLETE').exists()
