"""Object detection with SSD's loss (Liu et al. 2016), scored by COCO-style mAP.

``DetectionTask`` (``config.task = 'detection'``, the ``ssd`` model's default) reads images
with padded ground-truth ``boxes``, ``classes`` and ``valid`` (``data.detection_digits``) and
the model's per-default-box ``class_logits`` (C + 1, 0 = background) and ``offsets``.

**Loss** (the paper's eq. 1): every image's default boxes are matched to its ground truth
(``boxes.match``: IoU ≥ ``iou_threshold``, and each ground truth's best box); with N the
matched boxes of the global batch,

  L = (1/N) (Σ_{i ∈ Pos} CE(c_i, class_i + 1) + Σ_{i ∈ Neg} CE(c_i, 0)
            + ``box_weight`` Σ_{i ∈ Pos} smooth_L1(l_i − ĝ_i)),

ĝ the matched box's offsets (eq. 2, ``boxes.encode``), Neg each image's hardest negatives, at
most ``negative_ratio`` per positive (``boxes.hard_negatives``). N is summed over devices so
1 and 8 devices give the same gradient.

**Evaluation**: each test image's boxes decoded, per class the boxes scoring over
``score_threshold`` kept by non-maximum suppression at ``nms_iou``, the best
``max_detections`` of the image kept; ``mAP50``, ``mAP75`` and ``mAP`` (IoU 0.50:0.95) over
the whole split (``detection_eval.coco_map``).
"""

from __future__ import annotations

from typing import Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bagtricks import boxes, detection_eval
from bagtricks.tasks.base import TaskBase
from models import ssd


def smooth_l1(x: jnp.ndarray) -> jnp.ndarray:
  """0.5 x² where |x| < 1, |x| − 0.5 elsewhere (elementwise)."""
  a = jnp.abs(x)
  return jnp.where(a < 1.0, 0.5 * a * a, a - 0.5)


def image_loss_sums(class_logits, offsets, anchors, gt_boxes, gt_classes, gt_valid,
                    iou_threshold: float, negative_ratio: float):
  """One image's (classification sum, box sum, positives) of eq. 1, before dividing by N."""
  index, positive = boxes.match(anchors, gt_boxes, gt_valid, iou_threshold)
  target = jnp.where(positive, gt_classes[index] + 1, 0)
  log_probs = jax.nn.log_softmax(class_logits)
  ce = -jnp.take_along_axis(log_probs, target[:, None], axis=1)[:, 0]
  negatives = boxes.hard_negatives(-log_probs[:, 0], positive, negative_ratio)
  classification = jnp.sum(jnp.where(positive | negatives, ce, 0.0))
  box_targets = boxes.encode(gt_boxes[index], anchors)
  box = jnp.sum(jnp.where(positive[:, None], smooth_l1(offsets - box_targets), 0.0))
  return classification, box, jnp.sum(positive)


class DetectionTask(TaskBase):
  """SSD's multibox loss and COCO mAP (module docstring).

  Args:
    num_classes: C, the object classes.
    anchors: the default boxes ``[A, 4]`` in the order of the model's outputs.
    iou_threshold, negative_ratio, box_weight: the loss's (module docstring).
    score_threshold, nms_iou, max_detections: evaluation's.
  """

  progress_metrics = {"positives": "pos"}
  config_defaults = {"detection.iou_threshold": 0.5, "detection.negative_ratio": 3.0,
                     "detection.box_weight": 1.0, "detection.anchor_scales": (0.15, 0.7),
                     "detection.score_threshold": 0.05, "detection.nms_iou": 0.45,
                     "detection.max_detections": 100}

  def __init__(self, num_classes: int, anchors, iou_threshold: float = 0.5,
               negative_ratio: float = 3.0, box_weight: float = 1.0,
               score_threshold: float = 0.05, nms_iou: float = 0.45,
               max_detections: int = 100):
    self.input_keys = ("image",)
    self.num_classes = num_classes
    self.num_outputs = num_classes
    self.anchors = jnp.asarray(anchors, jnp.float32)
    self.iou_threshold = iou_threshold
    self.negative_ratio = negative_ratio
    self.box_weight = box_weight
    self.score_threshold = score_threshold
    self.nms_iou = nms_iou
    self.max_detections = max_detections

  @classmethod
  def from_config(cls, config, dataset_info) -> "DetectionTask":
    c, m = config.detection, ssd.geometry(config.model)
    image_size = dataset_info.element_spec["image"].shape[0]
    anchors = boxes.ssd_anchors(image_size, tuple(m["source_stages"]), m["extra_layers"],
                                m["small_stem"], tuple(m["aspect_ratios"]), *c.anchor_scales)
    return cls(dataset_info.num_classes, anchors, c.iou_threshold, c.negative_ratio,
               c.box_weight, c.score_threshold, c.nms_iou, c.max_detections)

  @classmethod
  def check_config(cls, config) -> List[str]:
    c = config.get("detection", {})
    problems = []
    for field, low, high in (("iou_threshold", 0.0, 1.0), ("nms_iou", 0.0, 1.0),
                             ("score_threshold", 0.0, 1.0)):
      value = c.get(field, 0.5)
      if not isinstance(value, (int, float)) or not low < value < high:
        problems.append(f"config.detection.{field}={value!r} must be in ({low}, {high}).")
    scales = tuple(c.get("anchor_scales", (0.15, 0.7)))
    if len(scales) != 2 or not 0 < scales[0] <= scales[1] <= 1:
      problems.append(f"config.detection.anchor_scales={scales!r} must be (smallest, largest) "
                      "box scales with 0 < smallest <= largest <= 1.")
    return problems

  @classmethod
  def check_for_data(cls, config, dataset_info) -> List[str]:
    del config
    missing = [k for k in ("image", "boxes", "classes", "valid")
               if k not in dataset_info.element_spec]
    if missing:
      return [f"config.task='detection' needs images with padded 'boxes', 'classes' and "
              f"'valid', and config.dataset.name={dataset_info.name!r} lacks {missing}; use "
              "dataset.name='detection_digits'."]
    return []

  def loss(self, outputs, batch, task_state, rng, axis_name: Optional[str]):
    del rng
    per_image = jax.vmap(image_loss_sums, in_axes=(0, 0, None, 0, 0, 0, None, None))(
        outputs["class_logits"], outputs["offsets"], self.anchors, batch["boxes"],
        batch["classes"], batch["valid"], self.iou_threshold, self.negative_ratio)
    classification, box, positives = (jnp.sum(x) for x in per_image)
    matched, devices = positives.astype(jnp.float32), 1
    if axis_name is not None:
      matched, devices = lax.psum(matched, axis_name), lax.psum(1, axis_name)
    # The step averages gradients over devices: each device's share of the global sum / N,
    # times the number of devices.
    loss = devices * (classification + self.box_weight * box) / jnp.maximum(matched, 1.0)
    metrics = {"positives": matched / (devices * outputs["offsets"].shape[0]),
               "box_loss": devices * box / jnp.maximum(matched, 1.0)}
    return loss, task_state, metrics

  def eval_sums(self, outputs, batch, task_state) -> Dict[str, jnp.ndarray]:
    del outputs, task_state
    return {"count": jnp.sum(batch["mask"])}

  def eval_examples(self, outputs, batch) -> Dict[str, jnp.ndarray]:
    return {"probabilities": jax.nn.softmax(outputs["class_logits"], axis=-1),
            "predicted_boxes": boxes.decode(outputs["offsets"], self.anchors),
            "boxes": batch["boxes"], "classes": batch["classes"], "valid": batch["valid"]}

  def detections(self, probabilities: np.ndarray, predicted: np.ndarray) -> Dict[str, np.ndarray]:
    """One image's detections: per class, NMS over the boxes scoring over the threshold;
    the image's best ``max_detections``."""
    found = {"boxes": [], "scores": [], "classes": []}
    for c in range(self.num_classes):
      scores = probabilities[:, c + 1]
      candidates = np.flatnonzero(scores > self.score_threshold)
      keep = candidates[detection_eval.nms(predicted[candidates], scores[candidates],
                                           self.nms_iou, self.max_detections)]
      found["boxes"].append(predicted[keep])
      found["scores"].append(scores[keep])
      found["classes"].append(np.full(len(keep), c))
    found = {k: np.concatenate(v) for k, v in found.items()}
    best = np.argsort(-found["scores"], kind="stable")[:self.max_detections]
    return {k: v[best] for k, v in found.items()}

  def examples_summary(self, examples) -> Dict[str, float]:
    detections = [self.detections(p, b) for p, b in zip(
        np.asarray(examples["probabilities"]), np.asarray(examples["predicted_boxes"]))]
    truth = [{"boxes": b[v], "classes": c[v]} for b, c, v in zip(
        np.asarray(examples["boxes"]), np.asarray(examples["classes"]),
        np.asarray(examples["valid"]))]
    by_threshold = detection_eval.coco_map(detections, truth, self.num_classes)
    return {"mAP50": by_threshold[0.5], "mAP75": by_threshold[0.75],
            "mAP": float(np.mean(list(by_threshold.values())))}
