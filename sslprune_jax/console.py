"""Where a command's log lines go: all of them to a file, few to the screen.

By default the console shows warnings and errors, each message once (TFDS
and TensorFlow repeat theirs every round), next to the progress display
(`sslprune_jax.progress`) and the per-round tables; every log line at INFO
and above goes to `<workdir>/log.txt` (`log_process<i>.txt` on the other
processes of a multi-host run). absl's `--verbosity` (`-v`), when given,
brings the INFO lines (or more) back to the console as well.

Orbax's INFO lines (several per checkpoint) are left out of both. A
workdir in a bucket (`gs://`) gets no log file: the log stays on the
console.
"""

from __future__ import annotations

import logging as pylogging

from absl import flags
from absl import logging
import jax
from etils import epath

from sslprune_jax import rundir

LOG_FILE = rundir.LOG


class OnlyWarningsFrom(pylogging.Filter):
  """Drops INFO lines logged from the given libraries (Orbax is chatty)."""

  def __init__(self, *libraries):
    super().__init__()
    self._libraries = libraries

  def filter(self, record):
    return record.levelno >= pylogging.WARNING or not any(
        f'/{lib}/' in record.pathname for lib in self._libraries
    )


class Once(pylogging.Filter):
  """Lets each distinct warning through once; INFO and below pass."""

  def __init__(self):
    super().__init__()
    self._seen = set()

  def filter(self, record):
    if record.levelno < pylogging.WARNING or record.levelno >= pylogging.ERROR:
      return True
    key = (record.name, record.pathname, record.lineno, record.getMessage())
    if key in self._seen:
      return False
    self._seen.add(key)
    return True


def log_path(workdir: str) -> epath.Path:
  index = jax.process_index()
  name = LOG_FILE if index == 0 else f'log_process{index}.txt'
  return epath.Path(workdir) / name


class WorkdirLog(pylogging.Handler):
  """Appends log lines to a file in the workdir once the run has made it.

  Until then (a run checks its config and data before it makes its
  workdir, so that bad input leaves nothing behind) lines are held in
  memory, at most `MAX_PENDING` of them.
  """

  MAX_PENDING = 10_000

  def __init__(self, path: epath.Path):
    super().__init__(pylogging.INFO)
    self.path = path
    self._file = None
    self._pending: list[str] = []

  def emit(self, record):
    try:
      line = self.format(record) + '\n'
      if self._file is None:
        if not self.path.parent.is_dir():
          if len(self._pending) < self.MAX_PENDING:
            self._pending.append(line)
          return
        self._file = open(self.path, 'a', encoding='utf-8')
        self._file.writelines(self._pending)
        self._pending = []
      self._file.write(line)
      self._file.flush()
    except Exception:  # pylint: disable=broad-except
      self.handleError(record)

  def close(self):
    if self._file is not None:
      self._file.close()
    super().close()


def route(workdir: str | None) -> str | None:
  """Sends the log to `<workdir>/log.txt` and keeps the console quiet.

  Call once, early in a command's main, after joining the other processes
  of a multi-host run. Returns the log file's path (None without a local
  workdir).
  """
  console = logging.get_absl_handler()
  console.addFilter(OnlyWarningsFrom('orbax'))
  if not flags.FLAGS['verbosity'].present:
    console.setLevel(pylogging.WARNING)
    console.addFilter(Once())
  if not workdir or '://' in workdir:
    return None  # A bucket takes no appends: the log stays on the console.
  to_file = WorkdirLog(log_path(workdir))
  to_file.setFormatter(logging.PythonFormatter())
  to_file.addFilter(OnlyWarningsFrom('orbax'))
  pylogging.getLogger().addHandler(to_file)
  return str(to_file.path)
