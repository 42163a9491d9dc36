"""What the console shows while a run trains: one progress line per round.

On a terminal, a tqdm bar per round: `round r (k of N, f% left)`, steps
done, the round's ETA, steps/s, and after it images/s, the train loss and
accuracy and the whole run's ETA. Elsewhere (CI, a log collector, `nohup`), where a bar's
carriage returns would garble the output, the same facts as a plain line at
most every `PLAIN_INTERVAL` seconds and at the end of each round.

The run's ETA counts the rounds still to train after this one at the time
per step that the rounds finished in this process took (their evaluation
included), or, before any has finished, at this round's step rate.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO

import tqdm

# Seconds between plain (non-terminal) progress lines.
PLAIN_INTERVAL = 30.0


def _duration(seconds: float) -> str:
  """'1h02m', '3m05s', '42s'."""
  seconds = max(0, int(round(seconds)))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  if minutes:
    return f'{minutes}m{secs:02d}s'
  return f'{secs}s'


def _is_terminal(stream: IO[str]) -> bool:
  """A terminal with a width: a pty nobody sized (0 columns) would show an
  empty bar, so it gets plain lines."""
  try:
    return stream.isatty() and os.get_terminal_size(stream.fileno()).columns > 0
  except (AttributeError, OSError, ValueError):
    return False


class Progress:
  """The progress of a run of `num_rounds` rounds (see the module doc)."""

  def __init__(
      self,
      num_rounds: int,
      *,
      steps_per_round: int,
      images_per_step: int,
      enabled: bool = True,
      stream: IO[str] | None = None,
      terminal: bool | None = None,
  ):
    """
    Args:
      num_rounds: rounds in the run, including any already finished.
      steps_per_round: the steps a round after the first trains (from the
        rewind point), for the run's ETA.
      images_per_step: images of one step, over all devices and seeds.
      enabled: False shows nothing (processes other than the first).
      stream: where to write (stderr).
      terminal: whether `stream` is a terminal (default: its isatty()).
    """
    self.num_rounds = num_rounds
    self.steps_per_round = steps_per_round
    self.images_per_step = images_per_step
    self.enabled = enabled
    self.stream = stream or sys.stderr
    self.terminal = _is_terminal(self.stream) if terminal is None else terminal
    self._trained: list[tuple[float, int]] = []  # (seconds, steps)

  def round(
      self, position: int, label: str, *, start_step: int, num_steps: int
  ) -> RoundProgress:
    """The display of one round, the `position`-th (0-based) of the run,
    shown as `label`."""
    return RoundProgress(self, position, label, start_step, num_steps)

  def finished_round(self, seconds: float, steps: int) -> None:
    self._trained.append((seconds, steps))

  def run_eta(self, position: int, round_eta: float, rate: float) -> float:
    """Seconds until the run's last round ends, `round_eta` from now for
    this one, which trains at `rate` steps/s."""
    if self._trained:
      per_step = sum(t for t, _ in self._trained) / sum(
          s for _, s in self._trained
      )
    else:
      per_step = 1 / rate
    rounds_after = self.num_rounds - position - 1
    return round_eta + per_step * self.steps_per_round * rounds_after


class RoundProgress:
  """One round's display; `update` after each step, `close` at the end."""

  def __init__(
      self,
      run: Progress,
      position: int,
      label: str,
      start_step: int,
      num_steps: int,
  ):
    self.run = run
    self.position = position
    self.start_step = start_step
    self.num_steps = num_steps
    self.step = start_step
    self.metrics: dict[str, float] = {}
    self.label = label
    self._t0 = time.monotonic()
    # The rate is measured from the first step done, which compiles.
    self._rate_from: tuple[float, int] | None = None
    self._last_plain = -float('inf')
    self._bar = None
    if run.enabled and run.terminal:
      self._bar = tqdm.tqdm(
          total=num_steps,
          initial=start_step,
          desc=self.label,
          unit='step',
          file=run.stream,
          dynamic_ncols=True,
          leave=False,
      )

  def rate(self) -> float | None:
    """Steps per second since the first step of this process."""
    if self._rate_from is None:
      return None
    t, s = self._rate_from
    elapsed = time.monotonic() - t
    return (self.step - s) / elapsed if elapsed > 0 and self.step > s else None

  def status(self) -> str:
    """Images/s, train metrics and the run's ETA, as ' · '-joined parts."""
    parts = []
    rate = self.rate()
    if rate:
      parts.append(f'{rate * self.run.images_per_step:.0f} img/s')
    for k in ('loss', 'accuracy'):
      if k in self.metrics:
        parts.append(f'{k} {self.metrics[k]:.4g}')
    if rate:
      left = (self.num_steps - self.step) / rate
      parts.append(
          'run ETA ' + _duration(self.run.run_eta(self.position, left, rate))
      )
    return ' · '.join(parts)

  def plain_line(self) -> str:
    rate = self.rate()
    parts = [self.label, f'step {self.step}/{self.num_steps}']
    if rate:
      parts += [
          f'{rate:.2f} step/s',
          'round ETA ' + _duration((self.num_steps - self.step) / rate),
      ]
    status = self.status()
    return ' · '.join(parts) + (' · ' + status if status else '')

  def update(self, step: int, metrics: dict[str, float] | None = None):
    """Records that `step` steps are done (and the latest train metrics)."""
    if self._rate_from is None:
      self._rate_from = (time.monotonic(), step)
    done, self.step = step - self.step, step
    if metrics:
      self.metrics = metrics
    if not self.run.enabled:
      return
    if self._bar is not None:
      self._bar.update(done)
      if metrics:
        self._bar.set_postfix_str(self.status(), refresh=False)
    elif (step == self.num_steps and metrics) or (  # The last step has them.
        step < self.num_steps
        and time.monotonic() - self._last_plain >= PLAIN_INTERVAL
    ):
      self._last_plain = time.monotonic()
      print(self.plain_line(), file=self.run.stream, flush=True)

  def evaluating(self) -> None:
    if self._bar is not None:
      self._bar.set_postfix_str('evaluating…')

  def close(self) -> None:
    """Ends the display; the round's time counts toward the run's ETA."""
    if self._bar is not None:
      self._bar.close()
    if self.step > self.start_step:
      self.run.finished_round(
          time.monotonic() - self._t0, self.step - self.start_step
      )
