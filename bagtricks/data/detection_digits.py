"""Digits to detect: canvases with a few digits at random places and scales, and their boxes.

``config.dataset.name = 'detection_digits'``: every image is a ``canvas``×``canvas`` black
canvas with ``objects`` = (fewest, most) digits of the bundled set (``config.dataset.digits``:
the 5,000 MNIST digits, or scikit-learn's 8×8 ones, upscaled), each scaled to a side in
``digit_size`` pixels, placed at random where its box overlaps no earlier box by more than
``max_overlap`` IoU (brightest pixel kept where two overlap). A digit's box is the tight box
of its ink (pixels ≥ 64 of 255), ``(x0, y0, x1, y1)`` as fractions of the canvas side; its
class is its digit. Train canvases are made of the train digits, test canvases of the test
digits, from fixed seeds: the test split is the same in every run.

Batches: ``{'image': float32 [..., canvas, canvas, 1] in [0, 1], 'boxes': float32 [..., G, 4],
'classes': int32 [..., G], 'valid': bool [..., G]}`` with G = the most digits per canvas,
the rows past a canvas's digits padding (``valid`` False).
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from bagtricks.data.arrays import ArraySource
from bagtricks.data.base import checked_dataset_config
from bagtricks.data.web_digits import resize

INK = 64  # A digit's box holds its pixels at least this bright (of 255).
PLACEMENT_TRIES = 50


def ink_box(digit: np.ndarray) -> Tuple[int, int, int, int]:
  """``(x0, y0, x1, y1)`` pixel box (exclusive ends) of a digit image's ink."""
  rows = np.flatnonzero((digit >= INK).any(axis=1))
  cols = np.flatnonzero((digit >= INK).any(axis=0))
  if not len(rows):
    return 0, 0, digit.shape[1], digit.shape[0]
  return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
  low = np.maximum(box[:2], others[:, :2])
  high = np.minimum(box[2:], others[:, 2:])
  inter = np.prod(np.clip(high - low, 0, None), axis=1)
  area = lambda b: np.prod(b[..., 2:] - b[..., :2], axis=-1)
  return inter / (area(box) + area(others) - inter)


def detection_canvases(images: np.ndarray, labels: np.ndarray, count: int, canvas: int,
                       objects: Tuple[int, int], digit_size: Tuple[int, int],
                       max_overlap: float, seed: int) -> Dict[str, np.ndarray]:
  """``count`` canvases with their boxes (module docstring).

  Returns:
    ``{'image': uint8 [count, canvas, canvas], 'boxes': float32 [count, G, 4], 'classes':
    int32 [count, G], 'valid': bool [count, G]}``, G = ``objects[1]``.
  """
  rng = np.random.default_rng(seed)
  images = images.reshape(len(images), images.shape[1], images.shape[2])
  most = objects[1]
  out = {"image": np.zeros((count, canvas, canvas), np.uint8),
         "boxes": np.zeros((count, most, 4), np.float32),
         "classes": np.zeros((count, most), np.int32), "valid": np.zeros((count, most), bool)}
  for n in range(count):
    scene = np.zeros((canvas, canvas), np.float32)
    placed = np.zeros((0, 4))
    for _ in range(int(rng.integers(objects[0], most + 1))):
      pick = int(rng.integers(len(images)))
      size = int(rng.integers(digit_size[0], digit_size[1] + 1))
      digit = np.round(resize(images[pick], size))  # As the canvas will hold it.
      x0, y0, x1, y1 = ink_box(digit)
      for _ in range(PLACEMENT_TRIES):
        col, row = rng.integers(-x0, canvas - x1 + 1), rng.integers(-y0, canvas - y1 + 1)
        box = np.array([col + x0, row + y0, col + x1, row + y1], float)
        if not len(placed) or _iou(box, placed).max() <= max_overlap:
          break
      else:
        continue  # No room left for this digit: the canvas holds fewer.
      # The digit's frame may stick out of the canvas where it holds no ink.
      top, left = max(row, 0), max(col, 0)
      bottom, right = min(row + size, canvas), min(col + size, canvas)
      np.maximum(scene[top:bottom, left:right],
                 digit[top - row:bottom - row, left - col:right - col],
                 out=scene[top:bottom, left:right])
      k = len(placed)
      out["boxes"][n, k] = box / canvas
      out["classes"][n, k] = labels[pick]
      out["valid"][n, k] = True
      placed = np.concatenate([placed, box[None]])
    out["image"][n] = np.clip(np.round(scene), 0, 255).astype(np.uint8)
  return out


def _problems(dc, batch: int) -> list:
  problems = []
  for field in ("canvas", "num_train", "num_test"):
    value = dc[field]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      problems.append(f"config.dataset.{field}={value!r} must be a positive integer.")
  low, high = tuple(dc.objects)
  if not 1 <= low <= high:
    problems.append(f"config.dataset.objects={tuple(dc.objects)!r} must be (fewest, most) "
                    "digits per canvas with 1 <= fewest <= most.")
  small, large = tuple(dc.digit_size)
  if not problems and not 4 <= small <= large <= dc.canvas:
    problems.append(f"config.dataset.digit_size={tuple(dc.digit_size)!r} must be (smallest, "
                    f"largest) with 4 <= smallest <= largest <= canvas={dc.canvas}.")
  if not isinstance(dc.max_overlap, (int, float)) or not 0 <= dc.max_overlap < 1:
    problems.append(f"config.dataset.max_overlap={dc.max_overlap!r} must be an IoU in [0, 1).")
  if batch < 1:
    problems.append("config.batch_size must be >= 1 canvas per process.")
  return problems


class DetectionDigitsSource(ArraySource):
  """Canvases of digits with their boxes (module docstring), in memory.

  Raises:
    DataError: a field does not fit (checked before anything is drawn), or the digits
      cannot be read.
  """

  config_defaults = {"digits": "mnist_5k", "canvas": 64, "objects": (1, 4),
                     "digit_size": (16, 32), "max_overlap": 0.2, "num_train": 4000,
                     "num_test": 500, "generator_seed": 0}

  def __init__(self, config):
    from bagtricks.data.digit_sets import chosen_digits  # pylint: disable=import-outside-toplevel
    config = checked_dataset_config(config, self.config_defaults, _problems)
    dc = config.dataset
    digits = chosen_digits(config)
    sizes = {"train": dc.num_train, "test": dc.num_test}
    splits = {}
    for index, split in enumerate(("train", "test")):
      made = detection_canvases(*digits[split], sizes[split], dc.canvas, tuple(dc.objects),
                                tuple(dc.digit_size), dc.max_overlap,
                                seed=dc.generator_seed * 2 + index)
      made["image"] = (made["image"][..., None] / 255.0).astype(np.float32)
      splits[split] = made
    super().__init__(config, splits, input_key="image", num_classes=10,
                     class_names=tuple(str(d) for d in range(10)))


DETECTION_SOURCES = {"detection_digits": DetectionDigitsSource}
