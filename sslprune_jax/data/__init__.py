"""Input pipelines through TFDS.

Datasets: Fashion-MNIST, CIFAR-10, ImageNet (ILSVRC 2012), Places365-Standard
(`places365_small`, 256 x 256 images) and PASCAL VOC 2007 (`voc2007`,
multi-label classification of 20 classes, trained on trainval).
"""

from sslprune_jax.data.pipeline import DATASETS
from sslprune_jax.data.pipeline import DatasetInfo
from sslprune_jax.data.pipeline import DatasetNotFoundError
from sslprune_jax.data.pipeline import LABELLED
from sslprune_jax.data.pipeline import class_subset
from sslprune_jax.data.pipeline import default_data_config
from sslprune_jax.data.pipeline import eval_iterator
from sslprune_jax.data.pipeline import get_builder
from sslprune_jax.data.pipeline import get_info
from sslprune_jax.data.pipeline import labelled_indices
from sslprune_jax.data.pipeline import mixed_train_iterator
from sslprune_jax.data.pipeline import pipeline_options
from sslprune_jax.data.pipeline import train_iterator

__all__ = [
    'DATASETS',
    'DatasetInfo',
    'DatasetNotFoundError',
    'LABELLED',
    'class_subset',
    'default_data_config',
    'eval_iterator',
    'get_builder',
    'get_info',
    'labelled_indices',
    'mixed_train_iterator',
    'pipeline_options',
    'train_iterator',
]
