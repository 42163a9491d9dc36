"""Reading another finished run: its config, its seeds, its rounds.

What re-training, the linear evaluations, exports and runs that start from
another network (`init_from`) read of a pruning run, with errors that say
what is missing and what to do.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sslprune_jax import checkpoint
from sslprune_jax import rundir

PyTree = Any

# The rewind point is saved in round 0: training round 0 again saves it
# again, bit for bit.
REWIND_ADVICE = (
    'Delete {workdir}/rewind and {workdir}/rounds/0 and run '
    'again: round 0 is trained again and saves the same rewind '
    'point; the other rounds are kept.'
)


def restore(fn, what: str, where, advice: str | None = None):
  """Runs a restore, turning a failure into an error that says what to do
  (in two lines: `checkpoint.first_line`)."""
  try:
    return fn()
  except Exception as e:  # Orbax raises many types for unreadable files.
    raise checkpoint.CorruptCheckpointError(
        f'Could not read the {what} from {where}: {type(e).__name__}: '
        f'{checkpoint.first_line(e)}\nThe checkpoint is damaged or was '
        'written by another config. '
        + (
            advice
            or f'Delete {where} to redo the work it held; earlier '
            'rounds are kept.'
        )
    ) from e


def source_config(workdir: str) -> ml_collections.ConfigDict:
  """The config of the pruning run in `workdir`."""
  path = rundir.config_path(workdir)
  if not path.exists():
    raise ValueError(
        f'{workdir} holds no pruning run ({path} does not '
        'exist); run the pruning first.'
    )
  return ml_collections.ConfigDict(checkpoint.read_config_json(path))


def seed_run(workdir: str, seed: int) -> str:
  """Where seed `seed` of the pruning run in `workdir` is kept.

  A run that trained several seeds together keeps seed s in
  `rundir.seed_dir(workdir, s)`: a run of seed s that starts from it reads
  that seed, so that packed seeds stay paired with what they came from. A
  run of one seed is read as it is, whatever `seed`.
  """
  source = source_config(workdir)
  packed = source.get('num_seeds', 1)
  if packed == 1:
    return workdir
  first = source.seed
  if not first <= seed < first + packed:
    raise ValueError(
        f'{workdir} trained seeds {first}..{first + packed - 1}'
        f'; it has no seed {seed} to start from.'
    )
  return str(rundir.seed_dir(workdir, seed))


def check_source(
    config: ml_collections.ConfigDict, source_workdir: str
) -> ml_collections.ConfigDict:
  """The source run's config, checked to have trained this config's model."""
  source = source_config(source_workdir)
  diffs = checkpoint.config_diff(source.model.to_dict(), config.model.to_dict())
  if diffs:
    raise ValueError(
        f'The run in {source_workdir} trained another model '
        '(source -> this run):\n  ' + '\n  '.join(diffs)
    )
  return source


def source_rounds(source_workdir: str, wanted=()) -> list[int]:
  """`wanted` rounds of a source run, checked finished; () = all finished."""
  source_config(source_workdir)  # A clear error if there is no run.
  with checkpoint.RunCheckpoints(source_workdir) as ckpts:
    finished = ckpts.completed_rounds()
  wanted = list(wanted) or finished
  missing = sorted(set(wanted) - set(finished))
  if missing or not wanted:
    raise ValueError(
        f'{source_workdir} has not finished rounds {missing or "any"} '
        f'(finished: {finished}); run the pruning further first.'
    )
  return wanted


def _on_this_host(tree: PyTree) -> PyTree:
  # Via the host: restored arrays carry the source run's placement.
  return jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), tree)


def read_source_round(
    config: ml_collections.ConfigDict,
    source_workdir: str,
    round_idx: int,
    *,
    point: str = 'final',
) -> tuple[ml_collections.ConfigDict, dict]:
  """Round `round_idx` of the run in `source_workdir`, as it was saved.

  Args:
    config: this run's config (its model must be the source's).
    source_workdir: a pruning run with round `round_idx` finished.
    round_idx: the source round.
    point: 'final' (the round's trained weights) or 'rewind' (the rewind
      point's weights with the round's mask).

  Returns:
    (the source's config, {'params', 'batch_stats', 'mask'} with the mask
    boolean), the arrays placed on this run's default device.
  """
  source = check_source(config, source_workdir)
  source_rounds(source_workdir, [round_idx])
  with checkpoint.RunCheckpoints(source_workdir) as ckpts:
    saved = restore(
        lambda: ckpts.load_round(round_idx),
        f'end of round {round_idx}',
        rundir.round_end_dir(source_workdir, round_idx),
    )
    if point == 'rewind':
      if not ckpts.has_rewind():
        raise ValueError(
            f'{source_workdir} has no rewind point (pruning.reset='
            f'{source.pruning.reset!r}): no winning ticket to start from.'
        )
      rewound = restore(
          ckpts.load_rewind,
          'rewind point',
          rundir.rewind_dir(source_workdir),
          advice=REWIND_ADVICE.format(workdir=rundir.path(source_workdir)),
      )
      saved = {
          'params': rewound['params'],
          'batch_stats': rewound['batch_stats'],
          'mask': saved['mask'],
      }
  saved = _on_this_host(saved)
  saved['mask'] = jax.tree.map(lambda m: m.astype(jnp.bool_), saved['mask'])
  return source, saved


def reference_mask(
    reference_workdir: str, round_idx: int, like: PyTree
) -> PyTree:
  """Round `round_idx`'s mask from another run, checked against `like`."""
  with checkpoint.RunCheckpoints(reference_workdir) as ckpts:
    if round_idx not in ckpts.completed_rounds():
      raise ValueError(
          f'pruning.reference_workdir={reference_workdir} has no finished '
          f'round {round_idx}; run the reference pruning first.'
      )
    mask = restore(
        lambda: ckpts.load_round(round_idx),
        f'mask of round {round_idx}',
        rundir.round_end_dir(reference_workdir, round_idx),
    )['mask']
  shapes = lambda tree: jax.tree.map(jnp.shape, tree)
  if shapes(mask) != shapes(like):
    raise ValueError(
        f'The run in {reference_workdir} pruned a different '
        'model: its masks do not fit this one.'
    )
  return jax.tree.map(lambda m: m.astype(jnp.bool_), _on_this_host(mask))
