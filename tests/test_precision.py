"""Mixed precision: dtype policy and dynamic loss scaling (fp16 skip on non-finite grads)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import models
from bagtricks import optim, precision, steps, tasks
from bagtricks.parallel import DataParallel
from bagtricks.state import init_train_state
from bagtricks.tasks import ClassificationTask
from configs import default


def _tree_equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _all_finite(tree):
  return all(np.all(np.isfinite(np.asarray(x, np.float64))) for x in jax.tree_util.tree_leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.floating))


def test_policies():
  assert precision.get_policy("fp32").compute_dtype == jnp.float32
  bf16 = precision.get_policy("bf16")
  assert bf16.compute_dtype == jnp.bfloat16 and bf16.param_dtype == jnp.float32
  assert not bf16.loss_scaling
  fp16 = precision.get_policy("fp16")
  assert fp16.compute_dtype == jnp.float16 and fp16.loss_scaling
  with pytest.raises(ValueError, match="precision"):
    precision.get_policy("fp8")


def test_loss_scale_unscales_and_grows_to_the_cap():
  tx = precision.dynamic_loss_scale(optax.sgd(1.0), init_scale=4.0, growth_interval=2,
                                    max_scale=16.0)
  params = {"w": jnp.zeros((3,))}
  state = tx.init(params)
  scales = []
  for _ in range(8):
    scale = precision.loss_scale_of(state)
    grads = {"w": jnp.array([1.0, 2.0, 3.0]) * scale}  # gradients of a scaled loss
    updates, state = tx.update(grads, state, params)
    np.testing.assert_allclose(updates["w"], [-1.0, -2.0, -3.0])  # unscaled
    scales.append(float(state.loss_scale))
  # Doubles every 2 finite steps, never beyond max_scale.
  assert scales == [4.0, 8.0, 8.0, 16.0, 16.0, 16.0, 16.0, 16.0]
  assert int(state.skipped_steps) == 0


def test_non_finite_gradient_skips_and_halves():
  inner = optax.sgd(0.1, momentum=0.9)
  tx = precision.dynamic_loss_scale(inner, init_scale=2.0**10)
  params = {"w": jnp.ones((3,))}
  state = tx.init(params)
  # One good step so the momentum buffer is non-trivial.
  updates, state = tx.update({"w": jnp.full((3,), 2.0**10)}, state, params)
  params = optax.apply_updates(params, updates)
  before_params, before_inner = params, state.inner_state
  for bad in (jnp.inf, jnp.nan):
    scale = float(state.loss_scale)
    updates, state = tx.update({"w": jnp.array([1.0, bad, 1.0])}, state, params)
    params = optax.apply_updates(params, updates)
    assert float(state.loss_scale) == scale / 2
    assert _tree_equal(params, before_params)
    assert _tree_equal(state.inner_state, before_inner)
  assert int(state.skipped_steps) == 2
  assert _all_finite(state) and _all_finite(params)


def test_scale_never_overflows():
  tx = precision.dynamic_loss_scale(optax.sgd(0.0), init_scale=2.0**126, growth_interval=1,
                                    max_scale=2.0**127)
  params = {"w": jnp.zeros(())}
  state = tx.init(params)
  for _ in range(5):
    _, state = tx.update({"w": jnp.zeros(())}, state, params)
  assert np.isfinite(float(state.loss_scale)) and float(state.loss_scale) == 2.0**127


def _fp16_setup(num_classes=3):
  config = default.get_config()
  policy = precision.get_policy("fp16")
  model = models.create_model("resnet18d", num_classes=num_classes, width_multiplier=0.0625,
                              small_stem=True, axis_name="batch", dtype=policy.compute_dtype)
  schedule = optim.warmup_cosine_schedule(0.1, 0, 10)
  tx = precision.wrap_optimizer(optim.build_optimizer(config, schedule), policy,
                                {"init_scale": 2.0**8})
  task = ClassificationTask(num_classes)
  example = {"image": np.zeros((1, 8, 8, 1), np.float32), "label": np.zeros((1,), np.int32)}
  state = init_train_state(model, tx, task, example, seed=0)
  step = steps.make_train_step(model, task, tx, policy)
  return state, step


@pytest.mark.slow
def test_train_step_with_injected_inf_leaves_state_unchanged():
  state, step = _fp16_setup()
  dp = DataParallel("pmap", jax.local_devices()[:1])
  train_step = dp.compile(step)
  rng = np.random.default_rng(0)
  good = {"image": rng.normal(size=(1, 4, 8, 8, 1)).astype(np.float32),
          "label": np.array([[0, 1, 2, 0]], np.int32)}
  p_state, metrics = train_step(dp.replicate(state), dp.shard_batch(good))
  after_good = dp.unreplicate(p_state)
  assert not _tree_equal(after_good.params, state.params)
  bad = {"image": good["image"].copy(), "label": good["label"]}
  bad["image"][0, 1, 3, 3, 0] = np.inf
  p_state, metrics = train_step(p_state, dp.shard_batch(bad))
  after_bad = dp.unreplicate(p_state)
  assert _tree_equal(after_bad.params, after_good.params)
  assert _tree_equal(after_bad.batch_stats, after_good.batch_stats)
  assert _tree_equal(after_bad.opt_state.inner_state, after_good.opt_state.inner_state)
  assert float(after_bad.opt_state.loss_scale) == float(after_good.opt_state.loss_scale) / 2
  assert int(after_bad.opt_state.skipped_steps) == 1
  assert int(dp.metrics_to_host(metrics)["skipped_steps"]) == 1
  assert _all_finite(after_bad)
  # Params stay float32 master copies; the compute ran in float16.
  assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(after_bad.params))


@pytest.mark.parametrize("revert", [True, False])
def test_skipped_step_keeps_or_takes_the_task_state_as_the_task_says(revert):
  # A soft tree's running α is task state: on a skipped fp16 step it is reverted when the
  # task says so (the default), and taken as computed when it does not.
  policy = precision.get_policy("fp16")
  model = models.create_model("sdt", num_classes=3, depth=2, dtype=policy.compute_dtype)
  task = tasks.SoftTreeTask(3, depth=2, penalty_window=0.0, input_key="image")
  task.revert_state_on_skipped_step = revert
  tx = precision.wrap_optimizer(optax.sgd(0.1), policy, {"init_scale": 2.0**8})
  rng = np.random.default_rng(0)
  good = {"image": rng.normal(size=(1, 4, 8, 8, 1)).astype(np.float32),
          "label": np.array([[0, 1, 2, 0]], np.int32)}
  state = init_train_state(model, tx, task, {k: v[0, :1] for k, v in good.items()}, seed=0)
  dp = DataParallel("pmap", jax.local_devices()[:1])
  train_step = dp.compile(steps.make_train_step(model, task, tx, policy))
  p_state, _ = train_step(dp.replicate(state), dp.shard_batch(good))
  alpha_good = dp.unreplicate(p_state).task_state["alpha"]
  bad = {"image": good["image"].copy(), "label": good["label"]}
  bad["image"][0, 1, 3, 3, 0] = np.inf
  p_state, metrics = train_step(p_state, dp.shard_batch(bad))
  after = dp.unreplicate(p_state)
  assert int(dp.metrics_to_host(metrics)["skipped_steps"]) == 1
  if revert:
    np.testing.assert_array_equal(after.task_state["alpha"], alpha_good)
  else:  # The α of the bad batch itself.
    assert not np.array_equal(after.task_state["alpha"], alpha_good)
