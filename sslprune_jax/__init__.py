"""Iterative magnitude pruning with self-supervision, in JAX."""

from sslprune_jax import host_memory as _host_memory

# Before JAX starts its CPU client, whose threads pick their malloc arena
# at their first allocation (see `sslprune_jax.host_memory`).
_host_memory.apply(_host_memory.policy_from_env())
