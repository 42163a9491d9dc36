"""The train step: masking, data parallelism, schedules, the NaN stop."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from sslprune_jax import parallel
from sslprune_jax import pruning
from sslprune_jax import tasks
from sslprune_jax import train
from sslprune_jax import xla_options


class TinyNet(nn.Module):
  """Conv (+ optional batch norm) -> pool -> classifier."""

  batch_norm: bool = True

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Conv(8, (3, 3), use_bias=not self.batch_norm)(x)
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(x)
    x = nn.Conv(8, (3, 3), strides=2, use_bias=False)(x)
    x = jnp.mean(nn.relu(x), axis=(1, 2))
    return nn.Dense(10, name='classifier')(x)


def train_config(**overrides):
  c = ml_collections.ConfigDict(
      dict(
          num_epochs=10.0,
          schedule='constant',
          learning_rate=0.1,
          decay_epochs=(),
          decay_factor=0.1,
          warmup_epochs=0.0,
          momentum=0.9,
          nesterov=False,
          weight_decay=1e-4,
      )
  )
  c.update(overrides)
  return c


def init_variables(model, rng, image_shape):
  """`train.init_variables` compiled as a run compiles it (experiment.py):
  eager, every initialiser's random draw compiles by itself, a second or so
  each on CPU."""
  init = jax.jit(
      functools.partial(train.init_variables, model, image_shape=image_shape),
      compiler_options=xla_options.one_off_options(jax.default_backend()),
  )
  return init(rng)


def make_state(model, tx, mask_fraction=0.0, seed=0):
  variables = init_variables(model, jax.random.PRNGKey(seed), (8, 8, 1))
  mask = pruning.init_mask(variables['params'])
  if mask_fraction:
    prunable = pruning.prunable_tree(variables['params'])
    mask = pruning.random_prune(
        jax.random.PRNGKey(1), mask, prunable, mask_fraction
    )
  return train.create_train_state(
      model, variables, mask, tx, jax.random.PRNGKey(2)
  )


def random_batch(seed, n=32):
  rng = np.random.default_rng(seed)
  return {
      'image': rng.normal(size=(n, 8, 8, 1)).astype(np.float32),
      'label': rng.integers(0, 10, size=(n,)).astype(np.int32),
  }


def test_masked_weights_stay_exactly_zero(num_devices):
  mesh = parallel.create_mesh()
  tx = train.create_optimizer(
      train_config(weight_decay=0.05), optax.constant_schedule(0.5)
  )
  state = make_state(TinyNet(), tx, mask_fraction=0.6)
  before = jax.tree.map(np.asarray, state.params)
  step = train.make_train_step(tasks.get_task('labels'), mesh)
  state = parallel.replicate(state, mesh)
  for i in range(40):
    state, _ = step(state, parallel.shard_batch(random_batch(i), mesh))
  mask = jax.tree.map(np.asarray, state.mask)
  moved = 0
  for p, m, b in zip(
      jax.tree.leaves(state.params),
      jax.tree.leaves(mask),
      jax.tree.leaves(before),
  ):
    p = np.asarray(p)
    assert np.all(p[~m] == 0.0)
    moved += np.sum(p[m] != b[m])
  assert moved > 0
  # The momentum of a pruned weight never builds up either.
  trace = state.opt_state[1][0].trace
  for t, m in zip(jax.tree.leaves(trace), jax.tree.leaves(mask)):
    assert np.all(np.asarray(t)[~m] == 0.0)


@pytest.mark.parametrize('seed_batching', ['vmap', 'unroll'])
def test_seeds_in_one_step_match_separate_steps(num_devices, seed_batching):
  # Three seeds with their own weights, masks, rngs and batches, trained by
  # one step, against the ordinary step run on each alone.
  mesh = parallel.create_mesh()
  tx = train.create_optimizer(train_config(), optax.constant_schedule(0.1))
  task = tasks.get_task('labels')
  states = [
      make_state(TinyNet(), tx, mask_fraction=0.3 * s, seed=s) for s in range(3)
  ]
  batches = [[random_batch(10 * s + i) for i in range(3)] for s in range(3)]
  single = train.make_train_step(task, mesh)
  together = train.make_train_step(
      task, mesh, num_seeds=3, seed_batching=seed_batching
  )
  stacked = parallel.replicate(train.stack_trees(states), mesh)
  for i in range(3):
    stacked, metrics = together(
        stacked,
        parallel.shard_batch(
            train.stack_trees([b[i] for b in batches]), mesh, num_seeds=3
        ),
    )
  assert np.asarray(stacked.step).tolist() == [3, 3, 3]
  assert np.asarray(metrics.accuracy.count).tolist() == [32, 32, 32]
  for s in range(3):
    alone = parallel.replicate(states[s], mesh)
    for i in range(3):
      alone, alone_metrics = single(
          alone, parallel.shard_batch(batches[s][i], mesh)
      )
    mine = train.seed_slice(stacked, s)
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(alone)):
      # 'vmap' runs one grouped convolution, which adds in another order;
      # 'unroll' runs each seed's own operations, but XLA fuses the bigger
      # program differently (here batch norm's statistics differ by an ulp;
      # tests/test_imp.py has a whole run come out bit-identical).
      tolerance = (
          dict(rtol=1e-6, atol=1e-9)
          if seed_batching == 'unroll'
          else dict(rtol=1e-5, atol=1e-6)
      )
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), **tolerance)
    for a, b in zip(jax.tree.leaves(mine.mask), jax.tree.leaves(alone.mask)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(
        np.asarray(train.seed_slice(metrics, s).compute()['loss']),
        float(alone_metrics.compute()['loss']),
        rtol=1e-5,
    )
  assert train.seed_batching_for('auto', 'cpu') == 'unroll'
  assert train.seed_batching_for('auto', 'gpu') == 'vmap'
  # The seeds really differ.
  first, second = (
      np.asarray(jax.tree.leaves(train.seed_slice(stacked, s).params)[0])
      for s in (0, 1)
  )
  assert not np.allclose(first, second)


def test_data_parallel_step_matches_one_device_without_batchnorm(num_devices):
  model = TinyNet(batch_norm=False)
  tx = train.create_optimizer(train_config(), optax.constant_schedule(0.1))
  task = tasks.get_task('labels')
  state = make_state(model, tx, mask_fraction=0.3)

  # Reference: the plain full-batch update on one device. Without batch norm
  # the mean of the per-device mean losses is the full-batch mean loss.
  @jax.jit
  def reference_step(state, batch):
    def loss_fn(params):
      logits = model.apply(
          {'params': pruning.apply_mask(params, state.mask)},
          batch['image'],
          train=True,
      )
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, batch['label']
      ).mean()

    grads = jax.grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = pruning.apply_mask(
        optax.apply_updates(state.params, updates), state.mask
    )
    return state.replace(
        params=params, opt_state=opt_state, step=state.step + 1
    )

  mesh = parallel.create_mesh()
  step = train.make_train_step(task, mesh)
  sharded = parallel.replicate(state, mesh)
  expected = state
  for i in range(3):
    batch = random_batch(i)
    sharded, metrics = step(sharded, parallel.shard_batch(batch, mesh))
    expected = reference_step(expected, batch)
  for a, b in zip(
      jax.tree.leaves(sharded.params), jax.tree.leaves(expected.params)
  ):
    np.testing.assert_allclose(
        np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6
    )
  assert int(metrics.accuracy.count) == 32


def test_data_parallel_step_uses_per_device_batchnorm(num_devices):
  model = TinyNet(batch_norm=True)
  tx = train.create_optimizer(train_config(), optax.constant_schedule(0.1))
  task = tasks.get_task('labels')
  state = make_state(model, tx)
  batch = random_batch(0, n=32)

  # Reference on one device, written out: each slice of 4 images gets its
  # own forward pass with batch statistics of that slice, then gradients and
  # running statistics are averaged over the 8 slices.
  @jax.jit
  def reference_step(state, batch):
    def slice_loss(params, images, labels):
      logits, updates = model.apply(
          {
              'params': pruning.apply_mask(params, state.mask),
              'batch_stats': state.batch_stats,
          },
          images,
          train=True,
          mutable=['batch_stats'],
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(
          logits, labels
      ).mean()
      return loss, updates['batch_stats']

    images = batch['image'].reshape(num_devices, -1, 8, 8, 1)
    labels = batch['label'].reshape(num_devices, -1)
    grads, stats, losses = [], [], []
    for i in range(num_devices):
      (loss, bs), g = jax.value_and_grad(slice_loss, has_aux=True)(
          state.params, images[i], labels[i]
      )
      grads.append(g)
      stats.append(bs)
      losses.append(loss)
    mean = lambda *xs: sum(xs) / num_devices
    grads = jax.tree.map(mean, *grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = pruning.apply_mask(
        optax.apply_updates(state.params, updates), state.mask
    )
    return (
        state.replace(
            params=params,
            opt_state=opt_state,
            batch_stats=jax.tree.map(mean, *stats),
            step=state.step + 1,
        ),
        mean(*losses),
    )

  ref_state, ref_loss = reference_step(state, batch)

  mesh = parallel.create_mesh()
  step = train.make_train_step(task, mesh)
  new_state, metrics = step(
      parallel.replicate(state, mesh), parallel.shard_batch(batch, mesh)
  )
  for a, b in zip(
      jax.tree.leaves(new_state.params), jax.tree.leaves(ref_state.params)
  ):
    np.testing.assert_allclose(
        np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6
    )
  for a, b in zip(
      jax.tree.leaves(new_state.batch_stats),
      jax.tree.leaves(ref_state.batch_stats),
  ):
    np.testing.assert_allclose(
        np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6
    )
  np.testing.assert_allclose(
      float(metrics.loss.compute()), float(ref_loss), rtol=1e-5
  )

  # One device over the whole batch normalises with whole-batch statistics,
  # which is a different computation.
  one = parallel.create_mesh(jax.devices()[:1])
  whole, _ = train.make_train_step(task, one)(
      parallel.replicate(state, one), parallel.shard_batch(batch, one)
  )
  differs = [
      not np.allclose(np.asarray(a), np.asarray(b), rtol=1e-4)
      for a, b in zip(
          jax.tree.leaves(whole.batch_stats),
          jax.tree.leaves(new_state.batch_stats),
      )
  ]
  assert any(differs)


def test_step_schedule_decays_at_the_given_epochs():
  lr = train.create_learning_rate_fn(
      train_config(schedule='step', decay_epochs=(2, 3), num_epochs=4.0),
      steps_per_epoch=10,
  )
  assert [float(lr(s)) for s in (0, 19, 20, 29, 30, 39)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
  )


def test_warmup_then_step():
  lr = train.create_learning_rate_fn(
      train_config(
          schedule='step', decay_epochs=(2,), num_epochs=4.0, warmup_epochs=1.0
      ),
      steps_per_epoch=10,
  )
  assert float(lr(0)) == pytest.approx(0.0)
  assert float(lr(5)) == pytest.approx(0.05)
  assert float(lr(10)) == pytest.approx(0.1)
  assert float(lr(19)) == pytest.approx(0.1)
  assert float(lr(20)) == pytest.approx(0.01)


def test_cosine_schedule():
  lr = train.create_learning_rate_fn(
      train_config(schedule='cosine', num_epochs=2.0), steps_per_epoch=50
  )
  assert float(lr(0)) == pytest.approx(0.1)
  assert float(lr(50)) == pytest.approx(0.05)
  assert float(lr(100)) == pytest.approx(0.0, abs=1e-8)


def test_unknown_schedule_is_refused():
  with pytest.raises(ValueError, match='Unknown schedule'):
    train.create_learning_rate_fn(train_config(schedule='exp'), 10)


class _FakeMetrics:
  """Stands in for a clu collection: merge and compute."""

  def __init__(self, losses):
    self.losses = losses

  def merge(self, other):
    return _FakeMetrics(self.losses + other.losses)

  def compute(self):
    return {'loss': float(np.mean(self.losses)), 'accuracy': 0.5}


class _FakeState:

  def __init__(self, step):
    self.step = step


def test_train_round_stops_on_nan_without_saving_it():
  saved = []

  def fake_step(state, batch):
    del batch
    step = state.step + 1
    return _FakeState(step), _FakeMetrics([np.nan if step >= 7 else 1.0])

  batches = iter([{'image': np.zeros((8, 1))}] * 100)
  with pytest.raises(train.NonFiniteLossError, match='step 8'):
    train.train_round(
        _FakeState(0),
        train_step=fake_step,
        eval_step=None,
        train_batches=batches,
        eval_batches=lambda: iter([]),
        mesh=parallel.create_mesh(),
        num_steps=20,
        writer=_NullWriter(),
        log_every_steps=4,
        checkpoint_every_steps=2,
        save_checkpoint=lambda s: saved.append(s.step),
        description='test',
    )
  # Checkpoints at 2, 4 and 6 were written; the NaN state (7, 8) was not.
  assert saved == [2, 4, 6]


class _NullWriter:

  def write_scalars(self, step, scalars):
    pass

  def flush(self):
    pass


def test_rotnet_batch_holds_every_image_at_every_rotation():
  rng = np.random.default_rng(0)
  # Asymmetric images, so that every rotation is distinct.
  images = rng.normal(size=(3, 5, 5, 2)).astype(np.float32)
  task = tasks.get_task('rotnet')
  batch = task.prepare(
      {
          'image': jnp.asarray(images),
          'label': jnp.zeros(3, jnp.int32),
          'mask': jnp.array([True, True, False]),
      },
      None,
  )
  assert batch['image'].shape == (12, 5, 5, 2)
  np.testing.assert_array_equal(
      batch['label'], [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
  )
  np.testing.assert_array_equal(batch['mask'], [True, True, False] * 4)
  for i in range(12):
    k, j = divmod(i, 3)
    np.testing.assert_array_equal(batch['image'][i], np.rot90(images[j], k))
  assert task.num_outputs(10) == 4
  # An exact rotation: a quarter turn of a known corner.
  corner = np.zeros((1, 3, 3, 1), np.float32)
  corner[0, 0, 2, 0] = 1.0  # top right
  turned = task.prepare(
      {'image': jnp.asarray(corner), 'label': jnp.zeros(1, jnp.int32)}, None
  )['image']
  assert turned[1, 0, 0, 0] == 1.0  # 90 degrees counter-clockwise: top left
  with pytest.raises(ValueError, match='square'):
    task.prepare(
        {'image': jnp.zeros((1, 4, 5, 1)), 'label': jnp.zeros(1, jnp.int32)},
        None,
    )


def test_exact_pmean_adds_in_device_order(num_devices):
  """The mean of every leaf over devices, summed in device order, the same
  on every device; odd sizes are padded and cut back."""
  mesh = parallel.create_mesh()
  rng = np.random.default_rng(0)
  tree = {
      'a': rng.normal(size=(num_devices, 3, 5)).astype(np.float32),
      'b': rng.normal(size=(num_devices, 7)).astype(np.float32) * 1e4,
  }

  def mean(local):
    local = jax.tree.map(lambda x: x[0], local)
    return parallel.exact_pmean(local), jax.lax.pmean(local, parallel.AXIS)

  exact, usual = jax.jit(
      jax.shard_map(mean, mesh=mesh, in_specs=P(parallel.AXIS), out_specs=P())
  )(tree)
  for key, x in tree.items():
    in_order = x[0]
    for row in x[1:]:
      in_order = in_order + row
    np.testing.assert_array_equal(exact[key], in_order / num_devices)
    np.testing.assert_allclose(exact[key], usual[key], rtol=1e-5)
