"""Preemption: SIGTERM makes a run checkpoint where it is and stop.

Schedulers (Cloud TPU maintenance, SLURM preemption or requeue, Kubernetes)
send SIGTERM some time before they kill a job. A run then saves an in-round
checkpoint at the next train step, exits with `EXIT_CODE`, and the same
command resumes it.

With one process, `install()` (called by `main.py`) replaces SIGTERM's
default action. Inside `listening()`, the train loop, SIGTERM only raises a
flag, and the loop checks `reached(step)` once per step; anywhere else (an
evaluation, loading data) it raises `Preempted` at once, and the run resumes
from its last finished round or in-round checkpoint. With several processes
(`jax.distributed`), JAX's own preemption service catches SIGTERM on any host
and `reached` becomes true on every host at the same step
(`multihost_utils.reached_preemption_sync_point`), so that all of them save
the same checkpoint together.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

# EX_TEMPFAIL of sysexits.h: a temporary failure; run the same command again.
EXIT_CODE = 75

_requested = threading.Event()
_listening = threading.Event()
# Calls of `reached`: the same count on every host, as they train in step.
_calls = 0


class Preempted(Exception):
  """The run saved its state after a preemption notice, and stopped."""


def _on_sigterm(signum, frame):
  del signum, frame  # Unused.
  _requested.set()
  if not _listening.is_set():
    raise Preempted(
        'SIGTERM outside the train loop; the last checkpoint ' 'is kept.'
    )


def install() -> None:
  """Makes SIGTERM a preemption notice (one process; see module doc)."""
  if jax.process_count() == 1:
    signal.signal(signal.SIGTERM, _on_sigterm)


@contextlib.contextmanager
def listening():
  """While active, SIGTERM waits for the train loop's next `reached`."""
  _listening.set()
  try:
    yield
  finally:
    _listening.clear()


def reached() -> bool:
  """Whether to checkpoint and stop now; called after every train step.

  With several processes this is a sync point: every host gets the same
  answer at the same call (JAX's protocol numbers the calls; they count up
  over the whole run, rounds included).
  """
  global _calls
  _calls += 1
  if jax.process_count() > 1:
    return multihost_utils.reached_preemption_sync_point(_calls)
  return _requested.is_set()


def clear() -> None:
  """Forgets a notice (after it has been handled, e.g. in tests)."""
  _requested.clear()


# Tests name a point of a run here (e.g. 'round_saved:2') to kill the run
# there, as `kill -9` would, where a signal sent from outside could only
# land there by chance.
KILL_AT = 'SSLPRUNE_JAX_KILL_AT'


def kill_point(name: str) -> None:
  """Kills this process with SIGKILL if `$SSLPRUNE_JAX_KILL_AT` is `name`."""
  if os.environ.get(KILL_AT) == name:
    os.kill(os.getpid(), signal.SIGKILL)
