"""Iterative magnitude pruning of a network trained with S4L-Rotation.

Semi-supervised (Zhai et al., 2019; sslprune_jax/tasks/s4l.py follows
google-research/s4l's `semi_supervised/rotation.py`): every step holds
`train.labelled_batch_size` labelled images and `train.batch_size` images
used without labels (drawn from all the training images), all at the four
rotations; the loss is the class cross-entropy on every rotated copy of the
labelled images + `task.rotation_weight` x the rotation cross-entropy on
all of them. The labelled subset is `data.labelled`: 'per_class' (a
fraction `data.labelled_fraction` of the images of every class; on ImageNet
the tfds `imagenet2012_subset/10pct` split) or 'classes' (every image of
that fraction of the classes). The reported accuracy is the class top-1 on
the upright eval images; the class top-1 of the logits averaged over the
four rotations and the rotation accuracy are reported beside it.

The ImageNet hyper-parameters are S4L's own: the paper's text lost them, so
they come from google-research/s4l's `config/s4l_rotation.sh` (flags) and
the code reading those flags (`trainer.py`, `representation_lib.py`,
`datasets.py`):

  --batch_size 256 --unsup_batch_mult 1   256 labelled + 256 unlabelled
                                          images per step (datasets.py
                                          `get_data`: the unlabelled batch is
                                          batch_size x unsup_batch_mult)
  --lr 0.03 --lr_scale_batch_size 0       learning rate 0.03, not rescaled
                                          (trainer.py: a scale batch of 0
                                          leaves lr as it is)
  --weight_decay 1e-3                     weight decay 1e-3 (an L2 term
                                          1e-3 x |w|^2 / 2, so 1e-3 x w in
                                          the gradient; SGD momentum 0.9)
  --schedule '5,140,160,180,200'          linear warm-up over 5 epochs, x0.1
                                          at 140, 160 and 180, end at 200
  --rot_loss_weight 1.0                   task.rotation_weight = 1
  --num_supervised_examples 128000        S4L's epoch: 128,000 // 256 = 500
                                          steps (trainer.py and
                                          representation_lib.py count an
                                          epoch over the labelled images)

S4L's epochs are thus epochs of the labelled subset: 200 of them are
200 x 500 = 100,000 steps. This project counts an S4L epoch over all the
training images, in steps of `train.batch_size` (`epoch_examples` and
`steps_per_epoch` in sslprune_jax/imp.py `build`): 1,281,167 // 256 = 5,004
steps. So every epoch field below is S4L's epochs x 500 / 5,004, giving the
same steps: num_epochs 100,000 / 5,004 = 19.984 (100,000 steps),
warm-up 2,500 / 5,004 = 0.4996 (2,500 steps), decays at 70,000, 80,000 and
90,000 / 5,004 = 13.989, 15.987, 17.986 (steps 70,000, 80,000, 90,000).
Changing `train.batch_size` on the command line does not redo this
conversion; `s4l_epochs` below does it.

What differs from S4L: the network is the paper's torchvision ResNet-50
(S4L trains a ResNet-50 v2), and `train.weight_decay` decays every
parameter where S4L's L2 term covers only convolution and dense kernels.

Variants (the part after the colon):

  configs/s4l.py          ImageNet, ResNet-50, 10% of the labels per class:
                          S4L's schedule above (100,000 steps of 256 + 256
                          images), 30 rounds of 20%, rewind after 1,281,167
                          images (step 2,502 at 512 images a step). Needs
                          imagenet2012 and imagenet2012_subset/10pct
                          prepared for tfds.
  configs/s4l.py:classes  the same with every image of 10% of the classes
                          labelled.
  configs/s4l.py:quick    Fashion-MNIST, 10% of every class labelled,
                          ResNet-10 at width 1/4, a quarter of an epoch (of
                          all images) per round with 64 + 16 images per
                          step, 3 pruning rounds, rewind after 3,200
                          images (step 40 of 234 at 80 images a step):
                          about 10 minutes on 2 CPU cores; upright class accuracy ~0.75 (rotation-
                          averaged ~0.76), rotation accuracy ~0.95 (rounds
                          0 and 1, seed 0). The class head also learns the
                          rotated copies, as in S4L, which costs upright
                          accuracy at this budget (the earlier upright-only
                          class loss gave ~0.81-0.84).

Launch:

  python -m sslprune_jax.main --config=configs/s4l.py:quick \
      --workdir=/tmp/s4l_quick
"""

import ml_collections

from sslprune_jax import config_lib

VARIANTS = ('', 'imagenet', 'classes', 'quick')

# google-research/s4l config/s4l_rotation.sh.
S4L_BATCH_SIZE = 256  # --batch_size: labelled images per step.
S4L_UNSUP_BATCH_MULT = 1  # --unsup_batch_mult: unlabelled per labelled.
S4L_LEARNING_RATE = 0.03  # --lr (--lr_scale_batch_size 0: not rescaled).
S4L_WEIGHT_DECAY = 1e-3  # --weight_decay.
S4L_SCHEDULE = (5, 140, 160, 180, 200)  # --schedule: warm-up, decays, end.
S4L_NUM_SUPERVISED_EXAMPLES = 128_000  # --num_supervised_examples.
# ImageNet's training images (imagenet2012 'train'; S4L's 'trainval').
IMAGENET_TRAIN_IMAGES = 1_281_167


def s4l_epochs(epochs: float, batch_size: int = S4L_BATCH_SIZE) -> float:
  """S4L's epochs (of its labelled images) in this project's S4L epochs.

  Args:
    epochs: a number of S4L epochs: 128,000 // 256 = 500 steps each.
    batch_size: the config's `train.batch_size`, whose steps over all of
      ImageNet's training images make this project's epoch.

  Returns:
    The epochs of this project with as many steps.
  """
  s4l_steps = S4L_NUM_SUPERVISED_EXAMPLES // S4L_BATCH_SIZE
  steps = IMAGENET_TRAIN_IMAGES // batch_size
  return epochs * s4l_steps / steps


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the config of the variant `arg` (see the module docstring)."""
  arg = config_lib.variant(arg, VARIANTS, 's4l.py')
  config = config_lib.base('s4l', rotation_weight=1.0)
  if arg in ('', 'imagenet', 'classes'):
    config_lib.imagenet(config)
    config.train.labelled_batch_size = S4L_BATCH_SIZE
    config.train.batch_size = S4L_BATCH_SIZE * S4L_UNSUP_BATCH_MULT
    config.train.learning_rate = S4L_LEARNING_RATE
    config.train.weight_decay = S4L_WEIGHT_DECAY
    warmup, *decays, end = S4L_SCHEDULE
    config.train.warmup_epochs = s4l_epochs(warmup, config.train.batch_size)
    config.train.decay_epochs = tuple(
        s4l_epochs(e, config.train.batch_size) for e in decays
    )
    config.train.num_epochs = s4l_epochs(end, config.train.batch_size)
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
