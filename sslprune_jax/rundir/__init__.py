"""A run's work directory: every path in it, built here and nowhere else.

Layout of a workdir:

  config.json        the run's config; a restart with another one is refused
                     (`checkpoint.check_or_write_config`)
  lock               held by the process running there (`sslprune_jax.lock`)
  log.txt            the full log (`sslprune_jax.console`)
  rewind/<step>/     params, batch_stats and task state (NPID's memory bank)
                     at the rewind point of round 0
  round_RR/<step>/   the latest in-round state of round RR, for resumption
  rounds/<R>/        end of round R: params, batch_stats, mask, metrics
  export/round_RR/   end of round RR without its pruned weights
                     (network.npz; see sslprune_jax.export)
  results.csv        one line per finished round (`rundir.results`)
  tb/                TensorBoard events (round_RR/ per step, rounds/ per
                     round; see sslprune_jax.summaries)
  seed_<s>/          with several seeds trained together, each seed's own
                     run directory, laid out as above
  COMPLETE           written when the run has done all it was asked to

The checkpoint directories are Orbax's (`sslprune_jax.checkpoint`). Reading
another finished run (a source to re-train, evaluate or start from) is
`rundir.sources`; this module imports nothing of the project, so that every
layer may use it.
"""

from __future__ import annotations

import json
import time

from etils import epath

CONFIG = 'config.json'
RESULTS = 'results.csv'
COMPLETE = 'COMPLETE'
LOCK = 'lock'
LOG = 'log.txt'
REWIND = 'rewind'
ROUND_ENDS = 'rounds'
EXPORTS = 'export'
TENSORBOARD = 'tb'
# What a run keeps beside its config: a workdir with these but no config
# cannot be checked against a request.
CHECKPOINT_DIRS = (REWIND, ROUND_ENDS)
IN_ROUND_PREFIX = 'round_'


def path(workdir) -> epath.Path:
  return epath.Path(workdir)


def config_path(workdir) -> epath.Path:
  return path(workdir) / CONFIG


def results_path(workdir) -> epath.Path:
  return path(workdir) / RESULTS


def rewind_dir(workdir) -> epath.Path:
  return path(workdir) / REWIND


def round_ends_dir(workdir) -> epath.Path:
  """Orbax's directory of every round's end (one step per round)."""
  return path(workdir) / ROUND_ENDS


def round_end_dir(workdir, round_idx: int) -> epath.Path:
  return round_ends_dir(workdir) / str(round_idx)


def in_round_dir(workdir, round_idx: int) -> epath.Path:
  """Where round `round_idx` keeps its resumption checkpoints."""
  return path(workdir) / f'{IN_ROUND_PREFIX}{round_idx:02d}'


def is_in_round_dir(name: str) -> bool:
  return name.startswith(IN_ROUND_PREFIX)


def export_dir(workdir, round_idx: int) -> epath.Path:
  return path(workdir) / EXPORTS / f'round_{round_idx:02d}'


def round_events_dir(workdir, round_idx: int) -> epath.Path:
  """TensorBoard events of one round, step by step."""
  return path(workdir) / TENSORBOARD / f'round_{round_idx:02d}'


def rounds_events_dir(workdir) -> epath.Path:
  """TensorBoard events of the run, round by round."""
  return path(workdir) / TENSORBOARD / ROUND_ENDS


def seed_dir(workdir, seed: int) -> epath.Path:
  """Where seed `seed` of a run with several seeds keeps its state."""
  return path(workdir) / f'seed_{seed}'


def mark_complete(workdir, kind: str) -> None:
  """Records that the run of `kind` in `workdir` has done all it was asked."""
  (path(workdir) / COMPLETE).write_text(
      json.dumps({'run': kind, 'finished': time.strftime('%FT%T%z')}) + '\n'
  )


def is_complete(workdir) -> bool:
  """Whether a run finished in `workdir` (it wrote `COMPLETE`)."""
  return (path(workdir) / COMPLETE).exists()
