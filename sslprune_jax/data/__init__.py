"""Input pipelines through TFDS.

Datasets: Fashion-MNIST, CIFAR-10, ImageNet (ILSVRC 2012), Places365-Standard
(`places365_small`, 256 x 256 images) and PASCAL VOC 2007 (`voc2007`,
multi-label classification of 20 classes, trained on trainval).

Training and evaluation input pipelines on TFDS datasets.

Each host reads its own shard of a split (`tfds.split_for_jax_process`) and
yields numpy batches of `global_batch_size // jax.process_count()` examples.
The training split may be read in more parts than there are hosts
(`read_shards`), which makes its stream independent of the number of hosts.

The training stream is exactly reproducible from `(seed, start_step)`:

* epoch `e` shuffles with seeds derived from `(seed, e)` only;
* an example's augmentation uses a stateless seed derived from
  `(seed, e, index of the example within epoch e)`, so parallel map scheduling
  cannot change it;
* every epoch has `num_train_examples // global_batch_size` steps (see
  `train_iterator` for joined splits on several processes);
* resuming at step `k` rebuilds epoch `k // steps_per_epoch` and skips the raw
  (undecoded, unaugmented) examples of its first `k % steps_per_epoch` steps.

Training examples carry their `index`, the position of the example in the
base split (`'train'` for `'train[:50%]'`), computed from TFDS's record ids
and the base split's shard lengths; it does not depend on the number of
processes. VOC's training split joins two splits (`'train+validation'`, the
paper's trainval): the examples of each base split are numbered after those
of the base splits before it in the union. The `labelled` subset of the
training split (a fraction of every class, or every image of a fraction of
the classes) is a set of such indices that every host computes identically
(`labelled_indices`). Streams restricted to it filter the examples before
shuffling, so resuming stays exact.

Batches of single-label datasets carry a class id per example. VOC 2007 is
multi-label: its `'label'` is one target per class, in the VOC devkit's
convention of `sslprune_jax.voc` (1: a non-difficult object of the
class, 0: only difficult ones, -1: none).

Modules, from the bottom up: `schema` (the data config; no TensorFlow),
`sources`, `reading`, `subsets`, `info`, `epochs`, `iterators`, and
`augment` (the policies, built from `image_ops`, `crops` and `color`) and
`fashion_mnist`. Names with a leading underscore are shared by
these modules only. The names below are loaded on first use, so that
importing the schema (as configs do) does not import TensorFlow.
"""

import importlib

# Public name -> the module of this package that defines it.
_HOMES = {
    'DATASETS': 'schema',
    'DatasetInfo': 'info',
    'DatasetNotFoundError': 'sources',
    'LABELLED': 'schema',
    'class_subset': 'subsets',
    'default_data_config': 'schema',
    'eval_iterator': 'iterators',
    'get_builder': 'sources',
    'get_info': 'info',
    'labelled_indices': 'subsets',
    'mixed_train_iterator': 'iterators',
    'pipeline_options': 'reading',
    'train_iterator': 'iterators',
}

__all__ = sorted(_HOMES)


def __getattr__(name):
  if name in _HOMES:
    value = getattr(importlib.import_module(f'{__name__}.{_HOMES[name]}'), name)
    globals()[name] = value  # Later lookups do not come here.
    return value
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted({*globals(), *__all__})
