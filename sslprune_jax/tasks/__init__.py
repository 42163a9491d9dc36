"""Training objectives behind one interface.

A task:
  - `num_outputs(num_classes)`: the size of the head on the trunk (the
    model's last layer, named 'classifier' and never pruned);
  - `prepare(batch, rng)`: turns a data batch into network inputs and
    targets, on device inside the jitted step (RotNet's x4 rotations);
  - `loss(outputs, batch)`: the scalar loss of a prepared batch;
  - `metrics(outputs, batch, collection, mask)`: one batch's clu metrics;
  - `train_metrics` / `eval_metrics`: the clu collections it reports.
A task knows nothing of pruning.
"""

from sslprune_jax.tasks.labels import Labels
from sslprune_jax.tasks.rotnet import RotNet

TASKS = {'labels': Labels, 'rotnet': RotNet}


def get_task(name: str):
  """Returns the task called `name`."""
  if name not in TASKS:
    raise ValueError(f'Unknown task {name!r}; valid tasks: {sorted(TASKS)}.')
  return TASKS[name]()
