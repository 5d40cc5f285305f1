"""Label smoothing and knowledge distillation against hand computations and NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bagtricks import losses


def _np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_smooth_labels_paper_formula_by_hand():
  # K = 5, ε = 0.1: true class 0.9, every other class 0.1/4 = 0.025 (Bag of Tricks §5.2).
  q = np.asarray(losses.smooth_labels(jnp.array([2]), 5, 0.1))
  np.testing.assert_allclose(q, [[0.025, 0.025, 0.9, 0.025, 0.025]], rtol=1e-6)


def test_smooth_labels_optax_formula_by_hand():
  # (1 − ε)·y + ε/K: true class 0.9 + 0.02 = 0.92, others 0.02.
  q = np.asarray(losses.smooth_labels(jnp.array([0]), 5, 0.1, mode="optax"))
  np.testing.assert_allclose(q, [[0.92, 0.02, 0.02, 0.02, 0.02]], rtol=1e-6)


@pytest.mark.parametrize("mode", losses.LABEL_SMOOTHING_MODES)
def test_smoothed_rows_sum_to_one(mode):
  q = losses.smooth_labels(jnp.arange(10) % 7, 7, 0.3, mode)
  np.testing.assert_allclose(np.asarray(q).sum(-1), 1.0, rtol=1e-6)


def test_unknown_smoothing_mode():
  with pytest.raises(ValueError, match="label smoothing mode"):
    losses.smooth_labels(jnp.array([0]), 3, 0.1, mode="timm")


def _np_distillation(s, t, y, temperature, w):
  hard = -(y * _np_log_softmax(s)).sum(-1)
  p_t = np.exp(_np_log_softmax(t / temperature))
  soft = -(p_t * _np_log_softmax(s / temperature)).sum(-1)
  return (1 - w) * hard + w * temperature**2 * soft


@pytest.mark.parametrize("temperature,weight", [(20.0, 0.5), (4.0, 0.9), (1.0, 0.0)])
def test_distillation_loss_against_numpy(temperature, weight):
  rng = np.random.default_rng(0)
  s = rng.normal(size=(6, 10)) * 3
  t = rng.normal(size=(6, 10)) * 3
  labels = rng.integers(0, 10, size=6)
  got = losses.distillation_loss(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32),
                                 jnp.asarray(labels), temperature, weight)
  expected = _np_distillation(s, t, np.eye(10)[labels], temperature, weight)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)


def test_distillation_accepts_smoothed_or_mixed_targets():
  rng = np.random.default_rng(1)
  s, t = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
  targets = rng.dirichlet(np.ones(5), size=4)
  got = losses.distillation_loss(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32),
                                 jnp.asarray(targets, jnp.float32), 20.0, 0.5)
  np.testing.assert_allclose(np.asarray(got), _np_distillation(s, t, targets, 20.0, 0.5),
                             rtol=1e-5)


def test_distillation_gradient_closed_form_and_teacher_frozen():
  # ∂ℓ/∂s = (1 − w)(softmax(s) − y) + w·T·(softmax(s/T) − softmax(t/T)); ∂ℓ/∂t = 0.
  rng = np.random.default_rng(2)
  s, t = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
  labels = np.array([0, 3, 1])
  temperature, w = 20.0, 0.3

  def loss(s_, t_):
    return jnp.sum(losses.distillation_loss(s_, t_, jnp.asarray(labels), temperature, w))

  grad_s, grad_t = jax.grad(loss, argnums=(0, 1))(jnp.asarray(s, jnp.float32),
                                                  jnp.asarray(t, jnp.float32))
  softmax = lambda z: np.exp(_np_log_softmax(z))
  expected = ((1 - w) * (softmax(s) - np.eye(4)[labels])
              + w * temperature * (softmax(s / temperature) - softmax(t / temperature)))
  np.testing.assert_allclose(np.asarray(grad_s), expected, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(grad_t), 0.0)
