"""Linear classifiers on a pruning run's frozen features (paper Fig. 1).

For every finished round of the pruning run in `--config.source.workdir`,
the round's trained trunk (mask applied, batch norm in inference mode) is
frozen, and a linear classifier on its global-average-pooled features
(`linear.layer` takes another module's output instead) is trained on the
target data: softmax with SGD for single-label data, per-class linear SVMs
with cross-validated costs for VOC07 (mAP with the VOC 2007 rule).
`results.csv` has one line per source round (test_accuracy, or test_mAP
and per-class test_AP_cc). The model must be the source's.

Variants (the part after the colon):

  configs/linear_eval.py          ImageNet, for a ResNet-50 source: Goyal et
                                  al.'s protocol, 28 epochs of SGD on
                                  augmented batches, lr 0.01 (x0.1 at 8, 16,
                                  24), wd 5e-4. Needs imagenet2012.
  configs/linear_eval.py:places   the same on Places365 (tfds
                                  places365_small).
  configs/linear_eval.py:voc07    VOC 2007 (tfds voc/2007): SVMs trained on
                                  trainval (central crops), costs 0.01-100
                                  chosen per class by 3-fold cross-validation,
                                  mAP on test.
  configs/linear_eval.py:cifar10  CIFAR-10, for a CIFAR ResNet-18 source:
                                  features cached, 30 epochs, lr 0.1 cosine.
  configs/linear_eval.py:quick    Fashion-MNIST, for a :quick source: cached
                                  features, 10 epochs: under a minute per
                                  source round on 2 CPU cores (RotNet
                                  features of figure3's network: ~84% at
                                  100% and ~82% at 1% of weights left).

Launch (after the pruning run):

  python -m sslprune_jax.main --config=configs/linear_eval.py:quick \
      --config.source.workdir=/tmp/rotnet_quick --workdir=/tmp/rotnet_linear
"""

import ml_collections

from sslprune_jax import config_lib
from sslprune_jax.data import pipeline as data_pipeline
from sslprune_jax.evaluation import linear

VARIANTS = ('', 'imagenet', 'places', 'voc07', 'cifar10', 'quick')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the config of the variant `arg` (see the module docstring)."""
  arg = config_lib.variant(arg, VARIANTS, 'linear_eval.py')
  config = linear.add_linear(config_lib.base('labels'))
  if arg in ('', 'imagenet', 'places', 'voc07'):
    config_lib.imagenet(config)
    config.train.eval_batch_size = 256
    if arg == 'places':
      config.data = data_pipeline.default_data_config('places365_small')
    elif arg == 'voc07':
      config.data = data_pipeline.default_data_config('voc2007')
  else:
    if arg == 'quick':
      config_lib.quick(config)
    config.linear.update(dict(cache_features=True, schedule='cosine',
                              learning_rate=0.1, weight_decay=0.0,
                              decay_epochs=()))
    config.linear.num_epochs = 10.0 if arg == 'quick' else 30.0
    config.train.eval_batch_size = 1000
  return config
