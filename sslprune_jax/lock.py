"""One process per work directory.

A run holds `<workdir>/lock` while it runs; a second process started on the
same workdir is refused at once, with a message that names the holder
(host, process id, start time, command), instead of racing the first for
its checkpoints.

A local workdir is locked with flock(2): the kernel drops the lock when
the process ends, however it ends (kill -9 included), so a crash never
leaves a lock that blocks the resume. Object stores (gs://, s3://) have no
such lock; there the file is a lease that the holder renews every
`LEASE_RENEW_S` seconds, and a lease not renewed for `LEASE_EXPIRY_S`
seconds is stale and taken over.

Of a multi-host run, process 0 holds the lock for all its processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
from typing import Iterator
import uuid

from etils import epath
import jax

from sslprune_jax import checkpoint
from sslprune_jax import rundir

FILENAME = rundir.LOCK
LEASE_RENEW_S = 60.0
LEASE_EXPIRY_S = 300.0
# How long a new lease holder waits before reading its lease back: a
# process that wrote at the same moment has then written too.
LEASE_SETTLE_S = 2.0


class WorkdirInUseError(RuntimeError):
  """Another process is running in the workdir."""


class UnusableWorkdirError(ValueError):
  """The workdir cannot be made, written or reached."""


def _holder() -> dict:
  return {
      'host': socket.gethostname(),
      'pid': os.getpid(),
      'started': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
      'command': ' '.join(sys.argv),
      'token': uuid.uuid4().hex,
  }


def _describe(holder: dict) -> str:
  if not holder:
    return 'another process (it has not yet said which)'
  return (
      f"process {holder.get('pid')} on {holder.get('host')}, started "
      f"{holder.get('started')}: {holder.get('command')}"
  )


def _refusal(workdir: epath.Path, holder: dict) -> WorkdirInUseError:
  return WorkdirInUseError(
      f'{workdir} is in use by {_describe(holder)}. One process at a time '
      'runs in a workdir: wait for it to finish (or stop it; its run '
      'resumes from its checkpoints), or give another --workdir.'
  )


def _read(path: epath.Path) -> dict:
  try:
    holder = json.loads(path.read_text())
  except (OSError, ValueError):
    return {}
  return holder if isinstance(holder, dict) else {}


@contextlib.contextmanager
def _flock(workdir: epath.Path) -> Iterator[None]:
  path = workdir / FILENAME
  # Opened without truncating: the holder's description stays readable
  # until this process owns the lock.
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise _unusable(str(workdir), e) from e
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise _refusal(workdir, _read(path)) from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(_holder()).encode())
    yield
  finally:
    os.close(fd)  # Releases the lock. The file stays: see `_unlink_if_new`.


@contextlib.contextmanager
def _lease(workdir: epath.Path) -> Iterator[None]:
  path = workdir / FILENAME
  if path.exists():
    holder = _read(path)
    if time.time() - float(holder.get('renewed', 0)) < LEASE_EXPIRY_S:
      raise _refusal(workdir, holder)
  mine = _holder()

  def renew():
    path.write_text(json.dumps({**mine, 'renewed': time.time()}))

  try:
    renew()
  except Exception as e:  # pylint: disable=broad-except
    raise _unusable(str(workdir), e) from e
  time.sleep(LEASE_SETTLE_S)
  holder = _read(path)
  if holder.get('token') != mine['token']:
    raise _refusal(workdir, holder)
  stop = threading.Event()

  def keep_renewing():
    while not stop.wait(LEASE_RENEW_S):
      renew()

  renewer = threading.Thread(
      target=keep_renewing, daemon=True, name='workdir-lease'
  )
  renewer.start()
  try:
    yield
  finally:
    stop.set()
    renewer.join()
    path.unlink(missing_ok=True)


_HELD: dict[str, int] = {}


@contextlib.contextmanager
def held(workdir: str) -> Iterator[None]:
  """Holds `workdir` for this process, creating it if need be.

  Re-entrant within a process (a run that runs others in its own workdir).
  A workdir this call created is removed again if the body raises and left
  nothing in it but the lock and the log, so that bad input leaves nothing
  behind.

  Raises:
    WorkdirInUseError: another process holds it.
  """
  if not workdir:
    raise UnusableWorkdirError(
        '--workdir is empty: give the directory the '
        'run keeps its checkpoints and results in.'
    )
  key = os.path.abspath(workdir) if '://' not in workdir else workdir
  if _HELD.get(key) or jax.process_index() != 0:
    _HELD[key] = _HELD.get(key, 0) + 1
    try:
      yield
    finally:
      _HELD[key] -= 1
    return
  path = epath.Path(workdir)
  try:
    created = not path.exists()
    if not created and not path.is_dir():
      raise UnusableWorkdirError(
          f'--workdir {workdir} is a file, not a directory; give a directory '
          '(it is made if missing).'
      )
    path.mkdir(parents=True, exist_ok=True)
  except UnusableWorkdirError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise _unusable(workdir, e) from e
  with _lease(path) if '://' in workdir else _flock(path):
    _HELD[key] = 1
    try:
      yield
    except BaseException:
      if created:
        _unlink_if_new(path)
      raise
    finally:
      _HELD[key] = 0


def _unusable(workdir, e: BaseException) -> UnusableWorkdirError:
  # OSError locally; a bucket's client raises its own kinds (no
  # credentials, no such bucket, no permission), with messages that run to
  # pages: the first line says which.
  return UnusableWorkdirError(
      f'--workdir {workdir} cannot be written: {type(e).__name__}: '
      f'{checkpoint.first_line(e)}'
  )


def _unlink_if_new(path: epath.Path) -> None:
  """Removes a workdir that holds only the lock and the log."""
  names = {p.name for p in path.iterdir()}
  if names <= {FILENAME, 'log.txt'}:
    for name in names:
      (path / name).unlink(missing_ok=True)
    path.rmdir()
