"""Iterative magnitude pruning of a network trained with labels.

Variants (the part after the colon):

  configs/labels.py          CIFAR-10, ResNet-18 (CIFAR form), the paper's
                             settings: 160 epochs per round, batch 128, SGD
                             lr 0.1 (x0.1 at epochs 80 and 120), momentum 0.9,
                             wd 1e-4, 20% of the remaining weights pruned per
                             round for 30 rounds, rewind to ~1 epoch.
                             Expect ~95% test accuracy dense, staying within
                             about a point down to a few % of weights left.
  configs/labels.py:vgg19    the same with VGG-19 (Morcos et al. form).
  configs/labels.py:imagenet ResNet-50 on ImageNet: 90 epochs, batch 256,
                             lr 0.1 (x0.1 at 30, 60, 80), rewind to ~1.3M
                             samples. Expect ~76% top-1 dense.
  configs/labels.py:quick    Fashion-MNIST, ResNet-10 at width 1/4, 2 epochs
                             per round, 3 pruning rounds: about 11 minutes
                             on 2 CPU cores. Expect ~91% test accuracy in
                             every round (100%, 80%, 64%, 51.2% left).
  configs/labels.py:figure3  Figure 3 at small scale (see
                             sslprune_jax/figure3.py): the
                             :quick network and schedule on 6,000 training
                             images, 5 rounds of 60% (100% -> 1.02% left),
                             rewind to 1,280 samples, evaluation on 5,000
                             test images; about 2 minutes on 2 CPU cores.

The rewind point, in dataset images seen (rounds after the first rewind to
round 0's state there and train on from that step to the end of the run,
see sslprune_jax/imp.py): 50,000 images = step 390 of 62,400 (CIFAR-10),
1,281,167 = step 5,004 of 450,360 (ImageNet), 6,400 = step 50 of 936
(:quick), 1,280 = step 10 of 92 (:figure3). Batch-norm scales start at
U[0, 1) as in open_lth's CIFAR models (`model.bn_scale_init`); ImageNet's
ResNet-50 at 1, as torchvision's.

Launch:

  python -m sslprune_jax.main --config=configs/labels.py:quick \
      --workdir=/tmp/labels_quick
  python -m sslprune_jax.main --config=configs/labels.py \
      --workdir=gs://bucket/labels_cifar10 --config.seed=3

Any field can be overridden on the command line (`--config.pruning.reset=
reinit`, `--config.train.num_epochs=2`). Many runs at once (seeds,
objectives, the runs of Figure 3): launch/sweep.py.
"""

import ml_collections

from sslprune_jax import config_lib

VARIANTS = ('', 'cifar10', 'vgg19', 'imagenet', 'quick', 'figure3')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the config of the variant `arg` (see the module docstring)."""
  arg = config_lib.variant(arg, VARIANTS, 'labels.py')
  config = config_lib.base('labels')
  if arg == 'vgg19':
    config.model.name = 'vgg'
    config.model.depth = 19
  elif arg == 'imagenet':
    config_lib.imagenet(config)
  elif arg == 'quick':
    config_lib.quick(config)
  elif arg == 'figure3':
    config_lib.figure3(config, train_images=6000)
  return config
