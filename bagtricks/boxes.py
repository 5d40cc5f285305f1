"""Boxes for single-shot detection (SSD, Liu et al. 2016), in pure JAX.

Boxes are ``[..., 4]`` corners ``(x0, y0, x1, y1)`` in image fractions unless a function says
otherwise. What a detector's loss needs on device lives here: IoU, the default boxes of
several feature maps, the offsets a head regresses, matching default boxes to ground truth,
and hard negative mining. Non-maximum suppression and mAP run on the host
(``detection_eval``).
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import jax.numpy as jnp

# SSD's variances: centre offsets are divided by 0.1, log size ratios by 0.2.
VARIANCES = (0.1, 0.2)


def area(boxes: jnp.ndarray) -> jnp.ndarray:
  """``[...]`` area of corner boxes (0 for an empty one)."""
  return (jnp.clip(boxes[..., 2] - boxes[..., 0], 0.0) *
          jnp.clip(boxes[..., 3] - boxes[..., 1], 0.0))


def intersection(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """``[...]`` area of A ∩ B for corner boxes ``a`` and ``b [..., 4]`` (broadcast)."""
  low = jnp.maximum(a[..., :2], b[..., :2])
  high = jnp.minimum(a[..., 2:], b[..., 2:])
  return jnp.prod(jnp.clip(high - low, 0.0), axis=-1)


def pairwise_iou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """Intersection over union of every box of ``a [N, 4]`` with every box of ``b [M, 4]``.

  IoU(A, B) = |A ∩ B| / (|A| + |B| − |A ∩ B|); 0 where the union is empty.

  Returns:
    ``[N, M]``.
  """
  inter = intersection(a[:, None], b[None, :])
  union = area(a)[:, None] + area(b)[None, :] - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def to_centre(boxes: jnp.ndarray) -> jnp.ndarray:
  """Corners → ``(cx, cy, w, h)``."""
  size = boxes[..., 2:] - boxes[..., :2]
  return jnp.concatenate([boxes[..., :2] + 0.5 * size, size], axis=-1)


def to_corners(boxes: jnp.ndarray) -> jnp.ndarray:
  """``(cx, cy, w, h)`` → corners."""
  half = 0.5 * boxes[..., 2:]
  return jnp.concatenate([boxes[..., :2] - half, boxes[..., :2] + half], axis=-1)


def default_boxes(feature_sizes: Sequence[int], scales: Sequence[float],
                  aspect_ratios: Sequence[float]) -> jnp.ndarray:
  """SSD's default boxes, corners ``[A, 4]``, feature map by feature map, cell by cell
  (row-major), box by box.

  Map k (an f_k × f_k grid) has, centred on each cell ((j + ½)/f_k, (i + ½)/f_k), boxes of
  scale s_k with every aspect ratio a (width s_k √a, height s_k / √a) and one more of scale
  s'_k = √(s_k s_{k+1}) at ratio 1 (the paper's eq. 4 and the text after it).

  Args:
    feature_sizes: f_k per map.
    scales: s_k per map, and one more (s_{K+1}) for the last map's extra box.
    aspect_ratios: a, 1 included.

  Returns:
    ``[Σ_k f_k² (len(aspect_ratios) + 1), 4]``, not clipped to the image.
  """
  if len(scales) != len(feature_sizes) + 1:
    raise ValueError(f"scales={tuple(scales)} must hold one scale per feature map "
                     f"({len(feature_sizes)}) and one more.")
  per_map = []
  for k, size in enumerate(feature_sizes):
    shapes = [(scales[k] * math.sqrt(a), scales[k] / math.sqrt(a)) for a in aspect_ratios]
    extra = math.sqrt(scales[k] * scales[k + 1])
    shapes.append((extra, extra))
    centres = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size
    cy, cx = jnp.meshgrid(centres, centres, indexing="ij")
    centre = jnp.stack([cx, cy], axis=-1).reshape(-1, 1, 2)
    wh = jnp.broadcast_to(jnp.asarray(shapes, jnp.float32), (size * size, len(shapes), 2))
    per_map.append(jnp.concatenate([jnp.broadcast_to(centre, wh.shape), wh], -1).reshape(-1, 4))
  return to_corners(jnp.concatenate(per_map))


def anchor_scales(num_maps: int, smallest: float, largest: float) -> Tuple[float, ...]:
  """s_1..s_m evenly from ``smallest`` to ``largest`` (eq. 4), and s_{m+1} one step on
  (capped at 1), for the last map's extra box."""
  step = (largest - smallest) / max(num_maps - 1, 1)
  return tuple(smallest + step * k for k in range(num_maps)) + (min(largest + step, 1.0),)


def ssd_feature_sizes(image_size: int, source_stages: Sequence[int], extra_layers: int,
                  small_stem: bool = False) -> Tuple[int, ...]:
  """Side of every feature map of ``models.ssd.SSD`` for a square ``image_size`` input: its
  ResNet stem divides by 4 (1 with a small stem), stage s > 1 by 2 more each, every extra
  layer by 2 more (rounding up)."""
  side = image_size if small_stem else -(-image_size // 4)
  sizes, stage_side = [], side
  for stage in range(1, max(source_stages) + 1):
    if stage > 1:
      stage_side = -(-stage_side // 2)
    if stage in source_stages:
      sizes.append(stage_side)
  for _ in range(extra_layers):
    sizes.append(-(-sizes[-1] // 2))
  return tuple(sizes)


def ssd_anchors(image_size: int, source_stages: Sequence[int], extra_layers: int,
                small_stem: bool, aspect_ratios: Sequence[float], smallest: float,
                largest: float) -> jnp.ndarray:
  """The default boxes ``[A, 4]`` of ``models.ssd.SSD`` with these settings, in the order
  of its outputs."""
  sizes = ssd_feature_sizes(image_size, source_stages, extra_layers, small_stem)
  return default_boxes(sizes, anchor_scales(len(sizes), smallest, largest), aspect_ratios)


def encode(boxes: jnp.ndarray, anchors: jnp.ndarray,
           variances: Tuple[float, float] = VARIANCES) -> jnp.ndarray:
  """The offsets a head regresses for ``boxes`` against ``anchors`` (both corners, ``[A, 4]``).

  SSD's eq. 2: ĝ_cx = (g_cx − d_cx) / (v₀ d_w), ĝ_cy likewise, ĝ_w = log(g_w / d_w) / v₁,
  ĝ_h likewise.
  """
  g, d = to_centre(boxes), to_centre(anchors)
  centre = (g[..., :2] - d[..., :2]) / (variances[0] * d[..., 2:])
  size = jnp.log(jnp.maximum(g[..., 2:], 1e-8) / d[..., 2:]) / variances[1]
  return jnp.concatenate([centre, size], axis=-1)


def decode(offsets: jnp.ndarray, anchors: jnp.ndarray,
           variances: Tuple[float, float] = VARIANCES) -> jnp.ndarray:
  """The corner boxes of ``offsets`` against ``anchors``: ``encode``'s inverse."""
  d = to_centre(anchors)
  centre = d[..., :2] + offsets[..., :2] * variances[0] * d[..., 2:]
  size = d[..., 2:] * jnp.exp(offsets[..., 2:] * variances[1])
  return to_corners(jnp.concatenate([centre, size], axis=-1))


def match(anchors: jnp.ndarray, gt_boxes: jnp.ndarray, gt_valid: jnp.ndarray,
          threshold: float = 0.5) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """SSD's matching: each ground-truth box takes its best default box, and every default box
  whose best IoU with a ground truth is ≥ ``threshold`` takes that ground truth.

  Args:
    anchors: default boxes ``[A, 4]``.
    gt_boxes: one image's ground truth ``[G, 4]``, padded.
    gt_valid: ``[G]`` which rows are real boxes.
    threshold: the IoU a default box needs.

  Returns:
    ``(index [A] int32, positive [A] bool)``: the ground truth each default box regresses
    to (meaningful where positive).
  """
  iou = jnp.where(gt_valid[None, :], pairwise_iou(anchors, gt_boxes), -1.0)  # [A, G]
  index = jnp.argmax(iou, axis=1)
  positive = jnp.max(iou, axis=1) >= threshold
  # Each real ground truth forces its best anchor (the last one wins a shared anchor).
  best = jnp.argmax(iou, axis=0)  # [G]
  forced = jnp.zeros(anchors.shape[0], jnp.int32).at[best].max(
      jnp.where(gt_valid, jnp.arange(1, gt_boxes.shape[0] + 1), 0))
  index = jnp.where(forced > 0, forced - 1, index)
  return index.astype(jnp.int32), positive | (forced > 0)


def hard_negatives(background_loss: jnp.ndarray, positive: jnp.ndarray,
                   ratio: float = 3.0) -> jnp.ndarray:
  """SSD's hard negative mining: the negatives with the largest background loss, at most
  ``ratio`` per positive (of one image).

  Args:
    background_loss: ``[A]`` each default box's loss for the background class.
    positive: ``[A]`` the matched default boxes.
    ratio: negatives per positive.

  Returns:
    ``[A]`` bool, the chosen negatives (never a positive).
  """
  loss = jnp.where(positive, -jnp.inf, background_loss)
  rank = jnp.argsort(jnp.argsort(-loss))  # 0 for the hardest negative.
  limit = jnp.minimum(ratio * jnp.sum(positive), jnp.sum(~positive))
  return (rank < limit) & ~positive


def enclosing(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """``[..., 4]`` the smallest box holding both ``a`` and ``b`` (same shape)."""
  return jnp.concatenate([jnp.minimum(a[..., :2], b[..., :2]),
                          jnp.maximum(a[..., 2:], b[..., 2:])], axis=-1)


def paired_giou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """``[...]`` generalized IoU of each box of ``a`` with the box of ``b`` at the same place.

  GIoU(A, B) = IoU(A, B) − |E \\ (A ∪ B)| / |E|, E the smallest box enclosing A and B
  (Rezatofighi et al. 2019, Algorithm 1): in [−1, 1], 1 only for A = B, and still graded
  (not flat at 0) for boxes that do not overlap, so 1 − GIoU is a box-regression loss.
  """
  inter = intersection(a, b)
  union = area(a) + area(b) - inter
  hull = area(enclosing(a, b))
  iou = inter / jnp.maximum(union, 1e-9)
  return iou - (hull - union) / jnp.maximum(hull, 1e-9)


def roi_align(feature_map: jnp.ndarray, rois: jnp.ndarray, bins: int) -> jnp.ndarray:
  """RoIAlign (He et al. 2017, Mask R-CNN §3): each box cut into ``bins`` × ``bins`` cells,
  each cell the feature map bilinearly interpolated at the cell's centre (one sample per
  cell), with no rounding of the box to the map's grid.

  A map of side H × W covers the image; its pixel (i, j) sits at image fraction
  ((j + ½)/W, (i + ½)/H), so the box's continuous coordinates map to x·W − ½ (samples
  outside the map take its border's value).

  Args:
    feature_map: ``[H, W, C]``.
    rois: ``[K, 4]`` corner boxes in image fractions.
    bins: cells per side.

  Returns:
    ``[K, bins, bins, C]``.
  """
  height, width = feature_map.shape[:2]
  steps = (jnp.arange(bins, dtype=jnp.float32) + 0.5) / bins  # Cell centres in the box.
  x = rois[:, None, 0] + steps[None] * (rois[:, None, 2] - rois[:, None, 0])  # [K, bins]
  y = rois[:, None, 1] + steps[None] * (rois[:, None, 3] - rois[:, None, 1])
  x = jnp.clip(x * width - 0.5, 0.0, width - 1.0)
  y = jnp.clip(y * height - 0.5, 0.0, height - 1.0)
  x0, y0 = jnp.floor(x), jnp.floor(y)
  fx, fy = x - x0, y - y0
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
  x1, y1 = jnp.minimum(x0 + 1, width - 1), jnp.minimum(y0 + 1, height - 1)

  def at(yi, xi):  # [K, bins] rows × [K, bins] columns → [K, bins, bins, C]
    return feature_map[yi[:, :, None], xi[:, None, :]]

  wy, wx = fy[:, :, None, None], fx[:, None, :, None]
  return ((1 - wy) * ((1 - wx) * at(y0, x0) + wx * at(y0, x1)) +
          wy * ((1 - wx) * at(y1, x0) + wx * at(y1, x1)))
