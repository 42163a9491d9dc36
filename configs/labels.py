"""Iterative magnitude pruning of a network trained with labels.

Variants (the part after the colon):

  configs/labels.py          CIFAR-10, ResNet-18 (CIFAR form), the paper's
                             settings: 160 epochs per round, batch 128, SGD
                             lr 0.1 (x0.1 at epochs 80 and 120), momentum 0.9,
                             wd 1e-4, 20% of the remaining weights pruned per
                             round for 30 rounds, rewind to ~1 epoch.
                             Expect ~95% test accuracy dense, staying within
                             about a point down to a few % of weights left.
  configs/labels.py:vgg19    the same with VGG-19 (Morcos et al. form).
  configs/labels.py:imagenet ResNet-50 on ImageNet: 90 epochs, batch 256,
                             lr 0.1 (x0.1 at 30, 60, 80), rewind to ~1.3M
                             samples. Expect ~76% top-1 dense.
  configs/labels.py:quick    Fashion-MNIST, ResNet-10 at width 1/4, 2 epochs
                             per round, 3 pruning rounds: about 11 minutes
                             on 2 CPU cores. Expect ~91% test accuracy in
                             every round (100%, 80%, 64%, 51.2% left).

Launch:

  python -m sslprune_jax.main --config=configs/labels.py:quick \
      --workdir=/tmp/labels_quick
  python -m sslprune_jax.main --config=configs/labels.py \
      --workdir=gs://bucket/labels_cifar10 --config.seed=3

Any field can be overridden on the command line (`--config.pruning.reset=
reinit`, `--config.train.num_epochs=2`).
"""

import ml_collections



def _data_dir():
  # tfds data_dir: None means tfds's default (~/tensorflow_datasets).
  return ml_collections.config_dict.placeholder(str)


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the config of the variant `arg` ('', vgg19, imagenet, quick)."""
  variants = ('', 'cifar10', 'vgg19', 'imagenet', 'quick')
  arg = arg or ''
  if arg not in variants:
    raise ValueError(f'Unknown variant {arg!r} of labels.py; valid: '
                     f'{variants[1:]}.')
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.task = 'labels'

  config.data = ml_collections.ConfigDict(dict(
      name='cifar10', data_dir=_data_dir(), train_split='train', eval_split='test',
      image_size=32, augment='cifar', shuffle_buffer=50_000, cache=True))

  config.model = ml_collections.ConfigDict(dict(
      name='resnet_cifar', depth=18, width=1.0, dtype='float32'))

  config.train = ml_collections.ConfigDict(dict(
      num_epochs=160.0, batch_size=128, eval_batch_size=1000,
      schedule='step', learning_rate=0.1, decay_epochs=(80, 120),
      decay_factor=0.1, warmup_epochs=0.0, momentum=0.9, nesterov=False,
      weight_decay=1e-4))

  config.pruning = ml_collections.ConfigDict(dict(
      # Global magnitude pruning of 20% of the remaining prunable weights.
      method='magnitude', fraction=0.2, num_rounds=30,
      # Stop early once at most this fraction is left (0: run all rounds).
      target_fraction_left=0.0,
      # Never pruned: names matching these regexes, and leaves with fewer
      # dimensions than min_ndim (biases, batch norm).
      exclude=('classifier',), min_ndim=2,
      # Layerwise pruning: prune only the first `layers` prunable layers in
      # network order (0: all).
      layers=0,
      # Magnitude under which a weight counts as naturally zero
      # (method='random_natural').
      natural_threshold=1e-3,
      # method='random_like': random masks with, round by round, the
      # per-layer sparsity of this finished run's masks.
      reference_workdir=ml_collections.config_dict.placeholder(str),
      # 'rewind' to the weights after `rewind_samples` samples of round 0
      # (0: the original initialisation), or 'reinit' with fresh weights.
      reset='rewind', rewind_samples=50_000))

  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000

  if arg == 'vgg19':
    config.model.name = 'vgg'
    config.model.depth = 19
  elif arg == 'imagenet':
    config.data = ml_collections.ConfigDict(dict(
        name='imagenet2012', data_dir=_data_dir(), train_split='train',
        eval_split='validation', image_size=224, augment='imagenet',
        shuffle_buffer=16_384, cache=False))
    config.model.name = 'resnet'
    config.model.depth = 50
    config.train.num_epochs = 90.0
    config.train.batch_size = 256
    config.train.eval_batch_size = 1000
    config.train.decay_epochs = (30, 60, 80)
    config.pruning.rewind_samples = 1_281_167
    config.checkpoint_every_steps = 2000
  elif arg == 'quick':
    config.data = ml_collections.ConfigDict(dict(
        name='fashion_mnist', data_dir=_data_dir(), train_split='train',
        # Unaugmented, as in Fashion-MNIST's own benchmark: in two epochs
        # this reaches ~91% where crop + flip reaches ~88%.
        eval_split='test', image_size=28, augment='none',
        shuffle_buffer=60_000, cache=True))
    config.model.depth = 10
    config.model.width = 0.25
    config.train.num_epochs = 2.0
    config.train.batch_size = 128
    config.train.eval_batch_size = 1000
    config.train.schedule = 'cosine'
    config.train.learning_rate = 0.1
    config.train.warmup_epochs = 0.1
    config.train.weight_decay = 5e-4
    config.pruning.num_rounds = 3
    config.pruning.rewind_samples = 6_400
    config.log_every_steps = 50
    config.checkpoint_every_steps = 200
  return config
