"""Iterative magnitude pruning of a network trained with S4L-Rotation.

Semi-supervised (Zhai et al.): every step holds `train.labelled_batch_size`
labelled images and `train.batch_size` images used without labels, all at
the four rotations; the loss is the class cross-entropy on the labelled
images + `task.rotation_weight` x the rotation cross-entropy on all of them.
The labelled subset is `data.labelled`: 'per_class' (a fraction
`data.labelled_fraction` of the images of every class; on ImageNet the
tfds `imagenet2012_subset/10pct` split) or 'classes' (every image of that
fraction of the classes). An epoch is an epoch over all the images. The
reported accuracy is the class accuracy on the eval split; the rotation
accuracy is reported beside it.

Variants (the part after the colon):

  configs/s4l.py          ImageNet, ResNet-50, 10% of the labels per class:
                          200 epochs, 256 + 256 images per step, lr 0.1
                          warmed up over 5 epochs, x0.1 at 140, 160 and 180,
                          wd 1e-4, 30 rounds of 20%, rewind to ~1 epoch. The
                          paper's text lost these numbers; they follow
                          Zhai et al.'s schedule, so check them before
                          comparing. Needs imagenet2012 and
                          imagenet2012_subset/10pct prepared for tfds.
  configs/s4l.py:classes  the same with every image of 10% of the classes
                          labelled.
  configs/s4l.py:quick    Fashion-MNIST, 10% of every class labelled,
                          ResNet-10 at width 1/4, a quarter of an epoch per
                          round with 64 + 16 images per step, 3 pruning
                          rounds: about 10 minutes on 2 CPU cores; class
                          accuracy ~0.81-0.84, rotation accuracy ~0.94-0.96.

Launch:

  python -m sslprune_jax.main --config=configs/s4l.py:quick \
      --workdir=/tmp/s4l_quick
"""

import ml_collections

from sslprune_jax import config_lib

VARIANTS = ('', 'imagenet', 'classes', 'quick')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the config of the variant `arg` (see the module docstring)."""
  arg = config_lib.variant(arg, VARIANTS, 's4l.py')
  config = config_lib.base('s4l', rotation_weight=1.0)
  if arg in ('', 'imagenet', 'classes'):
    config_lib.imagenet(config)
    config.train.num_epochs = 200.0
    config.train.warmup_epochs = 5.0
    config.train.decay_epochs = (140, 160, 180)
    config.train.labelled_batch_size = 256
  if arg == 'quick':
    config_lib.quick(config)
    config.train.num_epochs = 0.25
    config.train.batch_size = 64
    config.train.labelled_batch_size = 16
    config.train.eval_batch_size = 500
    config.pruning.rewind_samples = 3_200
  config.data.labelled = 'classes' if arg == 'classes' else 'per_class'
  config.data.labelled_fraction = 0.1
  return config
