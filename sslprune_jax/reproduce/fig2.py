"""Fig. 2: pruning during pre-training against pruning during transfer.

  python -m sslprune_jax.reproduce --figure=2 --workdir=/tmp/repro

The paper pre-trains on ImageNet and transfers to PASCAL VOC 2007
classification, which cannot be had offline. Here the transfer crosses
classes of Fashion-MNIST instead: RotNet and Exemplar pre-train on five
classes (`PRETRAIN`: T-shirt, trouser, pullover, dress, coat), and the
transfer task is labels on the other five (`TRANSFER`: sandal, shirt,
sneaker, bag, ankle boot). Both halves are taken from the first
2 x `TRAIN_IMAGES` training and 2 x `EVAL_IMAGES` test images, so each
holds about as many images as the regime's runs; no image is in both.
This is a milder shift than ImageNet to VOC (same image statistics, new
classes).

For each objective, at the same fractions of weights left:

* pruned during pre-training: IMP with the pretext task on the
  pre-training classes; every round's pruned network is then finetuned on
  the transfer task with its mask fixed (`init='final'`, the whole
  network, a fresh 5-way head), its dense round 0 included;
* pruned during transfer: IMP with labels on the transfer classes,
  starting from the dense pre-trained network (`init_from`, round 0) and
  rewinding to it (`pruning.rewind_samples=0`), as configs/voc07.py:prune.

Both finetune with the regime's labels schedule (`settings`), the paper's
VOC schedule being lost from its text. Test accuracy on the transfer
classes' test images. 6 runs of 3 packed seeds.

Wall time on 2 cores: see docs/reproduction.md (measured when it ran).
"""

from __future__ import annotations

import sys

from sslprune_jax.reproduce import driver
from sslprune_jax.reproduce import settings
from sslprune_jax.reproduce import verdicts as v

NUMBER = 2
METRIC = 'test_accuracy'
TITLE = 'Fig. 2: pruning during pre-training or during transfer'
OBJECTIVES = ('rotnet', 'exemplar')
# Fashion-MNIST's first five classes (tops, trousers, dresses, coats) and
# its last five (footwear, bags, shirts).
PRETRAIN = (0, 1, 2, 3, 4)
TRANSFER = (5, 6, 7, 8, 9)


def data(classes: tuple[int, ...]) -> dict:
  """Config overrides: the regime's data restricted to `classes`, from
  twice as many images, so that a half holds as many as the regime."""
  return {
      'data.classes': classes,
      'data.train_split': f'train[:{2 * settings.TRAIN_IMAGES}]',
      'data.eval_split': f'test[:{2 * settings.EVAL_IMAGES}]',
  }


def _pretrain_curve(objective: str) -> str:
  return f'{objective}, pruned during pre-training'


def _transfer_curve(objective: str) -> str:
  return f'{objective}, pruned during transfer'


def runs(workdir: str, seeds: int, **regime) -> dict[str, driver.Run]:
  """Curve name -> the run it reads, in the order they must run."""
  out = {}
  for objective in OBJECTIVES:
    source = driver.prune(
        workdir,
        objective,
        seeds,
        tag='pretrain5',
        overrides=data(PRETRAIN),
        **regime,
    )
    out[f'{objective} (pre-training)'] = source
    num_rounds = source.config.pruning.num_rounds
    out[_pretrain_curve(objective)] = driver.retrain(
        workdir,
        source,
        'final',
        tag='transfer5',
        overrides={
            **data(TRANSFER),
            'source.rounds': tuple(range(num_rounds + 1)),
        },
    )
    out[_transfer_curve(objective)] = driver.prune(
        workdir,
        'labels',
        seeds,
        tag=f'transfer5_from_{objective}',
        overrides={
            **data(TRANSFER),
            'init_from.workdir': source.directory,
            'init_from.round': 0,
            'pruning.rewind_samples': 0,
        },
        **regime,
    )
  return out


CURVES = tuple(
    curve(o) for o in OBJECTIVES for curve in (_pretrain_curve, _transfer_curve)
)


def findings(curves: dict[str, v.Curve]) -> list[v.Verdict]:
  """The paper's finding of Fig. 2 (section 4.1), for each objective."""
  return [
      v.better(
          'Finetuning a network pruned during pre-training beats '
          'pruning during transfer',
          curves,
          _pretrain_curve(o),
          _transfer_curve(o),
      )
      for o in OBJECTIVES
  ]


def make(
    workdir: str, out_dir: str, seeds: int = 3, **regime
) -> dict[str, str]:
  """Runs (or resumes) the figure and writes its report under `out_dir`."""
  return driver.make(sys.modules[__name__], workdir, out_dir, seeds, regime)
