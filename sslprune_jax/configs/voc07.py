"""Transfer to PASCAL VOC 2007 classification (paper Fig. 2).

Two ways to get a sparse network for VOC07, to compare at the same
fractions of weights left:

* pruned during pre-training, then finetuned: every finished round of the
  pruning run in `--config.source.workdir` (RotNet, Exemplar, labels, ...)
  is finetuned on VOC07 trainval, the whole network from the round's trained
  weights with its mask fixed, and evaluated on test (central crop) with
  the VOC 2007 mAP. The pre-training head gives way to a 20-way one.
* pruned during transfer (`:prune`): the round loop itself runs on VOC07
  with the finetuning objective, starting from the source's unpruned,
  pre-trained network (`init_from`, round 0) and rewinding to it
  (`pruning.rewind_samples=0`).

Both use the multi-label task: one sigmoid per class, difficult-only
classes left out of the loss and the mAP. The paper's text lost the
finetuning schedule; the values below (60 epochs, batch 64, lr 0.01, x0.1
at epochs 30, 45 and 55, wd 1e-4) are this project's choice: check them
before comparing to the paper.

Variants (the part after the colon):

  configs/voc07.py             finetune every round of an ImageNet ResNet-50
                               pruning run; VOC at 224 x 224. tfds downloads
                               voc/2007 (under 1 GB) when the machine has
                               network.
  configs/voc07.py:prune       prune during transfer from the source's round
                               0, 30 rounds of 20% (as the source).
  configs/voc07.py:quick       for a :quick source (Fashion-MNIST, ResNet-10
                               at width 1/4): VOC at 64 x 64 in grey, 20
                               epochs of batch 64 per round.
  configs/voc07.py:prune_quick pruning during transfer at that scale, 3
                               rounds.

Launch (after the pruning run):

  python -m sslprune_jax.main --config=configs/voc07.py:quick \
      --config.source.workdir=/tmp/rotnet_quick --workdir=/tmp/rotnet_voc07
  python -m sslprune_jax.main --config=configs/voc07.py:prune_quick \
      --config.init_from.workdir=/tmp/rotnet_quick \
      --workdir=/tmp/rotnet_voc07_pruned_in_transfer
"""

import ml_collections

from sslprune_jax import config_lib
from sslprune_jax.data import schema as data_schema

VARIANTS = ('', 'prune', 'quick', 'prune_quick')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the config of the variant `arg` (see the module docstring)."""
  arg = config_lib.variant(arg, VARIANTS, 'voc07.py')
  config = config_lib.base('multilabel')
  quick = arg.endswith('quick')
  if quick:
    config_lib.quick(config)
  else:
    config_lib.imagenet(config)
  config.data = data_schema.default_data_config('voc2007')
  config.train.update(
      dict(
          num_epochs=60.0,
          batch_size=64,
          eval_batch_size=64,
          schedule='step',
          learning_rate=0.01,
          decay_epochs=(30, 45, 55),
          decay_factor=0.1,
          warmup_epochs=0.0,
          weight_decay=1e-4,
      )
  )
  config.pruning.rewind_samples = 0
  config.checkpoint_every_steps = 500
  if quick:
    config.data.image_size = 64
    config.data.grayscale = True
    config.train.update(
        dict(
            num_epochs=20.0,
            schedule='cosine',
            decay_epochs=(),
            warmup_epochs=1.0,
            weight_decay=5e-4,
        )
    )
    config.checkpoint_every_steps = 200
  if arg.startswith('prune'):
    # init_from.workdir comes from the command line.
    return config
  return config_lib.add_source(config, init='final')
