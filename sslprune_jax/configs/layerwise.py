"""Layerwise pruning (paper Fig. 4): prune only the first k layers.

One pruning run per k in `layerwise.layers`, in `<workdir>/layers_<k>`,
each pruning only the first k prunable layers in network order (the others
stay dense). The k's end at the stage boundaries of the network: compare
labels and RotNet at each depth, then re-train the masks with
configs/retrain.py.

Variants (the part after the colon):

  configs/layerwise.py              ImageNet, ResNet-50, labels (the
                                    schedule of configs/labels.py:imagenet);
                                    k = 1 (conv1), 11, 24, 43, 53 (the ends
                                    of stages 1-4). Needs imagenet2012.
  configs/layerwise.py:rotnet       the same with RotNet (configs/rotnet.py).
  configs/layerwise.py:quick        Fashion-MNIST, ResNet-10 at width 1/4,
                                    labels as configs/labels.py:quick; k = 1,
                                    3, 6, 9, 12 (all): about 5 x 11 minutes on
                                    2 CPU cores.
  configs/layerwise.py:rotnet_quick the same with configs/rotnet.py:quick.

The rewind point is that of configs/labels.py and configs/rotnet.py: step
5,004 on ImageNet, step 50 (labels) and 100 (RotNet) for the quick variants.

Launch:

  python -m sslprune_jax.main --config=configs/layerwise.py:quick \
      --workdir=/tmp/layerwise_labels
"""

import ml_collections

from sslprune_jax import config_lib

VARIANTS = ('', 'rotnet', 'quick', 'rotnet_quick')
# Prunable layers up to the end of each stage, in network order (the
# projection shortcut of a stage comes with its first block).
RESNET50_STAGES = (1, 11, 24, 43, 53)
RESNET10_STAGES = (1, 3, 6, 9, 12)


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the config of the variant `arg` (see the module docstring)."""
  arg = config_lib.variant(arg, VARIANTS, 'layerwise.py')
  config = config_lib.base('rotnet' if arg.startswith('rotnet') else 'labels')
  if arg.endswith('quick'):
    config_lib.quick(config)
    layers = RESNET10_STAGES
    if arg == 'rotnet_quick':
      # As configs/rotnet.py:quick: 4 rotated copies of every image.
      config.data.train_split = 'train[:50%]'
      config.train.num_epochs = 1.0
      config.train.batch_size = 64
      config.train.eval_batch_size = 500
  else:
    config_lib.imagenet(config)
    layers = RESNET50_STAGES
    if arg == 'rotnet':
      config.train.num_epochs = 35.0
      config.train.warmup_epochs = 5.0
      config.train.decay_epochs = (15, 25, 30)
  return config_lib.add_layerwise(config, layers)
