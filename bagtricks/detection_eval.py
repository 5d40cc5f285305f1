"""Detection on the host, in NumPy: non-maximum suppression and COCO-style mean average precision.

``nms`` keeps, class by class, the highest-scoring boxes that do not overlap a kept one by more
than an IoU threshold. ``coco_map`` scores a split's detections as the COCO evaluation does
(area range "all", at most ``max_detections`` per image and class): per class and IoU
threshold t, detections are matched greedily by descending score, each to the unmatched ground
truth of its image with the largest IoU ≥ t; precision is made non-increasing in recall and
read at the 101 recalls 0, 0.01, …, 1; AP is their mean, mAP the mean over the classes that
have ground truth. mAP@[.5:.95] averages t = 0.50, 0.55, …, 0.95.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

COCO_THRESHOLDS = tuple(np.round(np.linspace(0.5, 0.95, 10), 2))
RECALLS = np.linspace(0.0, 1.0, 101)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """``[N, M]`` IoU of corner boxes ``a [N, 4]`` and ``b [M, 4]`` (0 where the union is
  empty)."""
  low = np.maximum(a[:, None, :2], b[None, :, :2])
  high = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(high - low, 0, None), axis=-1)
  area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=-1)
  union = area(a)[:, None] + area(b)[None, :] - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float,
        max_outputs: int) -> np.ndarray:
  """Indices of the kept boxes, best first: greedily the highest score, dropping every box
  whose IoU with a kept one exceeds ``iou_threshold``.

  Args:
    boxes: ``[N, 4]`` corners of one class in one image.
    scores: ``[N]``.
    iou_threshold: the overlap above which a lower-scoring box is suppressed.
    max_outputs: at most this many kept.
  """
  order = np.argsort(-scores, kind="stable")
  keep: List[int] = []
  while order.size and len(keep) < max_outputs:
    best, order = order[0], order[1:]
    keep.append(int(best))
    order = order[iou_matrix(boxes[best:best + 1], boxes[order])[0] <= iou_threshold]
  return np.asarray(keep, np.int64)


def _match_image(iou: np.ndarray, threshold: float) -> np.ndarray:
  """Which of one image's detections are true positives, given their IoU with its ground
  truth ``[detections sorted by descending score, ground truths]``."""
  hit = np.zeros(iou.shape[0], bool)
  taken = np.zeros(iou.shape[1], bool)
  for d in range(iou.shape[0] if iou.shape[1] else 0):
    candidates = np.where(taken | (iou[d] < threshold), -1.0, iou[d])
    g = len(candidates) - 1 - int(np.argmax(candidates[::-1]))  # The last of equal IoUs.
    if candidates[g] >= 0:
      taken[g], hit[d] = True, True
  return hit


def average_precision(scores: np.ndarray, hits: np.ndarray, num_gt: int) -> float:
  """COCO's 101-point AP of detections pooled over images (``scores``, ``hits``) against
  ``num_gt`` ground-truth boxes."""
  if not len(scores):
    return 0.0
  order = np.argsort(-scores, kind="mergesort")
  tp = np.cumsum(hits[order])
  fp = np.cumsum(~hits[order])
  recall = tp / num_gt
  precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
  precision = np.maximum.accumulate(precision[::-1])[::-1]
  at = np.searchsorted(recall, RECALLS, side="left")
  sampled = np.where(at < len(precision), precision[np.minimum(at, len(precision) - 1)], 0.0)
  return float(np.mean(sampled))


def coco_map(detections: Sequence[Dict[str, np.ndarray]],
             ground_truth: Sequence[Dict[str, np.ndarray]], num_classes: int,
             thresholds: Sequence[float] = COCO_THRESHOLDS,
             max_detections: int = 100) -> Dict[float, float]:
  """mAP per IoU threshold over a split.

  Args:
    detections: per image ``{'boxes' [n, 4], 'scores' [n], 'classes' [n]}``.
    ground_truth: per image ``{'boxes' [g, 4], 'classes' [g]}``.
    num_classes: classes 0..C−1.
    thresholds: IoU thresholds t.
    max_detections: per image and class, the best-scoring ones kept.

  Returns:
    ``{t: mAP}`` (NaN where no class has ground truth).
  """
  per_class = {float(t): [] for t in thresholds}
  for c in range(num_classes):
    # Per image: its best detections of class c, their scores and IoU with its truth, once.
    scores, ious, num_gt = [], [], 0
    for det, gt in zip(detections, ground_truth):
      mine = np.flatnonzero(det["classes"] == c)
      mine = mine[np.argsort(-det["scores"][mine], kind="mergesort")][:max_detections]
      truth = gt["boxes"][gt["classes"] == c]
      num_gt += len(truth)
      scores.append(det["scores"][mine])
      ious.append(iou_matrix(det["boxes"][mine], truth))
    if not num_gt:
      continue
    for t in per_class:
      hits = np.concatenate([_match_image(iou, t) for iou in ious])
      per_class[t].append(average_precision(np.concatenate(scores), hits, num_gt))
  return {t: float(np.mean(aps)) if aps else float("nan") for t, aps in per_class.items()}
