"""Iterative magnitude pruning of a network trained on few labels only.

The baseline of S4L (configs/s4l.py): the same labelled subset
(`data.labelled`: 'per_class', a fraction `data.labelled_fraction` of every
class, on ImageNet the tfds `imagenet2012_subset/10pct` split; or
'classes', every image of that fraction of the classes), trained with the
class cross-entropy and nothing else. Epochs are epochs over the labelled
subset, and `pruning.rewind_samples` counts its samples.

Variants (the part after the colon):

  configs/few_labels.py          ImageNet, ResNet-50, 10% of the labels per
                                 class: 1000 epochs of the subset (~as many
                                 labelled images as S4L sees), batch 256, lr
                                 0.1 warmed up over 10 epochs, x0.1 at 700,
                                 800 and 900, wd 1e-4, 30 rounds of 20%,
                                 rewind to ~1 epoch of ImageNet. The paper's
                                 text does not give this schedule; check it
                                 before comparing. Needs imagenet2012 and
                                 imagenet2012_subset/10pct prepared for tfds.
  configs/few_labels.py:classes  the same with every image of 10% of the
                                 classes.
  configs/few_labels.py:quick    Fashion-MNIST, 10% of every class (6,000
                                 images), ResNet-10 at width 1/4, 10 epochs
                                 of the subset per round, 3 pruning rounds:
                                 about 7 minutes on 2 CPU cores; ~0.88 test
                                 accuracy in every round.

Launch:

  python -m sslprune_jax.main --config=configs/few_labels.py:quick \
      --workdir=/tmp/few_labels_quick
"""

import ml_collections

from sslprune_jax import config_lib

VARIANTS = ('', 'imagenet', 'classes', 'quick')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the config of the variant `arg` (see the module docstring)."""
  arg = config_lib.variant(arg, VARIANTS, 'few_labels.py')
  config = config_lib.base('few_labels')
  if arg in ('', 'imagenet', 'classes'):
    config_lib.imagenet(config)
    config.train.num_epochs = 1000.0
    config.train.warmup_epochs = 10.0
    config.train.decay_epochs = (700, 800, 900)
  if arg == 'quick':
    config_lib.quick(config)
    config.train.num_epochs = 10.0
    config.pruning.rewind_samples = 6_400
  config.data.labelled = 'classes' if arg == 'classes' else 'per_class'
  config.data.labelled_fraction = 0.1
  return config
