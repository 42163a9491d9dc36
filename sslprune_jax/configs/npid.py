"""Iterative magnitude pruning of a network trained with NPID (no labels).

Non-parametric instance discrimination (Wu et al.): a 128-d L2-normalised
embedding, a memory bank of one entry per training image in the train state
(momentum 0.5), a non-parametric softmax at temperature 0.07 estimated by
NCE with 4096 noise entries, and a cosine learning rate. Rewinding rewinds
the memory bank with the weights. `--config.task.num_negatives=0` uses the
exact softmax over the bank instead of NCE (Wu et al.'s `--nce-k 0`): for
banks of a few thousand images, where NCE's one-shot normaliser diverges
(sslprune_jax/tasks/npid.py). The reported accuracy is weighted kNN
(k = 200) on the eval split against the memory bank.

Images are augmented as in Wu et al.'s code, lemniscate.pytorch's `main.py`
(data.augment = 'npid', `sslprune_jax.data.augment.npid_train`):
RandomResizedCrop to the dataset's image size with 20%-100% of the area,
RandomGrayscale(p=0.2), ColorJitter(0.4, 0.4, 0.4, 0.4), horizontal flip. On
Fashion-MNIST's 28 x 28 single-channel images the crop keeps 28 x 28, as
lemniscate's `cifar.py` keeps CIFAR's 32 x 32, and grayscale, saturation and
hue are the identity (torchvision's behaviour on a one-channel image).

Variants (the part after the colon):

  configs/npid.py          ImageNet, ResNet-50: 200 epochs, batch 256, lr
                           0.03 cosine, wd 1e-4 (Wu et al.'s settings; the
                           paper's text lost its own numbers apart from the
                           4096 negatives and the cosine schedule), 30 rounds
                           of 20%, rewind to ~1 epoch. The bank holds 1.28M x
                           128 floats (656 MB) on every device. Needs
                           imagenet2012 prepared for tfds.
  configs/npid.py:quick    Fashion-MNIST, ResNet-10 at width 1/4, 1 epoch per
                           round, 3 pruning rounds: about 10 minutes on 2 CPU
                           cores. kNN accuracy ~0.32 in round 0, ~0.22-0.25
                           in the 3 pruned rounds (chance 0.10; seed 0):
                           one epoch is the memory bank's warm-up, when
                           every positive is still a random entry, so this
                           shows the machinery, not NPID's features.

Launch:

  python -m sslprune_jax.main --config=configs/npid.py:quick \
      --workdir=/tmp/npid_quick
"""

import ml_collections

from sslprune_jax import config_lib

VARIANTS = ('', 'imagenet', 'quick')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the config of the variant `arg` (see the module docstring)."""
  arg = config_lib.variant(arg, VARIANTS, 'npid.py')
  config = config_lib.base(
      'npid',
      dim=128,
      temperature=0.07,
      num_negatives=4096,
      momentum=0.5,
      knn_k=200,
  )
  config.train.schedule = 'cosine'
  config.train.learning_rate = 0.03
  if arg in ('', 'imagenet'):
    config_lib.imagenet(config)
    config.train.num_epochs = 200.0
    config.train.decay_epochs = ()
  elif arg == 'quick':
    config_lib.quick(config)
    config.train.num_epochs = 1.0
    config.train.learning_rate = 0.03
    config.train.eval_batch_size = 500
  # Every variant: lemniscate's augmentation at the dataset's image size
  # (config_lib.quick switches Fashion-MNIST's off).
  config.data.augment = 'npid'
  return config
