"""Fig. 5: pruning with few labels, against labels, RotNet and random.

  python -m sslprune_jax.reproduce --figure=5 --workdir=/tmp/repro

IMP with S4L-Rotation (rotation on every image, classes on 10% of each
class's images) and with the labelled 10% alone (few labels); their
winning tickets are re-trained on labels and compared with the label and
RotNet winning tickets and the paper's random baseline of Fig. 3 (whose
runs it shares). The paper's Fig. 5a (labelled images from every class).

Wall time on 2 cores: see docs/reproduction.md (measured when it ran).
"""

from __future__ import annotations

import sys

from sslprune_jax.reproduce import driver
from sslprune_jax.reproduce import verdicts as v

NUMBER = 5
METRIC = 'test_accuracy'
TITLE = 'Fig. 5: pruning with few labels, re-trained on labels'
CURVES = (
    'labels, winning ticket',
    's4l, winning ticket',
    'few labels, winning ticket',
    'rotnet, winning ticket',
    'random, reinit',
)


def runs(workdir: str, seeds: int, **regime) -> dict[str, driver.Run]:
  prune = {
      o: driver.prune(workdir, o, seeds, **regime)
      for o in ('labels', 'rotnet', 's4l', 'few_labels')
  }
  out = {'labels, winning ticket': prune['labels']}
  for o in ('rotnet', 's4l', 'few_labels'):
    out[f'prune {o}'] = prune[o]
    out[f'{o.replace("_", " ")}, winning ticket'] = driver.retrain(
        workdir, prune[o], 'winning_ticket'
    )
  out['random, reinit'] = driver.retrain(
      workdir, prune['labels'], 'reinit', 'random_global_natural'
  )
  return out


def findings(curves: dict[str, v.Curve]) -> list[v.Verdict]:
  """The paper's findings of Fig. 5 (section 4.2.2)."""
  return [
      v.better(
          'Adding 10% of labels to RotNet (S4L) gives better winning '
          'tickets than RotNet',
          curves,
          's4l, winning ticket',
          'rotnet, winning ticket',
      ),
      v.better(
          'Pruning on the labelled 10% alone gives better winning '
          'tickets than RotNet on every image',
          curves,
          'few labels, winning ticket',
          'rotnet, winning ticket',
      ),
      v.better(
          'S4L gives better winning tickets than the labelled 10% ' 'alone',
          curves,
          's4l, winning ticket',
          'few labels, winning ticket',
      ),
  ]


def make(
    workdir: str, out_dir: str, seeds: int = 3, **regime
) -> dict[str, str]:
  """Runs (or resumes) the figure and writes its report under `out_dir`."""
  return driver.make(sys.modules[__name__], workdir, out_dir, seeds, regime)
