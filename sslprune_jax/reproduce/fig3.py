"""Fig. 3: masks found with and without labels, re-trained on labels.

  python -m sslprune_jax.reproduce --figure=3 --workdir=/tmp/repro

IMP with labels, RotNet and Exemplar (the reproduction's regime:
`sslprune_jax.reproduce.settings`); then every pruned round's mask is
trained again on labels, from the winning ticket (the source's weights at
the rewind point) and from a re-initialisation, against the paper's random
baseline (one global mask per fraction, drawn from the label-trained dense
network with the weights that converged near zero removed first,
re-initialised: section 4.3) and a per-layer random baseline (random masks
with the label masks' per-layer sparsity, re-initialised). The label
masks' winning tickets re-trained on labels are the labels IMP run's own
rounds, which is exactly that procedure. 10 runs of 3 packed seeds.

Wall time on 2 cores: about 3.9 hours, summed from its runs' per-round
times (RotNet's IMP run 88 minutes, 22 of them paused; Exemplar's 25;
labels' 15; each re-training 12-18), on cores often shared with the test
suite. Over the 90 minutes aimed at: RotNet's x4 batches are the
bulk of it.
"""

from __future__ import annotations

import sys

from sslprune_jax.reproduce import driver
from sslprune_jax.reproduce import verdicts as v

NUMBER = 3
METRIC = 'test_accuracy'
TITLE = 'Fig. 3: pruned subnetworks re-trained on labels'
SOURCES = ('labels', 'rotnet', 'exemplar')


def runs(workdir: str, seeds: int, **regime) -> dict[str, driver.Run]:
  """Curve name -> the run it reads, in the order they must run."""
  prune = {s: driver.prune(workdir, s, seeds, **regime) for s in SOURCES}
  out = {'labels, winning ticket': prune['labels']}
  out['rotnet (pruning)'] = prune['rotnet']
  out['exemplar (pruning)'] = prune['exemplar']
  for source in SOURCES:
    if source != 'labels':
      out[f'{source}, winning ticket'] = driver.retrain(
          workdir, prune[source], 'winning_ticket'
      )
    out[f'{source}, reinit'] = driver.retrain(workdir, prune[source], 'reinit')
  out['random, reinit'] = driver.retrain(
      workdir, prune['labels'], 'reinit', 'random_global_natural'
  )
  out['random per-layer, reinit'] = driver.retrain(
      workdir, prune['labels'], 'reinit', 'random_like'
  )
  return out


CURVES = (
    'labels, winning ticket',
    'labels, reinit',
    'rotnet, winning ticket',
    'rotnet, reinit',
    'exemplar, winning ticket',
    'exemplar, reinit',
    'random, reinit',
    'random per-layer, reinit',
)


def findings(curves: dict[str, v.Curve]) -> list[v.Verdict]:
  """The paper's findings of Fig. 3 (section 4.2.1), each as a claim."""
  out = []
  for ssl in ('rotnet', 'exemplar'):
    out.append(
        v.similar(
            'Re-initialised, masks pruned without labels match label masks',
            curves,
            f'{ssl}, reinit',
            'labels, reinit',
        )
    )
  for ssl in ('rotnet', 'exemplar'):
    out.append(
        v.better(
            'From the winning ticket, masks pruned without labels fall below '
            'label masks',
            curves,
            'labels, winning ticket',
            f'{ssl}, winning ticket',
        )
    )
  for ssl in ('rotnet', 'exemplar'):
    out.append(
        v.better(
            '... but stay above random pruning',
            curves,
            f'{ssl}, winning ticket',
            'random, reinit',
        )
    )
  for ssl in ('rotnet', 'exemplar'):
    out.append(
        v.gap_grows(
            'The gap to random pruning grows as the network is severely pruned',
            curves,
            f'{ssl}, winning ticket',
            'random, reinit',
        )
    )
  out.append(
      v.better(
          'Label masks: the winning ticket beats re-initialisation (lottery '
          'tickets)',
          curves,
          'labels, winning ticket',
          'labels, reinit',
      )
  )
  for ssl in ('rotnet', 'exemplar'):
    out.append(
        v.similar(
            'Masks pruned without labels: the winning ticket gives little or no '
            'boost over re-initialisation',
            curves,
            f'{ssl}, winning ticket',
            f'{ssl}, reinit',
        )
    )
  return out


def make(
    workdir: str, out_dir: str, seeds: int = 3, **regime
) -> dict[str, str]:
  """Runs (or resumes) the figure and writes its report under `out_dir`."""
  return driver.make(sys.modules[__name__], workdir, out_dir, seeds, regime)
