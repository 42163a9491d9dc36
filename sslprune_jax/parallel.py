"""Data parallelism over every device of every host, on a 1-D mesh.

The train step runs under `jax.shard_map` over a `('data',)` mesh: each device
sees its own slice of the global batch, computes batch-norm statistics on that
slice only (as PyTorch DDP does in the paper's runs), and gradients are
averaged with `lax.pmean`. Model state is replicated.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = 'data'


def create_mesh(devices=None) -> Mesh:
  """A 1-D mesh named 'data' over all (or the given) devices."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Copies a pytree onto every device of the mesh.

  Always a copy: the train step donates its state, and an aliased buffer
  would delete the caller's arrays along with it.
  """
  return jax.device_put(jax.tree.map(np.array, tree), replicated(mesh))


def shard_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Turns this host's batch into global arrays split along 'data'.

  Args:
    local_batch: numpy arrays whose leading dimension is this host's share of
      the global batch.
    mesh: the data mesh.

  Returns:
    jax.Arrays of the global batch shape, sharded over the mesh.
  """
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x),
      local_batch)


def check_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """Returns the per-device batch size; errors if it does not divide."""
  n = mesh.devices.size
  if global_batch_size <= 0 or global_batch_size % n:
    raise ValueError(
        f'The global batch size {global_batch_size} must be a positive '
        f'multiple of the number of devices ({n}).')
  return global_batch_size // n


def gather_replicated(x: jax.Array) -> jax.Array:
  """All devices' `x` stacked along axis 0, the same on every device.

  Inside `shard_map` over 'data': device i's [n, ...] block lands at rows
  [i n, (i + 1) n). Unlike `lax.all_gather`, whose result is typed as varying
  across devices, this is built with a `psum` and so may become part of the
  replicated state (e.g. a memory bank updated with the whole global batch).
  """
  n = jax.lax.axis_size(AXIS)
  i = jax.lax.axis_index(AXIS)
  full = jax.numpy.zeros((n * x.shape[0], *x.shape[1:]), x.dtype)
  full = jax.lax.dynamic_update_slice_in_dim(full, x, i * x.shape[0], axis=0)
  return jax.lax.psum(full, AXIS)


def to_host(x: jax.Array) -> np.ndarray:
  """A batch-sharded global array as one numpy array, on every host."""
  if x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
