"""The refinements inside the one train step: distillation, augmentations, DropBlock, EMA."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import models
from bagtricks import augment, checkpoint, hooks, optim, precision, steps, train
from bagtricks.distill import TeacherHook
from bagtricks.parallel import DataParallel
from bagtricks.state import init_train_state, init_variables
from bagtricks.tasks import ClassificationTask
from conftest import tiny_config
from configs import default

BATCH = 16


def _np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def tiny():
  config = default.get_config()
  student = models.create_model("resnet18d", num_classes=10, width_multiplier=0.125,
                                small_stem=True, axis_name="batch")
  teacher = models.create_model("resnet18", num_classes=10, width_multiplier=0.25,
                                small_stem=True)
  schedule = optim.warmup_cosine_schedule(0.1, 0, 10)
  tx = optim.build_optimizer(config, schedule)
  teacher_variables = init_variables(teacher, jax.random.PRNGKey(5), jnp.zeros((1, 8, 8, 1)),
                                     train=False)
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(BATCH, 8, 8, 1)).astype(np.float32),
           "label": rng.integers(0, 10, size=(BATCH,)).astype(np.int32)}
  state = init_train_state(student, tx, ClassificationTask(10),
                           {k: v[:1] for k, v in batch.items()}, seed=0, ema=True)
  teacher_hook = TeacherHook(teacher, ClassificationTask(10), jnp.float32,
                             {**teacher_variables, "task_state": {}})
  return dict(student=student, teacher=teacher, tx=tx, schedule=schedule, state=state,
              teacher_variables=teacher_variables, teacher_hook=teacher_hook, batch=batch)


def _layout(batch, n):
  return {k: v.reshape((n, -1) + v.shape[1:]) for k, v in batch.items()}


@pytest.mark.slow
def test_distillation_step_loss_equals_numpy(tiny):
  task = ClassificationTask(10, label_smoothing=0.1, distill_temperature=4.0,
                            distill_soft_weight=0.7)
  teacher = tiny["teacher_hook"]
  step = steps.make_train_step(tiny["student"], task, tiny["tx"], precision.get_policy("fp32"),
                               [teacher])
  dp = DataParallel("pmap", jax.local_devices()[:1])
  compiled = dp.compile(step, replicated_args=1)
  _, metrics = compiled(dp.replicate(tiny["state"]), dp.shard_batch(_layout(tiny["batch"], 1)),
                        dp.replicate((teacher.variables(),)))
  loss = dp.metrics_to_host(metrics)["loss"]

  # Reference: the two models run on their own, the loss written out in NumPy.
  state, x = tiny["state"], tiny["batch"]["image"]
  plain_student = tiny["student"].clone(axis_name=None)
  s, _ = jax.jit(lambda v: plain_student.apply(v, x, train=True, mutable=["batch_stats"]))(
      {"params": state.params, "batch_stats": state.batch_stats})
  t = jax.jit(lambda v: tiny["teacher"].apply(v, x, train=False))(tiny["teacher_variables"])
  s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
  y = np.full((BATCH, 10), 0.1 / 9)
  y[np.arange(BATCH), tiny["batch"]["label"]] = 0.9
  hard = -(y * _np_log_softmax(s)).sum(-1)
  soft = -(np.exp(_np_log_softmax(t / 4)) * _np_log_softmax(s / 4)).sum(-1)
  expected = np.mean(0.3 * hard + 0.7 * 16 * soft)
  assert loss == pytest.approx(expected, rel=1e-4)


@pytest.mark.slow
def test_ema_in_the_step_follows_the_recursion(tiny):
  task = ClassificationTask(10)
  decay = optim.ema_decay_schedule(0.9, warmup=True)
  step = steps.make_train_step(tiny["student"], task, tiny["tx"], precision.get_policy("fp32"),
                               [hooks.WeightEMA(decay)])
  dp = DataParallel("pmap", jax.local_devices()[:1])
  compiled = dp.compile(step)
  p_state = dp.replicate(tiny["state"])
  batch = dp.shard_batch(_layout(tiny["batch"], 1))
  ema = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(tiny["state"].params)]
  for t in range(4):
    p_state, _ = compiled(p_state, batch)
    params = jax.tree_util.tree_leaves(dp.unreplicate(p_state).params)
    d = min(0.9, (1 + t) / (10 + t))  # TF ExponentialMovingAverage(num_updates=t)
    ema = [d * e + (1 - d) * np.asarray(p, np.float64) for e, p in zip(ema, params)]
  got = jax.tree_util.tree_leaves(dp.unreplicate(p_state).ema["params"])
  for g, e in zip(got, ema):
    np.testing.assert_allclose(np.asarray(g), e, rtol=1e-5, atol=1e-6)


def test_ema_decay_schedule_values():
  schedule = optim.ema_decay_schedule(0.999, warmup=True)
  assert float(schedule(0)) == pytest.approx(0.1)
  assert float(schedule(90)) == pytest.approx(0.91)
  assert float(schedule(10**6)) == pytest.approx(0.999)
  assert float(optim.ema_decay_schedule(0.999, warmup=False)(0)) == pytest.approx(0.999)


@pytest.mark.slow
def test_everything_on_under_eight_devices_both_backends_agree(tiny):
  # mixup/CutMix, Cutout, GridMask, DropBlock, distillation and EMA in one step on 8 devices:
  # pmap and shard_map run the same per-device program, so they must agree.
  student = models.create_model("resnet18d", num_classes=10, width_multiplier=0.125,
                                small_stem=True, axis_name="batch", drop_block_rate=0.2,
                                drop_block_size=2)
  task = ClassificationTask(10, distill_temperature=2.0)
  aug = augment.BatchAugment(mixup_alpha=0.2, cutmix_alpha=1.0, cutout_holes=1, cutout_size=3,
                             gridmask_prob=0.5, gridmask_d_min=3, gridmask_d_max=6)
  step_hooks = [hooks.AugmentHook(aug, task.augment_keys), tiny["teacher_hook"],
                hooks.ScheduledModelKwargs({"drop_block_rate": optax.linear_schedule(0.0, 0.2,
                                                                                     4)}),
                hooks.WeightEMA(optim.ema_decay_schedule(0.9))]
  step = steps.make_train_step(student, task, tiny["tx"], precision.get_policy("fp32"),
                               step_hooks)
  results = {}
  for backend in ("pmap", "shard_map"):
    dp = DataParallel(backend)
    compiled = dp.compile(step, replicated_args=1)
    p_state = dp.replicate(tiny["state"])
    teacher = dp.replicate(tuple(h.variables() for h in step_hooks))
    for _ in range(2):
      p_state, metrics = compiled(p_state, dp.shard_batch(_layout(tiny["batch"], 8)), teacher)
    results[backend] = (dp.unreplicate(p_state), dp.metrics_to_host(metrics))
  (a, ma), (b, mb) = results["pmap"], results["shard_map"]
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), atol=1e-5)
  assert ma["loss"] == pytest.approx(mb["loss"], rel=1e-5)
  assert ma["drop_block_rate"] == pytest.approx(0.05)  # Step 1 of a 0 → 0.2 ramp over 4.
  assert np.isfinite(ma["loss"])


@pytest.mark.slow
def test_ema_and_augmented_run_resumes_bit_exact(digits_data_dir, tmp_path):
  config = tiny_config(digits_data_dir)
  config.keep_checkpoints = 20
  config.checkpoint_every_steps = 10
  config.ema.decay = 0.9
  config.augment.mixup_alpha = 0.2
  config.augment.cutout.num_holes = 1
  config.model.drop_block_rate = 0.1
  full = str(tmp_path / "full")
  summary = train.train_and_evaluate(config, full)
  assert summary["steps"] == 22 and "ema_test_accuracy" in summary
  assert 0.0 <= summary["ema_test_accuracy"] <= 1.0

  # A run that died after step 10: only that checkpoint is left. It resumes to the same end.
  resumed = str(tmp_path / "resumed")
  shutil.copytree(os.path.join(full, "checkpoints", "10"),
                  os.path.join(resumed, "checkpoints", "10"))
  again = train.train_and_evaluate(config, resumed)
  assert again["resumed_from_step"] == 10 and again["steps"] == 22

  def final(workdir):
    reader = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    _, state = reader.read(22)
    reader.close()
    return state

  a, b = final(full), final(resumed)
  assert set(a["ema"]) == {"params", "batch_stats"}
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert again["ema_test_accuracy"] == summary["ema_test_accuracy"]
