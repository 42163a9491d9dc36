"""Non-parametric instance discrimination, NPID (Wu et al., 2018).

Every training image is its own class, represented by an entry of a memory
bank of L2-normalised `dim`-d features, one per training image, held in the
train state. The probability that feature v is image i is the
non-parametric softmax

  P(i | v) = exp(m_i . v / T) / Z,

estimated with noise-contrastive estimation: for each image, its own entry
(before this step's update) is the positive, and `num_negatives` entries
drawn uniformly from the bank (noise distribution P_n = 1/N) are noise.
With h(i, v) = P(i | v) / (P(i | v) + K P_n), the loss of an image is

  -log h(i, v) - sum over the K noise entries j of log(1 - h(j, v)).

The normaliser Z is estimated once, on the first step, as N times the mean
of exp(m . v / T) over the scores of that step's global batch, then kept
fixed (and checkpointed). After each step the bank entries of the whole
global batch move towards the new features,
m_i <- normalise(momentum m_i + (1 - momentum) v_i), on every device alike.
As in Wu et al.'s code the bank starts as random unit vectors, so in a first
epoch every positive is still random: NPID needs many epochs (200 in the
paper) before its kNN accuracy means much.

With `num_negatives=0` the softmax is computed exactly over the whole bank
instead (cross-entropy of the logits m . v / T against the image's own
entry), as lemniscate's `LinearAverage` does when its `--nce-k` is 0. NCE's
fixed Z is only an estimate made while the bank is still random; once the
bank holds the network's features, their similarities are far higher than
that Z allows for unless the bank is large enough that the features have
spread out first (the 1.28M of ImageNet, the 50,000 of CIFAR in Wu et al.'s
code). On a bank of a few thousand images K = 4096 noise draws cover most
of it and the loss diverges (measured on 6,000 Fashion-MNIST images: NCE
loss 110 -> 1457 in 92 steps, kNN accuracy at chance), so small banks use
the exact softmax, which costs only a [batch, N] product there.

Evaluation is a weighted k-nearest-neighbour classifier: each eval image
votes with its k most similar bank entries, weighted by exp(similarity / T),
for their labels (recorded in the bank as the images are seen).
"""

import dataclasses

import flax
from clu import metrics
import jax
import jax.numpy as jnp

from sslprune_jax import parallel
from sslprune_jax.tasks import base

# Added to the NCE probabilities' denominators, as in Wu et al.'s code.
NCE_EPS = 1e-7


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: base.mean('loss')
  positive_probability: base.mean('positive_probability')


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
  accuracy: base.mean('accuracy')


def nce_losses(
    positive_scores: jax.Array,
    negative_scores: jax.Array,
    z: jax.Array,
    bank_size: int,
) -> tuple[jax.Array, jax.Array]:
  """NCE losses from exponentiated scores.

  Args:
    positive_scores: [b], exp(m_i . v / T) of each image's own entry.
    negative_scores: [b, K], the same for the noise entries.
    z: the normaliser Z.
    bank_size: N, the number of entries (P_n = 1 / N).

  Returns:
    ([b] losses, [b] h(i, v) of the positives).
  """
  k = negative_scores.shape[1]
  noise = k / bank_size  # K * P_n
  p_pos = positive_scores / z
  p_neg = negative_scores / z
  h_pos = p_pos / (p_pos + noise + NCE_EPS)
  log_h_pos = jnp.log(h_pos)
  log_1m_h_neg = jnp.log(noise / (p_neg + noise + NCE_EPS))
  return -(log_h_pos + jnp.sum(log_1m_h_neg, axis=1)), h_pos


def update_bank(
    bank: jax.Array, indices: jax.Array, features: jax.Array, momentum: float
) -> jax.Array:
  """Moves the entries `indices` towards `features` and renormalises them."""
  mixed = momentum * bank[indices] + (1.0 - momentum) * features
  return bank.at[indices].set(base.l2_normalize(mixed))


def knn_predict(
    features: jax.Array,
    bank: jax.Array,
    bank_labels: jax.Array,
    num_classes: int,
    k: int,
    temperature: float,
) -> jax.Array:
  """Weighted kNN classes of L2-normalised `features` [b, d].

  Entries whose label is negative (never seen) take no part. Each of the k
  nearest entries (by cosine similarity s) adds exp(s / temperature) to the
  score of its label; the prediction is the highest score.
  """
  sims = features @ bank.T
  sims = jnp.where(bank_labels[None, :] >= 0, sims, -jnp.inf)
  top, idx = jax.lax.top_k(sims, min(k, bank.shape[0]))
  weights = jnp.exp(top / temperature)  # exp(-inf) = 0 for unseen entries
  votes = jnp.einsum(
      'bk,bkc->bc', weights, jax.nn.one_hot(bank_labels[idx], num_classes)
  )
  return jnp.argmax(votes, axis=-1)


@dataclasses.dataclass(frozen=True)
class NPID(base.Task):
  """Instance discrimination against a memory bank, with NCE.

  Attributes:
    index_range: (start, stop) of the training images' indices
      (`DatasetInfo.index_range`); the bank has N = stop - start entries,
      one per training image, entry `index - start` for image `index`.
    num_classes: the dataset's classes (for the kNN evaluation only).
    dim: feature size (the head's width).
    temperature: T of the softmax.
    num_negatives: K noise entries per image; 0, the exact softmax over
      the bank.
    momentum: of the bank update.
    knn_k: neighbours of the kNN evaluation.
  """

  index_range: tuple[int, int] = (0, 0)
  num_classes: int = 0
  dim: int = 128
  temperature: float = 0.07
  num_negatives: int = 4096
  momentum: float = 0.5
  knn_k: int = 200

  name = 'npid'
  train_metrics = TrainMetrics
  eval_metrics = EvalMetrics

  @property
  def bank_size(self) -> int:
    return self.index_range[1] - self.index_range[0]

  def _rows(self, batch):
    return batch['index'] - self.index_range[0]

  def __post_init__(self):
    if self.bank_size < 2 or self.num_classes < 1:
      raise ValueError('NPID needs the dataset (index_range, num_classes).')
    if not 0.0 <= self.momentum < 1.0:
      raise ValueError(
          f'task.momentum must be in [0, 1), got ' f'{self.momentum}.'
      )
    if self.temperature <= 0 or self.knn_k < 1:
      raise ValueError('task.temperature and task.knn_k must be > 0.')
    if self.num_negatives < 0:
      raise ValueError(
          'task.num_negatives must be >= 0 (0: the exact '
          f'softmax), got {self.num_negatives}.'
      )

  def num_outputs(self, num_classes: int) -> int:
    del num_classes
    return self.dim

  def init_state(self, rng):
    """Random unit vectors, no labels seen yet, Z not yet estimated."""
    bank = base.l2_normalize(
        jax.random.normal(rng, (self.bank_size, self.dim), jnp.float32)
    )
    return {
        'bank': bank,
        'labels': jnp.full((self.bank_size,), -1, jnp.int32),
        'z': jnp.array(-1.0, jnp.float32),
    }

  def loss(self, outputs, batch, task_state, rng):
    v = base.l2_normalize(outputs)
    bank = task_state['bank']
    if self.num_negatives == 0:
      return self._softmax_loss(v, batch, task_state)
    noise_idx = jax.random.randint(
        rng, (v.shape[0], self.num_negatives), 0, self.bank_size
    )
    positive = jnp.exp(
        jnp.sum(bank[self._rows(batch)] * v, axis=-1) / self.temperature
    )
    negative = jnp.exp(
        jnp.einsum('bkd,bd->bk', bank[noise_idx], v) / self.temperature
    )
    # The same Z on every device: estimated from the global batch.
    first_z = (
        jax.lax.pmean(
            jnp.concatenate([positive[:, None], negative], axis=1).mean(),
            parallel.AXIS,
        )
        * self.bank_size
    )
    z = jax.lax.stop_gradient(
        jnp.where(task_state['z'] > 0, task_state['z'], first_z)
    )
    losses, h_pos = nce_losses(positive, negative, z, self.bank_size)
    return losses.mean(), {
        'losses': losses,
        'h_pos': h_pos,
        'z': z,
        'features': jax.lax.stop_gradient(v),
    }

  def _softmax_loss(self, v, batch, task_state):
    """Cross-entropy of the exact non-parametric softmax over the bank."""
    logits = v @ task_state['bank'].T / self.temperature
    rows = self._rows(batch)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    log_p_pos = jnp.take_along_axis(log_p, rows[:, None], axis=1)[:, 0]
    return -log_p_pos.mean(), {
        'losses': -log_p_pos,
        'h_pos': jnp.exp(log_p_pos),
        'z': task_state['z'],
        'features': jax.lax.stop_gradient(v),
    }

  def update_state(self, task_state, outputs, batch, aux):
    """Every device applies the whole global batch's updates."""
    del outputs
    indices = parallel.gather_replicated(self._rows(batch))
    features = parallel.gather_replicated(aux['features'])
    labels = parallel.gather_replicated(batch['label'])
    return {
        'bank': update_bank(
            task_state['bank'], indices, features, self.momentum
        ),
        'labels': task_state['labels'].at[indices].set(labels),
        'z': aux['z'],
    }

  def train_metrics_of(self, outputs, batch, aux):
    return self.train_metrics.single_from_model_output(
        loss=(aux['losses'], None), positive_probability=(aux['h_pos'], None)
    )

  def eval_metrics_of(self, outputs, batch, task_state):
    predicted = knn_predict(
        base.l2_normalize(outputs),
        task_state['bank'],
        task_state['labels'],
        self.num_classes,
        self.knn_k,
        self.temperature,
    )
    return self.eval_metrics.single_from_model_output(
        accuracy=(predicted == batch['label'], base.valid(batch))
    )
