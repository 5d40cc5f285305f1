"""Web digits: images found by a keyword, with label noise and background noise, and their ROIs.

Images crawled from the web by a class name carry two kinds of noise (Tu et al., CVPR 2020):
**label noise**, images that do not show the class at all, and **background noise**, images
where the object is a small part of a cluttered scene. Made here from the bundled digits
(``config.dataset.digits``: the 5,000 MNIST digits or scikit-learn's 8×8 ones, upscaled):

* every training image is a ``canvas``×``canvas`` scene of clutter fainter than a digit's
  strokes (line segments at 60–160 of 255, soft blobs, a dimmed corner of another digit)
  with, for a clean image, one digit of its web label scaled to ``digit_size`` pixels and
  placed inside one region at random (background noise);
* a fraction ``noise_fraction`` of each class's images is label noise: half of them show a
  digit of another class instead, half no digit at all;
* the **regions** (``REGION_SETS``) are a fixed set of crops every model sees: a 3×3 grid of
  half-canvas crops at a quarter-canvas stride, and the whole image, each resized to
  ``region_side`` pixels (by default ``canvas / 2``, the grid crops' own size);
  ``holds_digit`` marks the crops smaller than the image that contain the whole digit;
* the **test** images are clean: one centred digit of the test digits, ``test_digit_size``
  canvas pixels wide, in a crop of the region set's first region (a grid crop, or the whole
  image), resized as the regions are, as a single region.

``web_label`` is the keyword's class (what training sees); ``true_label`` (−1: no digit),
``noisy`` and ``holds_digit`` are ground truth for the metrics only.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterator, Sequence, Tuple

import jax
import numpy as np

from bagtricks.data.arrays import ArraySource
from bagtricks.data.base import (Batch, checked_dataset_config, element_spec_of,
                                 per_process_batch_size, steps_per_epoch, to_device_layout)

# Named region sets: (row, col, size) crops as fractions of the canvas side.
REGION_SETS = {
    "grid3_whole": tuple((r / 4, c / 4, 0.5) for r in range(3) for c in range(3))
    + ((0.0, 0.0, 1.0),),
    "whole": ((0.0, 0.0, 1.0),),
}
WHOLE_IMAGE = (0.0, 0.0, 1.0)


def resize(image: np.ndarray, size: int) -> np.ndarray:
  """A square ``[h, w]`` image resized to ``[size, size]`` by bilinear interpolation."""
  h, w = image.shape
  rows = np.clip((np.arange(size) + 0.5) * h / size - 0.5, 0, h - 1)
  cols = np.clip((np.arange(size) + 0.5) * w / size - 0.5, 0, w - 1)
  r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
  r1, c1 = np.minimum(r0 + 1, h - 1), np.minimum(c0 + 1, w - 1)
  fr, fc = (rows - r0)[:, None], (cols - c0)[None, :]
  image = image.astype(np.float32)
  top = image[r0][:, c0] * (1 - fc) + image[r0][:, c1] * fc
  bottom = image[r1][:, c0] * (1 - fc) + image[r1][:, c1] * fc
  return top * (1 - fr) + bottom * fr


def _clutter(canvas: np.ndarray, pool: np.ndarray, rng: np.random.Generator) -> None:
  """Draws strokes, blobs and fragments of digits from ``pool`` onto ``canvas`` (in place)."""
  side = canvas.shape[0]
  y, x = np.mgrid[:side, :side] + 0.5
  for _ in range(rng.integers(1, 4)):  # Strokes: line segments 1-2 px wide.
    (y0, x0), (y1, x1) = rng.uniform(0, side, (2, 2))
    dy, dx = y1 - y0, x1 - x0
    t = np.clip(((y - y0) * dy + (x - x0) * dx) / max(dy * dy + dx * dx, 1e-9), 0, 1)
    near = np.hypot(y - y0 - t * dy, x - x0 - t * dx) < rng.uniform(0.5, 1.0)
    canvas[near] = np.maximum(canvas[near], rng.uniform(60, 160))
  for _ in range(rng.integers(1, 3)):  # Blobs: soft discs.
    cy, cx, radius = *rng.uniform(0, side, 2), rng.uniform(2, side / 8)
    blob = rng.uniform(50, 120) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * radius ** 2))
    np.maximum(canvas, blob, out=canvas)
  for _ in range(rng.integers(0, 2)):  # Fragments: a corner quarter of a random digit.
    digit = pool[rng.integers(len(pool))]
    size = int(rng.integers(side // 4, side // 3 + 1))
    piece = rng.uniform(0.4, 0.7) * resize(digit, 2 * size)
    qr, qc = rng.integers(0, 2, 2) * size
    piece = piece[qr:qr + size, qc:qc + size]
    r, c = rng.integers(0, side - size + 1, 2)
    np.maximum(canvas[r:r + size, c:c + size], piece, out=canvas[r:r + size, c:c + size])


def region_boxes(regions: Sequence[Tuple[float, float, float]], side: int) -> np.ndarray:
  """``[R, 3]`` integer (row, col, size) of each region on a ``side`` canvas."""
  return np.array([[round(r * side), round(c * side), round(s * side)] for r, c, s in regions])


def web_scenes(images: np.ndarray, labels: np.ndarray, per_class: int, noise_fraction: float,
               canvas: int, digit_size: Tuple[int, int], regions, seed: int
               ) -> Dict[str, np.ndarray]:
  """The training scenes of every class, their regions and their ground truth.

  Each clean scene places one digit of its class, scaled to a side in ``digit_size``, at a
  random place inside a random region of size < the whole image (so that at least one crop
  holds it), after the clutter.

  Args:
    images: digit images ``[n, s, s(, 1)]`` uint8.
    labels: their classes ``[n]`` (0..9).
    per_class: scenes per web label.
    noise_fraction: share of each class's scenes that are label noise.
    canvas: the scene's side in pixels (divisible by 4).
    digit_size: (smallest, largest) side of the placed digit.
    regions: the region set (``REGION_SETS`` values).
    seed: the random state.

  Returns:
    ``{'scene': uint8 [N, canvas, canvas], 'web_label', 'true_label' (−1: no digit): int32
    [N], 'noisy': bool [N], 'holds_digit': bool [N, R]}``, class by class.
  """
  rng = np.random.default_rng(seed)
  images = images.reshape(len(images), images.shape[1], images.shape[2])
  classes = int(labels.max()) + 1
  by_class = [np.flatnonzero(labels == c) for c in range(classes)]
  boxes = region_boxes(regions, canvas)
  inner = [k for k, (_, _, size) in enumerate(boxes) if size < canvas] or list(range(len(boxes)))
  noisy_count = int(round(noise_fraction * per_class))
  out = {k: [] for k in ("scene", "web_label", "true_label", "noisy", "holds_digit")}
  for web_label in range(classes):
    for index in range(per_class):
      scene = np.zeros((canvas, canvas), np.float32)
      _clutter(scene, images, rng)
      noisy = index < noisy_count
      shown = web_label
      if noisy:  # Half another class, half no digit.
        shown = (web_label + rng.integers(1, classes)) % classes if index % 2 == 0 else -1
      holds = np.zeros(len(boxes), bool)
      if shown >= 0:
        size = int(rng.integers(digit_size[0], digit_size[1] + 1))
        row, col, box = boxes[inner[rng.integers(len(inner))]]
        r = row + int(rng.integers(0, box - size + 1))
        c = col + int(rng.integers(0, box - size + 1))
        digit = resize(images[by_class[shown][rng.integers(len(by_class[shown]))]], size)
        np.maximum(scene[r:r + size, c:c + size], digit, out=scene[r:r + size, c:c + size])
        holds = ((boxes[:, 0] <= r) & (boxes[:, 1] <= c) & (boxes[:, 0] + boxes[:, 2] >= r + size)
                 & (boxes[:, 1] + boxes[:, 2] >= c + size) & (boxes[:, 2] < canvas))
      for key, value in (("scene", scene), ("web_label", web_label), ("true_label", shown),
                         ("noisy", noisy), ("holds_digit", holds)):
        out[key].append(value)
  out = {k: np.asarray(v) for k, v in out.items()}
  out["scene"] = np.clip(np.round(out["scene"]), 0, 255).astype(np.uint8)
  for key in ("web_label", "true_label"):
    out[key] = out[key].astype(np.int32)
  return out


def crop_regions(scenes: np.ndarray, regions, region_side: int) -> np.ndarray:
  """``[N, R, region_side, region_side]`` uint8: every region of every scene, resized."""
  out = np.empty((len(scenes), len(regions), region_side, region_side), np.uint8)
  for k, (row, col, size) in enumerate(region_boxes(regions, scenes.shape[1])):
    for n, scene in enumerate(scenes):
      crop = scene[row:row + size, col:col + size]
      out[n, k] = (crop if size == region_side else
                   np.clip(np.round(resize(crop, region_side)), 0, 255).astype(np.uint8))
  return out


def clean_digits(images: np.ndarray, side: int, digit_size: int) -> np.ndarray:
  """``[n, side, side]`` uint8: each digit scaled to ``digit_size`` and centred, no clutter."""
  images = images.reshape(len(images), images.shape[1], images.shape[2])
  out = np.zeros((len(images), side, side), np.uint8)
  start = (side - digit_size) // 2
  for n, image in enumerate(images):
    digit = np.clip(np.round(resize(image, digit_size)), 0, 255).astype(np.uint8)
    out[n, start:start + digit_size, start:start + digit_size] = digit
  return out


def test_crop_side(regions: str, canvas: int) -> int:
  """The side, in canvas pixels, of the crop a test image stands for: the region set's first
  (smallest) region."""
  return int(region_boxes(REGION_SETS[regions][:1], canvas)[0, 2])


def _problems(dc, bags: int) -> list:
  problems = []
  for field in ("per_class", "canvas", "bag_size", "region_side", "test_digit_size"):
    value = dc[field]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or (
        value == 0 and field != "region_side"):
      problems.append(f"config.dataset.{field}={value!r} must be a positive integer.")
  if problems:
    return problems
  if dc.canvas % 4:
    problems.append(f"config.dataset.canvas={dc.canvas} must be a multiple of 4 (the grid "
                    "crops are half the canvas at a quarter-canvas stride).")
  if dc.regions not in REGION_SETS:
    problems.append(f"config.dataset.regions={dc.regions!r} is unknown; use one of "
                    f"{tuple(REGION_SETS)}.")
  if not isinstance(dc.noise_fraction, (int, float)) or not 0 <= dc.noise_fraction < 1:
    problems.append(f"config.dataset.noise_fraction={dc.noise_fraction!r} must be in [0, 1).")
  low, high = tuple(dc.digit_size)
  if not 4 <= low <= high <= dc.canvas // 2:
    problems.append(f"config.dataset.digit_size={tuple(dc.digit_size)!r} must be (smallest, "
                    f"largest) with 4 <= smallest <= largest <= canvas / 2 = {dc.canvas // 2} "
                    "(a digit fits in a grid crop).")
  side = dc.region_side or dc.canvas // 2
  if dc.regions in REGION_SETS:
    crop = test_crop_side(dc.regions, dc.canvas)
    if side > dc.canvas or dc.test_digit_size > crop:
      problems.append(f"config.dataset.region_side={side} must be at most canvas={dc.canvas}, "
                      f"and test_digit_size={dc.test_digit_size} at most the {crop}-px crop "
                      "a test image stands for.")
  if dc.bag_size > dc.per_class:
    problems.append(f"config.dataset.bag_size={dc.bag_size} is more than the "
                    f"{dc.per_class} images of a web label (per_class); lower it.")
  if bags < 1:
    problems.append("config.batch_size is the number of bags per step; it must be >= 1.")
  return problems


class WebDigitsSource(ArraySource):
  """Bags of web digits' regions (``config.dataset.name = 'web_digits'``).

  A training batch holds ``batch_size`` bags; each bag draws a web label uniformly and
  ``bag_size`` of its images without replacement, from ``np.random.default_rng([seed, step,
  process])``: ``{'regions': float32 [..., bag, R, side, side, 1] in [0, 1], 'label': int32
  (the web label), 'true_label' [..., bag], 'noisy' [..., bag], 'holds_digit' [..., bag,
  R]}``. The ``test`` split is the clean digits as bags of one image of one region; the
  ``train_bags`` split is every training image once, in fixed bags of one web label (to
  score the ROI weights; ``bag_members`` says which). ``scenes`` holds the training scenes.

  Raises:
    DataError: a field does not fit (checked before anything is drawn), or the digits
      cannot be read.
  """

  config_defaults = {"digits": "mnist_5k", "per_class": 300, "noise_fraction": 0.4,
                     "canvas": 48, "digit_size": (14, 20), "regions": "grid3_whole",
                     "region_side": 0, "test_digit_size": 17, "bag_size": 4,
                     "generator_seed": 0}

  def __init__(self, config):
    from bagtricks.data.digit_sets import chosen_digits  # pylint: disable=import-outside-toplevel
    config = checked_dataset_config(config, self.config_defaults, _problems)
    dc = config.dataset
    digits = chosen_digits(config)
    regions = REGION_SETS[dc.regions]
    self.region_side = dc.region_side or dc.canvas // 2
    self.bag_size = dc.bag_size
    scenes = web_scenes(*digits["train"], dc.per_class, dc.noise_fraction, dc.canvas,
                        tuple(dc.digit_size), regions, dc.generator_seed)
    train = {"regions": crop_regions(scenes["scene"], regions, self.region_side),
             "label": scenes["web_label"], "true_label": scenes["true_label"],
             "noisy": scenes["noisy"], "holds_digit": scenes["holds_digit"]}
    self.scenes = scenes["scene"]
    test_images, test_labels = digits["test"]
    # The test digit is test_digit_size canvas pixels, resized as the regions are.
    digit_side = round(dc.test_digit_size * self.region_side / test_crop_side(dc.regions,
                                                                               dc.canvas))
    test = {"regions": clean_digits(test_images, self.region_side, digit_side)[
        :, None, None], "label": test_labels.astype(np.int32)}
    test.update(true_label=test["label"][:, None], noisy=np.zeros((len(test_labels), 1), bool),
                holds_digit=np.zeros((len(test_labels), 1, 1), bool))
    splits = {"train": train, "test": test,
              "train_bags": self._fixed_bags(train, dc.generator_seed)}
    splits = {name: {**s, "regions": (s["regions"][..., None] / 255.0).astype(np.float32)}
              for name, s in splits.items()}
    super().__init__(config, splits, input_key="regions", num_classes=10,
                     class_names=tuple(str(d) for d in range(10)))
    labels = self.splits["train"]["label"]
    self._by_class = [np.flatnonzero(labels == c) for c in range(10)]

  def _fixed_bags(self, train: Dict[str, np.ndarray], seed: int) -> Dict[str, np.ndarray]:
    """Every training image once, in bags of ``bag_size`` images of one web label (a class's
    remainder left out)."""
    rng = np.random.default_rng([seed, 1])
    groups = []
    for c in range(10):
      members = rng.permutation(np.flatnonzero(train["label"] == c))
      usable = len(members) - len(members) % self.bag_size
      groups.append(members[:usable].reshape(-1, self.bag_size))
    index = np.concatenate(groups)  # [bags, bag_size]
    self._bag_members = index
    bags = {k: v[index] for k, v in train.items() if k != "label"}
    return {**bags, "label": train["label"][index[:, 0]]}

  def bag_members(self) -> np.ndarray:
    """``[bags, bag_size]``: the training images (rows of ``scenes``) of each fixed bag."""
    return self._bag_members

  def info(self):
    """As ``ArraySource.info``, with one bag per example and epochs of training images."""
    info = super().info()
    spec = {k: v for k, v in element_spec_of(self.splits["train_bags"]).items()}
    images = self.num_examples(self.config.dataset.train_split) // jax.process_count()
    steps = steps_per_epoch(images // self.bag_size, self.config.batch_size)
    return dataclasses.replace(info, element_spec=spec, steps_per_epoch=steps)

  def train_batches(self, start_step: int, num_devices: int) -> Iterator[Batch]:
    """Endless batches of bags ``[num_devices, per_device, bag, ...]`` from ``start_step``."""
    config = self.config
    arrays = self.splits[config.dataset.train_split]
    bags = per_process_batch_size(config.batch_size)
    step = start_step
    while True:
      rng = np.random.default_rng([config.seed, step, jax.process_index()])
      labels = rng.integers(0, 10, bags)
      index = np.stack([rng.choice(self._by_class[c], self.bag_size, replace=False)
                        for c in labels])
      batch = {k: v[index] for k, v in arrays.items() if k != "label"}
      batch["label"] = labels.astype(np.int32)
      yield to_device_layout(batch, num_devices)
      step += 1


WEB_SOURCES = {"web_digits": WebDigitsSource}
