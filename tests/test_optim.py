"""Schedules against the paper's closed forms; the weight-decay mask; the optimizer chain."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import models
from bagtricks import optim
from configs import default


def test_linear_scaling_rule():
  # Paper §3.1: 0.1 for batch 256 → 0.1·b/256.
  assert optim.linear_scaled_lr(0.1, 1024) == pytest.approx(0.4)
  assert optim.linear_scaled_lr(0.1, 128) == pytest.approx(0.05)


@pytest.mark.parametrize("step", [0, 1, 7, 49, 50, 51, 100, 275, 499, 500, 600])
def test_warmup_cosine_closed_form(step):
  eta, m, total = 0.4, 50, 500
  schedule = optim.warmup_cosine_schedule(eta, m, total)
  if step < m:
    expected = step * eta / m  # lr_i = iη/m
  else:
    t, big_t = min(step - m, total - m), total - m
    expected = 0.5 * (1 + math.cos(math.pi * t / big_t)) * eta
  assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-8)


def test_warmup_cosine_hand_values():
  schedule = optim.warmup_cosine_schedule(1.0, 10, 110)
  assert float(schedule(5)) == pytest.approx(0.5)      # halfway through warm-up
  assert float(schedule(10)) == pytest.approx(1.0)     # peak
  assert float(schedule(60)) == pytest.approx(0.5)     # cos(π/2) = 0 → ½η
  assert float(schedule(110)) == pytest.approx(0.0, abs=1e-7)


def test_warmup_step_decay():
  schedule = optim.warmup_step_schedule(0.1, 5, boundaries=[30, 60, 90])
  assert float(schedule(2)) == pytest.approx(0.04)
  assert float(schedule(29)) == pytest.approx(0.1)
  assert float(schedule(30)) == pytest.approx(0.01)
  assert float(schedule(75)) == pytest.approx(0.001)
  assert float(schedule(95)) == pytest.approx(0.0001)


def test_build_schedule_uses_epochs_and_linear_scaling():
  config = default.get_config()
  config.num_epochs = 10
  config.schedule.warmup_epochs = 2
  config.optimizer.base_lr = 0.1
  schedule = optim.build_schedule(config, steps_per_epoch=100, global_batch_size=512)
  assert float(schedule(100)) == pytest.approx(0.1)    # half of 2 warm-up epochs of 0.2
  assert float(schedule(200)) == pytest.approx(0.2)
  assert float(schedule(600)) == pytest.approx(0.1)    # halfway through cosine


def test_weight_decay_mask_on_resnet50d():
  model = models.ResNet50D(num_classes=1000)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, 224, 224, 3)), train=False))
  params = shapes["params"]
  mask = optim.weight_decay_mask(params)
  flat = jax.tree_util.tree_flatten_with_path(mask)[0]
  shapes_flat = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  decayed = [p for p, m in flat if m]
  kept = [p for p, m in flat if not m]
  names = lambda path: [getattr(k, "key", str(k)) for k in path]
  # Every decayed leaf is a conv (4-D) or dense (2-D) kernel.
  for path in decayed:
    assert names(path)[-1] == "kernel"
    assert len(shapes_flat[path].shape) in (2, 4)
  # Every kernel is decayed; every BN scale/bias and the dense bias is not.
  assert all(names(p)[-1] in ("scale", "bias") for p in kept)
  n_kernels = sum(1 for p, _ in flat if names(p)[-1] == "kernel")
  assert len(decayed) == n_kernels
  # ResNet-50-D: 3 stem convs + 16 blocks × 3 convs + 4 shortcut convs + 1 dense = 56 kernels.
  assert n_kernels == 56
  decayed_count = sum(int(np.prod(shapes_flat[p].shape)) for p in decayed)
  kept_count = sum(int(np.prod(shapes_flat[p].shape)) for p in kept)
  assert decayed_count + kept_count == 25_576_264
  # What is left undecayed is 1-D: norm γ and β and the dense bias.
  assert all(len(shapes_flat[p].shape) == 1 for p in kept)


def _optimizer_config(name, **overrides):
  config = default.get_config()
  config.optimizer.name = name
  for k, v in overrides.items():
    config.optimizer[k] = v
  return config


def _params():
  return {"conv": {"kernel": jnp.full((2, 2), 1.0)}, "bn": {"scale": jnp.full((2,), 1.0),
                                                           "bias": jnp.full((2,), 1.0)}}


def test_sgd_nesterov_weight_decay_matches_hand_computation():
  # Two steps of PyTorch/MXNet SGD: g' = g + λw (kernels only); v = μv + g'; Nesterov step
  # d = g' + μv; w ← w − η·d.
  lr, mu, wd = 0.1, 0.9, 0.01
  config = _optimizer_config("sgd", momentum=mu, nesterov=True, weight_decay=wd)
  tx = optim.build_optimizer(config, lr)
  params = _params()
  state = tx.init(params)
  grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.5), params)
  w_kernel, v_kernel, w_bn, v_bn = 1.0, 0.0, 1.0, 0.0
  for _ in range(2):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    g = 0.5 + wd * w_kernel
    v_kernel = mu * v_kernel + g
    w_kernel -= lr * (g + mu * v_kernel)
    v_bn = mu * v_bn + 0.5
    w_bn -= lr * (0.5 + mu * v_bn)
  np.testing.assert_allclose(params["conv"]["kernel"], w_kernel, rtol=1e-6)
  np.testing.assert_allclose(params["bn"]["scale"], w_bn, rtol=1e-6)
  np.testing.assert_allclose(params["bn"]["bias"], w_bn, rtol=1e-6)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_no_decay_on_biases_and_norms(name):
  # With zero gradients only weight decay moves parameters: kernels shrink, the rest stays.
  config = _optimizer_config(name, weight_decay=0.1)
  tx = optim.build_optimizer(config, 0.1)
  params = _params()
  state = tx.init(params)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, state, params)
  new = optax.apply_updates(params, updates)
  assert float(jnp.max(new["conv"]["kernel"])) < 1.0
  np.testing.assert_array_equal(new["bn"]["scale"], params["bn"]["scale"])
  np.testing.assert_array_equal(new["bn"]["bias"], params["bn"]["bias"])


def test_gradient_clipping():
  config = _optimizer_config("sgd", momentum=0.0, weight_decay=0.0, grad_clip_norm=1.0)
  tx = optim.build_optimizer(config, 1.0)
  params = {"w": jnp.zeros((2,))}
  updates, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], [-0.6, -0.8], rtol=1e-6)


def test_unknown_names_raise():
  with pytest.raises(ValueError, match="optimizer.name"):
    optim.build_optimizer(_optimizer_config("adagrad"), 0.1)
  config = default.get_config()
  config.schedule.name = "linear"
  with pytest.raises(ValueError, match="schedule.name"):
    optim.build_schedule(config, 10, 256)
