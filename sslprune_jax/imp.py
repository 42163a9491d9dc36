"""The pruning run's names from before they were split by concern, kept so
that code importing `sslprune_jax.imp` goes on working.

They live in `experiment` (assembly), `validation` (config checks),
`rounds` and `round_state` (the round loop), `lottery` (the pruning policy) and `rundir`
(the work directory and reading other runs). `run` here keeps its old
return value: one run's rows, or with several seeds one list per seed.
"""

from __future__ import annotations

import jax
import ml_collections

from sslprune_jax import lottery
from sslprune_jax import rundir
from sslprune_jax.rundir import results

# pylint: disable=unused-import
from sslprune_jax.experiment import Experiment
from sslprune_jax.experiment import build
from sslprune_jax.experiment import images_per_step
from sslprune_jax.experiment import load_source
from sslprune_jax.experiment import rewind_step_of
from sslprune_jax.experiment import round_schedule
from sslprune_jax.experiment import saves_task_state
from sslprune_jax.experiment import seed_configs
from sslprune_jax.experiment import train_batches
from sslprune_jax.lottery import next_mask
from sslprune_jax.lottery import round_start
from sslprune_jax.round_state import save_round_end
from sslprune_jax.round_state import start_state
from sslprune_jax.rundir.results import FIELDS as RESULT_FIELDS
from sslprune_jax.rundir.sources import REWIND_ADVICE
from sslprune_jax.rundir.sources import check_source
from sslprune_jax.rundir.sources import read_source_round
from sslprune_jax.rundir.sources import restore
from sslprune_jax.rundir.sources import seed_run
from sslprune_jax.rundir.sources import source_config
from sslprune_jax.rundir.sources import source_rounds
from sslprune_jax.validation import DATA_ORDERS
from sslprune_jax.validation import KEEPS_FINAL
from sslprune_jax.validation import RANGES
from sslprune_jax.validation import RESETS
from sslprune_jax.validation import validate_config

# pylint: enable=unused-import


def run(
    config: ml_collections.ConfigDict, workdir: str
) -> list[dict] | list[list[dict]]:
  """`lottery.run`, returning a run of one seed's rows as they are."""
  results = lottery.run(config, workdir)
  return results[0] if len(results) == 1 else results


def seed_workdir(workdir: str, seed: int) -> str:
  """Where seed `seed` of a run with several seeds keeps its state."""
  return str(rundir.seed_dir(workdir, seed))


def write_results_csv(workdir, rows: list[dict]) -> None:
  """Writes results.csv (`rundir.results.write`), from process 0."""
  results.write(workdir, rows, is_writer=jax.process_index() == 0)
