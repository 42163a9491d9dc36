"""Data parallelism over every device of every host, on a 1-D mesh.

The train step runs under `jax.shard_map` over a `('data',)` mesh: each device
sees its own slice of the global batch, computes batch-norm statistics on that
slice only (as PyTorch DDP does in the paper's runs), and gradients are
averaged with `lax.pmean`. Model state is replicated.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.flatten_util
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


def batch_sharding(mesh: Mesh, num_seeds: int = 1) -> NamedSharding:
  """Batches split along 'data': axis 0, or axis 1 after a seed axis."""
  return NamedSharding(mesh, P(AXIS) if num_seeds == 1 else P(None, AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Copies a pytree onto every device of the mesh.

  Always a copy: the train step donates its state, and an aliased buffer
  would delete the caller's arrays along with it.
  """
  return jax.device_put(jax.tree.map(np.array, tree), replicated(mesh))


def shard_batch(local_batch: dict, mesh: Mesh, num_seeds: int = 1) -> dict:
  """Turns this host's batch into global arrays split along 'data'.

  Args:
    local_batch: numpy arrays whose leading dimension is this host's share of
      the global batch; with `num_seeds` > 1, arrays of shape (num_seeds,
      this host's share, ...), one batch per seed.
    mesh: the data mesh.
    num_seeds: seeds trained together (see `train.make_train_step`).

  Returns:
    jax.Arrays of the global batch shape, sharded over the mesh.
  """
  sharding = batch_sharding(mesh, num_seeds)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch
  )


def check_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """Returns the per-device batch size; errors if it does not divide."""
  n = mesh.devices.size
  if global_batch_size <= 0 or global_batch_size % n:
    raise ValueError(
        f'The global batch size {global_batch_size} must be a positive '
        f'multiple of the number of devices ({n}).'
    )
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


def exact_pmean(tree: Any) -> Any:
  """`lax.pmean` over 'data' whose result depends only on the device count.

  An all-reduce adds the devices' values in an order of the backend's
  choosing, which changes with how the devices are spread over processes
  (gloo or NCCL between hosts, a local reduction within each); float
  addition is not associative, so one- and two-process runs drift apart
  within a few hundred steps. Here device i adds up slice i of the
  flattened tree over all devices in device order (after an all-to-all,
  which only moves data), and the sums are gathered back exactly (a psum
  in which every term but one is zero): about 1.5x the traffic of an
  all-reduce. Call inside `shard_map` over 'data'.
  """
  flat, unravel = jax.flatten_util.ravel_pytree(tree)
  n = jax.lax.axis_size(AXIS)
  chunk = -(-flat.size // n)
  parts = jax.numpy.pad(flat, (0, n * chunk - flat.size)).reshape(n, chunk)
  # Row j: device j's slice number `axis_index`.
  parts = jax.lax.all_to_all(parts, AXIS, 0, 0)
  sums = gather_replicated(jax.numpy.sum(parts, axis=0, keepdims=True))
  return unravel(sums.reshape(-1)[: flat.size] / n)


def to_host(x) -> np.ndarray:
  """A global array (e.g. batch-sharded) as one numpy array, on every host.

  Arrays this process holds whole (and numpy arrays) are not communicated.
  """
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
