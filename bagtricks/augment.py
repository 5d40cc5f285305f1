"""On-device batch augmentations: mixup, CutMix, Cutout and GridMask (pure JAX).

Every function takes an explicit PRNG key and arrays of one device's batch, so it runs inside
the jitted, data-parallel train step under ``pmap`` or ``shard_map`` (the step folds the device
index into the key, so each device draws its own λ, boxes and masks). Images are
``[batch, height, width, channels]`` after normalization: a removed pixel becomes 0, the data
mean. Targets are label distributions ``[batch, num_classes]`` (one-hot or smoothed).

Mixing pairs example i with example ``batch − 1 − i`` of the same device batch (the batch
reversed), as in the Bag of Tricks description of mixup; one λ is drawn per device batch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import List, Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from bagtricks import config_fields


def mixup(rng: jax.Array, images: jnp.ndarray, targets: jnp.ndarray,
          alpha: float) -> Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """mixup (Zhang et al. 2018; Bag of Tricks §5.4).

  x̂ = λ·x_i + (1 − λ)·x_j and ŷ = λ·y_i + (1 − λ)·y_j with λ ~ Beta(α, α) and j the
  reversed batch (j = batch − 1 − i). Bag of Tricks uses α = 0.2 on ImageNet.

  Args:
    rng: PRNG key.
    images: ``[batch, height, width, channels]`` floats.
    targets: ``[batch, num_classes]`` label distributions.
    alpha: α > 0 of the Beta distribution.

  Returns:
    ``(images, targets, lam)``: mixed images and targets of the input shapes and the scalar λ.
  """
  lam = jax.random.beta(rng, alpha, alpha)
  mixed = lam.astype(images.dtype) * images + (1 - lam).astype(images.dtype) * images[::-1]
  return mixed, lam * targets + (1 - lam) * targets[::-1], lam


def cutmix_box(rng: jax.Array, height: int, width: int,
               lam: jnp.ndarray) -> Tuple[jnp.ndarray, ...]:
  """The CutMix box for a drawn λ (Yun et al. 2019, Algorithm A1 and the reference code).

  The box has sides ⌊H·√(1 − λ)⌋ × ⌊W·√(1 − λ)⌋ around a centre (c_y, c_x) uniform over the
  image; it spans rows [c_y − ⌊h/2⌋, c_y + ⌊h/2⌋) and likewise columns, clipped to the image.

  Args:
    rng: PRNG key for the centre.
    height: H.
    width: W.
    lam: the drawn λ in [0, 1].

  Returns:
    ``(y1, y2, x1, x2)`` int32 scalars: the box is rows y1..y2−1 and columns x1..x2−1.
  """
  cut = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * cut).astype(jnp.int32)
  cut_w = jnp.floor(width * cut).astype(jnp.int32)
  key_y, key_x = jax.random.split(rng)
  cy = jax.random.randint(key_y, (), 0, height)
  cx = jax.random.randint(key_x, (), 0, width)
  y1 = jnp.clip(cy - cut_h // 2, 0, height)
  y2 = jnp.clip(cy + cut_h // 2, 0, height)
  x1 = jnp.clip(cx - cut_w // 2, 0, width)
  x2 = jnp.clip(cx + cut_w // 2, 0, width)
  return y1, y2, x1, x2


def cutmix(rng: jax.Array, images: jnp.ndarray, targets: jnp.ndarray,
           alpha: float) -> Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """CutMix (Yun et al. 2019).

  x̂ = M ⊙ x_i + (1 − M) ⊙ x_j, where 1 − M is the box of ``cutmix_box`` for λ ~ Beta(α, α)
  and j the reversed batch. Since the box is clipped at the border and rounded, λ is then
  corrected to the area actually kept, λ = 1 − (box area)/(H·W), and ŷ = λ·y_i + (1 − λ)·y_j.
  The paper uses α = 1.

  Args:
    rng: PRNG key.
    images: ``[batch, height, width, channels]``.
    targets: ``[batch, num_classes]``.
    alpha: α > 0.

  Returns:
    ``(images, targets, lam)`` with the corrected λ: exactly the fraction of every mixed image's
    pixels that come from its own original image.
  """
  key_lam, key_box = jax.random.split(rng)
  _, height, width, _ = images.shape
  lam = jax.random.beta(key_lam, alpha, alpha)
  y1, y2, x1, x2 = cutmix_box(key_box, height, width, lam)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  inside = (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2)
  mixed = jnp.where(inside[None, :, :, None], images[::-1], images)
  lam = 1.0 - ((y2 - y1) * (x2 - x1)).astype(jnp.float32) / (height * width)
  return mixed, lam * targets + (1 - lam) * targets[::-1], lam


def mixup_or_cutmix(rng: jax.Array, images: jnp.ndarray, targets: jnp.ndarray,
                    mixup_alpha: float, cutmix_alpha: float,
                    cutmix_prob: float) -> Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Per batch, CutMix with probability ``cutmix_prob`` and mixup otherwise.

  An α of 0 switches that method off; with both off the batch is returned unchanged (λ = 1).

  Returns:
    ``(images, targets, lam)``.
  """
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return images, targets, jnp.ones([], jnp.float32)
  if cutmix_alpha <= 0:
    return mixup(rng, images, targets, mixup_alpha)
  if mixup_alpha <= 0:
    return cutmix(rng, images, targets, cutmix_alpha)
  key_switch, key = jax.random.split(rng)
  return lax.cond(jax.random.uniform(key_switch) < cutmix_prob,
                  lambda: cutmix(key, images, targets, cutmix_alpha),
                  lambda: mixup(key, images, targets, mixup_alpha))


def cutout_mask(rng: jax.Array, height: int, width: int, num_holes: int,
                size: int) -> jnp.ndarray:
  """The keep-mask of Cutout (DeVries & Taylor 2017) for one image.

  Each of the ``num_holes`` holes is a ``size`` × ``size`` square whose centre (c_y, c_x) is
  uniform over the image, so a hole may hang over the border and is then clipped: it covers
  rows [c_y − ⌊size/2⌋, c_y − ⌊size/2⌋ + size) ∩ [0, H) and likewise columns. Holes may
  overlap. (The reference code spans [c − ⌊size/2⌋, c + ⌊size/2⌋), the same for even sizes
  such as CIFAR-10's 16.)

  Args:
    rng: PRNG key.
    height: H.
    width: W.
    num_holes: number of holes.
    size: hole side in pixels.

  Returns:
    ``[height, width]`` float32, 0 inside a hole and 1 elsewhere.
  """
  key_y, key_x = jax.random.split(rng)
  y1 = jax.random.randint(key_y, (num_holes,), 0, height) - size // 2
  x1 = jax.random.randint(key_x, (num_holes,), 0, width) - size // 2
  rows = jnp.arange(height)
  cols = jnp.arange(width)
  in_rows = (rows[None, :] >= y1[:, None]) & (rows[None, :] < y1[:, None] + size)
  in_cols = (cols[None, :] >= x1[:, None]) & (cols[None, :] < x1[:, None] + size)
  hole = jnp.any(in_rows[:, :, None] & in_cols[:, None, :], axis=0)
  return 1.0 - hole.astype(jnp.float32)


def cutout(rng: jax.Array, images: jnp.ndarray, num_holes: int, size: int) -> jnp.ndarray:
  """Cutout: zero ``num_holes`` random squares of side ``size`` in every image.

  Each image draws its own holes (see ``cutout_mask``). CIFAR-10 setting: 1 hole of 16 px.

  Args:
    rng: PRNG key.
    images: ``[batch, height, width, channels]``.
    num_holes: holes per image.
    size: hole side in pixels.

  Returns:
    The images with the holes set to 0.
  """
  batch, height, width, _ = images.shape
  keys = jax.random.split(rng, batch)
  masks = jax.vmap(lambda k: cutout_mask(k, height, width, num_holes, size))(keys)
  return images * masks[..., None].astype(images.dtype)


def gridmask_mask(rng: jax.Array, height: int, width: int, d_min: int, d_max: int,
                  ratio: float, max_rotation: int = 0) -> jnp.ndarray:
  """The keep-mask of GridMask (Chen et al. 2020) for one image, as the official code draws it.

  A unit size d is drawn uniformly from the integers [d_min, d_max) and offsets δ_y, δ_x from
  [0, d). On a square of side ⌈√(H² + W²)⌉ (so any rotation still covers the image) a pixel is
  kept when it lies in a horizontal or vertical band of width l = ⌈r·d⌉:
  ((y − δ_y) mod d < l) or ((x − δ_x) mod d < l). What is removed is one square of side d − l
  per d × d unit, so a whole unit keeps 1 − (1 − l/d)² of its pixels (the paper's
  k = 1 − (1 − r)²). The square is rotated by an angle drawn from the integers
  [0, max_rotation) in degrees (nearest neighbour) and its centre H × W crop is the mask.

  Args:
    rng: PRNG key.
    height: H.
    width: W.
    d_min: smallest unit size (inclusive).
    d_max: largest unit size (exclusive), > d_min.
    ratio: r, the kept band width as a fraction of d.
    max_rotation: rotations are drawn from [0, max_rotation) degrees; 0 or 1 = no rotation
      (the official ImageNet setting).

  Returns:
    ``[height, width]`` float32, 1 where kept and 0 where removed.
  """
  key_d, key_y, key_x, key_angle = jax.random.split(rng, 4)
  d = jax.random.randint(key_d, (), d_min, d_max)
  band = jnp.ceil(d * ratio)
  offset_y = jax.random.randint(key_y, (), 0, d)
  offset_x = jax.random.randint(key_x, (), 0, d)
  side = math.ceil(math.sqrt(height**2 + width**2))
  # Pixel centres in the coordinates of the big square, relative to its centre.
  rows = jnp.arange(height, dtype=jnp.float32)[:, None] + (side - height) // 2 + 0.5 - side / 2
  cols = jnp.arange(width, dtype=jnp.float32)[None, :] + (side - width) // 2 + 0.5 - side / 2
  angle = jax.random.randint(key_angle, (), 0, max(max_rotation, 1)).astype(jnp.float32)
  theta = jnp.deg2rad(angle)
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  # Nearest-neighbour sample of the unrotated grid at the rotated coordinates.
  y = jnp.round(cos * rows - sin * cols + side / 2 - 0.5)
  x = jnp.round(sin * rows + cos * cols + side / 2 - 0.5)
  d = d.astype(jnp.float32)
  keep = (jnp.mod(y - offset_y, d) < band) | (jnp.mod(x - offset_x, d) < band)
  return keep.astype(jnp.float32)


def gridmask(rng: jax.Array, images: jnp.ndarray, d_min: int, d_max: int, ratio: float,
             prob: float, max_rotation: int = 0) -> jnp.ndarray:
  """GridMask: each image, with probability ``prob``, multiplied by its own ``gridmask_mask``.

  Official ImageNet setting: d ∈ [96, 224), r = 0.6, no rotation, ``prob`` raised linearly to
  0.8 over training (see ``BatchAugment``).

  Args:
    rng: PRNG key.
    images: ``[batch, height, width, channels]``.
    d_min: smallest unit size.
    d_max: largest unit size (exclusive).
    ratio: kept band fraction r.
    prob: probability that an image is masked at all (may be a traced scalar).
    max_rotation: rotation range in degrees.

  Returns:
    The masked images.
  """
  batch, height, width, _ = images.shape
  key_apply, key_masks = jax.random.split(rng)
  masks = jax.vmap(lambda k: gridmask_mask(k, height, width, d_min, d_max, ratio,
                                           max_rotation))(jax.random.split(key_masks, batch))
  apply = jax.random.uniform(key_apply, (batch, 1, 1)) < prob
  masks = jnp.where(apply, masks, 1.0)
  return images * masks[..., None].astype(images.dtype)


@dataclasses.dataclass(frozen=True)
class BatchAugment:
  """The batch augmentations of one run, with their schedules over training steps.

  Applied in this order: Cutout and GridMask per image, then mixup or CutMix on the batch.

  Attributes:
    mixup_alpha: α of mixup (0 = off).
    cutmix_alpha: α of CutMix (0 = off).
    cutmix_prob: when both are on, the per-batch probability of CutMix instead of mixup.
    mix_until_step: mixup and CutMix stop at this step (the paper's mixup schedule switches
      them off for the last epochs); None = never.
    cutout_holes: Cutout holes per image (0 = off).
    cutout_size: Cutout hole side in pixels.
    gridmask_prob: final GridMask probability (0 = off).
    gridmask_ramp_steps: steps over which the probability rises linearly from 0 to
      ``gridmask_prob`` (0 = constant).
    gridmask_d_min: smallest GridMask unit.
    gridmask_d_max: largest GridMask unit (exclusive).
    gridmask_ratio: GridMask kept band fraction r.
    gridmask_max_rotation: GridMask rotation range in degrees.
  """
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  cutmix_prob: float = 0.5
  mix_until_step: Optional[int] = None
  cutout_holes: int = 0
  cutout_size: int = 16
  gridmask_prob: float = 0.0
  gridmask_ramp_steps: int = 0
  gridmask_d_min: int = 96
  gridmask_d_max: int = 224
  gridmask_ratio: float = 0.6
  gridmask_max_rotation: int = 0

  @property
  def active(self) -> bool:
    return (self.mixup_alpha > 0 or self.cutmix_alpha > 0 or self.cutout_holes > 0
            or self.gridmask_prob > 0)

  def gridmask_prob_at(self, step: jnp.ndarray) -> jnp.ndarray:
    """p(t) = gridmask_prob · min(1, t / ramp_steps), the official linear ramp."""
    if self.gridmask_ramp_steps <= 0:
      return jnp.asarray(self.gridmask_prob, jnp.float32)
    return self.gridmask_prob * jnp.minimum(
        1.0, jnp.asarray(step, jnp.float32) / self.gridmask_ramp_steps)

  def __call__(self, rng: jax.Array, step: jnp.ndarray, images: jnp.ndarray,
               targets: jnp.ndarray) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """Augments one device batch at training step ``step``.

    Args:
      rng: PRNG key (already distinct per step and device).
      step: the current step (int scalar, may be traced).
      images: ``[batch, height, width, channels]``.
      targets: ``[batch, num_classes]``.

    Returns:
      ``(images, targets)``.
    """
    key_cutout, key_grid, key_mix = jax.random.split(rng, 3)
    if self.cutout_holes > 0:
      images = cutout(key_cutout, images, self.cutout_holes, self.cutout_size)
    if self.gridmask_prob > 0:
      images = gridmask(key_grid, images, self.gridmask_d_min, self.gridmask_d_max,
                        self.gridmask_ratio, self.gridmask_prob_at(step),
                        self.gridmask_max_rotation)
    if self.mixup_alpha > 0 or self.cutmix_alpha > 0:
      mixed, mixed_targets, _ = mixup_or_cutmix(key_mix, images, targets, self.mixup_alpha,
                                                self.cutmix_alpha, self.cutmix_prob)
      if self.mix_until_step is not None:
        on = step < self.mix_until_step
        mixed = jnp.where(on, mixed, images)
        mixed_targets = jnp.where(on, mixed_targets, targets)
      images, targets = mixed, mixed_targets
    return images, targets


def batch_augment_from_config(augment_config, steps_per_epoch: int,
                              total_steps: int) -> BatchAugment:
  """``BatchAugment`` from ``config.augment`` (epochs converted to steps).

  Args:
    augment_config: ``config.augment`` (see ``configs/default.py``).
    steps_per_epoch: optimizer steps per epoch.
    total_steps: steps of the whole run.

  Returns:
    The ``BatchAugment`` (``active`` is False when everything is off).
  """
  c = augment_config
  mix_off = int(round(c.mix_off_epochs * steps_per_epoch))
  ramp_epochs = c.gridmask.ramp_epochs
  return BatchAugment(
      mixup_alpha=float(c.mixup_alpha),
      cutmix_alpha=float(c.cutmix_alpha),
      cutmix_prob=float(c.cutmix_prob),
      mix_until_step=total_steps - mix_off if mix_off > 0 else None,
      cutout_holes=int(c.cutout.num_holes),
      cutout_size=int(c.cutout.size),
      gridmask_prob=float(c.gridmask.prob),
      gridmask_ramp_steps=int(round(ramp_epochs * steps_per_epoch)),
      gridmask_d_min=int(c.gridmask.d_min),
      gridmask_d_max=int(c.gridmask.d_max),
      gridmask_ratio=float(c.gridmask.ratio),
      gridmask_max_rotation=int(c.gridmask.max_rotation))


def _augment_problems(config) -> List[str]:
  problems: List[str] = []
  for field in ("augment.mixup_alpha", "augment.cutmix_alpha", "augment.mix_off_epochs",
                "augment.gridmask.ramp_epochs"):
    problems += config_fields.non_negative(config, field, " (0 = off)")
  for field in ("augment.cutmix_prob", "augment.gridmask.prob"):
    problems += config_fields.in_range(config, field, 0.0, 1.0)
  augment = config.augment
  if augment.mix_off_epochs and augment.mix_off_epochs >= config.num_epochs:
    problems.append(f"config.augment.mix_off_epochs={augment.mix_off_epochs} must be below "
                    f"config.num_epochs={config.num_epochs}.")
  cutout = augment.cutout
  if not isinstance(cutout.num_holes, int) or cutout.num_holes < 0:
    problems.append(f"config.augment.cutout.num_holes={cutout.num_holes!r} must be an integer "
                    ">= 0 (0 = off).")
  elif cutout.num_holes:
    problems += config_fields.positive(config, "augment.cutout.size", integer=True)
  grid = augment.gridmask
  if isinstance(grid.prob, (int, float)) and grid.prob > 0:
    if not (isinstance(grid.d_min, int) and isinstance(grid.d_max, int)
            and 1 <= grid.d_min < grid.d_max):
      problems.append(f"config.augment.gridmask.d_min={grid.d_min!r} and d_max={grid.d_max!r} "
                      "must be integers with 1 <= d_min < d_max (d is drawn from "
                      "[d_min, d_max)).")
    problems += config_fields.in_range(config, "augment.gridmask.ratio", 0.0, 1.0,
                                       high_inclusive=False)
    if not isinstance(grid.max_rotation, int) or grid.max_rotation < 0:
      problems.append(f"config.augment.gridmask.max_rotation={grid.max_rotation!r} must be an "
                      "integer >= 0 (degrees).")
  return problems


# The fields `batch_augment_from_config` reads: everything off by default.
AUGMENT_FIELDS = config_fields.ConfigFields(
    "augment",
    defaults={"augment.mixup_alpha": 0.0, "augment.cutmix_alpha": 0.0,
              "augment.cutmix_prob": 0.5, "augment.mix_off_epochs": 0.0,
              "augment.cutout.num_holes": 0, "augment.cutout.size": 4,
              "augment.gridmask.prob": 0.0, "augment.gridmask.ramp_epochs": 0.0,
              "augment.gridmask.d_min": 3, "augment.gridmask.d_max": 8,
              "augment.gridmask.ratio": 0.6, "augment.gridmask.max_rotation": 0},
    check=_augment_problems)

# The image augmentations `AUGMENT_FIELDS` can turn on (a task without images refuses them).
ACTIVE_FIELDS = ("augment.mixup_alpha", "augment.cutmix_alpha", "augment.cutout.num_holes",
                 "augment.gridmask.prob")
