"""Where a pruning run keeps its state on disk, through Orbax.

The checkpoints sit in the run's directory (`sslprune_jax.rundir`, which
names every path): the rewind point (rewind/), each round's in-round state
for resumption (round_RR/) and each round's end (rounds/R/), and beside them
config.json, checked on every restart.

Orbax writes each checkpoint to a temporary directory and renames it when
complete, so a run killed at any moment leaves only whole checkpoints.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from sslprune_jax import rundir

PyTree = Any

# Config fields (dotted names) a run's restart may change: how often it
# logs and checkpoints, which change nothing computed, and its compiler
# options and convolution kernels, which change the speed and the results by
# float rounding only (a run moved to another platform gets other ones
# anyway).
RESTART_MAY_CHANGE = (
    'log_every_steps',
    'checkpoint_every_steps',
    'train.xla_options',
    'model.conv_impl',
)

# Config fields added after runs were already being saved, each with the
# value (as JSON) that does what runs did before the field existed. A saved
# config without such a field matches a request holding that value, so
# older workdirs still resume; any other value is a different run.
ADDED_FIELDS = {'data.classes': []}


class ConfigMismatchError(ValueError):
  """The workdir holds a run made with a different config."""


class CorruptCheckpointError(RuntimeError):
  """A checkpoint exists but cannot be read."""


def _abstract(tree: PyTree) -> PyTree:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _saved_replicated(item_dir: epath.Path) -> PyTree:
  """The saved tree's shapes and dtypes, replicated on this run's devices.

  Restoring with the saved shardings fails when the devices differ (a
  multi-host run's checkpoint read on one host); replicas read anywhere.
  """
  # The item's handler, not a Checkpointer: that one also looks for a
  # step's metadata file in the item's directory, and warns it is absent.
  metadata = ocp.StandardCheckpointHandler().metadata(item_dir)
  sharding = jax.sharding.NamedSharding(
      jax.sharding.Mesh(np.asarray(jax.devices()), ('all',)),
      jax.sharding.PartitionSpec(),
  )
  return jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
      metadata,
  )


def _comparable(config: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in config.items():
    name = prefix + k
    if name in RESTART_MAY_CHANGE:
      continue
    out[k] = _comparable(v, name + '.') if isinstance(v, dict) else v
  return out


def _with_added_fields(saved: dict) -> dict:
  """The saved config with each field added since given its old value."""
  saved = json.loads(json.dumps(saved))
  for name, value in ADDED_FIELDS.items():
    *parents, leaf = name.split('.')
    node = saved
    for p in parents:
      node = node.get(p) if isinstance(node, dict) else None
    if isinstance(node, dict):
      node.setdefault(leaf, value)
  return saved


def check_or_write_config(
    workdir: str, config: ml_collections.ConfigDict
) -> None:
  """Records the config in a new workdir, or checks it matches the old one.

  Raises:
    ConfigMismatchError: listing the fields that differ.
  """
  path = rundir.config_path(workdir)
  current = json.loads(config.to_json_best_effort(sort_keys=True))
  if path.exists():
    saved = _with_added_fields(read_config_json(path))
    diffs = config_diff(_comparable(saved), _comparable(current))
    if diffs:
      raise ConfigMismatchError(
          f'{workdir} holds a run made with a different config; refusing to '
          'mix them. Differences (saved -> requested):\n  '
          + '\n  '.join(diffs)
          + '\nUse a new --workdir, or rerun with the saved config.'
      )
    return
  work = [
      p.name
      for p in (path.parent.iterdir() if path.parent.exists() else ())
      if p.name in rundir.CHECKPOINT_DIRS or rundir.is_in_round_dir(p.name)
  ]
  if work:
    raise ConfigMismatchError(
        f'{workdir} holds checkpoints ({", ".join(sorted(work))}) but no '
        'config.json, so what config made them cannot be checked; refusing '
        'to resume them with this one. Restore its config.json, or use a '
        'new --workdir.'
    )
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(current, indent=2, sort_keys=True))
    tmp.replace(path)


def read_config_json(path: epath.Path) -> dict:
  """A workdir's saved config, or an error that names the file."""
  try:
    saved = json.loads(path.read_text())
  except ValueError as e:
    raise ConfigMismatchError(
        f'{path} is damaged (not JSON: {e}); it records the config of the '
        'run in that workdir. Restore it, or use a new --workdir.'
    ) from e
  if not isinstance(saved, dict) or not saved:
    raise ConfigMismatchError(
        f'{path} is damaged: it holds {json.dumps(saved)[:40]}, not a '
        'config. Restore it, or use a new --workdir.'
    )
  return saved


def config_diff(a: Any, b: Any, prefix: str = '') -> list[str]:
  """'field: old -> new' for every leaf that differs, dotted names."""
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      out += config_diff(
          a.get(k, '<missing>'), b.get(k, '<missing>'), f'{prefix}{k}.'
      )
    return out
  return [] if a == b else [f'{prefix[:-1]}: {a!r} -> {b!r}']


def first_line(e: BaseException) -> str:
  """What an error says in its first line: Orbax's and TensorStore's (and
  bucket clients') go on for a page of spec."""
  text = str(e).strip()
  first = text.splitlines()[0] if text else '(no message)'
  return first.split(' See full TensorStore details')[0]


def _unreadable_steps(directory: epath.Path) -> list[str]:
  """Step directories whose Orbax metadata file is not valid JSON."""
  bad = []
  for step_dir in sorted(directory.iterdir()):
    meta = step_dir / '_CHECKPOINT_METADATA'
    if step_dir.name.isdigit() and meta.exists():
      try:
        json.loads(meta.read_text())
      except ValueError:
        bad.append(str(step_dir))
  return bad


@functools.cache
def _write_each_array_once_on_cpu() -> None:
  """Saves each jax.Array from one replica when the devices are CPUs.

  A run's state is replicated on its data-parallel devices. Orbax's default
  (replica-parallel saving, which it already turns off on GPUs) splits every
  replicated array into one slice per device and writes the slices in
  parallel; on CPU devices, which share the host's memory, that compiles a
  slice program per array shape and writes nothing sooner: a ResNet-10's
  tree of 60 arrays on 8 CPU devices took 0.20 s to save that way and
  0.07 s from one replica (the first save 0.63 s and 0.08 s). The arrays
  are written as before; what is left out is Orbax's per-process record of
  the slices' shapes (`array_metadatas/`), which only replica-parallel
  writes need and nothing reads back. Once per process: the handler is
  Orbax's registry's, for every checkpoint it writes.
  """
  if jax.default_backend() == 'cpu':
    ocp.type_handlers.register_type_handler(
        jax.Array,
        ocp.type_handlers.ArrayHandler(
            use_replica_parallel=False, array_metadata_store=None
        ),
        override=True,
    )


def _manager(
    directory: epath.Path,
    max_to_keep: int | None = None,
    enable_async: bool = True,
) -> ocp.CheckpointManager:
  """An Orbax manager; a damaged directory gives CorruptCheckpointError."""
  try:
    return ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=enable_async,
            cleanup_tmp_directories=True,
        ),
    )
  except Exception as e:  # Orbax raises many types for unreadable files.
    bad = _unreadable_steps(directory) or [str(directory)]
    raise CorruptCheckpointError(
        f'Could not open the checkpoints in {directory} '
        f'({type(e).__name__}: {first_line(e)}).\nDelete '
        f'{" and ".join(bad)} to redo the work it held; the other '
        'checkpoints are kept.'
    ) from e


class RunCheckpoints:
  """The checkpoints of one pruning run, under `workdir`.

  A context manager: `with RunCheckpoints(workdir) as ckpts:` closes them
  (waiting for pending saves) however the block ends.
  """

  def __init__(self, workdir: str, in_round_keep: int = 1):
    """Opens (or creates) the checkpoints of the run in `workdir`.

    Args:
      workdir: the run's directory.
      in_round_keep: how many in-round checkpoints each round keeps (the
        seeds of a run with several keep 2; see `rounds.run_rounds`).
    """
    _write_each_array_once_on_cpu()
    self.workdir = epath.Path(workdir)
    self._in_round_keep = in_round_keep
    self._in_round: dict[int, ocp.CheckpointManager] = {}
    # Rewind and end-of-round checkpoints are few, small next to a round, and
    # everything after them depends on them: write them synchronously.
    self._rewind = _manager(rundir.rewind_dir(workdir), enable_async=False)
    self._rounds = _manager(rundir.round_ends_dir(workdir), enable_async=False)

  # In-round state, for resuming after preemption.
  def _round_manager(self, round_idx: int) -> ocp.CheckpointManager:
    if round_idx not in self._in_round:
      self._in_round[round_idx] = _manager(
          rundir.in_round_dir(self.workdir, round_idx),
          max_to_keep=self._in_round_keep,
      )
    return self._in_round[round_idx]

  def save_in_round(self, round_idx: int, state: PyTree) -> None:
    """Saves the train state (asynchronously) at its current step."""
    self._round_manager(round_idx).save(
        int(state.step), args=ocp.args.StandardSave(state)
    )

  def in_round_steps(self, round_idx: int) -> list[int]:
    """The steps of the round's in-round checkpoints."""
    if not rundir.in_round_dir(self.workdir, round_idx).exists():
      return []
    return sorted(self._round_manager(round_idx).all_steps())

  def restore_in_round(
      self, round_idx: int, target: PyTree, step: int | None = None
  ) -> PyTree | None:
    """The round's in-round state at `step` (default: the latest), or None
    if the round has none."""
    directory = rundir.in_round_dir(self.workdir, round_idx)
    if not directory.exists():
      return None
    manager = self._round_manager(round_idx)
    step = manager.latest_step() if step is None else step
    if step is None:
      return None
    return manager.restore(
        step, args=ocp.args.StandardRestore(_abstract(target))
    )

  def clear_in_round(self, round_idx: int) -> None:
    """Deletes a finished round's resumption checkpoints (they are large)."""
    manager = self._in_round.pop(round_idx, None)
    if manager is not None:
      manager.wait_until_finished()
      manager.close()
    directory = rundir.in_round_dir(self.workdir, round_idx)
    if jax.process_index() == 0 and directory.exists():
      directory.rmtree()

  # The rewind point.
  def save_rewind(self, step: int, weights: PyTree) -> None:
    self._rewind.save(step, args=ocp.args.StandardSave(weights))

  def has_rewind(self) -> bool:
    return self._rewind.latest_step() is not None

  def restore_rewind(self, target: PyTree) -> PyTree:
    step = self._rewind.latest_step()
    if step is None:
      raise FileNotFoundError(
          f'No rewind checkpoint under {rundir.rewind_dir(self.workdir)}.'
      )
    return self._rewind.restore(
        step, args=ocp.args.StandardRestore(_abstract(target))
    )

  def load_rewind(self) -> PyTree:
    """The rewind point as saved, without a target structure."""
    step = self._rewind.latest_step()
    if step is None:
      raise FileNotFoundError(
          f'No rewind checkpoint under {rundir.rewind_dir(self.workdir)}.'
      )
    saved = _saved_replicated(
        rundir.rewind_dir(self.workdir) / str(step) / 'default'
    )
    return self._rewind.restore(step, args=ocp.args.StandardRestore(saved))

  # End of each round.
  def save_round(self, round_idx: int, model: PyTree, metrics: dict) -> None:
    """Saves a finished round: {'params', 'batch_stats', 'mask'} + metrics.

    Forced: Orbax otherwise skips, without a word, a step below the latest
    one, which is what a round deleted to be redone is.
    """
    self._rounds.save(
        round_idx,
        args=ocp.args.Composite(
            model=ocp.args.StandardSave(model),
            metrics=ocp.args.JsonSave(metrics),
        ),
        force=True,
    )

  def completed_rounds(self) -> list[int]:
    return sorted(self._rounds.all_steps())

  def restore_round(self, round_idx: int, target: PyTree) -> PyTree:
    return self._rounds.restore(
        round_idx,
        args=ocp.args.Composite(
            model=ocp.args.StandardRestore(_abstract(target))
        ),
    )['model']

  def load_round(self, round_idx: int) -> PyTree:
    """A finished round's params, batch_stats and mask, without a model."""
    saved = _saved_replicated(
        rundir.round_end_dir(self.workdir, round_idx) / 'model'
    )
    return self._rounds.restore(
        round_idx,
        args=ocp.args.Composite(model=ocp.args.StandardRestore(saved)),
    )['model']

  def round_metrics(self, round_idx: int) -> dict:
    return self._rounds.restore(
        round_idx, args=ocp.args.Composite(metrics=ocp.args.JsonRestore())
    )['metrics']

  def __enter__(self) -> RunCheckpoints:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def close(self) -> None:
    for manager in [*self._in_round.values(), self._rewind, self._rounds]:
      manager.wait_until_finished()
      manager.close()
    self._in_round.clear()
