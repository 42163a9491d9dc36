"""Figure 3 of the paper at small scale, on real Fashion-MNIST, in one command.

  python -m sslprune_jax.figure3 --workdir=/tmp/figure3

For each seed: prune a network trained with labels and one trained with
RotNet (5 rounds, 60% of the remaining weights per round: 100% -> 1.02%
left); then train each round's mask again on labels, from the winning
ticket (the source's weights at the rewind point, trained on from the
rewind step as a rewound round is) and from a random re-initialisation.
The baselines are random masks re-trained likewise: the paper's (section
4.3: for each fraction, one global mask drawn from the label-trained dense
network, the weights that converged near zero removed first, the rest at
random; re-initialised) and, as an extra curve, random masks with the
label masks' per-layer sparsity, from the winning ticket and re-initialised.
That is 9 runs of 6 rounds per seed, each a normal resumable run under
`<workdir>/seed_<s>/`; the command can be stopped and started again. It
ends by writing, under `<workdir>/report/`, `test_accuracy.csv`, `.md`
(mean ± standard error over the seeds at each fraction of weights left, one
column per objective and initialisation) and `.png` (the paper's form of
the plot).

Scale (kept small for a CPU; the `figure3` variants of configs/labels.py,
configs/rotnet.py and configs/retrain.py): ResNet-10 at width 1/4 (CIFAR
form), 6,000 training images for labels (3,000 for RotNet, seen at 4
rotations), 2 epochs per round, evaluation on 5,000 test images, rewind to
1,280 samples (step 10 of 92 for labels, 40 of 186 for RotNet). Seed 0
took 28.5 minutes and seeds 1-2 another 49, on 2 CPU cores shared with
other jobs for much of the time.

What it showed (3 seeds; accuracy on 5,000 test images, mean ± s.e.; the
table is docs/figure3/test_accuracy.md): at 1.02% of the weights left the
paper's random baseline re-trained reaches 0.696 ± 0.003, RotNet masks
0.694 ± 0.011 (reinit) and 0.665 ± 0.006 (winning ticket), label masks
0.684 ± 0.005 and 0.677 ± 0.011, per-layer random masks 0.675 ± 0.012 and
0.632 ± 0.010: at this scale masks found with or without labels are no
better than the paper's random masks. The winning ticket lifts label masks
by 1-4 points from 40% to 2.56% left, and RotNet masks not at all.

`--granularity=nm` or `--granularity=channel` runs the same comparison at
that granularity (the settings are `GRANULARITIES`, chosen once for every
objective and for `sslprune_jax.pretrained`), under `<workdir>/<granularity>/`:
the label and RotNet masks re-trained from the winning ticket and
re-initialised against random masks of the same granularity (`random_like`:
random n:m groups, or the round's channel count per layer drawn at random),
from the winning ticket and re-initialised. The paper's unstructured random
baseline is left out there, as it is of another granularity.

The same runs as a sweep (launch/sweep.py), e.g. to spread them over a
cluster with `--write` instead of `--local`; its --help has the report
command that ends it:

  python launch/sweep.py --config='configs/{objective}.py:figure3' \
      --objectives=labels,rotnet --seeds=0,1,2 --workdir=/tmp/fig3/prune \
      --local
  python launch/sweep.py --config=configs/retrain.py:figure3 \
      --objectives=labels,rotnet --seeds=0,1,2 \
      --inits=winning_ticket,reinit \
      --set='source.workdir={root}/../prune/{objective}_seed{seed}' \
      --workdir=/tmp/fig3/retrain --local
  python launch/sweep.py --config=configs/retrain.py:figure3 \
      --seeds=0,1,2 --inits=reinit \
      --set=source.mask=random_global_natural \
      --set='source.workdir={root}/../prune/labels_seed{seed}' \
      --workdir=/tmp/fig3/random --local
  python launch/sweep.py --config=configs/retrain.py:figure3 \
      --seeds=0,1,2 --inits=winning_ticket,reinit \
      --set=source.mask=random_like \
      --set='source.workdir={root}/../prune/labels_seed{seed}' \
      --workdir=/tmp/fig3/random_per_layer --local
"""

from __future__ import annotations

import re

from absl import app
from absl import flags
from etils import epath
import ml_collections

from sslprune_jax import config_lib
from sslprune_jax import report
from sslprune_jax import runner

SOURCES = ('labels', 'rotnet')
# Overrides of the figure3 variants per `pruning.granularity`, chosen once
# for every objective: unstructured keeps its 5 rounds of 60%; N:M tightens
# 4:8 -> 2:8 -> 1:8 over 3 rounds; channels go 40% a round (60% would leave
# fewer channels than layers by round 5, and every layer keeps one),
# ranked over all layers by filter L1 norm.
GRANULARITIES = {
    'unstructured': {},
    'nm': {'pruning.n': (4, 2, 1), 'pruning.m': 8, 'pruning.num_rounds': 3},
    'channel': {
        'pruning.fraction': 0.4,
        'pruning.channel_score': 'l1',
        'pruning.channel_scope': 'global',
    },
}
INITS = {'winning ticket': 'winning_ticket', 'reinit': 'reinit'}
# (curve, source.mask, initialisations) of the re-training runs. 'random' is
# the paper's baseline (global, one shot, adjusted for natural sparsity,
# re-initialised: section 4.3); 'random per-layer' keeps the label masks'
# per-layer sparsity.
CURVES = (
    ('labels', 'source', INITS),
    ('rotnet', 'source', INITS),
    ('random', 'random_global_natural', {'reinit': 'reinit'}),
    ('random per-layer', 'random_like', INITS),
)
# At a coarser granularity the random masks are drawn in it (`random_like`).
STRUCTURED_CURVES = {
    'nm': CURVES[:2] + (('random n:m', 'random_like', INITS),),
    'channel': CURVES[:2] + (('random channels', 'random_like', INITS),),
}


def load_config(name: str, seed: int) -> ml_collections.ConfigDict:
  """configs/<name>.py:figure3 for `seed`: what `python -m sslprune_jax.main
  --config=configs/<name>.py:figure3 --config.seed=<seed>` runs."""
  config = config_lib.load(name, 'figure3')
  config.seed = seed
  return config


def pruning_configs(
    seed: int, granularity: str = 'unstructured'
) -> dict[str, ml_collections.ConfigDict]:
  """The two pruning runs of a seed at `granularity`: labels and RotNet."""
  return {
      name: at_granularity(load_config(name, seed), granularity)
      for name in SOURCES
  }


def at_granularity(
    config: ml_collections.ConfigDict, granularity: str
) -> ml_collections.ConfigDict:
  """`config` pruning at `granularity` with its `GRANULARITIES` settings."""
  check_granularity(granularity)
  config.pruning.granularity = granularity
  config.update_from_flattened_dict(GRANULARITIES[granularity])
  return config


def check_granularity(granularity: str) -> None:
  if granularity not in GRANULARITIES:
    raise ValueError(
        f'Unknown granularity {granularity!r}; valid: {list(GRANULARITIES)}.'
    )


def granularity_root(workdir: str, granularity: str) -> epath.Path:
  """Where the runs of `granularity` go: `workdir` itself for unstructured
  pruning (the layout before granularities), else its `<granularity>/`."""
  root = epath.Path(workdir)
  return root if granularity == 'unstructured' else root / granularity


def _dir_name(curve: str) -> str:
  """A curve's name as a directory name ('random n:m' -> 'random_n_m')."""
  return re.sub(r'[^\w-]', '_', curve)


def retrain_config(
    seed: int, source_workdir: str, init: str, mask: str = 'source'
) -> ml_collections.ConfigDict:
  """Training a source run's masks again on labels."""
  config = load_config('retrain', seed)
  config.source.workdir = source_workdir
  config.source.init = init
  config.source.mask = mask
  return config


def curves(
    workdir: str, seeds: int, granularity: str = 'unstructured'
) -> dict[str, list[tuple]]:
  """Curve name -> [(config, workdir)] of its runs, one per seed; the
  pruning runs come first, as the re-training runs read them."""
  check_granularity(granularity)
  root = granularity_root(workdir, granularity)
  runs: dict[str, list[tuple]] = {}
  for seed in range(seeds):
    base = root / f'seed_{seed}'
    for name, config in pruning_configs(seed, granularity).items():
      runs.setdefault(f'prune {name}', []).append(
          (config, str(base / f'prune_{name}'))
      )
    for source, mask, inits in STRUCTURED_CURVES.get(granularity, CURVES):
      # Random masks take their counts from the label-trained run (the
      # paper's from its dense network, the per-layer ones from its masks).
      source_dir = str(
          base / ('prune_rotnet' if source == 'rotnet' else 'prune_labels')
      )
      for label, init in inits.items():
        runs.setdefault(f'{source}, {label}', []).append(
            (
                retrain_config(seed, source_dir, init, mask),
                str(base / f'retrain_{_dir_name(source)}_{init}'),
            )
        )
  return runs


def run(
    workdir: str, seeds: int = 3, granularity: str = 'unstructured'
) -> dict[str, str]:
  """Runs (or resumes) everything; returns the report's paths."""
  if seeds < 1:
    raise ValueError(f'seeds must be >= 1, got {seeds}.')
  all_runs = curves(workdir, seeds, granularity)
  for name, runs in all_runs.items():
    for config, directory in runs:
      print(f'\n== {name}: {directory}', flush=True)
      runner.run(config, directory)
  retrained = {
      name: [report.load_run(d) for _, d in runs]
      for name, runs in all_runs.items()
      if not name.startswith('prune ')
  }
  return report.write(
      retrained,
      'test_accuracy',
      str(granularity_root(workdir, granularity) / 'report'),
  )


def main(argv):
  del argv
  values = flags.FLAGS
  paths = run(values.workdir, values.seeds, values.granularity)
  print(epath.Path(paths['md']).read_text())
  print('\n'.join(paths.values()))


def cli() -> None:
  """`python -m sslprune_jax.figure3`: the flags, then `main`."""
  # Defined here, not on import: other modules define --workdir too.
  flags.DEFINE_string('workdir', None, 'Where all runs go.', required=True)
  flags.DEFINE_integer('seeds', 3, 'Number of seeds.', lower_bound=1)
  flags.DEFINE_enum(
      'granularity',
      'unstructured',
      list(GRANULARITIES),
      'What pruning removes: weights, n of every m, or channels.',
  )
  app.run(main)


if __name__ == '__main__':
  cli()
