"""Masks as pytrees, and the transforms applied between pruning rounds.

`masks` (prunable leaves, applying, counting, rewind and re-init),
`ranking` (the global ranking every method shares), `methods` (magnitude
and the random baselines), `nm` (N:M masks: n of every m weights),
`channels` (whole channels and what reads them) and `reports` (sparsity,
N:M conformance, natural sparsity); their names are importable from here.

Every function here is pure: it takes arrays and returns new ones. None of
them knows how the network is trained.
"""

# pylint: disable=unused-import
from sslprune_jax.pruning.masks import path_tuple
from sslprune_jax.pruning.masks import path_name
from sslprune_jax.pruning.masks import prunable_tree
from sslprune_jax.pruning.masks import restrict_to_layers
from sslprune_jax.pruning.masks import init_mask
from sslprune_jax.pruning.masks import apply_mask
from sslprune_jax.pruning.masks import count
from sslprune_jax.pruning.masks import num_to_prune
from sslprune_jax.pruning.masks import rewind
from sslprune_jax.pruning.masks import reinit
from sslprune_jax.pruning.masks import prunable_leaves
from sslprune_jax.pruning.ranking import prune_by_score
from sslprune_jax.pruning.methods import METHODS
from sslprune_jax.pruning.methods import magnitude_prune
from sslprune_jax.pruning.methods import random_prune
from sslprune_jax.pruning.methods import random_natural_prune
from sslprune_jax.pruning.methods import random_natural_oneshot
from sslprune_jax.pruning.methods import random_prune_like
from sslprune_jax.pruning import channels
from sslprune_jax.pruning import nm
from sslprune_jax.pruning.nm import nm_prune
from sslprune_jax.pruning.nm import random_nm_prune
from sslprune_jax.pruning.reports import sparsity_report
from sslprune_jax.pruning.reports import format_report
from sslprune_jax.pruning.reports import natural_sparsity
