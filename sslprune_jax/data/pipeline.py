"""The input pipelines' names from before they were split by concern;
importable from here, as before.

They live in `data.schema` (the data config and its checks),
`data.sources` (getting the data), `data.reading` (tf.data reading),
`data.subsets` (example indices, the labelled and class subsets),
`data.info` (`get_info`), `data.epochs` (one epoch of the training stream)
and `data.iterators` (the iterators). A test that replaces one of them
replaces it in its own module.
"""

# pylint: disable=unused-import,g-bad-import-order
from sslprune_jax.data.schema import AUGMENTATIONS
from sslprune_jax.data.schema import DATASETS
from sslprune_jax.data.schema import LABELLED
from sslprune_jax.data.schema import _CONFIG_FIELDS
from sslprune_jax.data.schema import _Config
from sslprune_jax.data.schema import _DEFAULTS
from sslprune_jax.data.schema import _IMAGENET_SUBSETS
from sslprune_jax.data.schema import _JOINED_SPLIT_PATTERN
from sslprune_jax.data.schema import _JOINED_TRAIN_SPLITS
from sslprune_jax.data.schema import _MULTI_LABEL
from sslprune_jax.data.schema import _SPLIT_PART
from sslprune_jax.data.schema import _SPLIT_PART_PATTERN
from sslprune_jax.data.schema import _TFDS_NAMES
from sslprune_jax.data.schema import _as_fraction
from sslprune_jax.data.schema import _base_splits
from sslprune_jax.data.schema import _check_classes
from sslprune_jax.data.schema import _check_labelled
from sslprune_jax.data.schema import _check_name
from sslprune_jax.data.schema import _check_train_split
from sslprune_jax.data.schema import _is_int
from sslprune_jax.data.schema import _resolve_config
from sslprune_jax.data.schema import _tfds_name
from sslprune_jax.data.schema import check_augment
from sslprune_jax.data.schema import default_data_config
from sslprune_jax.data.sources import DatasetNotFoundError
from sslprune_jax.data.sources import _PROBE_TIMEOUT_S
from sslprune_jax.data.sources import _PROXY_VARIABLES
from sslprune_jax.data.sources import _TFDS_GCS_HOST
from sslprune_jax.data.sources import _bars_on_terminals_only
from sslprune_jax.data.sources import _check_classes_exist
from sslprune_jax.data.sources import _download_hosts
from sslprune_jax.data.sources import _download_hosts_reachable
from sslprune_jax.data.sources import _download_with_tfds
from sslprune_jax.data.sources import _fashion_mnist_instructions
from sslprune_jax.data.sources import _has_data
from sslprune_jax.data.sources import _image_shape
from sslprune_jax.data.sources import _imagenet_not_found
from sslprune_jax.data.sources import _imagenet_subset_not_found
from sslprune_jax.data.sources import _is_multi_label
from sslprune_jax.data.sources import _num_classes
from sslprune_jax.data.sources import _num_examples
from sslprune_jax.data.sources import _places365_not_found
from sslprune_jax.data.sources import _prepare_fashion_mnist
from sslprune_jax.data.sources import _prepared_builder
from sslprune_jax.data.sources import _tfds_download_and_prepare
from sslprune_jax.data.sources import get_builder
from sslprune_jax.data.reading import _AUGMENT
from sslprune_jax.data.reading import _EXAMPLE_SHUFFLE
from sslprune_jax.data.reading import _FILE_SHUFFLE
from sslprune_jax.data.reading import _LABELLED_STREAM
from sslprune_jax.data.reading import _TFDS_ID_PATTERN
from sslprune_jax.data.reading import _UNLABELLED_STREAM
from sslprune_jax.data.reading import _augment_key
from sslprune_jax.data.reading import _decoders
from sslprune_jax.data.reading import _derive_seed
from sslprune_jax.data.reading import _finish
from sslprune_jax.data.reading import _hide_accelerators_from_tf
from sslprune_jax.data.reading import _index_from_tfds_id
from sslprune_jax.data.reading import _local_batch_size
from sslprune_jax.data.reading import _multi_label_targets
from sslprune_jax.data.reading import _read
from sslprune_jax.data.reading import _read_shards
from sslprune_jax.data.reading import _shard_batch_size
from sslprune_jax.data.reading import _shard_offset_table
from sslprune_jax.data.reading import pipeline_options
from sslprune_jax.data.subsets import _IndexLayout
from sslprune_jax.data.subsets import _SCAN_BATCH
from sslprune_jax.data.subsets import _choose_labelled
from sslprune_jax.data.subsets import _class_indices
from sslprune_jax.data.subsets import _count
from sslprune_jax.data.subsets import _host_split
from sslprune_jax.data.subsets import _imagenet_subset_indices
from sslprune_jax.data.subsets import _index_layout
from sslprune_jax.data.subsets import _index_ranges
from sslprune_jax.data.subsets import _index_start
from sslprune_jax.data.subsets import _labelled_indices
from sslprune_jax.data.subsets import _relabel
from sslprune_jax.data.subsets import _scan
from sslprune_jax.data.subsets import class_subset
from sslprune_jax.data.subsets import labelled_indices
from sslprune_jax.data.info import DatasetInfo
from sslprune_jax.data.info import get_info
from sslprune_jax.data.epochs import _cached_train_source
from sslprune_jax.data.epochs import _relabelled
from sslprune_jax.data.epochs import _shard_batches
from sslprune_jax.data.epochs import _subset_steps_per_epoch
from sslprune_jax.data.epochs import _train_batches
from sslprune_jax.data.epochs import _train_epoch
from sslprune_jax.data.iterators import _check_seed_and_step
from sslprune_jax.data.iterators import _interleave_shards
from sslprune_jax.data.iterators import eval_iterator
from sslprune_jax.data.iterators import mixed_train_iterator
from sslprune_jax.data.iterators import train_iterator
