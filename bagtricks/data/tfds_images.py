"""Any prepared TFDS image dataset → device-shaped NumPy batches.

One path serves every image dataset, from the bundled scikit-learn digits to ImageNet on a GCS
bucket: ``tfds.builder(name, data_dir)`` → per-process split → per-epoch seeded shuffle →
decode → per-example preprocessing ops (``preprocess.py``) → batches shaped
``[local_devices, per_device_batch, ...]``. It never downloads.

Determinism: the example order of epoch e is a seeded shuffle (seed, e) of a fixed-order
read, and every example's augmentation draws from a stateless seed made of (seed, process,
position in the stream). Hence the batch at step s is a pure function of (config, s): a run
resumed at step s sees exactly the batches an uninterrupted run would have seen. Resuming skips
the already-seen part of the current epoch before decoding, so its cost is bounded by reading
(not decoding) at most one epoch of records.

Evaluation reads each process's share of the split (``tfds.even_splits``) once, in order,
preprocessed with ``dataset.eval_pp``, padded and masked (``padded_eval``).

Sizes: ``dataset.image_size`` unset (``None``) is the dataset's own image size (its stored
feature shape, e.g. 8 for ``sklearn_digits`` and 28 for ``mnist_5k``), and ``{image_size}``
in ``dataset.train_pp`` or ``eval_pp`` stands for the size in use, so one recipe serves
datasets of several sizes (``random_resized_crop({image_size})``).

Subsets: ``dataset.train_split`` and ``eval_split`` take TFDS split expressions
(``'train[:10%]'`` trains on the first tenth), and ``dataset.classes`` keeps only the examples
of the listed classes, relabelled 0, 1, ... in the order given (``(5, 6, 7, 8, 9)`` makes a
5-class problem of the digits 5–9), in both splits. Counting a class subset reads the
split's labels once (images are not decoded).
"""

from __future__ import annotations

import os
from typing import Dict, Iterator, Optional, Sequence, Tuple

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import bagtricks.data.preprocess as preprocess
from bagtricks.data.base import (Batch, DataError, DatasetInfo, per_process_batch_size,
                                 steps_per_epoch, to_device_layout, with_dataset_defaults)
from bagtricks.data.padded_eval import PaddedEvalBatches, num_eval_batches


def resolve_data_dir(data_dir: str | None) -> str:
  """``data_dir`` or TFDS's default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``)."""
  return os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR)


def _read(builder, split: str, cache: bool, classes: Sequence[int] = ()) -> tf.data.Dataset:
  # Images stay encoded until after shuffling and skipping, so a resume never decodes the
  # examples it skips.
  ds = builder.as_dataset(
      split=split,
      shuffle_files=False,
      decoders={"image": tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(try_autocache=False))
  ds = ds.map(lambda ex: {"image": ex["image"], "label": ex["label"]})
  if classes:
    # Old label → position in `classes`, −1 for the classes left out.
    new_label = np.full(builder.info.features["label"].num_classes, -1, np.int64)
    new_label[list(classes)] = np.arange(len(classes))
    table = tf.constant(new_label)
    ds = ds.map(lambda ex: {"image": ex["image"],
                            "label": tf.gather(table, tf.cast(ex["label"], tf.int64))})
    ds = ds.filter(lambda ex: ex["label"] >= 0)
  return ds.cache() if cache else ds


def class_subset(config, num_classes: int) -> Tuple[int, ...]:
  """``config.dataset.classes`` checked against the dataset's ``num_classes`` (``()``: all).

  Raises:
    DataError: not distinct integers in [0, num_classes), or fewer than two.
  """
  classes = config.dataset.classes or ()
  ok = (isinstance(classes, (tuple, list)) and len(classes) >= 2
        and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < num_classes
                for c in classes)
        and len(set(classes)) == len(classes))
  if not ok:
    raise DataError(f"config.dataset.classes={classes!r} must be () (all classes) or at least "
                    f"two distinct class ids in [0, {num_classes}), e.g. (0, 1, 2, 3, 4); "
                    "they are relabelled 0, 1, ... in that order.")
  return tuple(classes)


IMAGE_SIZE_FIELD = "{image_size}"


def with_image_size(spec: str, image_size: int) -> str:
  """The preprocessing ``spec`` with ``{image_size}`` replaced by ``image_size``."""
  return spec.replace(IMAGE_SIZE_FIELD, str(image_size))


def _example_seed(seed: int, position: tf.Tensor) -> tf.Tensor:
  # One stateless seed per example occurrence: distinct across processes and positions.
  stream = tf.constant(seed * 1_000_003 + jax.process_index(), tf.int64)
  return tf.stack([stream, tf.cast(position, tf.int64)])


def prepared_builder(config, known_names: Sequence[str] = ()) -> tfds.core.DatasetBuilder:
  """The TFDS builder of ``config.dataset.name`` under ``config.dataset.data_dir``, checked to
  be prepared and to have ``config.dataset.train_split`` and ``eval_split``; never downloads.

  Args:
    config: the run config (reads ``dataset.name``, ``data_dir``, ``train_split``,
      ``eval_split``).
    known_names: the non-catalog dataset names to offer when the name is unknown.

  Raises:
    DataError: the dataset is unknown or not prepared, or a configured split does not exist.
  """
  dc = with_dataset_defaults(config).dataset
  name = dc.name
  data_dir = resolve_data_dir(dc.data_dir)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # TFDS raises several types for unknown names.
    raise DataError(
        f"config.dataset.name={name!r}: no such TFDS dataset under data_dir={data_dir!r} "
        f"({type(e).__name__}). Use a TFDS catalog name or one of the bundled or registered "
        f"sources {tuple(known_names)}.") from e
  if not builder.is_prepared():
    raise DataError(
        f"config.dataset.name={name!r} is not prepared under config.dataset.data_dir="
        f"{data_dir!r}. This project never downloads data; prepare it once with "
        f"`tfds build {name} --data_dir={data_dir}` (or copy a prepared copy there) and set "
        f"--config.dataset.data_dir to that directory.")
  for split in (dc.train_split, dc.eval_split):
    try:  # Also accepts TFDS split expressions such as 'train[:90%]'.
      builder.info.splits[split].num_examples
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(f"config.dataset split {split!r} does not exist in {name!r}; it has "
                      f"{sorted(builder.info.splits.keys())}.") from e
  return builder


class TfdsImageSource:
  """A ``Source`` over a prepared TFDS dataset with ``image`` and ``label`` features.

  Args:
    config: the run config (reads ``seed``, ``batch_size``, ``eval_batch_size`` and
      ``dataset.*``: ``name``, ``data_dir``, ``train_split``, ``eval_split``, ``image_size``,
      ``channels``, ``train_pp``, ``eval_pp``, and the optional ``config_defaults``).
    known_names: the non-catalog dataset names to offer when ``config.dataset.name`` is
      unknown.

  Attributes:
    builder: the prepared ``tfds.core.DatasetBuilder``.

  Raises:
    DataError: the dataset is unknown or not prepared, or a configured split does not exist.
  """

  # Every class; shuffled through a 10,000-example buffer; not cached in memory.
  config_defaults = {"classes": (), "shuffle_buffer": 10_000, "cache": False}

  # What an image recipe sets (configs/default.py) and a sequence or table config lacks.
  required_fields = ("image_size", "channels", "train_pp", "eval_pp")

  @classmethod
  def check_config(cls, config) -> None:
    """Raises ``DataError`` naming the image fields ``config.dataset`` lacks."""
    missing = [f for f in cls.required_fields if f not in config.dataset]
    if missing:
      raise DataError(
          f"config.dataset.name={config.dataset.name!r} is an image dataset, and this config "
          f"has no {', '.join('config.dataset.' + f for f in missing)}; use an image config "
          "(e.g. configs/default.py) for it, or a dataset of this config's kind.")

  def __init__(self, config, known_names: Sequence[str] = ()):
    self.check_config(config)
    config = with_dataset_defaults(config, self.config_defaults)
    self.config = config
    self.builder = prepared_builder(config, known_names)
    self.classes = ()
    if config.dataset.classes:
      self.classes = class_subset(config, self.builder.info.features["label"].num_classes)
    self.image_size = config.dataset.image_size or self._stored_image_size()
    self._counts: Dict[str, int] = {}

  def _stored_image_size(self) -> int:
    shape = self.builder.info.features["image"].shape
    if len(shape) != 3 or shape[0] is None or shape[0] != shape[1]:
      raise DataError(f"config.dataset.image_size is not set and {self.config.dataset.name!r} "
                      f"stores images of shape {shape}, not of one square size; set "
                      "config.dataset.image_size (e.g. 224).")
    return int(shape[0])

  def _preprocess_fn(self, spec: str):
    return preprocess.get_preprocess_fn(with_image_size(spec, self.image_size))

  def num_examples(self, split: str) -> int:
    """Examples in ``split`` (a TFDS split expression), of ``dataset.classes`` only if set."""
    if not self.classes:
      return self.builder.info.splits[split].num_examples
    if split not in self._counts:
      labels = _read(self.builder, split, cache=False, classes=self.classes).map(
          lambda ex: ex["label"])
      self._counts[split] = int(labels.reduce(np.int64(0), lambda n, _: n + 1))
      if not self._counts[split]:
        raise DataError(f"config.dataset.classes={self.classes!r}: split {split!r} of "
                        f"{self.config.dataset.name!r} has no example of these classes.")
    return self._counts[split]

  def _steps_per_epoch(self) -> int:
    # Every process reads an equal share of the train split.
    per_process_train = self.num_examples(
        tfds.split_for_jax_process(self.config.dataset.train_split))
    return steps_per_epoch(per_process_train, self.config.batch_size)

  def element_spec(self) -> Dict[str, jax.ShapeDtypeStruct]:
    """One preprocessed example: ``image`` float32 ``(image_size, image_size, channels)``."""
    size, channels = self.image_size, self.config.dataset.channels
    return {"image": jax.ShapeDtypeStruct((size, size, channels),
                                          np.float32),
            "label": jax.ShapeDtypeStruct((), np.int32)}

  def info(self) -> DatasetInfo:
    dc = self.config.dataset
    label = self.builder.info.features["label"]
    classes = self.classes or tuple(range(label.num_classes))
    return DatasetInfo(
        name=dc.name,
        num_classes=len(classes),
        num_train_examples=self.num_examples(dc.train_split),
        num_eval_examples=self.num_examples(dc.eval_split),
        steps_per_epoch=self._steps_per_epoch(),
        input_key="image",
        element_spec=self.element_spec(),
        class_names=tuple(label.names[c] for c in classes),
    )

  def train_batches(self, start_step: int, num_devices: int) -> Iterator[Batch]:
    """Endless training batches starting at ``start_step``, preprocessed with ``train_pp``.

    Yields:
      ``{'image': float32 [num_devices, per_device, H, W, C], 'label': int32 [num_devices,
      per_device]}``.
    """
    config, builder = self.config, self.builder
    dc = config.dataset
    split = tfds.split_for_jax_process(dc.train_split)
    batch = per_process_batch_size(config.batch_size)
    steps = self._steps_per_epoch()
    epoch_len = steps * batch
    decode = builder.info.features["image"].decode_example
    pp = self._preprocess_fn(dc.train_pp)
    base = _read(builder, split, dc.cache, self.classes)
    shuffle_buffer = dc.shuffle_buffer

    def epoch_examples(epoch):
      shuffle_seed = tf.cast(config.seed, tf.int64) * 100_003 + epoch
      ds = base.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
      ds = ds.take(epoch_len).enumerate()
      return ds.map(lambda pos, ex: (epoch * epoch_len + pos, ex))

    start_epoch, offset = divmod(start_step, steps)
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
    # Without tf.data's autotuner: deleting an iterator (the end of every run) waits for its
    # thread, which sleeps between optimizations for ever longer periods; that held the
    # default job 17-20 s after its last step in 4 of 14 runs, and none of 12 without it.
    # The pipeline ran no slower without it (170 against 156 digits batches/s).
    options.autotune.enabled = False
    ds = ds.with_options(options)
    for b in tfds.as_numpy(ds):
      yield to_device_layout(b, num_devices)

  def eval_batches(self, num_devices: int, split: Optional[str] = None) -> PaddedEvalBatches:
    """Every example of ``split`` (default ``config.dataset.eval_split``) exactly once.

    The split is preprocessed with ``dataset.eval_pp``, also when it is the train split.

    Returns:
      A re-iterable of ``{'image', 'label', 'mask'}`` batches shaped
      ``[num_devices, per_device, ...]``; ``mask`` is 1.0 for real examples, 0.0 for padding.
    """
    config, builder = self.config, self.builder
    dc = config.dataset
    split = split or dc.eval_split
    batch_size = per_process_batch_size(config.eval_batch_size)
    sizes = [self.num_examples(s) for s in tfds.even_splits(split, n=jax.process_count())]
    mine = tfds.even_splits(split, n=jax.process_count())[jax.process_index()]
    decode = builder.info.features["image"].decode_example
    pp = self._preprocess_fn(dc.eval_pp)

    def process(position, ex):
      image = pp(decode(ex["image"]), _example_seed(config.seed, position))
      return {"image": tf.cast(image, tf.float32), "label": tf.cast(ex["label"], tf.int32)}

    ds = _read(builder, mine, cache=False, classes=self.classes)
    ds = ds.take(sizes[jax.process_index()]).enumerate()
    ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE)
    if dc.cache:  # Small datasets: decode and preprocess once for all evaluations.
      ds = ds.cache()
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return PaddedEvalBatches(lambda: tfds.as_numpy(ds), num_eval_batches(sizes, batch_size),
                             batch_size, num_devices, self.element_spec())
