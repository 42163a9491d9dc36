"""The VOC 2007 targets and mAP now live in `sslprune_jax.voc` (the data,
the tasks and the evaluations all use them); importable from here, as
before."""

# pylint: disable=unused-import
from sslprune_jax.voc import DIFFICULT
from sslprune_jax.voc import NEGATIVE
from sslprune_jax.voc import POSITIVE
from sslprune_jax.voc import average_precision
from sslprune_jax.voc import mean_average_precision
from sslprune_jax.voc import targets
