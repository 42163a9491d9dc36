"""Iterative magnitude pruning of a network trained on few labels only.

The baseline of S4L (configs/s4l.py): the same labelled subset
(`data.labelled`: 'per_class', a fraction `data.labelled_fraction` of every
class, on ImageNet the tfds `imagenet2012_subset/10pct` split; or
'classes', every image of that fraction of the classes), trained with the
class cross-entropy and nothing else. Epochs are epochs over the labelled
subset, and `pruning.rewind_samples` counts its samples.

The ImageNet hyper-parameters are those of S4L's own 10%-labels supervised
baseline: the paper's text lost them, so they come from google-research/s4l's
`config/supervised_imagenet_10p.sh` (flags; the model is
`semi_supervised/supervised.py`, the flags are read by `trainer.py` and
`representation_lib.py`):

  --batch_size 256                        256 labelled images per step
  --lr 0.1 --lr_scale_batch_size 256      learning rate 0.1 x 256 / 256 = 0.1
  --weight_decay 1e-3                     weight decay 1e-3 (an L2 term
                                          1e-3 x |w|^2 / 2; SGD momentum 0.9)
  --schedule '5,140,160,180,200'          linear warm-up over 5 epochs, x0.1
                                          at 140, 160 and 180, end at 200
  --num_supervised_examples 128000        an epoch is 128,000 // 256 = 500
                                          steps: 100,000 steps in all (the
                                          script's own comment says so)

S4L also counts these epochs over the labelled subset, as this project does
for few labels, so they carry over unchanged: tfds's 10% subset has 128,116
images, 500 steps of 256 as well. (The script's `--unsup_batch_mult
0.03125` only feeds S4L's TPU pipeline one unused unlabelled image per core;
the supervised model never reads them.) What differs from S4L: the network
is the paper's torchvision ResNet-50 (S4L trains a ResNet-50 v2), and
`train.weight_decay` decays every parameter where S4L's L2 term covers only
convolution and dense kernels.

Variants (the part after the colon):

  configs/few_labels.py          ImageNet, ResNet-50, 10% of the labels per
                                 class: S4L's schedule above (200 epochs of
                                 the subset, 100,000 steps of 256), 30
                                 rounds of 20%, rewind after 1,281,167
                                 images (step 5,004, ~one epoch of
                                 ImageNet's images). Needs imagenet2012 and
                                 imagenet2012_subset/10pct prepared for tfds.
  configs/few_labels.py:classes  the same with every image of 10% of the
                                 classes.
  configs/few_labels.py:quick    Fashion-MNIST, 10% of every class (6,000
                                 images), ResNet-10 at width 1/4, 10 epochs
                                 of the subset per round, 3 pruning rounds,
                                 rewind after 6,400 images (step 50 of
                                 460): about 7 minutes on 2 CPU cores; ~0.88 test
                                 accuracy in every round.

Launch:

  python -m sslprune_jax.main --config=configs/few_labels.py:quick \
      --workdir=/tmp/few_labels_quick
"""

import ml_collections

from sslprune_jax import config_lib

VARIANTS = ('', 'imagenet', 'classes', 'quick')

# google-research/s4l config/supervised_imagenet_10p.sh.
S4L_BATCH_SIZE = 256  # --batch_size.
S4L_LEARNING_RATE = 0.1  # --lr, for batches of --lr_scale_batch_size.
S4L_LR_SCALE_BATCH_SIZE = 256  # --lr_scale_batch_size.
S4L_WEIGHT_DECAY = 1e-3  # --weight_decay.
S4L_SCHEDULE = (5, 140, 160, 180, 200)  # --schedule: warm-up, decays, end.


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the config of the variant `arg` (see the module docstring)."""
  arg = config_lib.variant(arg, VARIANTS, 'few_labels.py')
  config = config_lib.base('few_labels')
  if arg in ('', 'imagenet', 'classes'):
    config_lib.imagenet(config)
    config.train.batch_size = S4L_BATCH_SIZE
    config.train.learning_rate = (
        S4L_LEARNING_RATE * S4L_BATCH_SIZE / S4L_LR_SCALE_BATCH_SIZE
    )
    config.train.weight_decay = S4L_WEIGHT_DECAY
    warmup, *decays, end = S4L_SCHEDULE
    config.train.warmup_epochs = float(warmup)
    config.train.decay_epochs = tuple(decays)
    config.train.num_epochs = float(end)
  if arg == 'quick':
    config_lib.quick(config)
    config.train.num_epochs = 10.0
    config.pruning.rewind_samples = 6_400
  config.data.labelled = 'classes' if arg == 'classes' else 'per_class'
  config.data.labelled_fraction = 0.1
  return config
