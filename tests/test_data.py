"""The TFDS pipeline: the bundled digits, determinism for (seed, step), exact evaluation."""

import collections
import hashlib
import itertools

import numpy as np
import pytest

from bagtricks import data
from conftest import tiny_config


@pytest.fixture(scope="module")
def digits(digits_data_dir):
  config = tiny_config(digits_data_dir)
  return config, data.get_builder(config.dataset)


def _key(image, label):
  return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest() + str(int(label))


def test_digits_split_is_the_fixed_stratified_split(digits):
  config, builder = digits
  info = data.dataset_info(config, builder)
  assert (info.num_train_examples, info.num_eval_examples, info.num_classes) == (1437, 360, 10)
  arrays = data.digits_arrays()
  x_test, y_test = arrays["test"]
  # Stratified: each class's share of the test split is within one example of 20 %.
  y_all = np.concatenate([arrays["train"][1], y_test])
  for c in range(10):
    assert abs((y_test == c).sum() - 0.2 * (y_all == c).sum()) <= 1
  # The stored TFDS split holds exactly those images and labels.
  import tensorflow_datasets as tfds
  stored = sorted(_key(ex["image"], ex["label"])
                  for ex in tfds.as_numpy(builder.as_dataset(split="test")))
  assert stored == sorted(_key(x, y) for x, y in zip(x_test, y_test))
  # Pixel values are 0..16 rescaled to 0..255.
  assert x_test.dtype == np.uint8 and x_test.max() == 255 and x_test.shape[1:] == (8, 8, 1)


def test_prepare_is_idempotent(digits_data_dir):
  data.prepare_sklearn_digits(digits_data_dir)  # already there: nothing rewritten
  assert data.get_builder(tiny_config(digits_data_dir).dataset).info.splits["train"]


def test_train_batches_shape_and_device_layout(digits):
  config, builder = digits
  batch = next(data.train_batches(config, builder, start_step=0, num_devices=8))
  assert batch["image"].shape == (8, 8, 8, 8, 1) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (8, 8) and batch["label"].dtype == np.int32


def test_batches_are_a_function_of_seed_and_step(digits):
  config, builder = digits
  steps_per_epoch = data.dataset_info(config, builder).steps_per_epoch  # 1437 // 64 = 22
  assert steps_per_epoch == 22
  full = list(itertools.islice(data.train_batches(config, builder, 0, 1), 26))
  again = list(itertools.islice(data.train_batches(config, builder, 0, 1), 26))
  for a, b in zip(full, again):
    np.testing.assert_array_equal(a["image"], b["image"])
  # Resuming at any step, inside an epoch or at its boundary, replays the same batches.
  for start in (3, 21, 22, 23):
    resumed = list(itertools.islice(data.train_batches(config, builder, start, 1), 3))
    for offset, batch in enumerate(resumed):
      np.testing.assert_array_equal(batch["image"], full[start + offset]["image"])
      np.testing.assert_array_equal(batch["label"], full[start + offset]["label"])
  # Each epoch is a different permutation, and a different seed changes the order.
  assert not np.array_equal(full[0]["label"], full[22]["label"])
  config.seed = 1
  other = next(data.train_batches(config, builder, 0, 1))
  config.seed = 0
  assert not np.array_equal(other["label"], full[0]["label"])


def test_epoch_visits_each_train_example_at_most_once(digits):
  config, builder = digits
  config.dataset.train_pp = "resize(8)"  # the identity on 8x8 images, so they can be matched
  try:
    epoch = list(itertools.islice(data.train_batches(config, builder, 0, 1), 22))
  finally:
    config.dataset.train_pp = tiny_config("").dataset.train_pp
  seen = collections.Counter(
      _key(img.astype(np.uint8), lab) for b in epoch for img, lab in zip(b["image"][0], b["label"][0]))
  x, y = data.digits_arrays()["train"]
  available = collections.Counter(_key(img, lab) for img, lab in zip(x, y))
  assert sum(seen.values()) == 22 * 64
  assert not seen - available  # a multiset inclusion: nothing drawn twice, nothing foreign


def test_eval_covers_the_split_exactly_once(digits):
  config, builder = digits
  eval_data = data.EvalBatches(config, builder, num_devices=8)
  batches = list(eval_data)
  assert len(batches) == len(eval_data) == 6  # ceil(360 / 64)
  masks = np.concatenate([b["mask"].reshape(-1) for b in batches])
  assert masks.sum() == 360 and masks.size == 6 * 64
  labels = np.concatenate([b["label"].reshape(-1) for b in batches])[masks == 1]
  np.testing.assert_array_equal(np.bincount(labels, minlength=10),
                                np.bincount(data.digits_arrays()["test"][1], minlength=10))
  # Iterating again (the next evaluation) gives the same batches.
  again = list(eval_data)
  for a, b in zip(batches, again):
    np.testing.assert_array_equal(a["image"], b["image"])


def test_missing_catalog_dataset_is_a_clear_error(tmp_path):
  config = tiny_config(str(tmp_path))
  config.dataset.name = "cifar10"
  with pytest.raises(data.DataError, match=r"not prepared.*tfds build cifar10"):
    data.get_builder(config.dataset)


def test_unknown_dataset_is_a_clear_error(tmp_path):
  config = tiny_config(str(tmp_path))
  config.dataset.name = "no_such_dataset_xyz"
  with pytest.raises(data.DataError, match="config.dataset.name"):
    data.get_builder(config.dataset)


def test_unknown_split_is_a_clear_error(digits_data_dir):
  config = tiny_config(digits_data_dir)
  config.dataset.eval_split = "validation"
  with pytest.raises(data.DataError, match="validation"):
    data.get_builder(config.dataset)
