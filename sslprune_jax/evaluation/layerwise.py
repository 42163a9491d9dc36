"""Layerwise pruning (paper Fig. 4): the round loop on the first k layers.

For each k in `config.layerwise.layers`, a pruning run of `config` in which
only the first k prunable layers (in network order) are pruned, in
`<workdir>/layers_<k>`. Each is an ordinary, resumable pruning run; compare
them with `report`, one curve per k:

  python -m sslprune_jax.report --metric=test_accuracy --out=/tmp/layerwise \
      --curve=k=1=/w/layers_01 --curve=k=4=/w/layers_04 ...
"""

from __future__ import annotations

from etils import epath
import ml_collections

from sslprune_jax import config_lib
from sslprune_jax import lottery


def run_dirs(
    config: ml_collections.ConfigDict, workdir: str
) -> dict[int, epath.Path]:
  """k -> the workdir of the run that prunes the first k layers."""
  return {
      k: epath.Path(workdir) / f'layers_{k:02d}'
      for k in config.layerwise.layers
  }


def run(
    config: ml_collections.ConfigDict, workdir: str
) -> dict[int, list[dict]]:
  """Runs (or resumes) one pruning run per k; returns k -> its rows."""
  ks = list(config.layerwise.layers)
  if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
    raise ValueError(
        'layerwise.layers must list layer counts >= 1, got ' f'{ks}.'
    )
  if config.pruning.layers:
    raise ValueError('pruning.layers is set by layerwise.layers; leave it 0.')
  results = {}
  for k, directory in run_dirs(config, workdir).items():
    sub = ml_collections.ConfigDict(config.to_dict())
    sub.run = 'prune'
    del sub['layerwise']
    sub.pruning.layers = k
    print(
        f'\nPruning the first {k} prunable layers in {directory}.', flush=True
    )
    rows = lottery.run(sub, str(directory))
    results[k] = rows[0] if len(rows) == 1 else rows
  return results


# Also importable from here, as before.
add_layerwise = config_lib.add_layerwise
