"""Building blocks of the experiment configs in configs/.

`base(task)` holds the settings every experiment shares, with the paper's
CIFAR-10 ResNet-18 values; `imagenet` and `quick` switch a config to the
ImageNet ResNet-50 setting or to the small Fashion-MNIST one. Each file in
configs/ starts from these and states what its task changes.
"""

import importlib.util
import pathlib

import ml_collections

from sslprune_jax.data import schema as data_schema

# The config files, part of the package (the checkout's configs/ links
# here).
CONFIGS = pathlib.Path(__file__).resolve().parent / 'configs'


def load(name: str, arg: str = '') -> ml_collections.ConfigDict:
  """configs/<name>.py's config for variant `arg`: what
  `--config=configs/<name>.py:<arg>` gives `main.py`.

  Raises:
    FileNotFoundError: there is no such config.
  """
  path = CONFIGS / f'{name}.py'
  if not path.exists():
    known = sorted(
        p.stem for p in CONFIGS.glob('*.py') if not p.stem.startswith('_')
    )
    raise FileNotFoundError(f'No config {name!r}; there are {known}.')
  spec = importlib.util.spec_from_file_location(f'{name}_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def packaged_path(config_arg: str) -> str:
  """`--config`'s value, with `configs/<name>.py[:variant]` read from the
  package when the working directory has no configs/ (an installed copy
  run from anywhere); any other path as given."""
  path, sep, arg = config_arg.partition(':')
  if (
      path.startswith('configs/')
      and not pathlib.Path(path).exists()
      and (CONFIGS / path[len('configs/') :]).exists()
  ):
    return str(CONFIGS / path[len('configs/') :]) + sep + arg
  return config_arg


def variant(
    arg: str | None, variants: tuple[str, ...], config_file: str
) -> str:
  """The variant named after the config file's colon, checked.

  Args:
    arg: what followed the colon ('' or None when nothing did).
    variants: the variants the config file offers ('' is its default).
    config_file: the file's name, for the error message.

  Returns:
    `arg`, with None turned into ''.
  """
  arg = arg or ''
  if arg not in variants:
    raise ValueError(
        f'Unknown variant {arg!r} of {config_file}; valid: '
        f'{tuple(v for v in variants if v)}.'
    )
  return arg


def _placeholder(kind):
  return ml_collections.config_dict.placeholder(kind)


def base(task: str, **task_fields) -> ml_collections.ConfigDict:
  """CIFAR-10, CIFAR ResNet-18, SGD, 30 rounds of 20% global IMP, rewind.

  Args:
    task: the task's name (see `sslprune_jax.tasks`).
    **task_fields: the task's own settings, as `config.task.<field>`.
  """
  config = ml_collections.ConfigDict()
  # What the config runs (see sslprune_jax/main.py): a pruning run.
  config.run = 'prune'
  config.seed = 0
  # Train the seeds seed, seed + 1, ..., seed + num_seeds - 1 together, in
  # one train step over all of them (train.seed_batching); each keeps its
  # own checkpoints and results in <workdir>/seed_<s>/ (see imp.run).
  config.num_seeds = 1
  config.task = ml_collections.ConfigDict(dict(name=task, **task_fields))
  config.data = data_schema.default_data_config('cifar10')
  config.model = ml_collections.ConfigDict(
      dict(
          name='resnet_cifar',
          depth=18,
          width=1.0,
          dtype='float32',
          # Batch-norm scales start at U[0, 1), as in open_lth's CIFAR models
          # (models/bn_initializers.py); 'ones' is torchvision's.
          bn_scale_init='uniform',
          # Convolutions (sslprune_jax/kernels): 'auto' (oneDNN's on the CPU
          # where it can be built, else XLA's), 'xla' or 'onednn'.
          conv_impl='auto',
      )
  )
  config.train = ml_collections.ConfigDict(
      dict(
          num_epochs=160.0,
          batch_size=128,
          eval_batch_size=1000,
          schedule='step',
          learning_rate=0.1,
          decay_epochs=(80, 120),
          decay_factor=0.1,
          warmup_epochs=0.0,
          momentum=0.9,
          nesterov=False,
          weight_decay=1e-4,
          # Average gradients and batch-norm statistics over devices in a fixed
          # order (`parallel.exact_pmean`): bit-identical training whatever the
          # processes the devices belong to, at ~1.5x the all-reduce traffic.
          exact_reduction=False,
          # How one step trains config.num_seeds > 1 seeds: 'vmap' (one
          # batched program), 'unroll' (the step once per seed, bit-identical to
          # separate runs), or 'auto': 'unroll' on CPU, 'vmap' elsewhere.
          seed_batching='auto',
          # XLA compiler options of the train and eval steps
          # (sslprune_jax/xla_options.py): 'auto' (the measured best per
          # platform), 'none' (XLA's defaults) or a preset's name.
          xla_options='auto',
      )
  )
  config.pruning = ml_collections.ConfigDict(
      dict(
          # Global magnitude pruning of 20% of the remaining prunable weights.
          method='magnitude',
          fraction=0.2,
          num_rounds=30,
          # Stop early once at most this fraction is left (0: run all rounds).
          target_fraction_left=0.0,
          # Never pruned: names matching these regexes, and leaves with fewer
          # dimensions than min_ndim (biases, batch norm).
          exclude=('classifier',),
          min_ndim=2,
          # 'unstructured': weight by weight, ranked over all layers; 'nm':
          # at most n of every m consecutive weights along a kernel's input
          # dimension (sslprune_jax/pruning/nm.py), n[r - 1] in round r, so
          # n=(4, 2, 1) with m=8 tightens 4:8 -> 2:8 -> 1:8 over 3 rounds;
          # `fraction` is then unused; 'channel': whole output channels
          # inside ResNet blocks (sslprune_jax/pruning/channels.py), a
          # `fraction` of the remaining channels a round, scored by the
          # filter's L1 norm ('l1') or |batch-norm scale| ('bn_scale'),
          # ranked over all layers ('global') or within each ('layer').
          granularity='unstructured',
          n=(2,),
          m=4,
          channel_score='l1',
          channel_scope='global',
          # Layerwise pruning: prune only the first `layers` prunable layers in
          # network order (0: all).
          layers=0,
          # Magnitude under which a weight counts as naturally zero
          # (method='random_natural').
          natural_threshold=1e-3,
          # method='random_like': random masks with, round by round, the
          # per-layer sparsity of this finished run's masks.
          reference_workdir=_placeholder(str),
          # How rounds after the first start (see sslprune_jax/imp.py):
          # 'rewind' to round 0's state after `rewind_samples` samples (step k;
          # 0: the initialisation) and train steps k..T-1; 'reinit': fresh
          # weights, steps 0..T-1; 'lr_rewind': the previous round's final
          # weights, the schedule of steps k..T-1; 'finetune': the final
          # weights, T-k steps at the schedule's last rate. Samples are dataset
          # images (RotNet's rotations count once; S4L counts its labelled and
          # unlabelled images).
          reset='rewind',
          rewind_samples=50_000,
          # 'per_round': each round draws its own data order (open_lth's
          # default); 'same': every round reads round 0's (open_lth with a
          # data_order_seed).
          data_order='per_round',
      )
  )
  # Start round 0 from round `round` of the pruning run in `workdir` (its
  # trained weights and mask) instead of a fresh network: pruning during
  # transfer starts from a pre-trained, unpruned network (round 0).
  config.init_from = ml_collections.ConfigDict(
      dict(workdir=_placeholder(str), round=0)
  )
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  return config


def imagenet(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """ImageNet, ResNet-50: 90 epochs, batch 256, x0.1 at 30, 60, 80."""
  config.data = data_schema.default_data_config('imagenet2012')
  config.model.name = 'resnet'
  config.model.depth = 50
  # torchvision's ResNet-50 (the paper's ImageNet network).
  config.model.bn_scale_init = 'ones'
  config.train.num_epochs = 90.0
  config.train.batch_size = 256
  config.train.decay_epochs = (30, 60, 80)
  # About one epoch.
  config.pruning.rewind_samples = 1_281_167
  config.checkpoint_every_steps = 2000
  return config


def quick(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Fashion-MNIST, ResNet-10 at width 1/4, 2 epochs per round, 3 rounds."""
  config.data = data_schema.default_data_config('fashion_mnist')
  # Unaugmented, as in Fashion-MNIST's own benchmark: in two epochs this
  # reaches ~91% where crop + flip reaches ~88%.
  config.data.augment = 'none'
  config.model.depth = 10
  config.model.width = 0.25
  config.train.num_epochs = 2.0
  config.train.schedule = 'cosine'
  config.train.warmup_epochs = 0.1
  config.train.weight_decay = 5e-4
  config.pruning.num_rounds = 3
  config.pruning.rewind_samples = 6_400
  config.log_every_steps = 50
  config.checkpoint_every_steps = 200
  return config


def figure3(
    config: ml_collections.ConfigDict, train_images: int
) -> ml_collections.ConfigDict:
  """Figure 3's small scale, for any objective's config.

  The `figure3` variants of configs/labels.py, rotnet.py and retrain.py
  (sslprune_jax/figure3.py runs them all) use it, so every run of
  the figure has these settings from this one place.

  Args:
    config: a config from `config_lib.base`.
    train_images: how many of Fashion-MNIST's training images to train on.

  Returns:
    `config`, changed in place: the :quick network and schedule, 5 rounds
    of 60% of the remaining weights, rewind to 1,280 samples, evaluation
    on 5,000 test images, no checkpoints within a round.
  """
  quick(config)
  config.data.train_split = f'train[:{train_images}]'
  config.data.eval_split = 'test[:5000]'
  config.train.eval_batch_size = 1000
  config.pruning.fraction = 0.6
  config.pruning.num_rounds = 5
  config.pruning.rewind_samples = 1280
  config.log_every_steps = 100
  config.checkpoint_every_steps = 0
  return config


# What makes a config an evaluation of another run (`config.run`): plain
# config builders, here so that loading a config imports no evaluation code.

# The `--costs_list` of the benchmark's VOC07 SVM commands (GETTING_STARTED.md
# of fair_self_supervision_benchmark); `evaluation.svm.cost_grid` appends its
# powers of 0.5.
SVM_BENCHMARK_COSTS = (
    1e-7,
    1e-6,
    1e-5,
    1e-4,
    1e-3,
    0.01,
    0.1,
    1.0,
    10.0,
    100.0,
)


def add_source(
    config: ml_collections.ConfigDict, *, init: str, mask: str = 'source'
) -> ml_collections.ConfigDict:
  """Makes a training config a re-training one (source workdir unset)."""
  config.run = 'retrain'
  config.source = ml_collections.ConfigDict(
      dict(
          workdir=ml_collections.config_dict.placeholder(str),
          # Empty: every finished round of the source run.
          rounds=(),
          init=init,
          mask=mask,
      )
  )
  return config


def add_linear(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Makes a config a linear-evaluation one (source workdir unset).

  The defaults are Goyal et al.'s ResNet-50 ImageNet / Places linear
  classifier and VOC07 SVMs (see the module docstring); the feature layer
  and pooling depend on the model and are set by configs/linear_eval.py.
  What the fields mean: `sslprune_jax.evaluation.linear`.
  """
  config.run = 'linear'
  config.source = ml_collections.ConfigDict(
      dict(workdir=ml_collections.config_dict.placeholder(str), rounds=())
  )
  config.linear = ml_collections.ConfigDict(
      dict(
          # '' = the pooled features the head sits on; else a module's path.
          layer='',
          # () = average over space; (window, stride) = `pool_features`.
          pool=(),
          # Read the training features once, unaugmented, and train in memory.
          cache_features=False,
          # SOLVER of configs/legacy_tasks/imagenet_linear_tune/resnet50_*.yaml
          # and configs/benchmark_tasks/image_classification/places205/
          # resnet50_*.yaml: 140k iterations of batch 256, lr 0.01 x0.1 after
          # 40k, 80k and 120k. num_steps = 0 counts in epochs instead
          # (num_epochs, decay_epochs, warmup_epochs).
          batch_size=256,
          schedule='step',
          learning_rate=0.01,
          num_steps=140_000,
          decay_steps=(40_000, 80_000, 120_000),
          decay_factor=0.1,
          num_epochs=0.0,
          decay_epochs=(),
          warmup_epochs=0.0,
          momentum=0.9,
          nesterov=True,
          weight_decay=1e-4,
          # The head: batch norm without scale / shift (BN_NO_SCALE_SHIFT,
          # BN_MOMENTUM 0.9, BN_EPSILON 1e-5), weights from N(0, 0.01^2).
          norm='batch_norm',
          bn_momentum=0.9,
          bn_epsilon=1e-5,
          init_std=0.01,
          # VOC07: the benchmark's --costs_list (svm.cost_grid appends its
          # powers of 0.5), 3 folds; processes for the SVMs (0: one per core).
          svm_costs=SVM_BENCHMARK_COSTS,
          svm_folds=3,
          svm_workers=0,
      )
  )
  return config


def add_layerwise(
    config: ml_collections.ConfigDict, layers: tuple[int, ...]
) -> ml_collections.ConfigDict:
  """Makes a pruning config a layerwise sweep over `layers`."""
  config.run = 'layerwise'
  config.layerwise = ml_collections.ConfigDict(dict(layers=layers))
  return config
