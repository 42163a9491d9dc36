"""How the process's C heap (glibc malloc) keeps memory it has freed.

XLA:CPU allocates each execution's temporaries afresh: one buffer per step,
230 MB for the CIFAR ResNet-18 at width 1/4 and batch 128. It is allocated on
one of XLA's worker threads, and glibc gives such a thread its own arena,
whose heaps are at most 64 MB, so a buffer that large is always a fresh
``mmap`` and is unmapped again when freed. Every step then faults in and
zeroes its 56,000 pages anew: a quarter of the step's CPU time went to the
kernel's page-fault handling, measured with ``perf`` and ``getrusage``.

The policy 'retain' (the default) puts every thread on glibc's main arena,
never serves an allocation from ``mmap`` and never trims the heap, so a
freed step buffer is handed back to the next step as it is. It is set with
``mallopt`` when the package is imported, which must come before JAX starts
its CPU client for XLA's threads to take it (they pick their arena at their
first allocation). The cost: the process keeps the largest heap it has used,
and all threads share one arena's lock (the input pipeline's throughput
is unchanged, ``python -m sslprune_jax.bench --sections=pipeline``).

``SSLPRUNE_JAX_HOST_MALLOC=system`` keeps glibc's defaults. Elsewhere than
glibc (macOS, musl) nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import platform

POLICIES = ('retain', 'system')
ENV = 'SSLPRUNE_JAX_HOST_MALLOC'

# mallopt's parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1

_applied: str | None = None


def policy_from_env() -> str:
  """The policy ``$SSLPRUNE_JAX_HOST_MALLOC`` asks for ('retain' if unset).

  Raises:
    ValueError: an unknown policy.
  """
  policy = os.environ.get(ENV, 'retain').strip().lower() or 'retain'
  if policy not in POLICIES:
    raise ValueError(f'{ENV}={policy!r} is not a policy; valid: {POLICIES}.')
  return policy


def _mallopt():
  if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
    return None
  return getattr(ctypes.CDLL(None), 'mallopt', None)


def apply(policy: str) -> str:
  """Sets the process's malloc `policy`; returns the one in force.

  'system' changes nothing (and cannot undo an earlier 'retain'). The
  answer is 'system' where the C library is not glibc.
  """
  global _applied
  if policy not in POLICIES:
    raise ValueError(f'Unknown malloc policy {policy!r}; valid: {POLICIES}.')
  mallopt = _mallopt()
  if policy == 'retain' and mallopt is not None:
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_ARENA_MAX, 1),
            (_M_MMAP_MAX, 0),
            (_M_TRIM_THRESHOLD, _INT_MAX),
        )
    )
    _applied = 'retain' if ok else 'system'
  elif _applied is None:
    _applied = 'system'
  return _applied


def applied() -> str | None:
  """The policy in force, or None before `apply`."""
  return _applied
