"""Boxes for SSD (IoU, default boxes, offsets, matching, hard negatives), NMS and COCO mAP."""

import jax.numpy as jnp
import numpy as np
import pytest

from bagtricks import boxes, detection_eval


def test_iou_by_hand():
  a = jnp.array([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
  b = jnp.array([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
  expected = np.array([[1 / 7, 1.0, 0.0], [0.0, 0.0, 0.0]])
  np.testing.assert_allclose(boxes.pairwise_iou(a, b), expected, rtol=1e-6)
  np.testing.assert_allclose(detection_eval.iou_matrix(np.asarray(a), np.asarray(b)), expected,
                             rtol=1e-6)


def test_default_boxes_follow_the_paper():
  anchors = boxes.default_boxes([2, 1], [0.2, 0.5, 0.8], [1.0, 2.0])
  assert anchors.shape == (2 * 2 * 3 + 1 * 3, 4)
  # Map 0, cell (row 0, col 1): centre (0.75, 0.25); ratio 2: w = 0.2·√2, h = 0.2/√2.
  w, h = 0.2 * np.sqrt(2), 0.2 / np.sqrt(2)
  np.testing.assert_allclose(anchors[3 + 1], [0.75 - w / 2, 0.25 - h / 2, 0.75 + w / 2,
                                              0.25 + h / 2], rtol=1e-6)
  extra = np.sqrt(0.5 * 0.8)  # The last map's extra box: √(s_K s_{K+1}).
  np.testing.assert_allclose(anchors[-1], [0.5 - extra / 2] * 2 + [0.5 + extra / 2] * 2,
                             rtol=1e-6)
  with pytest.raises(ValueError, match="one scale per feature map"):
    boxes.default_boxes([2, 1], [0.2, 0.5], [1.0])


def test_offsets_by_hand_and_round_trip():
  anchor = jnp.array([[0.2, 0.2, 0.6, 0.4]])  # Centre (0.4, 0.3), size (0.4, 0.2).
  truth = jnp.array([[0.3, 0.2, 0.5, 0.6]])  # Centre (0.4, 0.4), size (0.2, 0.4).
  expected = [0.0, 0.1 / (0.1 * 0.2), np.log(0.5) / 0.2, np.log(2.0) / 0.2]
  np.testing.assert_allclose(boxes.encode(truth, anchor)[0], expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(boxes.decode(boxes.encode(truth, anchor), anchor), truth,
                             rtol=1e-5, atol=1e-6)


def test_matching_threshold_and_forced_best_anchor():
  anchors = jnp.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.4, 0.5], [0.5, 0.5, 1.0, 1.0],
                       [0.6, 0.0, 1.0, 0.3]])
  gt = jnp.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5], [0.0, 0.0, 1.0, 1.0]])
  valid = jnp.array([True, True, False])  # The third row is padding.
  index, positive = boxes.match(anchors, gt, valid, threshold=0.5)
  # Anchor 0: IoU 1 with gt 0; anchor 1: 0.8 with gt 0; anchor 2: no overlap; anchor 3:
  # IoU 0.48 with gt 1, under 0.5, but it is gt 1's best anchor, so it is forced.
  np.testing.assert_array_equal(positive, [True, True, False, True])
  np.testing.assert_array_equal(np.asarray(index)[[0, 1, 3]], [0, 0, 1])


def test_hard_negatives_take_the_largest_losses_three_per_positive():
  loss = jnp.array([0.1, 5.0, 0.7, 0.9, 0.2, 0.3, 0.8, 0.05])
  positive = jnp.array([False, True, False, False, False, False, False, False])
  chosen = boxes.hard_negatives(loss, positive, ratio=3)
  np.testing.assert_array_equal(np.flatnonzero(chosen), [2, 3, 6])
  none = boxes.hard_negatives(loss, jnp.zeros(8, bool))
  assert not np.any(none)


def test_nms_by_hand():
  b = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], float)
  scores = np.array([0.9, 0.8, 0.7, 0.95])
  # Box 3 (best) suppresses 0 (IoU 0.9) and 1 (IoU 72/118); box 2 is far away.
  np.testing.assert_array_equal(detection_eval.nms(b, scores, 0.5, 10), [3, 2])
  np.testing.assert_array_equal(detection_eval.nms(b, scores, 0.95, 10), [3, 0, 1, 2])
  np.testing.assert_array_equal(detection_eval.nms(b, scores, 0.95, 2), [3, 0])


def test_average_precision_by_hand():
  # Two ground truths; detections by score: hit, miss, hit → precision 1, 1/2, 2/3 at recall
  # 1/2, 1/2, 1; made non-increasing: 1 up to recall 1/2, 2/3 after.
  gt = [{"boxes": np.array([[0, 0, 1, 1], [2, 2, 3, 3]], float), "classes": np.array([0, 0])}]
  det = [{"boxes": np.array([[0, 0, 1, 1], [5, 5, 6, 6], [2, 2, 3, 3]], float),
          "scores": np.array([0.9, 0.8, 0.7]), "classes": np.array([0, 0, 0])}]
  expected = (51 * 1.0 + 50 * 2 / 3) / 101
  assert detection_eval.coco_map(det, gt, 1, [0.5])[0.5] == pytest.approx(expected)
  # A class without ground truth does not count; one with no detections scores 0.
  gt[0]["classes"] = np.array([0, 2])
  det[0]["classes"] = np.array([0, 1, 0])
  result = detection_eval.coco_map(det, gt, 3, [0.5])[0.5]
  assert result == pytest.approx(np.mean([1.0, 0.0]))


def _random_split(rng, images=12, classes=3):
  truth, found = [], []
  for _ in range(images):
    g = int(rng.integers(1, 5))
    xy = rng.uniform(0, 80, (g, 2))
    gt_boxes = np.concatenate([xy, xy + rng.uniform(8, 30, (g, 2))], 1)
    gt_classes = rng.integers(0, classes, g)
    n = int(rng.integers(0, 8))
    pick = rng.integers(0, g, n)
    jitter = rng.normal(0, 4, (n, 4))
    det_boxes = gt_boxes[pick] + jitter
    det_boxes[:, 2:] = np.maximum(det_boxes[:, 2:], det_boxes[:, :2] + 1)
    det_classes = np.where(rng.random(n) < 0.8, gt_classes[pick], rng.integers(0, classes, n))
    truth.append({"boxes": gt_boxes, "classes": gt_classes})
    found.append({"boxes": det_boxes, "scores": rng.random(n), "classes": det_classes})
  return truth, found


def test_coco_map_against_pycocotools():
  pytest.importorskip("pycocotools")
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval
  truth, found = _random_split(np.random.default_rng(0))
  xywh = lambda b: [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]
  images = [{"id": i + 1, "width": 128, "height": 128} for i in range(len(truth))]
  annotations = [{"id": len(images) * 10 + k, "image_id": i + 1, "category_id": int(c) + 1,
                  "bbox": xywh(b), "area": float((b[2] - b[0]) * (b[3] - b[1])), "iscrowd": 0}
                 for i, g in enumerate(truth) for k, (b, c) in enumerate(zip(g["boxes"],
                                                                            g["classes"]))]
  for k, a in enumerate(annotations):
    a["id"] = k + 1
  coco = COCO()
  coco.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": c + 1} for c in range(3)]}
  coco.createIndex()
  results = [{"image_id": i + 1, "category_id": int(c) + 1, "bbox": xywh(b), "score": float(s)}
             for i, d in enumerate(found) for b, s, c in zip(d["boxes"], d["scores"],
                                                             d["classes"])]
  evaluation = COCOeval(coco, coco.loadRes(results), "bbox")
  evaluation.evaluate()
  evaluation.accumulate()
  evaluation.summarize()
  ours = detection_eval.coco_map(found, truth, 3)
  assert np.mean(list(ours.values())) == pytest.approx(evaluation.stats[0], abs=1e-9)
  assert ours[0.5] == pytest.approx(evaluation.stats[1], abs=1e-9)
  assert ours[0.75] == pytest.approx(evaluation.stats[2], abs=1e-9)


def test_enclosing_and_generalized_iou_by_hand():
  a = jnp.asarray([[0.0, 0.0, 0.2, 0.2], [0.0, 0.0, 0.2, 0.2], [0.1, 0.1, 0.3, 0.5]])
  b = jnp.asarray([[0.1, 0.0, 0.3, 0.2], [0.4, 0.0, 0.6, 0.2], [0.1, 0.1, 0.3, 0.5]])
  np.testing.assert_allclose(boxes.enclosing(a, b)[1], [0.0, 0.0, 0.6, 0.2], atol=1e-7)
  # Half-overlapping squares: IoU 0.02/0.06 = 1/3, hull 0.06 = union → GIoU = IoU.
  # Disjoint squares 0.2 apart: IoU 0, hull 0.12, union 0.08 → −(0.04/0.12) = −1/3.
  np.testing.assert_allclose(boxes.paired_giou(a, b), [1 / 3, -1 / 3, 1.0], atol=1e-6)


def test_roi_align_is_exact_on_a_linear_map():
  # Bilinear interpolation reproduces a linear function exactly, so each cell of RoIAlign
  # is f at the cell's centre, mapped to map pixels (x·W − ½).
  height, width = 6, 8
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  feature = np.stack([2.0 * rows + 0.5 * cols, -cols + 1.0], axis=-1).astype(np.float32)
  rois = np.asarray([[0.25, 0.2, 0.75, 0.8], [0.1, 0.3, 0.3, 0.6]], np.float32)
  got = np.asarray(boxes.roi_align(jnp.asarray(feature), jnp.asarray(rois), 3))
  for k, (x0, y0, x1, y1) in enumerate(rois):
    for i in range(3):
      for j in range(3):
        y = (y0 + (i + 0.5) / 3 * (y1 - y0)) * height - 0.5
        x = (x0 + (j + 0.5) / 3 * (x1 - x0)) * width - 0.5
        np.testing.assert_allclose(got[k, i, j], [2 * y + 0.5 * x, -x + 1.0], rtol=1e-5,
                                   atol=1e-5)
  # A box reaching past the map takes its border's values.
  edge = boxes.roi_align(jnp.asarray(feature), jnp.asarray([[-0.5, -0.5, 0.0, 0.0]]), 1)
  np.testing.assert_allclose(edge[0, 0, 0], feature[0, 0])
