"""What the model and the round loop know of a dataset (`get_info`)."""

import dataclasses

from sslprune_jax.data import schema
from sslprune_jax.data import sources
from sslprune_jax.data import subsets


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and the training loop need to know about a dataset.

  Attributes:
    num_classes: number of classes (those of `classes` when it restricts
      the dataset, see `class_subset`).
    num_train_examples: examples in the whole training split (all hosts),
      of `classes` only if it is given.
    num_eval_examples: examples in the whole evaluation split (all hosts),
      likewise.
    image_shape: `(H, W, C)` of the images the pipelines yield.
    num_labelled_examples: examples of the labelled subset of the training
      split (all hosts; see `labelled_indices`).
    index_size: examples in the base split of the training split (`'train'`
      for `'train[:10%]'`): training indices lie in `[0, index_size)`. For
      datasets without split statistics (`tfds.testing.mock_data`), whose
      indices enumerate the training split, its number of examples.
    index_range: `(start, stop)`, the smallest range of indices that holds
      every index of the training split (`(0, 30000)` for Fashion-MNIST's
      `'train[:50%]'`): a per-example table, such as NPID's memory bank, needs
      only `stop - start` rows.
    multi_label: whether the batches' `'label'` holds a target per class
      (`[B, num_classes]` in {1, 0, -1}, VOC's convention) instead of one
      class id per example (`[B]`).
  """

  num_classes: int
  num_train_examples: int
  num_eval_examples: int
  image_shape: tuple[int, int, int]
  num_labelled_examples: int
  index_size: int
  index_range: tuple[int, int]
  # Last and with a default, so that code building infos by hand still works.
  multi_label: bool = False


def get_info(data_config):
  """Describes a data config's dataset as the pipelines yield it.

  Args:
    data_config: data config (see `default_data_config`).

  Returns:
    A `DatasetInfo`. Counting the labelled examples reads the labels of the
    training split once per process unless `labelled` is 'all'.

  Raises:
    ValueError: invalid config.
    DatasetNotFoundError: the dataset (or ImageNet's labelled subset) could
      not be obtained.
  """
  config = schema._resolve_config(data_config)
  builder = sources._prepared_builder(config)
  channels = 1 if config.grayscale else sources._image_shape(builder)[-1]
  layout = subsets._index_layout(builder, config)
  ranges = subsets._index_ranges(builder, layout, config.train_split, 0)
  if config.classes:
    num_train_examples = len(subsets._class_indices(config))
  else:
    num_train_examples = sources._num_examples(builder, config.train_split)
  return DatasetInfo(
      num_classes=len(config.classes) or sources._num_classes(builder),
      num_train_examples=num_train_examples,
      num_eval_examples=subsets._count(builder, config, config.eval_split),
      image_shape=(config.image_size, config.image_size, int(channels)),
      num_labelled_examples=len(subsets._labelled_indices(config)),
      index_size=layout.size,
      index_range=(min(r[0] for r in ranges), max(r[1] for r in ranges)),
      multi_label=sources._is_multi_label(builder),
  )
