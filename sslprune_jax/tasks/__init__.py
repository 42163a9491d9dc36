"""Training objectives behind one interface.

A task says how many outputs the network's head has, turns the network's
outputs and a batch into a loss, and summarises a batch as clu metrics. It
knows nothing of pruning.
"""

from sslprune_jax.tasks.labels import Labels

TASKS = {'labels': Labels}


def get_task(name: str):
  """Returns the task called `name`."""
  if name not in TASKS:
    raise ValueError(f'Unknown task {name!r}; valid tasks: {sorted(TASKS)}.')
  return TASKS[name]()
