"""Linear classifiers on a pruning run's frozen features (paper Fig. 1).

For every finished round of the pruning run in `--config.source.workdir`,
the round's trained trunk (mask applied, batch norm in inference mode) is
frozen and a linear classifier on its features is trained on the target
data: softmax with SGD for single-label data, per-class linear SVMs with
cross-validated costs for VOC07. `results.csv` has one line per source
round (test_accuracy, or test_mAP and per-class test_AP_cc). The model must
be the source's.

The ImageNet, Places and VOC07 variants follow Goyal et al. (2019)'s
benchmark (fair_self_supervision_benchmark) for a ResNet-50 source, on the
paper's "final representations": res5 (`linear.layer='layer4_2'`, the last
block's output) average-pooled in 6 x 6 windows at stride 1
(`linear.pool=(6, 1)`, 2 x 2 x 2048 = 8192 features at 224 pixels), the
benchmark's res5_2_branch2c_bn_s1k6_resize (configs/benchmark_tasks/
image_classification/voc07/resnet50_*_extract_features.yaml) and the input
of its res5 linear head (configs/legacy_tasks/imagenet_linear_tune/
resnet50_*.yaml, configs/benchmark_tasks/image_classification/places205/
resnet50_*.yaml). For another source model set `linear.layer` and
`linear.pool` (or `linear.pool=()` to average over space).

Variants (the part after the colon):

  configs/linear_eval.py          ImageNet: the benchmark's classifier, batch
                                  norm without scale / shift then a linear
                                  layer, 140k iterations of SGD (batch 256,
                                  Nesterov momentum 0.9, wd 1e-4) on
                                  augmented batches, lr 0.01 x0.1 after 40k,
                                  80k and 120k. Needs imagenet2012.
  configs/linear_eval.py:places   the same on Places365 (tfds
                                  places365_small; the benchmark used
                                  Places205, which tfds does not have).
  configs/linear_eval.py:voc07    VOC 2007 (tfds voc/2007): the benchmark's
                                  SVMs (`evaluation.svm`): L2-normalised
                                  features, a LinearSVC per class, its cost
                                  chosen by 3-fold cross-validation on
                                  trainval among 1e-7 ... 100 and 0.5^4 ...
                                  0.5^19, AP on test without difficult
                                  images, mAP.
  configs/linear_eval.py:cifar10  CIFAR-10, for a CIFAR ResNet-18 source:
                                  pooled features cached, 30 epochs, lr 0.1
                                  cosine.
  configs/linear_eval.py:quick    Fashion-MNIST, for a :quick source: cached
                                  pooled features, 10 epochs: under a minute
                                  per source round on 2 CPU cores (RotNet
                                  features of figure3's network: ~84% at
                                  100% and ~82% at 1% of weights left).

Launch (after the pruning run):

  python -m sslprune_jax.main --config=configs/linear_eval.py:quick \
      --config.source.workdir=/tmp/rotnet_quick --workdir=/tmp/rotnet_linear
"""

import ml_collections

from sslprune_jax import config_lib
from sslprune_jax.data import schema as data_schema

VARIANTS = ('', 'imagenet', 'places', 'voc07', 'cifar10', 'quick')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the config of the variant `arg` (see the module docstring)."""
  arg = config_lib.variant(arg, VARIANTS, 'linear_eval.py')
  config = config_lib.add_linear(config_lib.base('labels'))
  if arg in ('', 'imagenet', 'places', 'voc07'):
    config_lib.imagenet(config)
    config.train.eval_batch_size = 256
    # ResNet-50's res5, pooled as the benchmark pools it (module docstring).
    config.linear.update(dict(layer='layer4_2', pool=(6, 1)))
    if arg == 'places':
      config.data = data_schema.default_data_config('places365_small')
    elif arg == 'voc07':
      config.data = data_schema.default_data_config('voc2007')
  else:
    if arg == 'quick':
      config_lib.quick(config)
    # Small-scale probes on cached, globally pooled features: this
    # project's choice, not the benchmark's (whose schedule is for
    # ImageNet-sized data).
    config.linear.update(
        dict(
            cache_features=True,
            schedule='cosine',
            learning_rate=0.1,
            weight_decay=0.0,
            nesterov=False,
            num_steps=0,
            decay_steps=(),
            decay_epochs=(),
            norm='standardize',
            init_std=0.0,
        )
    )
    config.linear.num_epochs = 10.0 if arg == 'quick' else 30.0
    config.train.eval_batch_size = 1000
  return config
