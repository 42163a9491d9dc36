"""`python -m sslprune_jax.export`: one round of a finished run, exported.

  python -m sslprune_jax.export --workdir=/tmp/labels_quick --round=2 \\
      --out=/tmp/labels_quick_r2
"""

from absl import app
from absl import flags
from absl import logging

from sslprune_jax.export import runs


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it reads.
  values = flags.FLAGS
  try:
    summary = runs.export_round(
        values.workdir, values.round, values.out, values.point
    )
  except (ValueError, FileNotFoundError, RuntimeError) as e:
    raise SystemExit(f'error: {e}') from None
  print(runs.format_summary(summary))


if __name__ == '__main__':
  # Defined here, not on import: other modules define --workdir and --out.
  flags.DEFINE_string('workdir', None, 'A pruning run.', required=True)
  flags.DEFINE_integer('round', None, 'A finished round of it.', required=True)
  flags.DEFINE_string(
      'out', None, 'Directory to write network.npz to.', required=True
  )
  flags.DEFINE_enum(
      'point',
      'final',
      ['final', 'rewind'],
      "The round's trained weights, or the rewind point's.",
  )
  app.run(main)
