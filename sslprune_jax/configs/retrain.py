"""Training a pruning run's masks again on labels (paper Fig. 3 and 5).

For every finished round of the pruning run in `--config.source.workdir`,
the round's mask is trained from scratch on labels (mask fixed) and its
top-1 accuracy recorded; `results.csv` has one line per source round, so
`python -m sslprune_jax.report` plots it against the fraction of weights
left. `source.init` picks where the weights start ('winning_ticket': the
source's rewind point, training on from the step at which this config has
seen the source's `pruning.rewind_samples` images, as a rewound pruning
round does: step 10 of 92 for :figure3, 50 of 936 for :quick; 'reinit': a
fresh initialisation, from step 0), `source.mask` the mask ('source';
'random_global_natural': the paper's random baseline, one global mask from
the source's dense network with the round's number of weights, naturally
near-zero weights first, the rest at random; 'random_like': random with the
same per-layer rates; 'random_natural': the same, adjusted for natural
sparsity layer by layer). The model must
be the source's; a self-supervised source's head gives way to a fresh
classifier (see sslprune_jax/evaluation/retrain.py).

Variants (the part after the colon):

  configs/retrain.py          ImageNet, ResNet-50 trained on labels with the
                              schedule of configs/labels.py:imagenet (90
                              epochs, batch 256, lr 0.1, x0.1 at 30, 60, 80),
                              from the winning ticket. Needs imagenet2012.
  configs/retrain.py:cifar10  CIFAR-10, ResNet-18 (160 epochs, as
                              configs/labels.py).
  configs/retrain.py:quick    Fashion-MNIST, ResNet-10 at width 1/4, 2
                              epochs per round (configs/labels.py:quick):
                              about 3 minutes per source round on 2 CPU
                              cores; for a source made with a :quick config
                              of labels, rotnet, exemplar, npid or s4l.
  configs/retrain.py:figure3  Figure 3 at small scale (see
                              sslprune_jax/figure3.py): the
                              training of configs/labels.py:figure3, for a
                              source made with configs/labels.py:figure3 or
                              configs/rotnet.py:figure3; about 2 minutes
                              for the 6 rounds on 2 CPU cores.

Launch (after the pruning run):

  python -m sslprune_jax.main --config=configs/retrain.py:quick \
      --config.source.workdir=/tmp/rotnet_quick \
      --config.source.init=reinit --workdir=/tmp/rotnet_quick_reinit

Several sources, initialisations or seeds at once, or one run per source
round (to re-train the rounds in parallel): launch/sweep.py.
"""

import ml_collections

from sslprune_jax import config_lib

VARIANTS = ('', 'imagenet', 'cifar10', 'quick', 'figure3')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the config of the variant `arg` (see the module docstring)."""
  arg = config_lib.variant(arg, VARIANTS, 'retrain.py')
  config = config_lib.base('labels')
  if arg in ('', 'imagenet'):
    config_lib.imagenet(config)
  elif arg == 'quick':
    config_lib.quick(config)
  elif arg == 'figure3':
    config_lib.figure3(config, train_images=6000)
  return config_lib.add_source(config, init='winning_ticket')
