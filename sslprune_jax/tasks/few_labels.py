"""Few labels: cross-entropy on the labelled subset only.

The baseline of the semi-supervised task (`s4l`): the same labelled subset
(`data.labelled`: a fraction of every class, or every image of a fraction of
the classes), trained with labels and nothing else. Epochs are epochs over
that subset.
"""

import dataclasses

from sslprune_jax.tasks import labels


@dataclasses.dataclass(frozen=True)
class FewLabels(labels.Labels):
  """`Labels` on the labelled training subset."""

  name = 'few_labels'
  stream = 'labelled'
