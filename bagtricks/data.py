"""Input pipeline: any TFDS image dataset, or a bundled table, → device-shaped NumPy batches.

One path serves every dataset, from the bundled scikit-learn digits to ImageNet on a GCS
bucket: ``tfds.builder(name, data_dir)`` → per-process split → per-epoch seeded shuffle →
decode → per-example preprocessing ops (``preprocess.py``) → batches shaped
``[local_devices, per_device_batch, ...]``.

Determinism: the example order of epoch e is a seeded shuffle (seed, e) of a fixed-order
read, and every example's augmentation draws from a stateless seed made of (seed, process,
position in the stream). Hence the batch at step s is a pure function of (config, s): a run
resumed at step s sees exactly the batches an uninterrupted run would have seen. Resuming skips
the already-seen part of the current epoch before decoding, so its cost is bounded by reading
(not decoding) at most one epoch of records.

Evaluation reads each process's share of the split once, in order, pads the last batch and
marks padding with ``mask == 0``, so every example is counted exactly once.

Tabular data (scikit-learn's iris, wine and breast_cancer) is small enough to live in memory:
``load_tabular`` makes a stratified split by seed and standardizes the features with the train
split's statistics; its batches have the same layout, with ``features`` ``[devices,
per_device, num_features]`` in place of ``image``, and the same determinism and exact eval.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import math
import os
from typing import Dict, Iterator, List

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from bagtricks import preprocess

Batch = Dict[str, np.ndarray]

# Datasets that ship offline with scikit-learn, written once into a local TFDS dataset and
# then read through the same TFDS path as any catalog dataset.
LOCAL_SOURCES = ("sklearn_digits",)
_LOCAL_VERSION = "1.0.0"
# scikit-learn's bundled tables, held in memory (see ``load_tabular``).
TABULAR_SOURCES = ("sklearn_iris", "sklearn_wine", "sklearn_breast_cancer")


class DataError(ValueError):
  """The configured dataset cannot be read (unknown, not prepared, or too small)."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the rest of the run needs to know about a dataset.

  Attributes:
    name: the TFDS name.
    num_classes: number of label classes.
    num_train_examples: examples in the whole train split (all processes).
    num_eval_examples: examples in the whole eval split.
    steps_per_epoch: optimizer steps per epoch (the remainder of an epoch is dropped).
    input_shape: one example's model input: ``(height, width, channels)`` of a preprocessed
      image, or ``(num_features,)``.
    input_key: the batch entry holding the model input, ``'image'`` or ``'features'``.
  """
  name: str
  num_classes: int
  num_train_examples: int
  num_eval_examples: int
  steps_per_epoch: int
  input_shape: tuple
  input_key: str = "image"


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
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int64)
  x_train, x_test, y_train, y_test = train_test_split(
      images, labels, test_size=test_fraction, stratify=labels, random_state=seed)
  return {"train": (x_train, y_train), "test": (x_test, y_test)}


def prepare_sklearn_digits(data_dir: str) -> None:
  """Writes the digits into ``data_dir/sklearn_digits/1.0.0`` once (offline).

  Safe to call from several processes at once: a file lock serializes them and TFDS itself
  writes into a temporary directory that it renames when complete.
  """
  final = os.path.join(data_dir, "sklearn_digits", _LOCAL_VERSION, "dataset_info.json")
  if os.path.exists(final):
    return
  with _file_lock(os.path.join(data_dir, ".sklearn_digits.lock")):
    if os.path.exists(final):
      return
    splits = {
        name: tf.data.Dataset.from_tensor_slices({"image": x, "label": y})
        for name, (x, y) in digits_arrays().items()
    }
    tfds.dataset_builders.store_as_tfds_dataset(
        name="sklearn_digits",
        version=_LOCAL_VERSION,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        split_datasets=splits,
        data_dir=data_dir,
        description="scikit-learn's bundled handwritten digits (UCI ML), stratified 80/20.",
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
    )


# ------------------------------------------------------------------------------------------
# The bundled tables.


@dataclasses.dataclass(frozen=True)
class TabularData:
  """A split, standardized table held in memory (what ``get_builder`` returns for a table).

  Attributes:
    name: the source name, e.g. ``'sklearn_iris'``.
    feature_names: one name per column.
    class_names: one name per class.
    splits: ``{'train': (features [n, d] float32, labels [n] int32), 'test': (...)}``; the
      features are standardized with the train split's mean and std.
    mean: ``[d]`` train mean, in the original units.
    std: ``[d]`` train standard deviation (1 for a constant column).
  """
  name: str
  feature_names: tuple
  class_names: tuple
  splits: dict
  mean: np.ndarray
  std: np.ndarray

  @property
  def num_features(self) -> int:
    return len(self.feature_names)

  def to_original_units(self, values: np.ndarray, feature: int) -> np.ndarray:
    """Standardized values of column ``feature`` back in the data's own units."""
    return np.asarray(values) * self.std[feature] + self.mean[feature]


def load_tabular(name: str, test_fraction: float = 0.2, split_seed: int = 0) -> TabularData:
  """One of scikit-learn's bundled tables with a stratified split and train-only scaling.

  Args:
    name: one of ``TABULAR_SOURCES``.
    test_fraction: fraction of each class held out for test.
    split_seed: the split's random state; the same seed always gives the same split.

  Returns:
    ``TabularData``; standardization x' = (x − mean_train) / std_train uses statistics of the
    train split only, so nothing about the test split leaks into training.
  """
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top
  if name not in TABULAR_SOURCES:
    raise DataError(f"config.dataset.name={name!r} is not a bundled table; use one of "
                    f"{TABULAR_SOURCES}.")
  bunch = getattr(datasets, "load_" + name[len("sklearn_"):])()
  x = bunch.data.astype(np.float64)
  y = bunch.target.astype(np.int32)
  x_train, x_test, y_train, y_test = train_test_split(
      x, y, test_size=test_fraction, stratify=y, random_state=split_seed)
  mean = x_train.mean(axis=0)
  std = x_train.std(axis=0)
  std = np.where(std > 0, std, 1.0)

  def scale(features):
    return ((features - mean) / std).astype(np.float32)

  return TabularData(
      name=name, feature_names=tuple(str(f) for f in bunch.feature_names),
      class_names=tuple(str(c) for c in bunch.target_names),
      splits={"train": (scale(x_train), y_train), "test": (scale(x_test), y_test)},
      mean=mean, std=std)


# ------------------------------------------------------------------------------------------
# Builders and split arithmetic.


def resolve_data_dir(data_dir: str | None) -> str:
  """``data_dir`` or TFDS's default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``)."""
  return os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR)


def get_builder(dataset_config) -> tfds.core.DatasetBuilder:
  """The TFDS builder for ``config.dataset``, preparing a bundled source if needed.

  Never downloads: a catalog dataset that is not prepared under ``data_dir`` is an error
  that says how to prepare it.

  Args:
    dataset_config: ``config.dataset`` (reads ``name`` and ``data_dir``).

  Returns:
    A prepared ``tfds.core.DatasetBuilder``, or ``TabularData`` for a bundled table.

  Raises:
    DataError: the dataset is unknown or not prepared.
  """
  name = dataset_config.name
  if name in TABULAR_SOURCES:
    table = load_tabular(name, dataset_config.get("test_fraction", 0.2),
                         dataset_config.get("split_seed", 0))
    for split in (dataset_config.train_split, dataset_config.eval_split):
      if split not in table.splits:
        raise DataError(f"config.dataset split {split!r} does not exist in {name!r}; it has "
                        f"{sorted(table.splits)}.")
    return table
  data_dir = resolve_data_dir(dataset_config.data_dir)
  if name in LOCAL_SOURCES:
    prepare_sklearn_digits(data_dir)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # TFDS raises several types for unknown names.
    raise DataError(
        f"config.dataset.name={name!r}: no such TFDS dataset under data_dir={data_dir!r} "
        f"({type(e).__name__}). Use a TFDS catalog name or one of the bundled sources "
        f"{LOCAL_SOURCES + TABULAR_SOURCES}.") from e
  if not builder.is_prepared():
    raise DataError(
        f"config.dataset.name={name!r} is not prepared under config.dataset.data_dir="
        f"{data_dir!r}. This project never downloads data; prepare it once with "
        f"`tfds build {name} --data_dir={data_dir}` (or copy a prepared copy there) and set "
        f"--config.dataset.data_dir to that directory.")
  for split in (dataset_config.train_split, dataset_config.eval_split):
    try:
      builder.info.splits[split].num_examples
    except Exception as e:
      raise DataError(
          f"config.dataset split {split!r} does not exist in {name!r}; it has "
          f"{sorted(builder.info.splits.keys())}.") from e
  return builder


def _num_examples(builder, split: str) -> int:
  if isinstance(builder, TabularData):
    return len(builder.splits[split][1])
  return builder.info.splits[split].num_examples


def num_classes_of(builder) -> int:
  if isinstance(builder, TabularData):
    return len(builder.class_names)
  return builder.info.features["label"].num_classes


def per_process_batch_size(global_batch_size: int) -> int:
  return global_batch_size // jax.process_count()


def _steps_per_epoch(config, builder) -> int:
  # Every process reads an equal share of the train split; an epoch's remainder is dropped.
  if isinstance(builder, TabularData):
    per_process_train = _num_examples(builder, config.dataset.train_split) // jax.process_count()
  else:
    per_process_train = _num_examples(builder, tfds.split_for_jax_process(
        config.dataset.train_split))
  steps = per_process_train // per_process_batch_size(config.batch_size)
  if steps < 1:
    raise DataError(
        f"config.batch_size={config.batch_size} exceeds the {per_process_train} train examples "
        f"each of the {jax.process_count()} processes reads; lower config.batch_size.")
  return steps


def dataset_info(config, builder) -> DatasetInfo:
  """Sizes and steps of the run's data (identical on every process)."""
  steps_per_epoch = _steps_per_epoch(config, builder)
  if isinstance(builder, TabularData):
    input_shape, input_key = (builder.num_features,), "features"
  else:
    size = config.dataset.image_size
    input_shape, input_key = (size, size, config.dataset.channels), "image"
  return DatasetInfo(
      name=config.dataset.name,
      num_classes=num_classes_of(builder),
      num_train_examples=_num_examples(builder, config.dataset.train_split),
      num_eval_examples=_num_examples(builder, config.dataset.eval_split),
      steps_per_epoch=steps_per_epoch,
      input_shape=input_shape,
      input_key=input_key,
  )


def _read(builder, split: str, cache: bool) -> tf.data.Dataset:
  # Images stay encoded until after shuffling and skipping, so a resume never decodes the
  # examples it skips.
  ds = builder.as_dataset(
      split=split,
      shuffle_files=False,
      decoders={"image": tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(try_autocache=False))
  ds = ds.map(lambda ex: {"image": ex["image"], "label": ex["label"]})
  return ds.cache() if cache else ds


def _example_seed(seed: int, position: tf.Tensor) -> tf.Tensor:
  # One stateless seed per example occurrence: distinct across processes and positions.
  stream = tf.constant(seed * 1_000_003 + jax.process_index(), tf.int64)
  return tf.stack([stream, tf.cast(position, tf.int64)])


def _to_device_layout(batch: Batch, num_devices: int) -> Batch:
  return {k: v.reshape((num_devices, -1) + v.shape[1:]) for k, v in batch.items()}


def train_batches(config, builder, start_step: int, num_devices: int) -> Iterator[Batch]:
  """Endless training batches starting at ``start_step``.

  Args:
    config: the run config (reads ``seed``, ``batch_size``, ``dataset.*``).
    builder: from ``get_builder``.
    start_step: the first step to produce (the restored step when resuming).
    num_devices: local devices; batches are split between them.

  Yields:
    ``{'image': float32 [num_devices, per_device, H, W, C], 'label': int32 [num_devices,
    per_device]}`` (``features`` ``[num_devices, per_device, num_features]`` for a table).
  """
  if isinstance(builder, TabularData):
    yield from _tabular_train_batches(config, builder, start_step, num_devices)
    return
  dc = config.dataset
  split = tfds.split_for_jax_process(dc.train_split)
  batch = per_process_batch_size(config.batch_size)
  steps_per_epoch = _steps_per_epoch(config, builder)
  epoch_len = steps_per_epoch * batch
  decode = builder.info.features["image"].decode_example
  pp = preprocess.get_preprocess_fn(dc.train_pp)
  base = _read(builder, split, dc.cache)
  shuffle_buffer = dc.shuffle_buffer

  def epoch_examples(epoch):
    shuffle_seed = tf.cast(config.seed, tf.int64) * 100_003 + epoch
    ds = base.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    ds = ds.take(epoch_len).enumerate()
    return ds.map(lambda pos, ex: (epoch * epoch_len + pos, ex))

  start_epoch, offset = divmod(start_step, steps_per_epoch)
  ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch_examples)
  ds = ds.skip(offset * batch)

  def process(position, ex):
    image = decode(ex["image"])
    image = pp(image, _example_seed(config.seed, position))
    return {"image": tf.cast(image, tf.float32), "label": tf.cast(ex["label"], tf.int32)}

  ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = True
  ds = ds.with_options(options)
  for b in tfds.as_numpy(ds):
    yield _to_device_layout(b, num_devices)


def _tabular_train_batches(config, table: TabularData, start_step: int,
                           num_devices: int) -> Iterator[Batch]:
  # Epoch e is a permutation seeded by (seed, e); process p takes the p-th equal slice of it.
  features, labels = table.splits[config.dataset.train_split]
  per_process = len(labels) // jax.process_count()
  batch = per_process_batch_size(config.batch_size)
  steps_per_epoch = per_process // batch
  epoch, offset = divmod(start_step, steps_per_epoch)
  first = jax.process_index() * per_process
  while True:
    order = np.random.default_rng([config.seed, epoch]).permutation(len(labels))
    mine = order[first:first + per_process]
    for i in range(offset, steps_per_epoch):
      idx = mine[i * batch:(i + 1) * batch]
      yield _to_device_layout({"features": features[idx], "label": labels[idx]}, num_devices)
    epoch, offset = epoch + 1, 0


def eval_batches(config, builder, num_devices: int, split: str | None = None):
  """Every example of ``split`` (default: the eval split) once, in device layout, masked.

  ``EvalBatches`` for a TFDS dataset, ``TabularEvalBatches`` for a table.
  """
  if isinstance(builder, TabularData):
    return TabularEvalBatches(config, builder, num_devices, split)
  return EvalBatches(config, builder, num_devices, split)


class TabularEvalBatches:
  """This process's share of a table's split, every row once, padded and masked.

  Iterating yields ``{'features', 'label', 'mask'}`` shaped ``[num_devices, per_device, ...]``.
  """

  def __init__(self, config, table: TabularData, num_devices: int, split: str | None = None):
    self.batch_size = per_process_batch_size(config.eval_batch_size)
    self.num_devices = num_devices
    self._features, self._labels = table.splits[split or config.dataset.eval_split]
    shards = np.array_split(np.arange(len(self._labels)), jax.process_count())
    self._mine = shards[jax.process_index()]
    self.num_batches = math.ceil(max(len(s) for s in shards) / self.batch_size)

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[Batch]:
    for b in range(self.num_batches):
      idx = self._mine[b * self.batch_size:(b + 1) * self.batch_size]
      batch = {"features": self._features[idx], "label": self._labels[idx]}
      yield _to_device_layout(_pad_batch(batch, self.batch_size), self.num_devices)


def _eval_shard_sizes(builder, split: str) -> List[int]:
  return [_num_examples(builder, s) for s in tfds.even_splits(split, n=jax.process_count())]


class EvalBatches:
  """This process's share of the eval split, every example exactly once; iterable many times.

  Every process yields the same number of batches (fully masked padding batches where its
  share is smaller), because each batch is consumed by a collective step.

  Args:
    config: the run config (reads ``eval_batch_size``, ``seed``, ``dataset.*``).
    builder: from ``get_builder``.
    num_devices: local devices.
    split: the split to read (default ``config.dataset.eval_split``), preprocessed with
      ``dataset.eval_pp``.

  Iterating yields ``{'image', 'label', 'mask'}`` batches shaped
  ``[num_devices, per_device, ...]``; ``mask`` is 1.0 for real examples and 0.0 for padding.
  """

  def __init__(self, config, builder, num_devices: int, split: str | None = None):
    dc = config.dataset
    split = split or dc.eval_split
    self.batch_size = per_process_batch_size(config.eval_batch_size)
    self.num_devices = num_devices
    self.image_shape = (dc.image_size, dc.image_size, dc.channels)
    sizes = _eval_shard_sizes(builder, split)
    self.num_batches = math.ceil(max(sizes) / self.batch_size)
    split = tfds.even_splits(split, n=jax.process_count())[jax.process_index()]
    decode = builder.info.features["image"].decode_example
    pp = preprocess.get_preprocess_fn(dc.eval_pp)

    def process(position, ex):
      image = pp(decode(ex["image"]), _example_seed(config.seed, position))
      return {"image": tf.cast(image, tf.float32), "label": tf.cast(ex["label"], tf.int32)}

    ds = _read(builder, split, cache=False).take(sizes[jax.process_index()]).enumerate()
    ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE)
    if dc.cache:  # Small datasets: decode and preprocess once for all evaluations.
      ds = ds.cache()
    self._ds = ds.batch(self.batch_size).prefetch(tf.data.AUTOTUNE)

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[Batch]:
    produced = 0
    for b in tfds.as_numpy(self._ds):
      produced += 1
      yield _to_device_layout(_pad_batch(b, self.batch_size), self.num_devices)
    empty = {"image": np.zeros((0,) + self.image_shape, np.float32),
             "label": np.zeros((0,), np.int32)}
    for _ in range(self.num_batches - produced):
      yield _to_device_layout(_pad_batch(empty, self.batch_size), self.num_devices)


def _pad_batch(batch: Batch, size: int) -> Batch:
  n = batch["label"].shape[0]
  out = {k: np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)])
         for k, v in batch.items()}
  out["mask"] = (np.arange(size) < n).astype(np.float32)
  return out
