"""Center-loss, Circle-loss and multi-label tasks: 1 vs 8 devices, data, metrics, errors."""

import os

import jax
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

import models
from bagtricks import data, losses, optim, precision
from bagtricks.studies import compare_embeddings, compare_multilabel
from bagtricks import steps, validate
from bagtricks.state import init_train_state
from bagtricks.tasks import CenterLossTask, CircleLossTask
from bagtricks.tasks.embedding import embedding_spread, recall_at_k
from bagtricks.tasks.multilabel import average_precision, mean_average_precision
from conftest import assert_trees_close, run_data_parallel
from configs import center_loss_digits, circle_loss_digits, default, multilabel_mosaic

GLOBAL_BATCH = 16


def _setup(task, **model_kwargs):
  config = default.get_config()
  # A two-stage ResNet-D keeps the compiles short; BatchNorm is synchronized over devices.
  model = models.ResNet(stage_sizes=(1, 1), block="basic", num_classes=10,
                        width_multiplier=0.125, small_stem=True, axis_name="batch",
                        **model_kwargs)
  tx = optim.build_optimizer(config, optim.warmup_cosine_schedule(0.1, 0, 10))
  rng = np.random.default_rng(0)
  # P = 4 classes × K = 4 examples, as the P×K sampler makes them.
  batch = {"image": rng.normal(size=(GLOBAL_BATCH, 8, 8, 1)).astype(np.float32),
           "label": np.repeat(np.arange(4), 4).astype(np.int32)}
  state = init_train_state(model, tx, task, {k: v[:1] for k, v in batch.items()}, seed=0)
  return state, steps.make_train_step(model, task, tx, precision.get_policy("fp32")), batch


def _assert_updates_close(start, a, b, tolerance):
  """The updates ``a - start`` and ``b - start`` agree within ``tolerance`` of the largest."""
  for s, x, y in zip(*(jax.tree_util.tree_leaves(t) for t in (start, a, b))):
    s, x, y = (np.asarray(v, np.float64) for v in (s, x, y))
    scale = np.max(np.abs(x - s))
    assert np.max(np.abs(x - y)) <= tolerance * scale + 1e-7, (np.max(np.abs(x - y)), scale)


@pytest.mark.slow
def test_centers_on_eight_devices_equal_one():
  task = CenterLossTask(10, feature_dim=2, center_weight=0.01, push_weight=0.1)
  state, step_fn, batch = _setup(task, feature_dim=2)
  one, m1 = run_data_parallel(state, step_fn, batch, 1)
  eight, m8 = run_data_parallel(state, step_fn, batch, 8)
  centers = np.asarray(one.task_state["centers"])
  # The update summed every device's examples: the same centers as one device.
  np.testing.assert_allclose(np.asarray(eight.task_state["centers"]), centers, atol=1e-5)
  assert_trees_close(one.params, eight.params, rtol=1e-5, atol=1e-5)
  assert m1["center_loss"] == pytest.approx(m8["center_loss"], abs=1e-5)
  # Classes 0-3 moved from zero, classes absent from the batch kept their zero centers.
  assert np.all(np.abs(centers[:4]).sum(axis=1) > 0) and not np.any(centers[4:])


@pytest.mark.slow
def test_pairwise_circle_loss_on_eight_devices_equals_one():
  task = CircleLossTask(10, form="pair", gamma=80.0)
  state, step_fn, batch = _setup(task, feature_dim=8)
  one, m1 = run_data_parallel(state, step_fn, batch, 1)
  eight, m8 = run_data_parallel(state, step_fn, batch, 8)
  # Each device holds 2 examples; only the gathered global batch gives them positives.
  assert m1["loss"] == pytest.approx(m8["loss"], rel=1e-4)
  # γ = 80 multiplies the float32 rounding of the similarities (summed in another order on 8
  # devices, with BatchNorm statistics from 8 partial sums) into the gradients: the updates
  # agree to about 1e-4 of their size, machine-dependent. Local batches without positives
  # would change the loss above, and the updates by their whole size.
  _assert_updates_close(state.params, one.params, eight.params, tolerance=1e-3)
  assert not np.allclose(np.asarray(one.params["feature"]["kernel"]),
                         np.asarray(state.params["feature"]["kernel"]))


def _small_resnet(**kwargs):
  return models.ResNet(stage_sizes=(1, 1), block="basic", num_classes=3,
                       width_multiplier=0.125, small_stem=True, **kwargs)


@pytest.mark.slow
def test_feature_layer_and_cosine_head():
  model = _small_resnet(feature_dim=4, cosine_head=True)
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype(np.float32)
  variables, out = jax.jit(lambda: model.init_with_output(jax.random.PRNGKey(0), x,
                                                          train=False)[::-1])()
  assert out["features"].shape == (2, 4) and out["logits"].shape == (2, 3)
  kernel = np.asarray(variables["params"]["head"]["kernel"])
  f = np.asarray(out["features"])
  want = (f / np.linalg.norm(f, axis=1, keepdims=True)) @ (
      kernel / np.linalg.norm(kernel, axis=0, keepdims=True))
  np.testing.assert_allclose(out["logits"], want, rtol=1e-5, atol=1e-6)
  # Without a feature layer the model returns its logits, as before.
  plain = _small_resnet()
  assert jax.eval_shape(lambda: plain.init_with_output(jax.random.PRNGKey(0), x,
                                                       train=False)[0]).shape == (2, 3)
  with pytest.raises(ValueError, match="feature_dim"):
    _small_resnet(feature_dim=-1)


def test_task_losses_on_given_outputs():
  # The tasks combine the pure losses as their docstrings say (no model involved).
  rng = np.random.default_rng(1)
  features = rng.normal(size=(6, 2)).astype(np.float32)
  logits = rng.normal(size=(6, 3)).astype(np.float32)
  labels = np.array([0, 1, 2, 0, 1, 1], np.int32)
  centers = rng.normal(size=(3, 2)).astype(np.float32)
  task = CenterLossTask(3, feature_dim=2, center_weight=0.01, push_weight=0.1)
  batch = task.prepare_train_batch({"label": labels})
  loss, state, metrics = task.loss({"logits": logits, "features": features}, batch,
                                   {"centers": centers}, None, None)
  want = np.mean(losses.classification_loss(logits, labels)
                 + 0.01 * losses.center_loss(features, labels, centers)
                 + 0.1 * losses.git_push_loss(features, labels, centers))
  assert float(loss) == pytest.approx(float(want), rel=1e-6)
  np.testing.assert_allclose(state["centers"],
                             losses.update_centers(centers, features, labels, 0.5))
  circle = CircleLossTask(3, form="class", gamma=80.0)
  cosines = np.tanh(logits)
  loss, _, metrics = circle.loss({"logits": cosines, "features": features}, {"label": labels},
                                 {}, None, None)
  assert float(loss) == pytest.approx(
      float(np.mean(losses.class_circle_loss(cosines, labels, 0.25, 80.0))), rel=1e-6)
  assert float(metrics["accuracy"]) == pytest.approx(np.mean(cosines.argmax(1) == labels))


def test_average_precision_against_sklearn_and_by_hand():
  # Hand case: ranked positives at ranks 1 and 3 → (1/1 + 2/3) / 2.
  assert average_precision(np.array([0.9, 0.8, 0.7, 0.1]),
                           np.array([1, 0, 1, 0], bool)) == pytest.approx(5 / 6)
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(50, 4))
  labels = rng.random((50, 4)) < 0.3
  labels[:, 3] = False  # a class without positives: no AP, left out of the mean
  per_class = [average_precision_score(labels[:, c], scores[:, c]) for c in range(3)]
  assert np.isnan(average_precision(scores[:, 3], labels[:, 3]))
  assert mean_average_precision(scores, np.where(labels, 1, -1)) == pytest.approx(
      np.mean(per_class))


def test_recall_at_k_and_spread_by_hand():
  # Two classes: (1, 0) and (0.9, 0.1) are each other's nearest (class 0), so are (−1, 0.2)
  # and (−1, −0.2) (class 1).
  emb = np.array([[1, 0], [0.9, 0.1], [-1, 0.2], [-1, -0.2], [0.8, 0.6]], np.float64)
  labels = np.array([0, 0, 1, 1, 1])
  # (0.8, 0.6)'s nearest is (0.9, 0.1) of class 0: a miss at k = 1; the rest hit.
  recall = recall_at_k(emb, labels, ks=(1, 4))
  assert recall == {"recall_at_1": pytest.approx(4 / 5), "recall_at_4": 1.0}
  spread = embedding_spread(np.array([[0, 0], [2, 0], [10, 0], [10, 2]], float),
                            np.array([0, 0, 1, 1]))
  # Means (1, 0) and (10, 1): every point is 1 away; the means √82 apart.
  assert spread["intra_class_spread"] == pytest.approx(1.0)
  assert spread["inter_class_distance"] == pytest.approx(np.sqrt(82))
  assert spread["spread_ratio"] == pytest.approx(1 / np.sqrt(82))


def test_pk_batches_and_mosaics():
  config = circle_loss_digits.get_config()
  source = data.get_source(config)
  first = next(source.train_batches(0, 2))
  assert first["image"].shape == (2, 32, 8, 8, 1)
  labels = first["label"].reshape(-1)
  classes, counts = np.unique(labels, return_counts=True)
  assert len(classes) == 8 and set(counts) == {8}  # P = 8 classes × K = 8
  again = next(source.train_batches(0, 1))  # a pure function of the step
  np.testing.assert_array_equal(again["label"].reshape(-1), labels)
  config.dataset.classes_per_batch = 7
  with pytest.raises(data.DataError, match="classes_per_batch"):
    data.get_source(config)

  made = data.digit_sets.make_mosaics(*data.digits_arrays()["test"], count=40,
                                      hidden_fraction=0.7, seed=0)
  full, partial = made["full_labels"], made["labels"]
  positives = (full > 0).sum(axis=1)
  assert positives.min() >= 1 and positives.max() <= 4
  assert set(np.unique(full)) == {-1, 1}
  np.testing.assert_array_equal((partial != 0).sum(axis=1), 3)  # 7 of 10 hidden
  np.testing.assert_array_equal(partial[partial != 0], full[partial != 0])
  # Filled cells hold digits; a mosaic has 2-4 of its 4 cells filled.
  cells = made["image"].reshape(40, 2, 8, 2, 8).transpose(0, 1, 3, 2, 4).reshape(40, 4, 64)
  filled = (cells.max(axis=2) > 0).sum(axis=1)
  assert filled.min() >= 2 and filled.max() <= 4 and np.all(filled >= positives)


def test_config_errors_name_their_fields():
  config = center_loss_digits.get_config()
  config.model.feature_dim = 0
  config.center_loss.center_alpha = 2.0
  with pytest.raises(validate.ConfigError) as error:
    validate.validate_config(config, 1)
  assert "config.model.feature_dim" in str(error.value)
  assert "config.center_loss.center_alpha" in str(error.value)
  config = circle_loss_digits.get_config()
  config.circle.form = "class"
  with pytest.raises(validate.ConfigError, match="config.model.cosine_head"):
    validate.validate_config(config, 1)
  config.circle.form = "triplet"
  with pytest.raises(validate.ConfigError, match="config.circle.form"):
    validate.validate_config(config, 1)
  config = multilabel_mosaic.get_config()
  config.multilabel.loss = "bce"
  with pytest.raises(validate.ConfigError, match="config.multilabel.loss"):
    validate.validate_config(config, 1)


def _tiny(config):
  # Two epochs of a two-stage ResNet-D (named by import path) keep the compiles short.
  config.num_epochs = 2
  config.schedule.warmup_epochs = 0.5
  config.model.name = "models.resnet:ResNet"
  config.model.stage_sizes = (1, 1)
  config.model.block = "basic"
  config.model.width_multiplier = 0.125
  config.checkpoint_every_steps = 1000


@pytest.mark.slow
def test_embedding_study_writes_picture_and_tables(tmp_path, digits_data_dir):
  def change(config):
    _tiny(config)
    if config.dataset.name == "sklearn_digits":
      config.dataset.data_dir = digits_data_dir

  # Two of the 2-D runs and one retrieval run (the command trains three and four).
  tables = compare_embeddings.run(str(tmp_path), 0, change,
                                  compare_embeddings.PICTURE_RUNS[::2],
                                  compare_embeddings.RETRIEVAL_RUNS[2:3])
  assert "| Git loss | 0.01 | 0.1 |" in tables and "Circle, pair-wise, γ = 80" in tables
  assert os.path.getsize(tmp_path / "embeddings.png") > 10_000
  assert "recall@1" in (tmp_path / "embeddings.md").read_text()


@pytest.mark.slow
def test_multilabel_study_table(tmp_path):
  def change(config):
    _tiny(config)
    config.dataset.num_train = 256
    config.dataset.num_test = 64
    config.num_epochs = 1

  rows = compare_multilabel.multilabel_rows(str(tmp_path), [0.7], [0], change,
                                           ("known_bce", "partial_bce"))
  table = compare_multilabel.markdown_table(rows, [0])
  assert "| 70 % | 3 of 10 | " in table and "partial-BCE |" in table and "oracle" not in table
  assert all(0 < rows[0][loss][0] <= 1 for loss in ("known_bce", "partial_bce"))
