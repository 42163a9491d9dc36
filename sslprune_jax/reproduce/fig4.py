"""Fig. 4: layerwise pruning, with labels and with RotNet.

  python -m sslprune_jax.reproduce --figure=4 --workdir=/tmp/repro

IMP of only the first k prunable layers (network order: conv1, then the
blocks' convolutions and shortcuts), with labels and with RotNet, for
k in `LAYERS` and for all layers (Fig. 3's runs); RotNet's winning
tickets are re-trained on labels, and compared with the label-pruned
ones, whose IMP rounds are that same training. ResNet-10 has 12 prunable
layers: k = 3 is conv1 and the first stage, k = 6 the first two stages.
The fraction of weights left counts the pruned layers only.

Wall time on 2 cores: see docs/reproduction.md (measured when it ran).
"""

from __future__ import annotations

import sys

from sslprune_jax.reproduce import driver
from sslprune_jax.reproduce import verdicts as v

NUMBER = 4
METRIC = 'test_accuracy'
TITLE = 'Fig. 4: layerwise pruning, label and RotNet winning tickets'
LAYERS = (3, 6)


def _depth(k: int) -> str:
  return f'first {k}' if k else 'all'


def runs(workdir: str, seeds: int, **regime) -> dict[str, driver.Run]:
  out = {}
  for k in (*LAYERS, 0):
    extra = dict(tag=f'layers{k}', overrides={'pruning.layers': k}) if k else {}
    labels = driver.prune(workdir, 'labels', seeds, **extra, **regime)
    rotnet = driver.prune(workdir, 'rotnet', seeds, **extra, **regime)
    out[f'prune rotnet, {_depth(k)}'] = rotnet
    out[f'labels, {_depth(k)}'] = labels
    out[f'rotnet, {_depth(k)}'] = driver.retrain(
        workdir, rotnet, 'winning_ticket'
    )
  return out


CURVES = tuple(
    f'{o}, {_depth(k)}' for k in (*LAYERS, 0) for o in ('labels', 'rotnet')
)


def findings(curves: dict[str, v.Curve]) -> list[v.Verdict]:
  """The paper's findings of Fig. 4 (section 4.2.1, Layerwise Pruning)."""
  first = _depth(LAYERS[0])
  out = [
      v.similar(
          'Pruning only the first layers, label and RotNet winning tickets are '
          'close',
          curves,
          f'labels, {first}',
          f'rotnet, {first}',
      )
  ]
  for k in (*LAYERS[1:], 0):
    out.append(
        v.gap_wider(
            'The gap between label and RotNet winning tickets widens as deeper '
            'layers are pruned',
            curves,
            (f'labels, {_depth(k)}', f'rotnet, {_depth(k)}'),
            (f'labels, {first}', f'rotnet, {first}'),
        )
    )
  return out


def make(
    workdir: str, out_dir: str, seeds: int = 3, **regime
) -> dict[str, str]:
  """Runs (or resumes) the figure and writes its report under `out_dir`."""
  return driver.make(sys.modules[__name__], workdir, out_dir, seeds, regime)
