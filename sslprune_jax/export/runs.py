"""Exporting one round of a finished pruning run (`export_round`)."""

from __future__ import annotations

from etils import epath

from sslprune_jax import pruning
from sslprune_jax.export import archive
from sslprune_jax.export import encodings
from sslprune_jax.rundir import sources


def export_round(
    workdir: str, round_idx: int, out: str, point: str = 'final'
) -> dict:
  """Exports round `round_idx` of the finished pruning run in `workdir`.

  Args:
    workdir: a pruning run's workdir.
    round_idx: one of its finished rounds.
    out: the directory to export to.
    point: 'final' (the round's trained weights) or 'rewind' (the rewind
      point's weights under the round's mask).

  Returns:
    {'path', 'kept', 'total', 'fraction_left', 'bytes', 'dense_bytes'}:
    kept and total prunable weights (the leaves the run's pruning.exclude
    and pruning.min_ndim allow; a layerwise run's other layers count as
    fully kept), the export's size and the dense size of the same params
    and batch_stats, in bytes.
  """
  config = sources.source_config(workdir)
  config, saved = sources.read_source_round(
      config, workdir, round_idx, point=point
  )
  variables = {'params': saved['params'], 'batch_stats': saved['batch_stats']}
  prunable = pruning.prunable_tree(
      saved['params'],
      exclude=tuple(config.pruning.exclude),
      min_ndim=config.pruning.min_ndim,
  )
  kept, total = pruning.count(saved['mask'], prunable)
  size = archive.save(
      out,
      variables,
      saved['mask'],
      pruning.nm.round_pattern(config.pruning, round_idx),
  )
  return {
      'path': str(epath.Path(out) / archive.FILENAME),
      'kept': kept,
      'total': total,
      'fraction_left': kept / total,
      'bytes': size,
      'dense_bytes': encodings.dense_bytes(variables),
  }


def format_summary(summary: dict) -> str:
  """The result of `export_round` as three lines of text."""
  return (
      f"{summary['path']}\n"
      f"prunable weights left: {summary['kept']} of {summary['total']} "
      f"({100 * summary['fraction_left']:.2f}%)\n"
      f"export: {summary['bytes']} bytes, dense: "
      f"{summary['dense_bytes']} bytes "
      f"({100 * summary['bytes'] / summary['dense_bytes']:.1f}%)"
  )
