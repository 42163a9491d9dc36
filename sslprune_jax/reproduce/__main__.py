"""python -m sslprune_jax.reproduce --figure=N --workdir=W [--seeds=3]

Reproduces one figure of the paper at small scale (see
`sslprune_jax.reproduce`), or measures the regime's learning curves
(`--figure=regime`); `--fraction` changes the regime's pruning step. The
report goes to `--report_dir` (default `<workdir>/report/fig<N>/`); runs
resume and figures share the runs they have in common.
"""

from __future__ import annotations

import importlib

from absl import app
from absl import flags
from etils import epath

from sslprune_jax import console
from sslprune_jax.reproduce import settings

# Each figure's module (`sslprune_jax.reproduce.fig<N>`), imported once the
# flags are checked: with them come JAX and TensorFlow, seconds of imports.
FIGURES = ('1', '2', '3', '4', '5', '6', '7')

flags.DEFINE_string(
    'figure',
    None,
    f'What to reproduce: regime, {", ".join(FIGURES)}.',
    required=True,
)
flags.DEFINE_string('workdir', None, 'Where all runs go.', required=True)
flags.DEFINE_integer('seeds', 3, 'Seeds, trained together.', lower_bound=1)
flags.DEFINE_string(
    'report_dir',
    None,
    'Where the report goes (default: ' '<workdir>/report/fig<N>).',
)
flags.DEFINE_float(
    'fraction',
    None,
    "Pruning step, if not the regime's "
    "(e.g. 0.2, the paper's, to check a figure against it).",
)
flags.DEFINE_list(
    'objectives',
    list(settings.CURVE_OBJECTIVES),
    '--figure=regime: objectives.',
)
flags.DEFINE_list(
    'epochs',
    [f'{e:g}' for e in settings.CURVE_EPOCHS],
    '--figure=regime: epochs per run.',
)
flags.DEFINE_integer('train_images', 6000, '--figure=regime: images.')
flags.DEFINE_integer('seed', 0, '--figure=regime: seed.')
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  figure = FLAGS.figure
  if figure != 'regime' and figure not in FIGURES:
    raise app.UsageError(
        f'--figure={figure!r}: choose regime or one of '
        f'{", ".join(FIGURES)}.'
    )
  console.route(FLAGS.workdir)
  # pylint: disable-next=import-outside-toplevel
  from sslprune_jax.reproduce import driver, regime

  if figure == 'regime':
    curves = regime.learning_curves(
        FLAGS.workdir,
        FLAGS.objectives,
        [float(e) for e in FLAGS.epochs],
        FLAGS.train_images,
        FLAGS.seed,
    )
    paths = regime.write(curves, str(epath.Path(FLAGS.workdir) / 'regime'))
    print(epath.Path(paths['md']).read_text())
    return
  regime_changes = (
      {} if FLAGS.fraction is None else {'fraction': FLAGS.fraction}
  )
  out = FLAGS.report_dir or str(
      epath.Path(FLAGS.workdir)
      / 'report'
      / driver.label(f'fig{figure}', regime_changes)
  )
  module = importlib.import_module(f'sslprune_jax.reproduce.fig{figure}')
  paths = module.make(FLAGS.workdir, out, seeds=FLAGS.seeds, **regime_changes)
  print(epath.Path(paths['section']).read_text())
  print('\n'.join(paths.values()))


if __name__ == '__main__':
  app.run(main)
