"""Figure 3 at small scale now lives in `sslprune_jax.figure3` (it runs
whole experiments, so it sits with the other commands); its names are
importable from here, and `python -m sslprune_jax.evaluation.figure3` runs
it, as before."""

# pylint: disable=unused-import
from sslprune_jax import figure3 as _figure3
from sslprune_jax.figure3 import CURVES
from sslprune_jax.figure3 import INITS
from sslprune_jax.figure3 import SOURCES
from sslprune_jax.figure3 import curves
from sslprune_jax.figure3 import load_config
from sslprune_jax.figure3 import main
from sslprune_jax.figure3 import pruning_configs
from sslprune_jax.figure3 import retrain_config
from sslprune_jax.figure3 import run

if __name__ == '__main__':
  _figure3.cli()
