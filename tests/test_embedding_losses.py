"""Center, Git, Circle and partial-BCE losses against NumPy references and hand-made cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bagtricks import losses


def _np_center_update(centers, features, labels, alpha):
  # Wen et al. 2016, Eq. 4, one class at a time.
  new = centers.astype(np.float64).copy()
  for j in range(len(centers)):
    members = features[labels == j]
    delta = np.sum(centers[j] - members, axis=0) / (1.0 + len(members))
    new[j] = centers[j] - alpha * delta
  return new


def _np_circle(sp, sn, m, gamma):
  # Sun et al. 2020, Eq. 4 with Eq. 5-6, written out in extended precision (exp(γ·…) with
  # γ = 256 exceeds float64).
  sp, sn = np.asarray(sp, np.longdouble), np.asarray(sn, np.longdouble)
  alpha_p = np.maximum(1 + m - sp, 0)
  alpha_n = np.maximum(sn + m, 0)
  negatives = np.sum(np.exp(gamma * alpha_n * (sn - m)))
  positives = np.sum(np.exp(-gamma * alpha_p * (sp - (1 - m))))
  return float(np.log1p(negatives * positives))


@pytest.fixture
def features():
  rng = np.random.default_rng(0)
  return (rng.normal(size=(7, 3)).astype(np.float32),
          np.array([0, 2, 2, 0, 3, 2, 0], np.int32),  # class 1 is absent
          rng.normal(size=(4, 3)).astype(np.float32))


def test_center_loss_is_half_squared_distance(features):
  x, y, c = features
  want = [0.5 * np.sum((x[i] - c[y[i]])**2) for i in range(len(x))]
  np.testing.assert_allclose(losses.center_loss(x, y, c), want, rtol=1e-5)
  # No gradient reaches the centers (they are task state, updated by update_centers).
  grad = jax.grad(lambda c: jnp.sum(losses.center_loss(x, y, c)))(jnp.asarray(c))
  assert not np.any(np.asarray(grad))


def test_update_centers_matches_the_paper_and_keeps_absent_classes(features):
  x, y, c = features
  new = np.asarray(losses.update_centers(c, x, y, alpha=0.5))
  np.testing.assert_allclose(new, _np_center_update(c, x, y, 0.5), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(new[1], c[1])  # no example of class 1: its center stays
  # A hand case: one class, two examples at 0 and 2 from a center at 4, α = 0.5:
  # Δc = ((4 − 0) + (4 − 2)) / 3 = 2, c ← 4 − 1 = 3.
  hand = losses.update_centers(jnp.array([[4.0]]), jnp.array([[0.0], [2.0]]),
                               jnp.array([0, 0]), alpha=0.5)
  np.testing.assert_allclose(hand, [[3.0]])


def test_update_centers_sums_over_the_device_axis(features):
  x, y, c = features
  x = np.concatenate([x, x[:1]])  # 8 examples over 4 devices
  y = np.concatenate([y, y[:1]])
  per_device = jax.vmap(lambda xs, ys: losses.update_centers(c, xs, ys, 0.5, axis_name="d"),
                        axis_name="d")(x.reshape(4, 2, 3), y.reshape(4, 2))
  whole = losses.update_centers(c, x, y, 0.5)
  for device in np.asarray(per_device):
    np.testing.assert_allclose(device, whole, rtol=1e-6, atol=1e-6)


def test_git_push_loss(features):
  x, y, c = features
  want = [sum(1.0 / (1.0 + np.sum((x[i] - c[j])**2)) for j in range(4) if j != y[i])
          for i in range(len(x))]
  np.testing.assert_allclose(losses.git_push_loss(x, y, c), want, rtol=1e-5)
  # Hand case: x = 0, own center far away, the other at distance 1: 1 / (1 + 1) = 0.5.
  hand = losses.git_push_loss(jnp.zeros((1, 2)), jnp.array([0]),
                              jnp.array([[100.0, 0.0], [0.0, 1.0]]))
  np.testing.assert_allclose(hand, [0.5])


def test_circle_loss_hand_case_and_reference():
  # m = 0.25, γ = 1, s_p = 0.8, s_n = 0.3: α_p = 0.45, α_n = 0.55;
  # L = log(1 + exp(0.55·0.05) · exp(−0.45·0.05)) = log(1 + exp(0.005)).
  got = losses.circle_loss(jnp.array([0.8]), jnp.array([0.3]), margin=0.25, gamma=1.0)
  np.testing.assert_allclose(got, math.log1p(math.exp(0.005)), rtol=1e-6)
  rng = np.random.default_rng(1)
  sp, sn = rng.uniform(-1, 1, 5), rng.uniform(-1, 1, 9)
  for gamma in (1.0, 80.0, 256.0):
    want = _np_circle(sp, sn, 0.25, gamma)
    got = losses.circle_loss(jnp.asarray(sp), jnp.asarray(sn), gamma=gamma)
    np.testing.assert_allclose(got, want, rtol=1e-4)
  # The defaults are the paper's face-recognition setting.
  np.testing.assert_allclose(losses.circle_loss(jnp.asarray(sp), jnp.asarray(sn)),
                             _np_circle(sp, sn, 0.25, 256.0), rtol=1e-4)


def test_circle_loss_weights_are_constants():
  # α_p, α_n carry no gradient: dL/ds_p = −γ α_p · σ(z) · softmax weight, here one pair.
  sp, sn, m, gamma = 0.8, 0.3, 0.25, 2.0
  grad_p = jax.grad(lambda s: losses.circle_loss(s[None], jnp.array([sn]), m, gamma))(sp)
  z = gamma * (1 + m - sp) * -(sp - (1 - m)) + gamma * (sn + m) * (sn - m)
  want = -gamma * (1 + m - sp) / (1 + math.exp(-z))
  np.testing.assert_allclose(grad_p, want, rtol=1e-5)


@pytest.mark.slow
def test_pairwise_circle_loss_against_per_anchor_reference():
  rng = np.random.default_rng(2)
  emb = rng.normal(size=(8, 4)).astype(np.float32)
  labels = np.array([0, 0, 1, 1, 2, 2, 3, 0])
  unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  sim = unit @ unit.T
  want = []
  for a in range(8):
    others = np.arange(8) != a
    sp = sim[a, others & (labels == labels[a])]
    sn = sim[a, labels != labels[a]]
    want.append(_np_circle(sp, sn, 0.25, 80.0) if len(sp) else 0.0)
  got = losses.pairwise_circle_loss(emb, labels, jnp.arange(8), emb, labels, gamma=80.0)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  assert want[6] == 0.0  # class 3 has one example: no positive pair, loss 0
  # ... and a finite, zero gradient for that anchor.
  grads = jax.grad(lambda e: losses.pairwise_circle_loss(e, labels, jnp.arange(8), e, labels,
                                                        gamma=80.0)[6])(jnp.asarray(emb))
  assert np.all(np.isfinite(grads)) and not np.any(np.asarray(grads))


def test_class_circle_loss():
  rng = np.random.default_rng(3)
  cosines = rng.uniform(-1, 1, (5, 4))
  labels = np.array([0, 3, 1, 1, 2])
  want = [_np_circle(cosines[i, [labels[i]]], np.delete(cosines[i], labels[i]), 0.25, 256.0)
          for i in range(5)]
  np.testing.assert_allclose(losses.class_circle_loss(cosines, labels), want, rtol=1e-4)


def _np_partial_bce(logits, labels):
  # Durand et al. 2019, Eq. 2 with g(p) = α p + β through g(1) = 1, g(0.1) = 5.
  alpha = (1 - 5) / (1 - 0.1)
  beta = 1 - alpha
  out = []
  for x, y in zip(logits.astype(np.float64), labels):
    p = np.mean(y != 0)
    sig = 1 / (1 + np.exp(-x))
    total = np.sum(np.where(y == 1, np.log(sig), 0) + np.where(y == -1, np.log(1 - sig), 0))
    out.append(-(alpha * p + beta) / len(x) * total)
  return np.array(out)


def test_partial_bce_against_reference_and_no_known_label():
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(4, 10)).astype(np.float32)
  labels = rng.choice([-1, 0, 1], size=(4, 10)).astype(np.int8)
  labels[3] = 0  # an example with no known label
  got = np.asarray(losses.partial_bce(logits, labels))
  np.testing.assert_allclose(got, _np_partial_bce(logits, labels), rtol=1e-5)
  assert got[3] == 0.0 and np.all(np.isfinite(got))
  grads = jax.grad(lambda x: jnp.sum(losses.partial_bce(x, labels)))(jnp.asarray(logits))
  assert np.all(np.isfinite(grads)) and not np.any(np.asarray(grads)[3])
  # g(p): every label known is plain BCE (g = 1); 1 of 10 known weighs 5 times more.
  full = rng.choice([-1, 1], size=(2, 10)).astype(np.int8)
  np.testing.assert_allclose(losses.partial_bce(logits[:2], full),
                             losses.known_label_bce(logits[:2], full), rtol=1e-6)
  one = np.zeros((1, 10), np.int8)
  one[0, 2] = 1
  np.testing.assert_allclose(losses.partial_bce(logits[:1], one),
                             5 * losses.known_label_bce(logits[:1], one), rtol=1e-5)


def test_known_label_bce_hand_case():
  # Logit 0 for a positive and a negative: each −log ½; an unknown adds nothing; C = 4.
  got = losses.known_label_bce(jnp.zeros((1, 4)), jnp.array([[1, -1, 0, 0]]))
  np.testing.assert_allclose(got, [2 * math.log(2) / 4], rtol=1e-6)
