"""The walkers as P×K sets, the gait task (1 vs 8 devices, loss, protocol) and its errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from bagtricks import data, optim, train
from bagtricks.data import gait, gait_sets
from bagtricks.tasks import GaitTask
from conftest import assert_trees_close, train_on_one_and_eight_devices
from configs import gaitset_walkers
from test_gaitset import _triplet_reference


def tiny_gait_config(data_dir: str):
  """6 walkers (3 test people) at 3 views, 4 frames of 16×11, a GaitSet of width 4-8-8."""
  config = gaitset_walkers.get_config()
  config.dataset.data_dir = data_dir
  config.dataset.identities = 6
  config.dataset.test_identities = 3
  config.dataset.views = (0, 90, 162)
  config.dataset.frames = 4
  config.dataset.set_size = 3
  config.dataset.height = 16
  config.dataset.width = 11
  config.dataset.classes_per_batch = 2
  config.batch_size = 8
  config.eval_batch_size = 16
  config.model.scales = (1, 2, 4)
  config.model.embedding_dim = 8
  config.model.channels = (4, 8, 8)
  config.num_epochs = 1
  config.schedule.warmup_epochs = 0.5
  config.log_every_steps = 5
  return config


@pytest.fixture(scope="module")
def gait_data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("gait"))


def test_pk_sets_and_test_split(gait_data_dir):
  config = tiny_gait_config(gait_data_dir)
  source = data.get_source(config)
  info = source.info()
  assert info.element_spec["frames"].shape == (3, 16, 11) and info.num_classes == 3
  # 3 training people × 10 sequences × 3 views.
  assert info.num_train_examples == 90 and info.num_eval_examples == 90
  drawn = gait.gait_sequences(6, 4, 16, 11, 0, (0, 90, 162))
  first, again = next(source.train_batches(7, 2)), next(source.train_batches(7, 2))
  for k in first:
    np.testing.assert_array_equal(first[k], again[k])
  assert first["frames"].shape == (2, 4, 3, 16, 11)
  labels = first["label"].reshape(-1)
  assert len(set(labels[:4])) == 1 and len(set(labels[4:])) == 1 and labels[0] != labels[4]
  for row in range(8):  # Each set: frames of its own sequence.
    frames = first["frames"].reshape(8, 3, 16, 11)[row]
    meta = {k: first[k].reshape(-1)[row] for k in ("person", "view", "condition", "sequence")}
    index = np.flatnonzero(np.all([drawn[k] == v for k, v in meta.items()], axis=0))[0]
    stored = drawn["frames"][index] / 255.0
    assert all(np.any(np.all(stored == f, axis=(1, 2))) for f in frames)
  picks = gait_sets.chosen_frames(50, 4, 3, np.random.default_rng(0))
  assert all(len(set(row)) == 3 for row in picks) and picks.min() == 0 and picks.max() == 3
  batches = list(source.eval_batches(1))
  assert batches[0]["frames"].shape[2] == 4  # Every frame of a test sequence.
  assert set(np.concatenate([b["person"][b["mask"] > 0] for b in batches])) == {3, 4, 5}
  config.dataset.eval_frames = 2
  assert next(iter(data.get_source(config).eval_batches(1)))["frames"].shape[2] == 2


@pytest.mark.parametrize("field, value, message", [
    ("dataset.set_size", 5, "config.dataset.set_size=5 asks more frames than the 4"),
    ("dataset.eval_frames", 9, "config.dataset.eval_frames=9 must be in 0..4"),
    ("dataset.views", (0, 45), "config.dataset.views=(0, 45) must be at least 2 distinct"),
    ("dataset.classes_per_batch", 3, "config.dataset.classes_per_batch=3 must be in 2..3"),
    ("model.scales", (1, 3), "config.model.scales=(1, 3): each must divide the feature map's 4"),
    ("model.set_pooling", "sum", "config.model.set_pooling='sum' is unknown"),
    ("triplet.margin", -0.1, "config.triplet.margin=-0.1 must be >= 0"),
])
def test_bad_fields_are_named_before_anything_compiles(tmp_path, gait_data_dir, field, value,
                                                      message):
  section, name = field.split(".")
  # The dataset's fields are checked before any walker is drawn.
  data_dir = str(tmp_path / "never_written") if section == "dataset" else gait_data_dir
  config = tiny_gait_config(data_dir)
  config[section][name] = value
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "never_written").exists() and not (tmp_path / "run").exists()


def test_task_loss_against_numpy_and_its_metrics():
  rng = np.random.default_rng(0)
  outputs = rng.normal(size=(8, 3, 4)).astype(np.float32) * 0.3  # [batch, strips, D]
  labels = np.array([0, 0, 1, 1, 2, 2, 2, 3], np.int32)
  loss, _, metrics = GaitTask().loss(jnp.asarray(outputs), {"label": jnp.asarray(labels)},
                                     {}, None, None)
  expected, counts = _triplet_reference(np.swapaxes(outputs, 0, 1), labels, 0.2)
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  assert float(metrics["full_loss_num"]) == pytest.approx(counts.mean())
  d = np.linalg.norm(outputs[:, None] - outputs[None], axis=-1)  # [B, B, strips]
  same = labels[:, None] == labels[None]
  positive = same & ~np.eye(8, dtype=bool)
  assert float(metrics["positive_distance"]) == pytest.approx(d[positive].mean(), rel=1e-5)
  assert float(metrics["negative_distance"]) == pytest.approx(d[~same].mean(), rel=1e-5)


@pytest.mark.slow
def test_gait_task_on_eight_devices_equals_one(gait_data_dir):
  config = tiny_gait_config(gait_data_dir)
  source = data.get_source(config)
  batch = {k: v.reshape((-1,) + v.shape[2:])
           for k, v in next(source.train_batches(0, 1)).items()}
  batch = {k: np.concatenate([v, v]) for k, v in batch.items()}  # 16 sets, 2 per device.
  model = models.create_model_from_config(config, source.info())
  # SGD: the update is linear in the gradient (Adam's first step is its sign).
  config.optimizer.name = "sgd"
  tx = optim.build_optimizer(config, optim.warmup_cosine_schedule(0.1, 0, 10))
  start, (one, m1), (eight, m8) = train_on_one_and_eight_devices(model, GaitTask(), tx, batch)
  assert m1["loss"] == pytest.approx(m8["loss"], rel=1e-5)
  assert m1["full_loss_num"] == pytest.approx(m8["full_loss_num"])
  assert_trees_close(one.params, eight.params, rtol=1e-5, atol=1e-6)
  assert not np.allclose(jax.tree_util.tree_leaves(one.params)[0],
                         jax.tree_util.tree_leaves(start.params)[0])


def test_training_reports_rank1_by_the_protocol(tmp_path, gait_data_dir):
  config = tiny_gait_config(gait_data_dir)
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["test_examples"] == 90
  for probe in ("nm", "bg", "cl"):
    per_view = [summary[f"test_rank1_{probe}_{v}"] for v in (0, 90, 162)]
    assert summary[f"test_rank1_{probe}"] == pytest.approx(np.mean(per_view))
    assert all(0.0 <= r <= 1.0 for r in per_view)


@pytest.mark.slow
def test_gait_study_trains_and_writes_its_tables(tmp_path, gait_data_dir):
  from bagtricks.studies import gait_study
  config = tiny_gait_config(gait_data_dir)
  run_dir = str(tmp_path / "gaitset_s0")
  results = gait_study.trained_results(config, run_dir, set_sizes=(1, 4))
  assert set(results["set_sizes"]) == {1, 4}
  assert all(0 <= v <= 1 for r in results["set_sizes"].values() for v in r.values())
  mixed = results["mixed_views"]
  assert mixed["pairs"] == [(0, 90)] and 0 <= mixed["mixed"] <= 1
  test = data.get_source(config).splits["test"]
  gei = gait_study.gei_results(test)
  # NM probes of a view against the NM gallery of the same view: well above chance (1/3),
  # though 4 frames cover a sixth of a gait cycle, so each GEI depends on its start phase.
  tables = gait.rank1_by_view(test["frames"].mean(axis=1).reshape(90, -1), test, (0, 90, 162))
  assert np.mean(np.diag(tables["NM"])) > 0.6
  assert len(gei["NM"]["per_view"]) == 3
  table = gait_study.markdown_table({"GEI": [gei], "GaitSet": [results["protocol"]]},
                                    [results], 3, [0], (0, 90, 162))
  assert "| GaitSet | CL |" in table and "162°" in table and "| 4 |" in table
  assert "0°+90°" in table
  path = tmp_path / "gait.png"
  gait_study.plot({"methods": {"GEI": [gei]}, "views": (0, 90, 162),
                   "examples": gait_study.examples_of_first_person(test, (0, 90, 162))},
                  str(path))
  assert path.stat().st_size > 0
