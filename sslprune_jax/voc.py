"""PASCAL VOC 2007 classification: targets with difficult objects, and mAP.

An image is a positive of a class if it holds a non-difficult object of that
class, is ignored for that class if its only objects of that class are
marked difficult, and is a negative otherwise (the VOC devkit's 1 / 0 / -1).
Average precision is the VOC 2007 rule: the mean, over the 11 recall levels
0, 0.1, ..., 1, of the highest precision reached at that recall or above.
This is the finetuning metric (`tasks.multilabel`). The linear-SVM probe
reports Goyal et al.'s benchmark AP instead (`benchmark_average_precision`:
the area under the precision envelope, all points), as its reference does.
"""

import numpy as np

POSITIVE, DIFFICULT, NEGATIVE = 1, 0, -1


def targets(
    labels: list, labels_no_difficult: list, num_classes: int
) -> np.ndarray:
  """Per-image, per-class targets in {1, 0, -1}.

  Args:
    labels: for each image, the classes of all its objects (tfds `voc`'s
      `labels`).
    labels_no_difficult: for each image, the classes of its objects that are
      not difficult (tfds's `labels_no_difficult`).
    num_classes: 20 for VOC.

  Returns:
    int8 [num_images, num_classes].
  """
  out = np.full((len(labels), num_classes), NEGATIVE, np.int8)
  for i, (every, clear) in enumerate(zip(labels, labels_no_difficult)):
    out[i, np.asarray(every, np.int64)] = DIFFICULT
    out[i, np.asarray(clear, np.int64)] = POSITIVE
  return out


def average_precision(scores: np.ndarray, target: np.ndarray) -> float:
  """VOC 2007 11-point average precision of one class.

  Images are ranked by decreasing score; difficult ones (target 0) count
  neither as hits nor as misses. Tied scores form one threshold: precision
  and recall are taken only once all the tied images are in, so the result
  does not depend on the order of the images (the devkit's stable sort
  would make it).

  Args:
    scores: [N] classifier scores.
    target: [N] in {1, 0, -1}.

  Returns:
    The AP in [0, 1]; NaN if the class has no positive.
  """
  scores = np.asarray(scores, np.float64)
  target = np.asarray(target)
  num_positive = int(np.sum(target == POSITIVE))
  if num_positive == 0:
    return float('nan')
  order = np.argsort(-scores, kind='stable')
  scores, target = scores[order], target[order]
  hits = np.cumsum(target == POSITIVE)
  misses = np.cumsum(target == NEGATIVE)
  # The last image of each group of tied scores closes a threshold.
  last = np.r_[scores[1:] != scores[:-1], True]
  hits, misses = hits[last], misses[last]
  recall = hits / num_positive
  precision = hits / np.maximum(hits + misses, 1)
  ap = 0.0
  for level in np.linspace(0.0, 1.0, 11):
    reached = precision[recall >= level - 1e-12]
    ap += (reached.max() if reached.size else 0.0) / 11
  return float(ap)


def mean_average_precision(
    scores: np.ndarray, target: np.ndarray
) -> tuple[float, np.ndarray]:
  """VOC 2007 mAP over the classes that have a positive.

  Args:
    scores: [N, C] classifier scores.
    target: [N, C] in {1, 0, -1} (see `targets`).

  Returns:
    (mAP, [C] per-class APs, NaN for classes without positives).
  """
  aps = np.array(
      [
          average_precision(scores[:, c], target[:, c])
          for c in range(scores.shape[1])
      ]
  )
  if np.all(np.isnan(aps)):
    raise ValueError('No class has a positive image.')
  return float(np.nanmean(aps)), aps


def benchmark_average_precision(
    scores: np.ndarray, target: np.ndarray
) -> float:
  """The benchmark's test AP of one class.

  Follows fair_self_supervision_benchmark tools/svm/test_svm.py (difficult
  images, target 0 here, are left out) and tools/svm/svm_helper.py
  (`get_precision_recall`, `calculate_ap`): the images are ranked by
  decreasing score, one at a time (tied scores in the order of numpy's
  default argsort, reversed, as there); precision and recall after each
  image; the precision is replaced by its maximum at that recall or above
  (the envelope, precision 0 past recall 1); the AP is the sum over the
  ranks where recall grows of the recall gained times that precision.

  Args:
    scores: [N] decision values.
    target: [N] VOC targets in {1, 0, -1}.

  Returns:
    The AP in [0, 1]; NaN when no image is a positive or a score is NaN.
  """
  scores = np.asarray(scores, np.float64)
  target = np.asarray(target)
  keep = target != DIFFICULT
  scores, positive = scores[keep], target[keep] == POSITIVE
  num_positive = int(positive.sum())
  if num_positive == 0 or np.any(np.isnan(scores)):
    return float('nan')
  hits = positive[np.argsort(scores)[::-1]]
  tp, fp = np.cumsum(hits), np.cumsum(~hits)
  precision = tp / (tp + fp)
  recall = tp / num_positive
  mrec = np.r_[0.0, recall, 1.0]
  mpre = np.maximum.accumulate(np.r_[0.0, precision, 0.0][::-1])[::-1]
  grows = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
  return float(np.sum((mrec[grows] - mrec[grows - 1]) * mpre[grows]))


def benchmark_mean_average_precision(
    scores: np.ndarray, targets: np.ndarray
) -> tuple[float, np.ndarray]:
  """The benchmark's test mAP: the mean of the classes'
  `benchmark_average_precision`.

  Follows fair_self_supervision_benchmark tools/svm/test_svm.py (the mean of
  its per-class AP matrix); classes with a NaN AP are left out of the mean.

  Args:
    scores: [N, C] decision values.
    targets: [N, C] VOC targets in {1, 0, -1}.

  Returns:
    (mAP, [C] per-class APs).
  """
  aps = np.array(
      [
          benchmark_average_precision(scores[:, c], targets[:, c])
          for c in range(scores.shape[1])
      ]
  )
  if np.all(np.isnan(aps)):
    raise ValueError(
        'No class has both a trained SVM and a positive test ' 'image.'
    )
  return float(np.nanmean(aps)), aps
