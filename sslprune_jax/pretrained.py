"""Pruning a pre-trained network against pruning from scratch, at every
granularity: `python -m sslprune_jax.pretrained --workdir=W`.

On an offline pair of tasks from Fashion-MNIST: a network is trained
(with labels, or with RotNet: `--objective`) on classes 0-4 alone; then
IMP with labels on classes 5-9 runs twice for each granularity, once from
scratch and once starting from that network (`init_from`: its trunk, a
fresh classifier for the five new classes), each round rewound as usual
(to its own round 0 state after `pruning.rewind_samples`). The settings
are those of `configs/labels.py:figure3` (and `configs/rotnet.py:figure3`
for the RotNet pre-training), chosen once for every granularity:

  unstructured  its 5 rounds of 60%;
  nm            4:8, 2:8, 1:8 over 3 rounds (`pruning.n`, `pruning.m`);
  channel       5 rounds of 40% of the channels inside blocks, ranked
                globally by filter L1 norm (60% would leave fewer channels
                than layers by round 5; each layer keeps one).

The report (`<workdir>/report/<granularity>/test_accuracy.{csv,md,png}`)
has test accuracy on classes 5-9 against the fraction of weights left,
mean and standard error over seeds, per granularity. Runs resume.
"""

from __future__ import annotations

from absl import app
from absl import flags
from etils import epath
import ml_collections

from sslprune_jax import config_lib
from sslprune_jax import figure3
from sslprune_jax import report
from sslprune_jax import runner

PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
PRUNE_CLASSES = (5, 6, 7, 8, 9)
OBJECTIVES = ('labels', 'rotnet')
# The settings of each granularity, as in `python -m sslprune_jax.figure3
# --granularity=...`.
GRANULARITIES = figure3.GRANULARITIES
STARTS = ('from scratch', 'pre-trained')


def pretrain_config(objective: str, seed: int) -> ml_collections.ConfigDict:
  """The dense network trained on classes 0-4 (round 0 only)."""
  if objective not in OBJECTIVES:
    raise ValueError(f'Unknown objective {objective!r}; valid: {OBJECTIVES}.')
  config = config_lib.load(objective, 'figure3')
  config.seed = seed
  config.data.classes = PRETRAIN_CLASSES
  config.pruning.num_rounds = 0
  return config


def prune_config(
    granularity: str, seed: int, init_from: str = ''
) -> ml_collections.ConfigDict:
  """IMP with labels on classes 5-9 at `granularity`, from scratch or from
  the network in `init_from`."""
  config = config_lib.load('labels', 'figure3')
  config.seed = seed
  config.data.classes = PRUNE_CLASSES
  figure3.at_granularity(config, granularity)
  config.init_from.workdir = init_from
  return config


def curves(
    workdir: str, seeds: int, objective: str = 'labels'
) -> dict[str, list[tuple]]:
  """Curve name -> [(config, workdir)], one per seed; 'pretrain' first,
  as the pre-trained runs read it."""
  root = epath.Path(workdir)
  runs: dict[str, list[tuple]] = {}
  for seed in range(seeds):
    base = root / f'seed_{seed}'
    source = str(base / f'pretrain_{objective}')
    runs.setdefault('pretrain', []).append(
        (pretrain_config(objective, seed), source)
    )
    for granularity in GRANULARITIES:
      for start in STARTS:
        init_from = source if start == 'pre-trained' else ''
        name = f"{granularity}_{start.replace(' ', '_').replace('-', '_')}"
        runs.setdefault(f'{granularity}, {start}', []).append(
            (prune_config(granularity, seed, init_from), str(base / name))
        )
  return runs


def run(workdir: str, seeds: int = 3, objective: str = 'labels') -> dict:
  """Runs (or resumes) everything; returns {granularity: report paths}."""
  if seeds < 1:
    raise ValueError(f'seeds must be >= 1, got {seeds}.')
  all_runs = curves(workdir, seeds, objective)
  for name, runs in all_runs.items():
    for config, directory in runs:
      print(f'\n== {name}: {directory}', flush=True)
      runner.run(config, directory)
  out = {}
  for granularity in GRANULARITIES:
    loaded = {
        start: [
            report.load_run(d) for _, d in all_runs[f'{granularity}, {start}']
        ]
        for start in STARTS
    }
    out[granularity] = report.write(
        loaded,
        'test_accuracy',
        str(epath.Path(workdir) / 'report' / granularity),
    )
  return out


def main(argv):
  del argv
  values = flags.FLAGS
  for granularity, paths in run(
      values.workdir, values.seeds, values.objective
  ).items():
    print(f'\n## {granularity}\n')
    print(epath.Path(paths['md']).read_text())


def cli() -> None:
  """`python -m sslprune_jax.pretrained`: the flags, then `main`."""
  # Defined here, not on import: other modules define --workdir too.
  flags.DEFINE_string('workdir', None, 'Where all runs go.', required=True)
  flags.DEFINE_integer('seeds', 3, 'Number of seeds.', lower_bound=1)
  flags.DEFINE_enum(
      'objective', 'labels', list(OBJECTIVES), 'How to pre-train.'
  )
  app.run(main)


if __name__ == '__main__':
  cli()
