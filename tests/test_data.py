"""The data sources: the bundled digits through TFDS, in-memory arrays, the bundled tables,
determinism for (seed, step), exact evaluation and the source registry."""

import collections
import hashlib
import itertools

import jax
import numpy as np
import pytest

from bagtricks import data
from conftest import tiny_config


@pytest.fixture(scope="module")
def digits(digits_data_dir):
  config = tiny_config(digits_data_dir)
  return config, data.get_source(config)


def _key(image, label):
  return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest() + str(int(label))


# ------------------------------------------------------------------------------------------
# The digits through the TFDS image source.


def test_digits_split_is_the_fixed_stratified_split(digits):
  config, source = digits
  assert isinstance(source, data.TfdsImageSource) and isinstance(source, data.Source)
  info = source.info()
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
                  for ex in tfds.as_numpy(source.builder.as_dataset(split="test")))
  assert stored == sorted(_key(x, y) for x, y in zip(x_test, y_test))
  # Pixel values are 0..16 rescaled to 0..255.
  assert x_test.dtype == np.uint8 and x_test.max() == 255 and x_test.shape[1:] == (8, 8, 1)


def test_prepare_is_idempotent(digits_data_dir):
  data.prepare_sklearn_digits(digits_data_dir)  # already there: nothing rewritten
  assert data.get_source(tiny_config(digits_data_dir)).builder.info.splits["train"]


def test_train_batches_shape_and_device_layout(digits):
  config, source = digits
  info = source.info()
  assert info.input_key == "image" and info.input_shape == (8, 8, 1)
  assert info.element_spec == {"image": jax.ShapeDtypeStruct((8, 8, 1), np.float32),
                               "label": jax.ShapeDtypeStruct((), np.int32)}
  example = info.example_batch(2)
  assert example["image"].shape == (2, 8, 8, 1) and example["label"].dtype == np.int32
  batch = next(source.train_batches(start_step=0, num_devices=8))
  assert batch["image"].shape == (8, 8, 8, 8, 1) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (8, 8) and batch["label"].dtype == np.int32


def test_batches_are_a_function_of_seed_and_step(digits):
  config, source = digits
  steps_per_epoch = source.info().steps_per_epoch  # 1437 // 64 = 22
  assert steps_per_epoch == 22
  full = list(itertools.islice(source.train_batches(0, 1), 26))
  again = list(itertools.islice(source.train_batches(0, 1), 26))
  for a, b in zip(full, again):
    np.testing.assert_array_equal(a["image"], b["image"])
  # Resuming at any step, inside an epoch or at its boundary, replays the same batches.
  for start in (3, 21, 22, 23):
    resumed = list(itertools.islice(source.train_batches(start, 1), 3))
    for offset, batch in enumerate(resumed):
      np.testing.assert_array_equal(batch["image"], full[start + offset]["image"])
      np.testing.assert_array_equal(batch["label"], full[start + offset]["label"])
  # Each epoch is a different permutation, and a different seed changes the order.
  assert not np.array_equal(full[0]["label"], full[22]["label"])
  other_config = tiny_config(config.dataset.data_dir)
  other_config.seed = 1
  other = next(data.get_source(other_config).train_batches(0, 1))
  assert not np.array_equal(other["label"], full[0]["label"])


def test_epoch_visits_each_train_example_at_most_once(digits_data_dir):
  config = tiny_config(digits_data_dir)
  config.dataset.train_pp = "resize(8)"  # the identity on 8x8 images, so they can be matched
  epoch = list(itertools.islice(data.get_source(config).train_batches(0, 1), 22))
  seen = collections.Counter(
      _key(img.astype(np.uint8), lab) for b in epoch for img, lab in zip(b["image"][0], b["label"][0]))
  x, y = data.digits_arrays()["train"]
  available = collections.Counter(_key(img, lab) for img, lab in zip(x, y))
  assert sum(seen.values()) == 22 * 64
  assert not seen - available  # a multiset inclusion: nothing drawn twice, nothing foreign


def test_eval_covers_the_split_exactly_once(digits):
  config, source = digits
  eval_data = source.eval_batches(num_devices=8)
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


def test_batch_larger_than_the_train_split_is_a_clear_error(digits_data_dir):
  config = tiny_config(digits_data_dir)
  config.batch_size = 2048
  with pytest.raises(data.DataError, match="batch_size=2048 exceeds the 1437 train examples"):
    data.get_source(config).info()


def test_missing_catalog_dataset_is_a_clear_error(tmp_path):
  config = tiny_config(str(tmp_path))
  config.dataset.name = "cifar10"
  with pytest.raises(data.DataError, match=r"not prepared.*tfds build cifar10"):
    data.get_source(config)


def test_unknown_dataset_is_a_clear_error_listing_the_known_names(tmp_path):
  config = tiny_config(str(tmp_path))
  config.dataset.name = "no_such_dataset_xyz"
  with pytest.raises(data.DataError, match="config.dataset.name") as error:
    data.get_source(config)
  for name in ("sklearn_digits", "sklearn_iris", "sklearn_diabetes"):
    assert repr(name) in str(error.value)


def test_unknown_split_is_a_clear_error(digits_data_dir):
  config = tiny_config(digits_data_dir)
  config.dataset.eval_split = "validation"
  with pytest.raises(data.DataError, match="validation"):
    data.get_source(config)


# ------------------------------------------------------------------------------------------
# In-memory arrays, the registry and padding.


def _token_source(config, n=203, length=5):
  rng = np.random.default_rng(0)
  splits = {
      split: {"tokens": rng.integers(0, 1000, (size, length)).astype(np.int32),
              "label": rng.integers(0, 3, size).astype(np.int32),
              "row": np.arange(size, dtype=np.int32)}
      for split, size in (("train", n), ("test", 45))
  }
  return data.ArraySource(config, splits, input_key="tokens", num_classes=3)


def _token_config():
  config = tiny_config("")
  config.dataset.name = "toy_tokens"
  config.batch_size = 16
  config.eval_batch_size = 16
  return config


def test_array_source_of_tokens_keeps_dtype_layout_and_resumes():
  config = _token_config()
  source = _token_source(config)
  info = source.info()
  assert info.steps_per_epoch == 203 // 16 and info.input_shape == (5,)
  assert info.element_spec["tokens"] == jax.ShapeDtypeStruct((5,), np.int32)
  assert info.example_batch()["tokens"].dtype == np.int32
  full = list(itertools.islice(source.train_batches(0, 8), 30))
  assert full[0]["tokens"].shape == (8, 2, 5) and full[0]["tokens"].dtype == np.int32
  assert full[0]["label"].shape == (8, 2) and full[0]["label"].dtype == np.int32
  # One epoch draws no row twice, and the epoch order is np.random.default_rng([seed, epoch]).
  rows = np.concatenate([b["row"].ravel() for b in full[:12]])
  assert len(np.unique(rows)) == len(rows) == 12 * 16
  np.testing.assert_array_equal(rows, np.random.default_rng([0, 0]).permutation(203)[:192])
  for start in (5, 11, 12, 13, 25):
    resumed = list(itertools.islice(source.train_batches(start, 8), 3))
    for offset, batch in enumerate(resumed):
      for key in ("tokens", "label", "row"):
        np.testing.assert_array_equal(batch[key], full[start + offset][key])


def test_array_source_eval_covers_every_row_once():
  config = _token_config()
  source = _token_source(config)
  eval_data = source.eval_batches(8)
  batches = list(eval_data)
  assert len(batches) == len(eval_data) == 3  # ceil(45 / 16)
  assert batches[0]["tokens"].shape == (8, 2, 5) and batches[0]["tokens"].dtype == np.int32
  mask = np.concatenate([b["mask"].ravel() for b in batches])
  rows = np.concatenate([b["row"].ravel() for b in batches])
  assert mask.sum() == 45 and mask.dtype == np.float32
  np.testing.assert_array_equal(rows[mask > 0], np.arange(45))
  assert not np.any(np.concatenate([b["tokens"].reshape(-1, 5) for b in batches])[mask == 0])
  train_rows = np.concatenate([b["row"].ravel() for b in source.eval_batches(8, "train")])
  assert len(train_rows) == 13 * 16  # ceil(203 / 16) batches


def test_registered_source_is_found_and_unknown_names_are_listed(tmp_path):
  data.register_source("toy_tokens", _token_source)
  assert "toy_tokens" in data.source_names()
  assert set(data.SOURCE_NAMES) <= set(data.source_names())
  source = data.get_source(_token_config())
  assert isinstance(source, data.ArraySource) and source.info().input_key == "tokens"
  config = tiny_config(str(tmp_path))
  config.dataset.name = "toy_tokenz"
  with pytest.raises(data.DataError, match="toy_tokens"):
    data.get_source(config)
  config = _token_config()
  config.dataset.eval_split = "validation"
  with pytest.raises(data.DataError, match="'validation' does not exist"):
    data.get_source(config)


def test_pad_batch_pads_every_key_and_masks_the_padding():
  batch = {"tokens": np.array([[1, 2], [3, 4], [5, 6]], np.int32),
           "target": np.array([0.5, -1.0, 2.0], np.float32)}
  padded = data.pad_batch(batch, 5)
  np.testing.assert_array_equal(padded["tokens"], [[1, 2], [3, 4], [5, 6], [0, 0], [0, 0]])
  np.testing.assert_array_equal(padded["target"], [0.5, -1.0, 2.0, 0.0, 0.0])
  np.testing.assert_array_equal(padded["mask"], [1, 1, 1, 0, 0])
  assert padded["tokens"].dtype == np.int32 and padded["target"].dtype == np.float32
  assert padded["mask"].dtype == np.float32
  with pytest.raises(ValueError):
    data.pad_batch({"a": np.zeros(2), "b": np.zeros(3)}, 4)


# ------------------------------------------------------------------------------------------
# The bundled regression table.


def test_diabetes_is_a_seeded_regression_split_scaled_on_train_only():
  from sklearn.datasets import load_diabetes
  config = _token_config()
  config.dataset.name = "sklearn_diabetes"
  config.dataset.test_fraction = 0.25
  config.dataset.split_seed = 3
  source = data.get_source(config)
  assert isinstance(source, data.TabularSource)
  info = source.info()
  assert info.num_classes is None and info.class_names is None
  assert (info.num_train_examples, info.num_eval_examples) == (331, 111)  # 442 rows
  assert info.element_spec == {"features": jax.ShapeDtypeStruct((10,), np.float32),
                               "target": jax.ShapeDtypeStruct((), np.float32)}
  x_train, t_train = source.splits["train"]["features"], source.splits["train"]["target"]
  x_test, t_test = source.splits["test"]["features"], source.splits["test"]["target"]
  np.testing.assert_allclose(x_train.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(x_train.std(0), 1.0, atol=1e-4)
  # The test rows are scaled with the train rows' statistics, recomputed here from raw data
  # (a plain seeded split permutes row indices the way it permutes the rows).
  from sklearn.model_selection import train_test_split
  raw = load_diabetes(scaled=False)
  train_idx, test_idx = train_test_split(np.arange(442), test_size=0.25, random_state=3)
  mean, std = raw.data[train_idx].mean(0), raw.data[train_idx].std(0)
  np.testing.assert_allclose(x_train, (raw.data[train_idx] - mean) / std, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(x_test, (raw.data[test_idx] - mean) / std, rtol=1e-5, atol=1e-5)
  assert np.abs(x_test.mean(0)).max() > 0.05  # not standardized on its own statistics
  np.testing.assert_allclose(source.table.mean, mean)
  # The target keeps its own units (a disease progression score, 25..346) as float32.
  assert t_train.dtype == np.float32
  np.testing.assert_array_equal(t_test, raw.target[test_idx].astype(np.float32))
  # The same seed gives the same split; another seed another.
  again = data.load_tabular("sklearn_diabetes", 0.25, split_seed=3)
  np.testing.assert_array_equal(again.splits["test"][1], t_test)
  assert not np.array_equal(data.load_tabular("sklearn_diabetes", 0.25, 4).splits["test"][1],
                            t_test)
  batch = next(source.train_batches(0, 8))
  assert batch["features"].shape == (8, 2, 10) and batch["target"].dtype == np.float32
  assert set(batch) == {"features", "target"}
