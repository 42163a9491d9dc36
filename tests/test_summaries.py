"""TensorBoard summaries of a pruning run, read back as TensorBoard does."""

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from sslprune_jax import summaries


def test_mask_image_puts_filters_in_rows():
  mask = np.ones((3, 3, 2, 4), bool)  # [kh, kw, in, out]
  mask[..., 1] = False  # filter 1 removed
  mask[0, 0, 0, 3] = False  # one weight of filter 3
  image = summaries.mask_image(mask)
  assert image.shape == (1, 4, 18, 1) and image.dtype == np.uint8
  assert (image[0, 1] == 0).all()
  assert image[0, 3, 0, 0] == 0 and image[0, 3, 1:].min() == 255
  assert image[0, [0, 2]].min() == 255


def test_large_masks_are_subsampled():
  image = summaries.mask_image(np.ones((3, 3, 256, 512), bool))
  assert max(image.shape[1:3]) <= summaries.MASK_PIXELS


def test_drawn_layers_are_first_middle_last():
  assert summaries._drawn_layers(['a', 'b']) == ['a', 'b']
  assert summaries._drawn_layers(list('abcdefg')) == ['a', 'd', 'g']


def _tags(directory):
  acc = event_accumulator.EventAccumulator(
      str(directory), size_guidance={event_accumulator.TENSORS: 0}
  )
  acc.Reload()
  return acc


def test_tensorboard_shows_rates_sparsity_masks_and_the_plot(labels_run):
  _, workdir, results = labels_run
  rounds = _tags(workdir / 'tb' / 'rounds')
  tags = set(rounds.Tags()['tensors'])
  per_layer = sorted(t for t in tags if t.startswith('sparsity/'))
  assert len(per_layer) == len(results[0]['sparsity']['layers'])
  # Each layer's fraction left, per round, as in results.csv.
  first = per_layer[0]
  layer = first.split('/', 1)[1]
  events = rounds.Tensors(first)
  assert [e.step for e in events] == [r['round'] for r in results]
  want = [
      next(
          l['fraction_left']
          for l in r['sparsity']['layers']
          if l['name'] == layer
      )
      for r in results
  ]
  got = [float(tensor_util.make_ndarray(e.tensor_proto)) for e in events]
  assert got == pytest.approx(want)
  for tag in (
      'test_accuracy',
      'fraction_left',
      'sparsity',
      'fraction_left_plot',
  ):
    assert tag in tags, (tag, sorted(tags))
  masks = [t for t in tags if t.startswith('mask/')]
  assert len(masks) == summaries.MASK_LAYERS
  # Images are [width, height, png...] string tensors.
  plot = tensor_util.make_ndarray(
      rounds.Tensors('fraction_left_plot')[-1].tensor_proto
  )
  assert plot[2].startswith(b'\x89PNG')
  per_step = _tags(workdir / 'tb' / 'round_01')
  step_tags = set(per_step.Tags()['tensors'])
  assert {'learning_rate', 'train_loss', 'test_accuracy'} <= step_tags
  assert not any(t.startswith('eval_') for t in step_tags | tags)
