"""Web digits, the self-organizing memory, the bag task (1 vs 8 devices) and its errors."""

import jax.numpy as jnp
import numpy as np
import pytest

from bagtricks import data, som_memory, train
from bagtricks.data import web_digits
from bagtricks.tasks import WebBagsTask
from conftest import (assert_field_named_before_training, assert_trees_close,
                      first_batch_model_and_sgd, train_on_one_and_eight_devices)
from configs import web_memory


def tiny_web_config():
  """30 scenes per label of the 8×8 digits on 32×32 canvases, bags of 2, a 1/16 ResNet."""
  config = web_memory.get_config()
  config.dataset.digits = "sklearn_digits"
  config.dataset.per_class = 30
  config.dataset.canvas = 32
  config.dataset.digit_size = (10, 14)
  config.dataset.test_digit_size = 12
  config.dataset.bag_size = 2
  config.batch_size = 8
  config.model.backbone.width_multiplier = 0.0625
  config.model.backbone.feature_dim = 8
  config.web_bags.grid = 3
  config.web_bags.warmup_epochs = 0.0
  config.num_epochs = 1.0
  config.schedule.warmup_epochs = 0.5
  config.log_every_steps = 5
  return config


def test_scenes_hold_their_digit_where_the_ground_truth_says():
  rng = np.random.default_rng(0)
  images = np.zeros((20, 8, 8), np.uint8)
  images[:, 2:6, 2:6] = 255  # A bright square stands for every digit.
  labels = np.repeat(np.arange(10), 2)
  regions = web_digits.REGION_SETS["grid3_whole"]
  scenes = web_digits.web_scenes(images, labels, 10, 0.4, 32, (8, 12), regions, seed=1)
  assert scenes["scene"].shape == (100, 32, 32)
  noisy = scenes["noisy"].reshape(10, 10)
  assert np.all(noisy.sum(axis=1) == 4)  # round(0.4 · 10) per class.
  true, web = scenes["true_label"], scenes["web_label"]
  np.testing.assert_array_equal(true[~scenes["noisy"]], web[~scenes["noisy"]])
  assert np.all(true[scenes["noisy"]] != web[scenes["noisy"]])
  assert np.any(true == -1) and np.any(true[scenes["noisy"]] >= 0)
  boxes = web_digits.region_boxes(regions, 32)
  assert boxes.tolist()[4] == [8, 8, 16] and boxes.tolist()[-1] == [0, 0, 32]
  crops = web_digits.crop_regions(scenes["scene"], regions, 16)
  assert crops.shape == (100, 10, 16, 16)
  for n in np.flatnonzero(true >= 0)[:20]:
    holds = scenes["holds_digit"][n]
    assert holds.any() and not holds[-1]  # Some grid crop; the whole image never counts.
    for k in np.flatnonzero(holds):  # The square's core (its middle 2×2) is in the crop.
      assert crops[n, k].max() == 255
  assert not scenes["holds_digit"][true < 0].any()
  del rng
  square = np.zeros((4, 4)); square[1:3, 1:3] = 1
  np.testing.assert_allclose(web_digits.resize(square, 8)[3:5, 3:5], 1.0)
  clean = web_digits.clean_digits(images[:1], 16, 8)
  assert clean.shape == (1, 16, 16) and clean[0, 4:12, 4:12].max() == 255
  assert clean[0, :4].max() == 0 and clean[0, 12:].max() == 0


def test_source_batches_bags_of_one_label():
  source = data.get_source(tiny_web_config())
  info = source.info()
  assert info.element_spec["regions"].shape == (2, 10, 16, 16, 1)
  assert info.steps_per_epoch == 300 // 2 // 8
  first, again = next(source.train_batches(3, 2)), next(source.train_batches(3, 2))
  for k in first:
    np.testing.assert_array_equal(first[k], again[k])
  assert first["regions"].shape == (2, 4, 2, 10, 16, 16, 1)
  labels = first["label"].reshape(-1)
  true = first["true_label"].reshape(8, 2)
  noisy = first["noisy"].reshape(8, 2)
  np.testing.assert_array_equal(true[~noisy], np.broadcast_to(labels[:, None], (8, 2))[~noisy])
  bags = source.splits["train_bags"]
  assert bags["regions"].shape[:2] == (150, 2)
  assert np.all(bags["true_label"][~bags["noisy"]] == np.repeat(bags["label"], 2).reshape(
      150, 2)[~bags["noisy"]])
  test = source.splits["test"]
  assert test["regions"].shape[1:] == (1, 1, 16, 16, 1) and not test["noisy"].any()


def _numpy_som_update(keys, values, features, labels, rate, width):
  """Kohonen's rule, ROI by ROI and slot by slot: each slot moves towards the mean of the
  ROIs that reach it."""
  slots, classes = values.shape
  grid = int(round(slots ** 0.5))
  pull_keys, pull_values = np.zeros_like(keys), np.zeros_like(values)
  mass = np.zeros(slots)
  for b in range(features.shape[0]):
    for x in features[b]:
      winner = int(np.argmin([np.sum((x - k) ** 2) for k in keys]))
      for l in range(slots):
        d2 = (l // grid - winner // grid) ** 2 + (l % grid - winner % grid) ** 2
        h = np.exp(-d2 / (2 * width ** 2))
        mass[l] += h
        pull_keys[l] += h * (x - keys[l])
        pull_values[l] += h * (np.eye(classes)[labels[b]] - values[l])
  scale = rate / np.maximum(mass, 1.0)[:, None]
  return keys + scale * pull_keys, values + scale * pull_values


def test_memory_update_and_weights_against_numpy():
  rng = np.random.default_rng(0)
  keys = rng.normal(size=(9, 2))
  values = rng.dirichlet(np.ones(3), size=9)
  rois = rng.normal(size=(3, 4, 2))  # 3 bags of 4 ROIs.
  labels = np.array([0, 2, 2])
  memory = som_memory.Memory(*(jnp.asarray(a, jnp.float32) for a in (keys, values)))
  got = som_memory.som_update(memory, jnp.asarray(rois, jnp.float32), jnp.asarray(labels),
                              0.5, jnp.float32(1.3))
  for g, e in zip(got, _numpy_som_update(keys, values, rois, labels, 0.5, 1.3)):
    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.sum(got.values, axis=1), 1.0, rtol=1e-6)
  # Weights by hand: r = v_{l,2} times d = 1 − entropy / log 3 of each ROI's nearest key.
  features = rng.normal(size=(1, 4, 2))
  nearest = [int(np.argmin(np.sum((keys - f) ** 2, axis=1))) for f in features[0]]
  d = 1 + np.sum(values * np.log(values), axis=1) / np.log(3)
  w = np.array([values[l, 2] * d[l] for l in nearest])
  alpha = som_memory.roi_weights(jnp.asarray(features, jnp.float32), jnp.array([2]), memory)
  np.testing.assert_allclose(alpha[0], w / w.sum(), rtol=1e-5)
  for scores, expected in (("discriminative", d[nearest]),
                           ("representative", values[nearest, 2])):
    only = som_memory.roi_weights(jnp.asarray(features, jnp.float32), jnp.array([2]), memory,
                                  scores)
    np.testing.assert_allclose(only[0], expected / expected.sum(), rtol=1e-5)
  # A one-class slot scores d near 1, a slot every class shares alike d = 0.
  sharp = memory._replace(values=jnp.asarray(np.eye(3)[np.arange(9) % 3] * 0.97 + 0.01,
                                             jnp.float32).at[4].set(1 / 3))
  d_sharp = som_memory.slot_scores(sharp, "discriminative")[:, 0]
  assert float(d_sharp[4]) == pytest.approx(0.0, abs=1e-6) and float(d_sharp[0]) > 0.75
  empty = memory._replace(values=jnp.full_like(memory.values, 1 / 3))  # A fresh memory.
  np.testing.assert_allclose(som_memory.roi_weights(jnp.asarray(features, jnp.float32),
                                                    jnp.array([2]), empty)[0], 0.25)
  for step, expected in ((0, 4.0), (5, 4.0 * 0.125 ** 0.5), (10, 0.5), (20, 0.5)):
    assert float(som_memory.exponential_decay(jnp.float32(step), 10, 4.0, 0.5)) == (
        pytest.approx(expected))


@pytest.mark.slow
def test_memory_and_model_on_eight_devices_equal_one():
  _, batch, model, tx = first_batch_model_and_sgd(tiny_web_config(), 0.1)
  task = WebBagsTask(10, 8, grid=3, total_steps=10)
  start, (one, m1), (eight, m8) = train_on_one_and_eight_devices(model, task, tx, batch)
  # Each device holds one bag; the memory's sums run over all of them.
  assert_trees_close(one.task_state, eight.task_state, rtol=1e-4, atol=1e-5)
  assert not np.allclose(one.task_state["memory"]["keys"], start.task_state["memory"]["keys"])
  assert m1["loss"] == pytest.approx(m8["loss"], rel=1e-4)
  assert_trees_close(one.params, eight.params, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("field, value, message", [
    ("dataset.bag_size", 40, "config.dataset.bag_size=40 is more than the 30 images"),
    ("dataset.regions", "grid5", "config.dataset.regions='grid5' is unknown"),
    ("dataset.digit_size", (10, 20), r"config.dataset.digit_size=\(10, 20\) must be"),
    ("web_bags.pooling", "sum", "config.web_bags.pooling='sum' is unknown"),
    ("web_bags.scores", "none", "config.web_bags.scores='none' is unknown"),
    ("web_bags.learning_rate", (0.5, 0.0), r"config.web_bags.learning_rate=\(0.5, 0.0\) must "
     r"be \(start, end\) in \(0, 1\]"),
    ("web_bags.pooling", "whole_image", "config.web_bags.pooling='whole_image' trains on "
     "whole images: set config.dataset.regions='whole'"),
])
def test_bad_fields_are_named_before_anything_compiles(tmp_path, field, value, message):
  assert_field_named_before_training(tiny_web_config(), field, value, message, tmp_path / "run")


@pytest.mark.parametrize("pooling", ["memory", pytest.param("whole_image",
                                                           marks=pytest.mark.slow)])
def test_training_reports_clean_accuracy(tmp_path, pooling):
  config = tiny_web_config()
  config.num_epochs = 0.5
  config.schedule.warmup_epochs = 0.1
  config.web_bags.pooling = pooling
  if pooling == "whole_image":
    config.dataset.regions, config.dataset.region_side = "whole", 32
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["test_examples"] == 360 and 0 <= summary["test_accuracy"] <= 1


def test_weight_metrics_by_hand_and_auc_against_sklearn():
  from sklearn.metrics import roc_auc_score
  from bagtricks.tasks.web_bags import noisy_image_auc, weight_on_digit
  alpha = np.array([[[0.3, 0.1, 0.1], [0.2, 0.0, 0.3]]])  # One bag of 2 images, 3 regions.
  holds = np.array([[[True, False, False], [False, False, True]]])
  np.testing.assert_allclose(weight_on_digit(alpha, holds, np.array([[False, False]])),
                             np.mean([0.3 / 0.5, 0.3 / 0.5]))
  assert weight_on_digit(alpha, holds, np.array([[False, True]])) == pytest.approx(0.6)
  rng = np.random.default_rng(0)
  weights = rng.random(200).round(1)  # Ties included.
  noisy = rng.random(200) < 0.4
  assert noisy_image_auc(weights, noisy) == pytest.approx(roc_auc_score(~noisy, weights))


@pytest.mark.slow
def test_web_study_table_and_picture(tmp_path):
  from bagtricks.studies import web_study
  config = tiny_web_config()
  config.num_epochs = 0.5
  config.schedule.warmup_epochs = 0.1
  rows = web_study.seed_rows(config, str(tmp_path), 0, keep_examples=True,
                            methods=("memory", "whole_image"))
  memory = rows[1]
  assert 0 <= memory["weight_on_digit"] <= 1 and 0 <= memory["noisy_auc"] <= 1
  assert rows[0]["weight_on_digit"] is None
  assert len(memory["examples"]["label"]) == web_study.EXAMPLE_BAGS
  table = web_study.markdown_table(rows, [0])
  assert "| memory: r-score · d-score |" in table and " | – | – |" in table
  assert "MIL" not in table  # Methods not run are left out.
