"""Iterative magnitude pruning of a network trained with Exemplar (no labels).

Every image is its own class: `task.copies` strongly augmented copies of each
image (random crop, flip, rotation up to `task.max_degrees`, colour jitter,
made on device) are embedded in `task.embedding_dim` L2-normalised
dimensions, and a triplet margin loss (`task.margin`) pulls copies of one
image together and pushes the copies of the other images of the global batch
away. A step sees `copies` x `train.batch_size` images. The reported
accuracy is exemplar retrieval on the eval split: how often an embedding's
nearest neighbour in its eval batch is a copy of the same image.

Variants (the part after the colon):

  configs/exemplar.py          ImageNet, ResNet-50: 90 epochs, batch 256 (x2
                               copies), lr 0.1, x0.1 at epochs 30 and 60, wd
                               1e-4, 30 rounds of 20%, rewind to ~1 epoch.
                               The paper's text lost the epochs and rates;
                               these are the labels schedule cut to the two
                               decays the paper describes, so check them
                               before comparing to the paper. Needs
                               imagenet2012 prepared for tfds.
  configs/exemplar.py:cifar10  CIFAR-10, ResNet-18 (CIFAR form): 160 epochs,
                               batch 128, lr 0.1, x0.1 at 80 and 120 (the
                               labels schedule; the paper's numbers are lost).
  configs/exemplar.py:vgg19    the same with VGG-19.
  configs/exemplar.py:quick    Fashion-MNIST (half of the training split),
                               ResNet-10 at width 1/4, 1 epoch per round,
                               3 pruning rounds: about 6 minutes on 2 CPU
                               cores; retrieval accuracy ~0.27 dense rising
                               to ~0.34 at 51% of the weights (chance
                               0.001).

The rewind point counts images, not augmented copies: 1,281,167 images =
step 5,004 of 450,360 (ImageNet), 50,000 = step 390 of 62,400 (CIFAR-10),
6,400 = step 100 of 468 (:quick).

Launch:

  python -m sslprune_jax.main --config=configs/exemplar.py:quick \
      --workdir=/tmp/exemplar_quick
"""

import ml_collections

from sslprune_jax import config_lib

VARIANTS = ('', 'imagenet', 'cifar10', 'vgg19', 'quick')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the config of the variant `arg` (see the module docstring)."""
  arg = config_lib.variant(arg, VARIANTS, 'exemplar.py')
  config = config_lib.base(
      'exemplar',
      copies=2,
      margin=0.5,
      embedding_dim=128,
      # Strong augmentation, on top of the dataset's standard one.
      min_scale=0.5,
      max_degrees=20.0,
      jitter=0.4,
  )
  if arg in ('', 'imagenet'):
    config_lib.imagenet(config)
    config.train.decay_epochs = (30, 60)
  elif arg == 'vgg19':
    config.model.name = 'vgg'
    config.model.depth = 19
  elif arg == 'quick':
    config_lib.quick(config)
    config.data.train_split = 'train[:50%]'
    config.train.num_epochs = 1.0
    config.train.batch_size = 64
    config.train.eval_batch_size = 500
  return config
