"""What TensorBoard shows of a pruning run after each round.

Per step (written by `train.train_round` under `tb/round_RR/`): the train
loss and accuracy, the learning rate, steps per second; at the round's end
the test metrics under the same names as in results.csv (`test_accuracy`).

Per round (under `tb/rounds/`, at step = round index), written here:
  - every results.csv metric (`test_accuracy`, `fraction_left`, ...);
  - `sparsity/<layer>`: the fraction of each prunable layer's weights left;
  - `sparsity` (image): the same as a bar chart, one bar per layer;
  - `mask/<layer>` (images): the masks of the first, middle and last
    prunable layers, white where a weight is kept;
  - `fraction_left_plot` (image): the paper's plot, test accuracy (or loss)
    against the fraction of weights left, of the rounds so far.

The images are drawn with matplotlib (Agg) into arrays, so TensorBoard's
Images tab shows the paper's figure growing round by round without leaving
it. They are small (a few kB a round).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from sslprune_jax import pruning

PyTree = Any

# Masks drawn per round: more would bury TensorBoard's Images tab.
MASK_LAYERS = 3
# Longest side of a mask image, in pixels; larger masks are subsampled.
MASK_PIXELS = 512


def mask_image(kernel_mask: np.ndarray) -> np.ndarray:
  """A layer's mask as a [1, H, W, 1] uint8 image, 255 where kept.

  Rows are the layer's output units (filters); columns its inputs, in the
  kernel's memory order (for a conv kernel [kh, kw, in, out], the column of
  (i, j, c) is (i * kw + j) * in + c), so a removed filter is a black row.
  """
  m = np.asarray(kernel_mask).astype(bool)
  m = m.reshape(-1, m.shape[-1]).T if m.ndim > 1 else m[None, :]
  step = max(1, math.ceil(max(m.shape) / MASK_PIXELS))
  m = m[::step, ::step]
  return (m * np.uint8(255))[None, :, :, None]


def figure(**kwargs):
  """A matplotlib figure with its own Agg canvas, and its one axes.

  Built without pyplot, so that drawing neither switches the process's
  backend nor adds to pyplot's figures (a notebook's inline plots).
  `report.plot` draws on it too.
  """
  # pylint: disable=g-import-not-at-top
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(**kwargs)
  FigureCanvasAgg(fig)
  return fig, fig.add_subplot()


def _figure_array(fig) -> np.ndarray:
  """A matplotlib figure as a [1, H, W, 3] uint8 array."""
  fig.canvas.draw()
  rgba = np.asarray(fig.canvas.buffer_rgba())
  return rgba[None, :, :, :3].copy()


def sparsity_chart(report: dict) -> np.ndarray:
  """Per-layer percentage of weights left as a bar chart image."""
  layers = report['layers']
  fig, ax = figure(figsize=(max(4, 0.35 * len(layers) + 1.5), 3), dpi=80)
  ax.bar(range(len(layers)), [100 * l['fraction_left'] for l in layers])
  ax.axhline(
      100 * report['fraction_left'],
      color='k',
      lw=0.8,
      ls='--',
      label=f"global {100 * report['fraction_left']:.2f}%",
  )
  ax.set_xticks(range(len(layers)))
  ax.set_xticklabels([l['name'] for l in layers], rotation=90, fontsize=6)
  ax.set_ylabel('% of weights left')
  ax.set_ylim(0, 100)
  ax.legend(fontsize=7)
  fig.tight_layout()
  return _figure_array(fig)


def _plot_metric(rows: Sequence[dict]) -> str | None:
  for name in ('test_accuracy', 'test_loss'):
    if any(math.isfinite(r.get(name, math.nan)) for r in rows):
      return name
  return None


def fraction_left_plot(rows: Sequence[dict]) -> np.ndarray | None:
  """The paper's plot of the rounds so far: test metric against % left
  (log axis, dense on the left); None when no round has a test metric."""
  metric = _plot_metric(rows)
  if metric is None:
    return None
  # pylint: disable-next=g-import-not-at-top
  from matplotlib import ticker

  points = [
      (100 * r['fraction_left'], r[metric])
      for r in rows
      if math.isfinite(r.get(metric, math.nan))
  ]
  fig, ax = figure(figsize=(5, 3.2), dpi=80)
  ax.plot(*zip(*points), marker='o')
  ax.set_xscale('log')
  # The rounds' own fractions as ticks: they are evenly spaced on the log
  # axis when each round prunes the same fraction, as the paper's are.
  ticks = points[:: math.ceil(len(points) / 10)]
  ax.set_xticks([p[0] for p in ticks], [f'{p[0]:.3g}' for p in ticks])
  ax.xaxis.set_minor_locator(ticker.NullLocator())
  ax.set_xlim(points[0][0] * 1.15, min(p[0] for p in points) / 1.15)
  ax.set_xlabel('% of weights left')
  ax.set_ylabel(metric)
  ax.grid(True, which='both', alpha=0.3)
  fig.tight_layout()
  return _figure_array(fig)


def _drawn_layers(names: list[str]) -> list[str]:
  """The first, middle and last of the layers (fewer if there are fewer)."""
  if len(names) <= MASK_LAYERS:
    return names
  picks = np.linspace(0, len(names) - 1, MASK_LAYERS).round().astype(int)
  return [names[i] for i in picks]


def write_round(
    writer,
    round_idx: int,
    rows: Sequence[dict],
    mask: PyTree,
    prunable: PyTree,
    scalars: dict[str, float],
) -> None:
  """Writes round `round_idx`'s summaries (see the module docstring).

  Args:
    writer: a clu metric writer for the run's `tb/rounds/`.
    round_idx: the round, used as the step.
    rows: results.csv's rows so far, this round's last, with its
      'sparsity' (`pruning.sparsity_report` of `mask`).
    mask: this round's mask (a single seed's).
    prunable: which leaves of `mask` are pruned.
    scalars: this round's results.csv metrics.
  """
  report = rows[-1]['sparsity']
  layers = {
      f"sparsity/{l['name']}": l['fraction_left'] for l in report['layers']
  }
  writer.write_scalars(round_idx, {**scalars, **layers})
  masks = dict(pruning.prunable_leaves(mask, prunable))
  # Only the drawn layers' masks are copied to the host.
  images = {
      f'mask/{name}': mask_image(np.asarray(masks[name]))
      for name in _drawn_layers(list(masks))
  }
  images['sparsity'] = sparsity_chart(report)
  plot = fraction_left_plot(rows)
  if plot is not None:
    images['fraction_left_plot'] = plot
  writer.write_images(round_idx, images)
  writer.flush()
