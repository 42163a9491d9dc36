"""Many runs of one config (`python launch/sweep.py`, or `python -m
sslprune_jax.sweep`; `__main__` documents the command line).

`runs` expands a sweep into its runs, `checks` checks every run's
overrides against its config before anything runs, `modes` prints, writes
or runs them.
"""

from sslprune_jax.sweep.checks import check
from sslprune_jax.sweep.checks import parse_config
from sslprune_jax.sweep.checks import plan
from sslprune_jax.sweep.modes import PREEMPTED
from sslprune_jax.sweep.modes import is_complete
from sslprune_jax.sweep.modes import run_command
from sslprune_jax.sweep.runs import Run
from sslprune_jax.sweep.runs import Spec
from sslprune_jax.sweep.runs import SweepError
from sslprune_jax.sweep.runs import expand
from sslprune_jax.sweep.runs import split_values
