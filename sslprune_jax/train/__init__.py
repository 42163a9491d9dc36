"""Training: the train state, the jitted steps, and one round's loop.

`state` owns what a round trains (parameters, mask, optimiser, schedule),
`step` the pure data-parallel steps over it, `loop` a round: steps,
logging, preemption and evaluation. Their names are re-exported here, the
way the rest of the project uses them (`train.make_train_step`).
"""

from sslprune_jax.train.loop import NonFiniteLossError
from sslprune_jax.train.loop import RoundResult
from sslprune_jax.train.loop import train_round
from sslprune_jax.train.loop import Writer
from sslprune_jax.train.state import at_step
from sslprune_jax.train.state import create_learning_rate_fn
from sslprune_jax.train.state import create_optimizer
from sslprune_jax.train.state import create_train_state
from sslprune_jax.train.state import init_variables
from sslprune_jax.train.state import Optimizer
from sslprune_jax.train.state import PyTree
from sslprune_jax.train.state import SCHEDULES
from sslprune_jax.train.state import seed_slice
from sslprune_jax.train.state import stack_trees
from sslprune_jax.train.state import TrainState
from sslprune_jax.train.step import evaluate
from sslprune_jax.train.step import make_eval_step
from sslprune_jax.train.step import make_train_step
from sslprune_jax.train.step import per_device_train_step
from sslprune_jax.train.step import SEED_BATCHINGS
from sslprune_jax.train.step import seed_batching_for
