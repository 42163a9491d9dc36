"""Iterative magnitude pruning of a network trained with RotNet (no labels).

The network predicts which of 4 rotations (0, 90, 180, 270 degrees) was
applied; every image appears at all four in the same batch (as Gidaris et
al.'s code does), so a step sees 4 x `train.batch_size` copies of
`train.batch_size` images. The head is a 4-way classifier; the reported
accuracy is rotation accuracy.

The rewind point counts images, not rotated copies: 1,281,167 images = step
5,004 of 175,140 (ImageNet), 50,000 = step 390 of 62,400 (CIFAR-10), 6,400 =
step 100 of 468 (:quick), 1,280 = step 40 of 186 (:figure3).

Variants (the part after the colon):

  configs/rotnet.py          ImageNet, ResNet-50: 35 epochs, batch 256 (x4
                             rotated), lr 0.1 warmed up over 5 epochs, x0.1
                             at epochs 15, 25 and 30, wd 1e-4, 30 rounds of
                             20%, rewind to ~1 epoch. The paper's appendix
                             keeps the shape of its RotNet ResNet-50
                             schedule (a warm-up, then three decays) but
                             lost its numbers, and SETTINGS.md does not list
                             them: these values are this project's choice
                             of that shape, from no reference file. They are
                             not Gidaris et al.'s ImageNet schedule
                             (FeatureLearningRotNet config/
                             ImageNet_RotNet_AlexNet.py: 50 epochs, batch
                             192, lr 0.1, x0.1 at 15, 30 and 45, wd 5e-4,
                             Nesterov, no warm-up) nor VISSL's
                             (rotnet_8gpu_resnet.yaml: 105 epochs, x0.1 at
                             30, 60, 90 and 100); check them before
                             comparing to the paper. Needs imagenet2012
                             prepared for tfds.
  configs/rotnet.py:cifar10  CIFAR-10, ResNet-18 (CIFAR form), the paper's
                             CIFAR-10 RotNet setting (as for labels: 160
                             epochs, batch 128, lr 0.1, x0.1 at 80 and 120).
                             Expect ~90%+ rotation accuracy dense.
  configs/rotnet.py:quick    Fashion-MNIST (half of the training split),
                             ResNet-10 at width 1/4, 1 epoch per round,
                             3 pruning rounds: about 11 minutes on 2 CPU
                             cores, ~98.5% rotation accuracy in every round
                             (100%, 80%, 64%, 51.2% of the weights left).
  configs/rotnet.py:figure3  Figure 3 at small scale (see
                             sslprune_jax/figure3.py): the scale
                             of configs/labels.py:figure3 on 3,000 training
                             images, 32 (x4 rotated) per step; about 4
                             minutes on 2 CPU cores.

Launch:

  python -m sslprune_jax.main --config=configs/rotnet.py:quick \
      --workdir=/tmp/rotnet_quick
"""

import ml_collections

from sslprune_jax import config_lib

VARIANTS = ('', 'imagenet', 'cifar10', 'quick', 'figure3')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the config of the variant `arg` (see the module docstring)."""
  arg = config_lib.variant(arg, VARIANTS, 'rotnet.py')
  config = config_lib.base('rotnet')
  if arg in ('', 'imagenet'):
    config_lib.imagenet(config)
    config.train.num_epochs = 35.0
    config.train.warmup_epochs = 5.0
    config.train.decay_epochs = (15, 25, 30)
  elif arg == 'quick':
    config_lib.quick(config)
    # Four rotated copies of every image make a step 4x the work of a labels
    # step: train on half the split, for one epoch per round.
    config.data.train_split = 'train[:50%]'
    config.train.num_epochs = 1.0
    config.train.batch_size = 64
    config.train.eval_batch_size = 500
    config.pruning.rewind_samples = 6_400
  elif arg == 'figure3':
    config_lib.figure3(config, train_images=3000)
    # Four rotated copies per image: a quarter of the images per step.
    config.train.batch_size = 32
    config.train.eval_batch_size = 500
  return config
