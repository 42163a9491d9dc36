"""The malloc policy set on import: freed memory is reused, not refaulted.

A thread other than the main one allocates a buffer larger than glibc's
per-thread heaps, as XLA:CPU's workers allocate a step's temporaries, frees
it and allocates it again; the page faults of touching the second buffer
are counted. With 'retain' the second buffer is the first one's memory;
with glibc's defaults it is a fresh mapping whose every page faults.
"""

import os
import platform
import subprocess
import sys

import pytest

from sslprune_jax import host_memory

_PROBE = r"""
import ctypes, resource, threading
import sslprune_jax
from sslprune_jax import host_memory
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 96 << 20
faults = []
def touch_twice():
  for _ in range(2):
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
                  - before)
    libc.free(p)
t = threading.Thread(target=touch_twice)
t.start(); t.join()
print(host_memory.applied(), faults[1], size // 4096)
"""

glibc_only = pytest.mark.skipif(
    platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc',
    reason='the policy acts on glibc malloc only',
)


def _probe(policy: str) -> tuple[str, int, int]:
  env = {**os.environ, host_memory.ENV: policy}
  out = subprocess.run(
      [sys.executable, '-c', _PROBE],
      env=env,
      check=True,
      capture_output=True,
      text=True,
  ).stdout.split()
  return out[0], int(out[1]), int(out[2])


@glibc_only
def test_retain_reuses_a_freed_thread_buffer():
  applied, faults, pages = _probe('retain')
  assert applied == 'retain'
  assert faults < pages // 20


@glibc_only
def test_system_defaults_refault_it():
  # The contrast that makes the test above mean something.
  applied, faults, pages = _probe('system')
  assert applied == 'system'
  assert faults > pages // 2


def test_unknown_policy_is_refused(monkeypatch):
  monkeypatch.setenv(host_memory.ENV, 'jemalloc')
  with pytest.raises(
      ValueError,
      match="SSLPRUNE_JAX_HOST_MALLOC='jemalloc'"
      r".*valid: \('retain', 'system'\)",
  ):
    host_memory.policy_from_env()
  with pytest.raises(ValueError, match='Unknown malloc policy'):
    host_memory.apply('jemalloc')


def test_unset_means_retain(monkeypatch):
  monkeypatch.delenv(host_memory.ENV, raising=False)
  assert host_memory.policy_from_env() == 'retain'
  monkeypatch.setenv(host_memory.ENV, ' System ')
  assert host_memory.policy_from_env() == 'system'
