"""Procedural grayscale faces in the 7 basic expressions, deterministic from a seed.

No expression dataset ships offline (JAFFE, CK+, FER2013 and RAF-DB need registration), so the
faces are drawn from parameters:

* identity (fixed per person): face width and height, eye spacing and size, brow thickness
  and height, nose length and width, mouth width and height, skin and hair tone;
* expression (per image, scaled by a random intensity): brow raise and slant (inner ends up
  for sadness and fear, down for anger), eye openness, mouth corner lift, mouth opening and
  width, nose wrinkle (disgust), lip press (anger);
* pose: a small rotation, shift and scale; lighting: a brightness gradient in a random
  direction and a contrast; and pixel noise.

Each face is drawn at 4× the target size from smooth shapes (ellipses, thick strokes,
curves; edges blended over half a pixel) and box-filtered down, so edges are anti-aliased.
``face_arrays`` makes the ``faces`` dataset: ``identities`` people, every one in every
expression ``per_expression`` times, split **by identity** (test faces are of people never
seen in training).

Classes, in FER2013's order of the basic emotions as used here: neutral, happy, sad, surprise,
fear, disgust, anger.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

import numpy as np

EXPRESSIONS = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger")
SUPERSAMPLE = 4


@dataclasses.dataclass(frozen=True)
class Identity:
  """What stays the same across one person's images (units: half the image side)."""
  face_width: float
  face_height: float
  eye_spacing: float
  eye_size: float
  brow_thickness: float
  brow_height: float
  nose_length: float
  nose_width: float
  mouth_width: float
  mouth_height: float
  skin: float
  hair: float
  hairline: float


def random_identity(rng: np.random.Generator) -> Identity:
  return Identity(
      face_width=rng.uniform(0.52, 0.64), face_height=rng.uniform(0.70, 0.82),
      eye_spacing=rng.uniform(0.20, 0.27), eye_size=rng.uniform(0.85, 1.15),
      brow_thickness=rng.uniform(0.025, 0.045), brow_height=rng.uniform(0.11, 0.15),
      nose_length=rng.uniform(0.16, 0.24), nose_width=rng.uniform(0.05, 0.08),
      mouth_width=rng.uniform(0.15, 0.21), mouth_height=rng.uniform(0.32, 0.40),
      skin=rng.uniform(0.55, 0.85), hair=rng.uniform(0.05, 0.35),
      hairline=rng.uniform(-0.62, -0.48))


@dataclasses.dataclass(frozen=True)
class Expression:
  """The face's movements away from neutral (0 everywhere for neutral)."""
  brow_raise: float = 0.0     # Both brows up (+) or down (−).
  brow_slant: float = 0.0     # Inner ends up (+: sadness, fear) or down (−: anger).
  eye_open: float = 1.0       # Eye height × this.
  mouth_lift: float = 0.0     # Mouth corners up (+: smile) or down (−).
  mouth_open: float = 0.0     # Gap between the lips.
  mouth_stretch: float = 1.0  # Mouth width × this.
  nose_wrinkle: float = 0.0   # Wrinkle strokes beside the nose (disgust).
  lip_press: float = 0.0      # Thicker, straighter lips (anger).


# Each class's full-intensity movements; an image scales the difference from neutral.
PROTOTYPES: Dict[str, Expression] = {
    "neutral": Expression(),
    "happy": Expression(eye_open=0.65, mouth_lift=0.09, mouth_open=0.025, mouth_stretch=1.15),
    "sad": Expression(brow_slant=0.05, eye_open=0.8, mouth_lift=-0.07, mouth_stretch=0.9),
    "surprise": Expression(brow_raise=0.08, eye_open=1.6, mouth_open=0.12, mouth_stretch=0.65),
    "fear": Expression(brow_raise=0.04, brow_slant=0.05, eye_open=1.4, mouth_lift=-0.02,
                       mouth_open=0.05, mouth_stretch=1.25),
    "disgust": Expression(brow_raise=-0.02, eye_open=0.6, mouth_lift=-0.045, mouth_open=0.015,
                          nose_wrinkle=1.0),
    "anger": Expression(brow_raise=-0.035, brow_slant=-0.06, eye_open=0.75, mouth_stretch=0.85,
                        lip_press=1.0),
}


def scaled_expression(name: str, intensity: float) -> Expression:
  """``PROTOTYPES[name]`` with every movement from neutral times ``intensity``."""
  neutral, full = PROTOTYPES["neutral"], PROTOTYPES[name]
  return Expression(**{f.name: getattr(neutral, f.name) + intensity * (
      getattr(full, f.name) - getattr(neutral, f.name)) for f in dataclasses.fields(Expression)})


def _band(distance: np.ndarray, pixel: float) -> np.ndarray:
  """Coverage 1 inside (distance < 0) to 0 outside, blended over one supersampled pixel."""
  return np.clip(0.5 - distance / pixel, 0.0, 1.0)


def _ellipse(x, y, cx, cy, rx, ry):
  """An approximate signed distance to an axis-aligned ellipse (negative inside)."""
  r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
  return (r - 1.0) * min(rx, ry)


def _segment(x, y, x0, y0, x1, y1):
  """Distance to the segment from (x0, y0) to (x1, y1)."""
  dx, dy = x1 - x0, y1 - y0
  t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
  return np.hypot(x - x0 - t * dx, y - y0 - t * dy)


def _paint(canvas, coverage, value):
  canvas *= 1.0 - coverage
  canvas += coverage * value


def draw_face(identity: Identity, expression: Expression, rng: np.random.Generator,
              size: int = 48, pose: bool = True) -> np.ndarray:
  """One face, ``[size, size]`` uint8.

  Args:
    identity: the person.
    expression: the movements (``scaled_expression``).
    rng: draws the pose, lighting and noise.
    size: the image side in pixels.
    pose: vary rotation, shift and scale (else a frontal, centred face).

  Returns:
    The image, 0..255.
  """
  n = size * SUPERSAMPLE
  pixel = 2.0 / n
  coords = (np.arange(n) + 0.5) * pixel - 1.0
  x, y = np.meshgrid(coords, coords)  # x right, y down, both in [-1, 1].
  if pose:
    angle = np.deg2rad(rng.uniform(-8, 8))
    scale = rng.uniform(0.92, 1.08)
    shift = rng.uniform(-0.05, 0.05, 2)
    xs, ys = x - shift[0], y - shift[1]
    x = (np.cos(angle) * xs + np.sin(angle) * ys) / scale
    y = (-np.sin(angle) * xs + np.cos(angle) * ys) / scale
  i, e = identity, expression
  canvas = np.full((n, n), rng.uniform(0.25, 0.5))
  head = _ellipse(x, y, 0.0, 0.05, i.face_width, i.face_height)
  _paint(canvas, _band(head, pixel), i.skin)
  # Hair: the part of the head above the hairline, and a little beyond it.
  hair = np.maximum(_ellipse(x, y, 0.0, 0.02, i.face_width * 1.04, i.face_height * 1.04),
                    y - i.hairline)
  _paint(canvas, _band(hair, pixel), i.hair)
  # Cheeks a little brighter, the sides of the face a little darker: soft shading.
  shade = np.exp(-((x / i.face_width) ** 2) * 2.5) * _band(head, pixel)
  canvas += 0.08 * (shade - 0.5) * _band(head, pixel)
  eye_y = -0.10
  eye_w, eye_h = 0.085 * i.eye_size, 0.045 * i.eye_size * e.eye_open
  for side in (-1.0, 1.0):
    cx = side * i.eye_spacing
    _paint(canvas, _band(_ellipse(x, y, cx, eye_y, eye_w, eye_h), pixel), 0.92)
    iris = min(0.038 * i.eye_size, eye_h * 0.95)
    _paint(canvas, _band(_ellipse(x, y, cx, eye_y, iris, iris), pixel), 0.08)
    # Brow: inner end at the nose side, outer end beyond the eye's corner.
    brow_y = eye_y - i.brow_height - e.brow_raise
    inner = (side * (i.eye_spacing - 0.10), brow_y - e.brow_slant)
    outer = (side * (i.eye_spacing + 0.11), brow_y + 0.02 + 0.5 * e.brow_slant)
    middle = (side * (i.eye_spacing + 0.01), brow_y - 0.02 - 0.3 * e.brow_raise)
    brow = np.minimum(_segment(x, y, *inner, *middle), _segment(x, y, *middle, *outer))
    _paint(canvas, _band(brow - i.brow_thickness / 2, pixel), i.hair * 0.6)
  # Nose: the bridge's shadow and the nostrils' base.
  tip = eye_y + 0.06 + i.nose_length
  _paint(canvas, 0.5 * _band(_segment(x, y, 0.02, eye_y + 0.04, 0.03, tip) - 0.012, pixel),
         i.skin * 0.6)
  nostrils = _segment(x, y, -i.nose_width, tip, i.nose_width, tip)
  _paint(canvas, _band(nostrils - 0.014, pixel), i.skin * 0.45)
  for side in (-1.0, 1.0):  # Wrinkles beside the bridge, drawn in proportion to disgust.
    wrinkle = _segment(x, y, side * 0.05, eye_y + 0.05, side * 0.11, eye_y + 0.11)
    _paint(canvas, np.clip(e.nose_wrinkle, 0, 1) * _band(wrinkle - 0.01, pixel), i.skin * 0.5)
  _draw_mouth(canvas, x, y, i, e, pixel)
  return _finish(canvas, rng, size)


def _draw_mouth(canvas, x, y, i: Identity, e: Expression, pixel: float) -> None:
  """Lips as a curve whose corners rise with ``mouth_lift``; open, a dark gap between them."""
  half = i.mouth_width * e.mouth_stretch
  t = np.clip(x / half, -1.0, 1.0)
  inside = np.abs(x) <= half
  centre = i.mouth_height - e.mouth_lift * t ** 2  # Corners at height − lift.
  gap = e.mouth_open * (1.0 - t ** 2)
  if e.mouth_open > 0.01:
    top, bottom = centre - gap, centre + gap
    opening = np.where(inside, np.maximum(top - y, y - bottom), 1.0)
    _paint(canvas, _band(opening, pixel), 0.05)
  lip = 0.012 + 0.008 * e.lip_press
  for offset in ((-gap, gap) if e.mouth_open > 0.01 else (0.0,)):
    distance = np.where(inside, np.abs(y - (centre + offset)), np.inf)
    corners = np.minimum(np.hypot(x - half, y - (i.mouth_height - e.mouth_lift)),
                         np.hypot(x + half, y - (i.mouth_height - e.mouth_lift)))
    _paint(canvas, _band(np.minimum(distance, corners) - lip, pixel), i.skin * 0.35)


def _finish(canvas: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
  """Lighting, box-filter down to ``size``, noise, 8 bits."""
  n = canvas.shape[0]
  direction = rng.uniform(0, 2 * np.pi)
  ramp = np.linspace(-1, 1, n)
  gradient = np.cos(direction) * ramp[None, :] + np.sin(direction) * ramp[:, None]
  canvas = canvas * rng.uniform(0.75, 1.15) + rng.uniform(0.0, 0.15) * gradient
  small = canvas.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))
  small = small + rng.normal(0.0, 0.02, small.shape)
  return np.clip(np.round(small * 255.0), 0, 255).astype(np.uint8)


def face_arrays(identities: int = 150, test_identities: int = 30, per_expression: int = 4,
                size: int = 48, seed: int = 0) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """The ``faces`` dataset: every person in every expression, split by identity.

  Args:
    identities: people in all; the last ``test_identities`` of them are the test split.
    test_identities: people seen only in the test split.
    per_expression: images of each person in each expression (random intensity in
      [0.6, 1.2], pose, lighting and noise).
    size: image side.
    seed: the generator's seed; the same seed gives the same images.

  Returns:
    ``{'train': (images [n, size, size, 1] uint8, labels [n] int64), 'test': (...)}``.
  """
  if not 0 < test_identities < identities:
    raise ValueError(f"test_identities={test_identities} must be in (0, identities="
                     f"{identities}).")
  images, labels, people = draw_people(identities, per_expression, size, seed)
  images, labels = images[..., None], labels.astype(np.int64)
  test = people >= identities - test_identities
  return {"train": (images[~test], labels[~test]), "test": (images[test], labels[test])}


def draw_people(identities: int, per_expression: int, size: int, seed: int
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Every person in every expression ``per_expression`` times, in order of person.

  Each image has a random intensity in [0.6, 1.2], pose, lighting and noise; person p's
  images depend only on ``(seed, p)``.

  Returns:
    ``(images [n, size, size] uint8, labels [n] int32, people [n] int)``.
  """
  images, labels, people = [], [], []
  for person in range(identities):
    identity = random_identity(np.random.default_rng([seed, person]))
    rng = np.random.default_rng([seed, person, 1])
    for label, name in enumerate(EXPRESSIONS):
      for _ in range(per_expression):
        expression = scaled_expression(name, rng.uniform(0.6, 1.2))
        images.append(draw_face(identity, expression, rng, size))
        labels.append(label)
        people.append(person)
  return np.stack(images), np.asarray(labels, np.int32), np.asarray(people)
