"""The paper's figures at small scale, on real Fashion-MNIST, on a CPU.

  python -m sslprune_jax.reproduce --figure=3 --workdir=/tmp/repro

One command per figure, each running the project's own configs and
evaluations under one regime (`settings`, chosen from the dense learning
curves of `--figure=regime`), with several seeds trained together, and
ending with a table, a plot and, for each of the paper's findings about
the figure, a verdict (`verdicts`): holds, does not hold, or inconclusive
at this scale. docs/reproduction.md collects them.

  regime     the dense learning curves the regime was chosen from
  driver     running a figure's runs, reading them back, writing reports
  settings   the regime: images, epochs, pruning step, rewind point, seeds
  verdicts   the paper's findings as claims about curves, and their verdicts
  fig1       linear probes of pruned self-supervised trunks
  fig2       pruning during pre-training or during transfer (across classes)
  fig3       masks with and without labels, re-trained on labels
  fig4       layerwise pruning with labels and RotNet
  fig5       masks from few labels (S4L-Rotation, the labelled 10%)
  fig6       natural sparsity, and the random baseline's adjustment for it
  fig7       winning tickets against the rewind point
"""
