"""Fine-tuning: schedule stretching, parameter groups, init_from, class subsets of the data."""

import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from bagtricks import checkpoint, data, finetune, optim, tasks, train, validate
from bagtricks.state import variable_shapes
from conftest import tiny_config
from configs import default

# --------------------------------------------------------------------------------------------
# config.schedule_multiplier


def _stretched(name, multiplier, **schedule):
  config = default.get_config()
  config.num_epochs = 10
  config.schedule.name = name
  config.schedule.warmup_epochs = 1.5
  config.schedule_multiplier = multiplier
  for key, value in schedule.items():
    config.schedule[key] = value
  return config


@pytest.mark.parametrize("multiplier", [1.0, 2.0, 3.0, 6.0])
def test_step_schedule_boundaries_stretch_exactly(multiplier):
  # 10 steps/epoch, batch 256 → η = 0.1; warm-up 1.5 epochs, decay at epochs 3 and 7.
  config = _stretched("step", multiplier, decay_epochs=(3, 7))
  schedule = optim.build_schedule(config, steps_per_epoch=10, global_batch_size=256)
  warmup, first, second = (round(e * multiplier * 10) for e in (1.5, 3, 7))
  assert optim.total_steps(config, 10) == round(100 * multiplier)
  assert float(schedule(warmup // 2)) == pytest.approx(0.1 * (warmup // 2) / warmup)
  assert float(schedule(warmup)) == pytest.approx(0.1)
  assert float(schedule(first - 1)) == pytest.approx(0.1)
  assert float(schedule(first)) == pytest.approx(0.01)
  assert float(schedule(second - 1)) == pytest.approx(0.01)
  assert float(schedule(second)) == pytest.approx(0.001)


@pytest.mark.parametrize("multiplier", [1.0, 3.0])
def test_cosine_and_constant_schedules_stretch_exactly(multiplier):
  config = _stretched("cosine", multiplier)
  schedule = optim.build_schedule(config, steps_per_epoch=10, global_batch_size=256)
  m, total = round(15 * multiplier), round(100 * multiplier)
  for step in (0, m - 1, m, (m + total) // 2, total - 1, total):
    t = min(max(step - m, 0), total - m)
    expected = (0.1 * step / m if step < m
                else 0.5 * (1 + math.cos(math.pi * t / (total - m))) * 0.1)
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-8)
  constant = optim.build_schedule(_stretched("constant", multiplier), 10, 256)
  assert float(constant(m - 1)) == pytest.approx(0.1 * (m - 1) / m)
  assert float(constant(m)) == pytest.approx(0.1)


def test_noam_warmup_stretches():
  config = _stretched("noam", 3.0, model_dim=16, warmup_steps=40, scale=1.0)
  schedule = optim.build_schedule(config, steps_per_epoch=10, global_batch_size=256)
  values = np.array([float(schedule(i)) for i in range(200)])
  # Peak at step_num = 3·40 = 120, i.e. update 119, with value (16·120)^−½.
  assert int(np.argmax(values)) == 119
  assert values[119] == pytest.approx((16 * 120) ** -0.5, rel=1e-5)


def test_augmentation_epochs_stretch_with_the_schedule():
  # mixup off for the last 2 epochs and a GridMask ramp of 4 epochs, at 10 steps/epoch and
  # 3×: off for the last 60 of 300 steps, ramp over 120 steps.
  from bagtricks import hooks
  config = _stretched("cosine", 3.0)
  config.augment.mixup_alpha = 0.2
  config.augment.mix_off_epochs = 2.0
  config.augment.gridmask.prob = 0.5
  config.augment.gridmask.ramp_epochs = 4.0
  total = optim.total_steps(config, 10)
  built = hooks.build_step_hooks(config, tasks.create_task(config, _digits_info()), {},
                                 optim.build_schedule(config, 10, 256), 10, total)
  augment = built[0].augment
  assert (total, augment.mix_until_step, augment.gridmask_ramp_steps) == (300, 240, 120)


def _digits_info():
  return data.DatasetInfo(
      name="digits", num_classes=10, num_train_examples=100, num_eval_examples=10,
      steps_per_epoch=10, input_key="image",
      element_spec={"image": jax.ShapeDtypeStruct((8, 8, 1), np.float32),
                    "label": jax.ShapeDtypeStruct((), np.int32)})


@pytest.mark.parametrize("value", [0.0, -2.0])
def test_bad_schedule_multiplier_is_a_config_error(value):
  config = default.get_config()
  config.schedule_multiplier = value
  with pytest.raises(validate.ConfigError, match="config.schedule_multiplier"):
    validate.validate_config(config, 1)


# --------------------------------------------------------------------------------------------
# Parameter groups: per-group learning-rate multipliers and frozen groups.

PARAMS = {"stem": {"kernel": jnp.ones((2, 3))}, "block": {"kernel": jnp.ones((3, 3)),
                                                          "bias": jnp.ones((3,))},
          "head": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}}


def _sgd_config(groups, momentum=0.0):
  config = default.get_config()
  config.optimizer.momentum = momentum
  config.optimizer.weight_decay = 0.01
  config.optimizer.param_groups = groups
  return config


def test_param_group_labels_take_the_first_matching_pattern():
  groups = [("stem", "^stem/", 0.0), ("head", "^head/", 10.0), ("kernels", "kernel$", 2.0)]
  labels = optim.param_group_labels(PARAMS, groups)
  assert labels == {"stem": {"kernel": "stem"}, "block": {"kernel": "kernels",
                                                          "bias": "default"},
                    "head": {"kernel": "head", "bias": "head"}}


def test_group_updates_are_hand_computed_sgd_scaled_or_zero():
  # Plain SGD with L2 decay on kernels only: Δw = −η·m_g·(g + λ·w·[kernel]).
  groups = (("stem", "^stem/", 0.0), ("head", "^head/", 10.0))
  config = _sgd_config(groups)
  eta, lam = 0.5, 0.01
  tx = optim.build_optimizer(config, eta)
  params = jax.tree_util.tree_map(lambda x: 2.0 * x, PARAMS)
  grads = jax.tree_util.tree_map(lambda x: 0.3 * x, PARAMS)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["stem"]["kernel"], 0.0)
  np.testing.assert_allclose(updates["block"]["kernel"], -eta * (0.3 + lam * 2.0), rtol=1e-6)
  np.testing.assert_allclose(updates["block"]["bias"], -eta * 0.3, rtol=1e-6)
  np.testing.assert_allclose(updates["head"]["kernel"], -eta * 10 * (0.3 + lam * 2.0),
                             rtol=1e-6)
  np.testing.assert_allclose(updates["head"]["bias"], -eta * 10 * 0.3, rtol=1e-6)


def test_group_multiplier_scales_momentum_updates_over_several_steps():
  # Nesterov momentum is linear in the gradients: the head's updates stay 10x the ungrouped
  # optimizer's at every step; the frozen stem never moves.
  grouped = optim.build_optimizer(_sgd_config((("stem", "^stem/", 0.0),
                                               ("head", "^head/", 10.0)), 0.9), 0.1)
  plain = optim.build_optimizer(_sgd_config((), 0.9), 0.1)
  params = PARAMS
  g_state, p_state = grouped.init(params), plain.init(params)
  for i in range(3):
    grads = jax.tree_util.tree_map(lambda x: (i + 1.0) * x, PARAMS)
    g_up, g_state = grouped.update(grads, g_state, params)
    p_up, p_state = plain.update(grads, p_state, params)
    np.testing.assert_allclose(g_up["head"]["kernel"], 10 * p_up["head"]["kernel"], rtol=1e-5)
    np.testing.assert_allclose(g_up["block"]["kernel"], p_up["block"]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(g_up["stem"]["kernel"], 0.0)


@pytest.mark.parametrize("groups, message", [
    ((("a", "[", 1.0),), "not a regular expression"),
    ((("a", "x", -1.0),), "lr_multiplier -1.0"),
    ((("a", "x", "fast"),), "lr_multiplier 'fast'"),
    ((("default", "x", 1.0),), "group name 'default'"),
    ((("a", "x", 1.0), ("a", "y", 1.0)), "group name 'a'"),
    ((("a", "x"),), "triple"),
])
def test_bad_param_groups_are_config_errors(groups, message):
  config = _sgd_config(groups)
  with pytest.raises(validate.ConfigError, match="config.optimizer.param_groups") as info:
    validate.validate_config(config, 1)
  assert message in str(info.value)


def test_group_matching_no_parameter_names_it():
  problems = optim.unmatched_param_groups(PARAMS, [("head", "^head/", 1.0),
                                                   ("backbone", "^backbone", 0.0)])
  assert len(problems) == 1 and "'backbone'" in problems[0] and "head/kernel" in problems[0]


# --------------------------------------------------------------------------------------------
# init_from: matching by name and shape.


def _shapes(tree):
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.float32), tree)


def test_plan_loads_matches_reinitializes_the_head_and_lists_the_rest():
  model = {"params": {"conv": {"kernel": np.zeros((3, 3, 1, 4))},
                      "extra": {"bias": np.zeros((4,))},
                      "head": {"kernel": np.zeros((4, 10)), "bias": np.zeros((10,))}},
           "batch_stats": {"norm": {"mean": np.zeros((4,)), "var": np.zeros((4,))}}}
  ckpt = {"params": {"conv": {"kernel": np.full((3, 3, 1, 4), 2.0)},
                     "head": {"kernel": np.ones((4, 5)), "bias": np.ones((5,))},
                     "old": {"kernel": np.ones((2, 2))}},
          "batch_stats": {"norm": {"mean": np.full((4,), 3.0), "var": np.full((4,), 4.0)}}}
  plan = finetune.plan_init(_shapes(model), ckpt, num_outputs=10)
  assert plan.loaded == ["params/conv/kernel", "batch_stats/norm/mean", "batch_stats/norm/var"]
  assert plan.reinitialized == ["params/head/bias", "params/head/kernel"]
  assert plan.new == ["params/extra/bias"] and plan.unused == ["params/old/kernel"]
  np.testing.assert_array_equal(plan.values["params/conv/kernel"], 2.0)
  np.testing.assert_array_equal(plan.values["batch_stats/norm/var"], 4.0)
  # The same class count loads the head, unless init_reinit says otherwise.
  same = {**ckpt, "params": {**ckpt["params"], "head": {"kernel": np.ones((4, 10)),
                                                        "bias": np.ones((10,))}}}
  assert "params/head/kernel" in finetune.plan_init(_shapes(model), same, 10).loaded
  reset = finetune.plan_init(_shapes(model), same, 10, reinit_pattern="^head/")
  assert reset.reinitialized == ["params/head/bias", "params/head/kernel"]


def test_plan_refuses_a_shape_mismatch_naming_every_variable():
  model = {"params": {"conv": {"kernel": np.zeros((3, 3, 1, 4))},
                      "dense": {"kernel": np.zeros((4, 6))}, "head": {"bias": np.zeros((10,))}}}
  ckpt = {"params": {"conv": {"kernel": np.zeros((3, 3, 1, 8))},
                     "dense": {"kernel": np.zeros((8, 6))}, "head": {"bias": np.zeros((5,))}}}
  with pytest.raises(finetune.InitFromError) as info:
    finetune.plan_init(_shapes(model), ckpt, num_outputs=10, source="runs/wide")
  message = str(info.value)
  assert "2 variable(s)" in message and "config.init_reinit" in message
  assert "params/conv/kernel has shape (3, 3, 1, 8) in the checkpoint and (3, 3, 1, 4)" in message
  assert "params/dense/kernel" in message and "head" not in message
  with pytest.raises(finetune.InitFromError, match="another architecture"):
    finetune.plan_init(_shapes(model), {"params": {"w": np.zeros(2)}}, num_outputs=10)


def test_init_from_fields_are_checked():
  config = default.get_config()
  config.init_reinit = "("
  with pytest.raises(validate.ConfigError) as info:
    validate.validate_config(config, 1)
  assert "config.init_reinit='('" in str(info.value) and "config.init_from" in str(info.value)


# --------------------------------------------------------------------------------------------
# Class subsets.


def test_class_subset_relabels_and_counts_both_splits(digits_data_dir):
  config = tiny_config(digits_data_dir)
  config.dataset.classes = (7, 2, 9)
  source = data.get_source(config)
  info = source.info()
  arrays = data.digits_arrays()
  expected = {s: np.isin(arrays[s][1], (7, 2, 9)).sum() for s in ("train", "test")}
  assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (
      3, expected["train"], expected["test"])
  assert info.class_names == ("7", "2", "9")

  def eval_examples(src):
    images, labels = [], []
    for batch in src.eval_batches(1):
      real = batch["mask"][0] > 0
      images.append(batch["image"][0][real])
      labels.append(batch["label"][0][real])
    return np.concatenate(images), np.concatenate(labels)

  # The whole test split filtered in NumPy, the old labels 7, 2, 9 renamed 0, 1, 2.
  config.dataset.classes = ()
  all_images, all_labels = eval_examples(data.get_source(config))
  keep = np.isin(all_labels, (7, 2, 9))
  images, labels = eval_examples(source)
  np.testing.assert_array_equal(images, all_images[keep])
  np.testing.assert_array_equal(labels, [{7: 0, 2: 1, 9: 2}[y] for y in all_labels[keep]])
  train_batch = next(source.train_batches(0, 1))
  assert set(np.unique(train_batch["label"])) <= {0, 1, 2}


@pytest.mark.parametrize("classes", [(3,), (1, 1), (0, 10), ("a", "b")])
def test_bad_class_subset_is_a_data_error(digits_data_dir, classes):
  config = tiny_config(digits_data_dir)
  config.dataset.classes = classes
  with pytest.raises(data.DataError, match="config.dataset.classes"):
    data.get_source(config)


# --------------------------------------------------------------------------------------------
# init_from through the train loop.


def _write_converter_checkpoint(out_dir, config, num_classes, seed=3):
  """What a weight converter writes: step 0, {'step', 'params', 'batch_stats'} of float32."""
  info = data.get_source(config).info()
  task = tasks.create_task(config, info)
  model = models.create_model_from_config(config, info, num_outputs=num_classes)
  shapes = variable_shapes(model, task, info.example_batch())
  rng = np.random.default_rng(seed)
  variables = jax.tree_util.tree_map(
      lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
  writer = checkpoint.Checkpointer(os.path.join(out_dir, "checkpoints"))
  writer.save(0, {"step": np.int32(0), **variables}, force=True)
  writer.wait()
  writer.close()
  return variables


@pytest.mark.slow
def test_init_from_a_converter_checkpoint_with_frozen_groups_and_resume(digits_data_dir,
                                                                        tmp_path):
  # Pre-trained on 7 classes, fine-tuned on 10 with everything frozen but the (new) head:
  # every loaded parameter ends exactly as written, the head does not.
  config = tiny_config(digits_data_dir)
  written = _write_converter_checkpoint(str(tmp_path / "converted"), config, num_classes=7)
  config.init_from = str(tmp_path / "converted")
  config.optimizer.param_groups = (("backbone", "^(?!head/)", 0.0),)
  workdir = str(tmp_path / "finetuned")
  summary = train.train_and_evaluate(config, workdir)
  assert summary["steps"] == 22  # 1,437 examples, batch 64
  report = json.load(open(os.path.join(workdir, "init_from.json")))
  assert report["reinitialized"] == ["params/head/bias", "params/head/kernel"]
  assert report["new"] == [] and report["unused"] == []
  assert len(report["loaded"]) == len(jax.tree_util.tree_leaves(written)) - 2
  reader = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  _, final = reader.read()
  reader.close()
  flat_final = jax.tree_util.tree_flatten_with_path(final["params"])[0]
  flat_written = {optim.path_name(p): v for p, v in
                  jax.tree_util.tree_flatten_with_path(written["params"])[0]}
  for path, value in flat_final:
    name = optim.path_name(path)
    if name.startswith("head/"):
      assert value.shape[-1] == 10
    else:
      np.testing.assert_array_equal(value, flat_written[name])
  # The run's own checkpoint takes precedence: with the source gone and the run marked
  # unfinished, it resumes at its last step instead of loading init_from again.
  shutil.rmtree(tmp_path / "converted")
  os.remove(os.path.join(workdir, "summary.json"))
  again = train.train_and_evaluate(config, workdir)
  # It trained no step: the summary holds the training figures the first run recorded.
  assert again["steps_this_run"] == 22 and again["train_loss"] == summary["train_loss"]
  assert again["test_accuracy"] == summary["test_accuracy"]


def test_init_from_that_does_not_fit_stops_before_compiling(digits_data_dir, tmp_path):
  wide = tiny_config(digits_data_dir)
  wide.model.width_multiplier = 0.25
  _write_converter_checkpoint(str(tmp_path / "wide"), wide, num_classes=10)
  config = tiny_config(digits_data_dir)
  config.init_from = str(tmp_path / "wide")
  with pytest.raises(finetune.InitFromError) as info:
    train.train_and_evaluate(config, str(tmp_path / "work"))
  message = str(info.value)
  assert ("params/stage1_block1/conv1/kernel has shape (3, 3, 16, 16) in the checkpoint and "
          "(3, 3, 8, 8) in the model") in message, message
  assert not os.path.exists(tmp_path / "work")
  config.init_from = str(tmp_path / "nothing")
  with pytest.raises(finetune.InitFromError, match="holds no checkpoint"):
    train.train_and_evaluate(config, str(tmp_path / "work"))


# --------------------------------------------------------------------------------------------
# The study's runs and report.


def test_study_target_runs_count_steps_and_stretch_them(digits_data_dir, tmp_path):
  from bagtricks.studies import pretrain_study
  from configs import pretrain_digits
  config = pretrain_digits.get_config()
  config.dataset.data_dir = digits_data_dir
  target = pretrain_study.target_config(config, "finetune", 0.1, 3.0, 2, 100, "runs/src")
  assert (target.seed, target.dataset.train_split, target.dataset.classes) == (
      2, "train[:10%]", (5, 6, 7, 8, 9))
  assert (target.init_from, target.init_reinit, target.schedule_multiplier) == (
      "runs/src", "^head/", 3.0)
  steps_per_epoch = data.get_source(target).info().steps_per_epoch
  assert optim.total_steps(target, steps_per_epoch) == 300
  assert round(target.eval_every_epochs * steps_per_epoch) == 10
  schedule = optim.build_schedule(target, steps_per_epoch, target.batch_size)
  assert float(schedule(30)) == pytest.approx(0.4 * 32 / 256)  # warm-up: 1/10 of 3 × 100
  scratch = pretrain_study.target_config(config, "scratch", 1.0, 1.0, 0, 100, "runs/src")
  assert scratch.init_from == "" and scratch.dataset.train_split == "train"
  rows = [{"init": init, "fraction": 1.0, "multiplier": 1.0, "accuracies": accs,
           "accuracy": float(np.mean(accs)), "std": float(np.std(accs)), "early_step": 20,
           "early_accuracy": early, "steps": [10.0, 20.0], "curve": [50.0, 80.0],
           "train_seconds": 1.0}
          for init, accs, early in (("finetune", [95.0, 97.0], 80.0),
                                    ("scratch", [90.0, 90.0], 40.5))]
  result = {"source": {"steps": 300, "test_accuracy": 0.99}, "rows": rows, "base_steps": 100}
  table = pretrain_study.markdown_table(result)
  assert "| 100 % | 1× (100 steps) | finetune | 80.0 | 96.00 ± 1.00 | 95.0, 97.0 |" in table
  assert "| 100 % | 1× (100 steps) | scratch | 40.5 | 90.00 ± 0.00 | 90.0, 90.0 |" in table
  pretrain_study.plot(result, str(tmp_path / "study.png"))
  assert os.path.getsize(tmp_path / "study.png") > 10_000
