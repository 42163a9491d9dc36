"""Training objectives behind one interface (see `tasks.base.Task`).

A task says which head sits on the trunk (`num_outputs`), turns a data
batch into network inputs and targets on device (`prepare`), computes the
loss (`loss`), keeps any state of its own in the train state (`init_state`,
`update_state`: NPID's memory bank), and reports metrics. It knows nothing
of pruning. The config's `task` names one and sets its fields:

  labels      cross-entropy on labels (`tasks.labels`)
  rotnet      4-way rotation prediction (`tasks.rotnet`)
  exemplar    triplet loss between augmented copies (`tasks.exemplar`)
  npid        instance discrimination with a memory bank (`tasks.npid`)
  s4l         labels on a subset + rotation on all images (`tasks.s4l`)
  few_labels  labels on the labelled subset only (`tasks.few_labels`)
  multilabel  one sigmoid per class, VOC07 mAP (`tasks.multilabel`)
"""

import dataclasses

from sslprune_jax.tasks.base import STREAMS, Task
from sslprune_jax.tasks.exemplar import Exemplar
from sslprune_jax.tasks.few_labels import FewLabels
from sslprune_jax.tasks.labels import Labels
from sslprune_jax.tasks.multilabel import MultiLabel
from sslprune_jax.tasks.npid import NPID
from sslprune_jax.tasks.rotnet import RotNet
from sslprune_jax.tasks.s4l import S4LRotation

TASKS = {
    t.name: t
    for t in (
        Labels,
        RotNet,
        Exemplar,
        NPID,
        S4LRotation,
        FewLabels,
        MultiLabel,
    )
}
# Task fields filled from the dataset rather than the config.
_FROM_DATASET = {'index_range': 'index_range', 'num_classes': 'num_classes'}


def check_fields(task_config) -> list[str]:
  """Problems with a task config's name and fields, without building it."""
  name = task_config.get('name')
  if name not in TASKS:
    return [f'Unknown task {name!r}; valid tasks: {sorted(TASKS)}.']
  settable = {f.name for f in dataclasses.fields(TASKS[name])} - set(
      _FROM_DATASET
  )
  unknown = sorted(set(task_config) - settable - {'name'})
  if unknown:
    return [
        f'Unknown fields {unknown} for task {name!r}; valid: '
        f'{sorted(settable)}.'
    ]
  return []


def get_task(task_config, info=None) -> Task:
  """Builds the task a config names.

  Args:
    task_config: the config's `task` (a ConfigDict with `name` and the
      task's fields), or just a task name (its defaults).
    info: the dataset's `data.DatasetInfo`, for the tasks that depend on it
      (NPID's bank, the number of classes of S4L and NPID).

  Returns:
    A `Task`.

  Raises:
    ValueError: unknown task or field, or a bad value.
  """
  fields = (
      {'name': task_config}
      if isinstance(task_config, str)
      else dict(task_config)
  )
  problems = check_fields(fields)
  if problems:
    raise ValueError(problems[0])
  cls = TASKS[fields.pop('name')]
  if info is not None:
    known = {f.name for f in dataclasses.fields(cls)}
    for field, attribute in _FROM_DATASET.items():
      if field in known:
        fields[field] = getattr(info, attribute)
  return cls(**fields)


__all__ = ['STREAMS', 'TASKS', 'Task', 'check_fields', 'get_task']
