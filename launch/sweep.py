"""Many runs of one config: `python launch/sweep.py --help`, the command of
sslprune_jax/sweep/__main__.py (also `python -m sslprune_jax.sweep`)."""

import runpy

if __name__ == '__main__':
  # Run as the main module, so that --help shows its documentation and
  # flags.
  runpy.run_module('sslprune_jax.sweep', run_name='__main__', alter_sys=True)
