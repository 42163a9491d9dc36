"""PASCAL VOC 2007 classification: targets with difficult objects, and mAP.

An image is a positive of a class if it holds a non-difficult object of that
class, is ignored for that class if its only objects of that class are
marked difficult, and is a negative otherwise (the VOC devkit's 1 / 0 / -1).
Average precision is the VOC 2007 rule: the mean, over the 11 recall levels
0, 0.1, ..., 1, of the highest precision reached at that recall or above.
This is the finetuning metric (`tasks.multilabel`). The linear-SVM probe
reports Goyal et al.'s benchmark AP instead (`evaluation.svm.average_precision`: the
area under the precision envelope, all points), as its reference does.
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
