"""Gait silhouettes from a parametric walker, in CASIA-B's views and conditions, and its protocol.

No gait dataset ships offline (CASIA-B and OU-MVLP need registration), so walks are generated:

* **Identity** (fixed per person, ``random_walker``): a body (height, thigh, shin, upper arm
  and forearm lengths, hip and shoulder width, torso, limb and head sizes) and a gait (hip
  swing, knee flex, arm swing, forward lean, cadence, left/right asymmetry, vertical bob).
* **Pose** (``body_segments``): at gait phase φ each leg's hip angle is A_s sin φ_s (φ_s = φ
  for the left leg, φ + π for the right, A_s the swing times 1 ± asymmetry), its knee bends
  by K max(0, sin(φ_s + 0.6)) (in the swing phase), each arm swings against its leg; the body
  is a set of capsules (segments with a radius) in 3-D, x forward, y up, z to the left.
* **Conditions**: normal walking (NM); carrying a bag (BG: a bag at the right hip on a strap
  from the left shoulder, the right arm swinging less); wearing a coat (CL: a wider torso and
  arms, a skirt of cloth over the thighs).
* **Views** (``project``): a pinhole camera at CASIA-B's 11 angles θ = 0°, 18°, …, 180° (0°:
  walking towards the camera, 90°: from the side, 180°: away), at 4 body heights, so the near
  side looks larger and θ and 180° − θ differ.
* **Silhouettes** (``render``): as the paper's preprocessing leaves them, the person's
  height scaled to the frame and the pelvis centred, binary, ``[H, W]`` (CASIA-B's 64×44, or
  smaller for the CPU).

Per sequence: a random start phase, a speed within ±10 %, a ±2 % size jitter and 0.5 % flipped
pixels. ``gait_sequences`` draws a whole dataset, ``gait_energy_images`` is the classical
baseline (Han & Bhanu 2006); the protocol (``rank1_by_view``, ...) lives in
``bagtricks.gait_protocol`` and is re-exported here.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence, Tuple

import numpy as np

from bagtricks.gait_protocol import (CONDITIONS, GALLERY, META_KEYS, PROBES, VIEWS,
                                     excluding_identical_view, rank1, rank1_by_view,
                                     squared_distances)

CAMERA_DISTANCE = 4.0  # In body heights.


@dataclasses.dataclass(frozen=True)
class Walker:
  """One person's body (lengths in body heights, the height itself in metres) and gait."""
  height: float
  thigh: float
  shin: float
  upper_arm: float
  forearm: float
  hip_width: float
  shoulder_width: float
  torso_radius: float
  limb_radius: float
  head_radius: float
  hip_swing: float       # Radians.
  knee_flex: float       # Radians.
  arm_swing: float       # Radians.
  lean: float            # Radians, forward.
  cycle: float           # Frames per gait cycle.
  asymmetry: float       # Left swing × (1 + a), right × (1 − a).
  bob: float             # Vertical pelvis motion, body heights.


def random_walker(rng: np.random.Generator) -> Walker:
  return Walker(
      height=rng.uniform(1.5, 1.95), thigh=rng.uniform(0.22, 0.27), shin=rng.uniform(0.22, 0.27),
      upper_arm=rng.uniform(0.16, 0.2), forearm=rng.uniform(0.14, 0.18),
      hip_width=rng.uniform(0.08, 0.13), shoulder_width=rng.uniform(0.18, 0.26),
      torso_radius=rng.uniform(0.06, 0.1), limb_radius=rng.uniform(0.025, 0.04),
      head_radius=rng.uniform(0.055, 0.07), hip_swing=rng.uniform(0.3, 0.55),
      knee_flex=rng.uniform(0.4, 1.0), arm_swing=rng.uniform(0.1, 0.6),
      lean=rng.uniform(-0.05, 0.2), cycle=rng.uniform(20.0, 30.0),
      asymmetry=rng.uniform(-0.2, 0.2), bob=rng.uniform(0.005, 0.025))


def _down(angle: float) -> np.ndarray:
  """The unit vector pointing down, rotated forward (towards +x) by ``angle``."""
  return np.array([np.sin(angle), -np.cos(angle), 0.0])


def body_segments(w: Walker, phase: float, condition: str = "nm"
                  ) -> List[Tuple[np.ndarray, np.ndarray, float]]:
  """The body at gait ``phase`` as capsules ``(end, end, radius)`` in body heights."""
  coat = condition == "cl"
  leg = w.thigh + w.shin
  pelvis = np.array([0.0, leg + 0.03 + w.bob * np.cos(2 * phase), 0.0])
  neck = pelvis + 0.3 * np.array([np.sin(w.lean), np.cos(w.lean), 0.0])
  segments = [(pelvis, neck, w.torso_radius * (1.35 if coat else 1.0))]
  head = neck + np.array([0.0, 1.6 * w.head_radius, 0.0])
  segments.append((head, head, w.head_radius))
  knees = []
  for side, offset in ((1.0, 0.0), (-1.0, np.pi)):  # Left (+z), right.
    leg_phase = phase + offset
    swing = w.hip_swing * (1.0 + side * w.asymmetry) * np.sin(leg_phase)
    bend = w.knee_flex * max(0.0, np.sin(leg_phase + 0.6))
    hip = pelvis + np.array([0.0, 0.0, side * w.hip_width / 2])
    knee = hip + w.thigh * _down(swing)
    ankle = knee + w.shin * _down(swing - bend)
    toe = ankle + np.array([0.06, -0.01, 0.0])
    segments += [(hip, knee, 1.3 * w.limb_radius), (knee, ankle, w.limb_radius),
                 (ankle, toe, 0.7 * w.limb_radius)]
    knees.append(knee)
    arm_swing = w.arm_swing * (0.3 if condition == "bg" and side < 0 else 1.0)
    shoulder = neck + np.array([0.0, -0.03, side * w.shoulder_width / 2])
    elbow = shoulder + w.upper_arm * _down(-arm_swing * np.sin(leg_phase))
    wrist = elbow + w.forearm * _down(-arm_swing * np.sin(leg_phase) + 0.3)
    arm = w.limb_radius * (1.3 if coat else 0.85)
    segments += [(shoulder, elbow, arm), (elbow, wrist, 0.9 * arm)]
  if coat:  # Cloth over the thighs, to just above the knees.
    hem = (knees[0] + knees[1]) / 2 + np.array([0.0, 0.05, 0.0])
    segments.append((pelvis, hem, w.hip_width * 0.9 + w.limb_radius))
  if condition == "bg":  # A bag at the right hip, its strap from the left shoulder.
    bag = pelvis + np.array([-0.02, 0.0, -(w.hip_width / 2 + 0.09)])
    segments += [(bag + [0.0, 0.04, 0.0], bag - [0.0, 0.04, 0.0], 0.07),
                 (neck + [0.0, 0.0, w.shoulder_width / 2], bag, 0.012)]
  return segments


def project(points: np.ndarray, view: float) -> Tuple[np.ndarray, np.ndarray]:
  """Pinhole projection of ``[n, 3]`` points for a camera at ``view`` degrees.

  The camera stands ``CAMERA_DISTANCE`` body heights away at hip height, at angle θ from the
  walking direction (θ = 0: in front), looking at the body's vertical axis.

  Returns:
    ``(uv [n, 2] image coordinates, u right and v up; scale [n]: image units per body
    height at each point's depth)``.
  """
  theta = np.deg2rad(view)
  towards = np.array([np.cos(theta), 0.0, np.sin(theta)])  # From the body to the camera.
  camera = CAMERA_DISTANCE * towards + np.array([0.0, 0.5, 0.0])
  right = np.array([-np.sin(theta), 0.0, np.cos(theta)])
  relative = points - camera
  depth = relative @ -towards
  scale = 1.0 / depth
  uv = np.stack([relative @ right, relative[:, 1]], axis=-1) * scale[:, None]
  return uv, scale


def render(segments, view: float, height: int, width: int, size_jitter: float = 1.0
           ) -> np.ndarray:
  """The silhouette ``[height, width]`` bool: person's height to the frame, pelvis centred."""
  ends = np.array([p for s in segments for p in s[:2]])
  uv, scale = project(ends, view)
  radii = np.repeat([s[2] for s in segments], 2) * scale
  top, bottom = np.max(uv[:, 1] + radii), np.min(uv[:, 1] - radii)
  pixels = 0.94 * height / (top - bottom) * size_jitter
  rows = (top - uv[:, 1]) * pixels + 0.03 * height
  cols = (uv[:, 0] - uv[0, 0]) * pixels + width / 2  # uv[0]: the pelvis.
  y, x = np.mgrid[:height, :width] + 0.5
  mask = np.zeros((height, width), bool)
  for k in range(len(segments)):
    (r0, r1), (c0, c1) = rows[2 * k:2 * k + 2], cols[2 * k:2 * k + 2]
    dr, dc = r1 - r0, c1 - c0
    t = np.clip(((y - r0) * dr + (x - c0) * dc) / max(dr * dr + dc * dc, 1e-9), 0.0, 1.0)
    distance = np.hypot(y - r0 - t * dr, x - c0 - t * dc)
    mask |= distance <= radii[2 * k:2 * k + 2].mean() * pixels
  return mask


def walk(walker: Walker, view: float, condition: str, frames: int, height: int, width: int,
         rng: np.random.Generator) -> np.ndarray:
  """One sequence ``[frames, height, width]`` uint8 (0 or 255) with its jitter."""
  start, speed = rng.uniform(0, 2 * np.pi), rng.uniform(0.9, 1.1)
  size = rng.uniform(0.98, 1.02)
  out = np.empty((frames, height, width), np.uint8)
  for f in range(frames):
    phase = start + 2 * np.pi * speed * f / walker.cycle
    mask = render(body_segments(walker, phase, condition), view, height, width, size)
    mask ^= rng.random(mask.shape) < 0.005
    out[f] = mask * np.uint8(255)
  return out


def gait_sequences(identities: int, frames: int = 16, height: int = 32, width: int = 22,
                   seed: int = 0, views: Sequence[int] = VIEWS) -> Dict[str, np.ndarray]:
  """Every person walking every condition's sequences at every view.

  Returns:
    ``{'frames': uint8 [n, frames, height, width], 'person': [n], 'view': [n] (degrees),
    'condition': [n] (index into ``CONDITIONS``), 'sequence': [n] (1-based, as nm-01)}``.
  """
  out = {k: [] for k in ("frames", "person", "view", "condition", "sequence")}
  for person in range(identities):
    walker = random_walker(np.random.default_rng([seed, person]))
    rng = np.random.default_rng([seed, person, 1])
    for c, (condition, count) in enumerate(CONDITIONS.items()):
      for sequence in range(1, count + 1):
        for view in views:
          out["frames"].append(walk(walker, view, condition, frames, height, width, rng))
          for key, value in (("person", person), ("view", view), ("condition", c),
                             ("sequence", sequence)):
            out[key].append(value)
  return {k: np.asarray(v) for k, v in out.items()}


def gait_energy_images(frames: np.ndarray) -> np.ndarray:
  """GEI (Han & Bhanu 2006): each sequence's mean silhouette, ``[n, H, W]`` float in [0, 1]."""
  return np.asarray(frames, np.float32).mean(axis=1) / 255.0


__all__ = ["CAMERA_DISTANCE", "CONDITIONS", "GALLERY", "META_KEYS", "PROBES", "VIEWS", "Walker",
           "body_segments", "excluding_identical_view", "gait_energy_images", "gait_sequences",
           "project", "random_walker", "rank1", "rank1_by_view", "render",
           "squared_distances", "walk"]
