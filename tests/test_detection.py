"""The digit canvases to detect, SSD's loss against NumPy, 1 vs 8 devices, mAP, bad fields."""

import jax.numpy as jnp
import numpy as np
import pytest

from bagtricks import boxes, data, detection_eval, train
from bagtricks.data import detection_digits
from bagtricks.tasks import DetectionTask
from bagtricks.tasks.detection import image_loss_sums
from conftest import (assert_field_named_before_training, assert_trees_close,
                      first_batch_model_and_sgd, train_on_one_and_eight_devices)
from configs import ssd_digits


def tiny_detection_config():
  """48 canvases of 32×32 with 1–2 of the 8×8 digits, a 1/16 ResNet trunk, 2 maps."""
  config = ssd_digits.get_config()
  config.dataset.digits = "sklearn_digits"
  config.dataset.canvas = 32
  config.dataset.objects = (1, 2)
  config.dataset.digit_size = (10, 16)
  config.dataset.num_train = 48
  config.dataset.num_test = 16
  config.model.source_stages = (3, 4)
  config.model.extra_layers = 0
  config.model.extra_width = 8
  config.model.width_multiplier = 0.0625
  config.detection.anchor_scales = (0.3, 0.6)
  config.batch_size = 8
  config.eval_batch_size = 8
  config.num_epochs = 0.5
  config.schedule.warmup_epochs = 0.1
  config.log_every_steps = 2
  return config


def test_canvases_box_their_digits():
  images = np.zeros((10, 8, 8), np.uint8)
  images[:, 2:6, 3:5] = 255  # Ink in rows 2–5, columns 3–4 of every digit.
  labels = np.arange(10)
  made = detection_digits.detection_canvases(images, labels, 30, 32, (1, 3), (8, 16), 0.0, 1)
  counts = made["valid"].sum(axis=1)
  assert counts.min() >= 1 and counts.max() <= 3
  for n in range(30):
    canvas = made["image"][n]
    covered = np.zeros_like(canvas, bool)
    for box in made["boxes"][n][made["valid"][n]]:
      x0, y0, x1, y1 = np.round(box * 32).astype(int)
      assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
      patch = canvas[y0:y1, x0:x1]
      assert patch[0].max() >= detection_digits.INK and patch[:, -1].max() >= 64  # Tight.
      covered[y0:y1, x0:x1] = True
    assert canvas[~covered].max(initial=0) < detection_digits.INK  # No ink outside a box.
    valid = made["boxes"][n][made["valid"][n]]
    if len(valid) > 1:  # max_overlap = 0: boxes do not overlap.
      iou = np.asarray(boxes.pairwise_iou(jnp.asarray(valid), jnp.asarray(valid)))
      assert np.allclose(iou[~np.eye(len(valid), dtype=bool)], 0.0)


def test_source_splits_are_fixed():
  config = tiny_detection_config()
  first, again = data.get_source(config), data.get_source(config)
  for k in ("image", "boxes", "classes", "valid"):
    np.testing.assert_array_equal(first.splits["test"][k], again.splits["test"][k])
  assert first.info().element_spec["boxes"].shape == (2, 4)


def _numpy_loss_sums(logits, offsets, anchors, gt, classes, valid, threshold, ratio):
  """SSD's sums by loops: matching, cross-entropy, hard negatives, smooth L1."""
  iou = detection_eval.iou_matrix(anchors, gt)
  iou[:, ~valid] = -1
  index = iou.argmax(1)
  positive = iou.max(1) >= threshold
  for g in np.flatnonzero(valid):
    positive[iou[:, g].argmax()] = True
    index[iou[:, g].argmax()] = g
  log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  target = np.where(positive, classes[index] + 1, 0)
  ce = -log_probs[np.arange(len(anchors)), target]
  order = [i for i in np.argsort(log_probs[:, 0]) if not positive[i]]  # Hardest first.
  negatives = order[:int(ratio * positive.sum())]
  classification = ce[positive].sum() + ce[negatives].sum()
  g, a = gt[index], anchors  # Eq. 2 with variances 0.1 and 0.2.
  centre = lambda b: (b[:, :2] + b[:, 2:]) / 2
  size = lambda b: b[:, 2:] - b[:, :2]
  targets = np.concatenate([(centre(g) - centre(a)) / (0.1 * size(a)),
                            np.log(size(g) / size(a)) / 0.2], axis=1)
  diff = np.abs(offsets - targets)
  l1 = np.where(diff < 1, 0.5 * diff ** 2, diff - 0.5)
  return classification, l1[positive].sum(), positive.sum()


def test_loss_sums_against_numpy():
  rng = np.random.default_rng(0)
  anchors = np.asarray(boxes.default_boxes([3, 2], [0.3, 0.6, 0.8], [1.0, 2.0]))
  gt = np.array([[0.1, 0.1, 0.4, 0.45], [0.5, 0.3, 0.95, 0.9], [0, 0, 1, 1]], np.float32)
  classes = np.array([3, 7, 0])
  valid = np.array([True, True, False])
  logits = rng.normal(size=(len(anchors), 11)).astype(np.float32)
  offsets = rng.normal(size=(len(anchors), 4)).astype(np.float32)
  got = image_loss_sums(jnp.asarray(logits), jnp.asarray(offsets), jnp.asarray(anchors),
                        jnp.asarray(gt), jnp.asarray(classes), jnp.asarray(valid), 0.5, 3.0)
  expected = _numpy_loss_sums(logits, offsets, anchors, gt, classes, valid, 0.5, 3.0)
  assert int(got[2]) == expected[2] >= 2
  np.testing.assert_allclose([float(got[0]), float(got[1])], expected[:2], rtol=1e-5)


def test_perfect_detections_score_map_one_and_shifted_ones_less():
  anchors = boxes.default_boxes([2], [0.5, 0.7], [1.0])
  task = DetectionTask(3, anchors)
  gt = np.array([[[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.8]]], np.float32)
  probabilities = np.full((1, len(anchors), 4), 0.01, np.float32)
  predicted = np.tile(np.array([[0.0, 0.0, 0.05, 0.05]], np.float32), (1, len(anchors), 1))
  probabilities[0, 0, 2], predicted[0, 0] = 0.9, gt[0, 0]  # Class 1 at the first box.
  probabilities[0, 5, 3], predicted[0, 5] = 0.8, gt[0, 1]  # Class 2 at the second.
  examples = {"probabilities": probabilities, "predicted_boxes": predicted, "boxes": gt,
              "classes": np.array([[1, 2]]), "valid": np.array([[True, True]])}
  assert task.examples_summary(examples) == {"mAP50": 1.0, "mAP75": 1.0, "mAP": 1.0}
  predicted[0, 5] = gt[0, 1] + np.array([0.05, 0.0, 0.05, 0.0])  # IoU 0.35/0.45 = 0.78.
  shifted = task.examples_summary(examples)
  assert shifted["mAP50"] == 1.0 and shifted["mAP75"] == 1.0 and shifted["mAP"] < 1.0


@pytest.mark.slow
def test_eight_devices_equal_one():
  config = tiny_detection_config()
  source, batch, model, tx = first_batch_model_and_sgd(config, 0.05)
  task = DetectionTask.from_config(config, source.info())
  _, (one, m1), (eight, m8) = train_on_one_and_eight_devices(model, task, tx, batch)
  assert m1["loss"] == pytest.approx(m8["loss"], rel=1e-4)
  assert_trees_close(one.params, eight.params, rtol=1e-3, atol=1e-5)


def test_training_reports_map(tmp_path):
  summary = train.train_and_evaluate(tiny_detection_config(), str(tmp_path / "run"))
  assert summary["test_examples"] == 16
  assert all(0 <= summary[f"test_{k}"] <= 1 for k in ("mAP50", "mAP75", "mAP"))


@pytest.mark.parametrize("field, value, message", [
    ("detection.iou_threshold", 1.5, r"config.detection.iou_threshold=1.5 must be in"),
    ("detection.anchor_scales", (0.5, 0.2), r"config.detection.anchor_scales=\(0.5, 0.2\)"),
    ("dataset.objects", (0, 2), r"config.dataset.objects=\(0, 2\) must be"),
    ("dataset.max_overlap", 1.0, "config.dataset.max_overlap=1.0 must be an IoU"),
    ("model.source_stages", (3, 5), r"config.model.source_stages=\(3, 5\) must be"),
])
def test_bad_fields_are_named_before_anything_compiles(tmp_path, field, value, message):
  assert_field_named_before_training(tiny_detection_config(), field, value, message, tmp_path / "run")
