"""Classification losses (pure JAX).

All losses take float32 logits ``[batch, num_classes]`` and return per-example values
``[batch]``; the caller takes the (masked) mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LABEL_SMOOTHING_MODES = ("paper", "optax")


def smooth_labels(labels: jnp.ndarray, num_classes: int, epsilon: float,
                  mode: str = "paper") -> jnp.ndarray:
  """One-hot targets with label smoothing (Szegedy et al. 2016; Bag of Tricks §5.2).

  ``mode='paper'`` is the Bag of Tricks formula: q_i = 1 − ε for the true class and
  ε/(K − 1) for every other class. ``mode='optax'`` is the Inception/optax formula
  q = (1 − ε)·y + ε/K (the true class gets 1 − ε + ε/K). Both rows sum to 1.

  Args:
    labels: integer class ids ``[batch]``.
    num_classes: K.
    epsilon: ε in [0, 1).
    mode: ``'paper'`` (default) or ``'optax'``.

  Returns:
    float32 targets ``[batch, num_classes]``.
  """
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if mode == "paper":
    off = epsilon / (num_classes - 1)
    return one_hot * (1.0 - epsilon) + (1.0 - one_hot) * off
  if mode == "optax":
    return one_hot * (1.0 - epsilon) + epsilon / num_classes
  raise ValueError(f"label smoothing mode={mode!r} is unknown; use one of {LABEL_SMOOTHING_MODES}.")


def softmax_cross_entropy(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
  """ℓ = −Σ_i q_i log softmax(z)_i for target distributions q.

  Args:
    logits: ``[batch, num_classes]`` (computed in float32 here).
    targets: ``[batch, num_classes]`` distributions.

  Returns:
    ``[batch]`` losses.
  """
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(targets * log_p, axis=-1)


def classification_loss(logits: jnp.ndarray, labels: jnp.ndarray, label_smoothing: float = 0.0,
                         mode: str = "paper") -> jnp.ndarray:
  """Cross-entropy against integer labels, with optional label smoothing.

  Args:
    logits: ``[batch, num_classes]``.
    labels: ``[batch]`` integer class ids.
    label_smoothing: ε (0 for plain cross-entropy).
    mode: label smoothing formula, see ``smooth_labels``.

  Returns:
    ``[batch]`` losses.
  """
  targets = smooth_labels(labels, logits.shape[-1], label_smoothing, mode)
  return softmax_cross_entropy(logits, targets)


def _as_targets(labels: jnp.ndarray, num_classes: int) -> jnp.ndarray:
  # Integer class ids become one-hot rows; distributions (smoothed or mixed) pass through.
  if labels.ndim == 1:
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return labels.astype(jnp.float32)


def distillation_loss(student_logits: jnp.ndarray, teacher_logits: jnp.ndarray,
                      labels: jnp.ndarray, temperature: float,
                      soft_weight: float) -> jnp.ndarray:
  """Knowledge distillation (Hinton et al. 2015; Bag of Tricks §5.3).

  ℓ = (1 − w)·CE(y, softmax(s)) + w·T²·CE(softmax(t/T), softmax(s/T)),

  with student logits s, teacher logits t, temperature T and soft weight w. The T² keeps the
  soft term's gradient on the same scale as the hard term's as T grows (its gradient with
  respect to s is w·T·(softmax(s/T) − softmax(t/T))). The soft term is the cross-entropy the
  papers write, so its value includes the teacher's (constant) entropy; its gradient is that of
  the KL divergence. No gradient flows into the teacher logits.

  Args:
    student_logits: ``[batch, num_classes]``.
    teacher_logits: ``[batch, num_classes]``.
    labels: integer class ids ``[batch]`` or target distributions ``[batch, num_classes]``
      (smoothed or mixed labels).
    temperature: T > 0 (Bag of Tricks: 20).
    soft_weight: w in [0, 1].

  Returns:
    ``[batch]`` losses.
  """
  num_classes = student_logits.shape[-1]
  hard = softmax_cross_entropy(student_logits, _as_targets(labels, num_classes))
  teacher_probs = jax.nn.softmax(
      jax.lax.stop_gradient(teacher_logits.astype(jnp.float32)) / temperature, axis=-1)
  soft = softmax_cross_entropy(student_logits.astype(jnp.float32) / temperature, teacher_probs)
  return (1.0 - soft_weight) * hard + soft_weight * temperature**2 * soft


def soft_tree_loss(path_probs: jnp.ndarray, leaf_log_probs: jnp.ndarray,
                   targets: jnp.ndarray) -> jnp.ndarray:
  """A soft decision tree's loss (Frosst & Hinton 2017): −Σ_ℓ P^ℓ(x) Σ_k T_k log Q^ℓ_k.

  Each leaf's cross-entropy with the targets, weighted by the probability of reaching it — not
  the cross-entropy of the path-weighted mixture — so that every leaf on a likely path is
  pushed towards the targets and the single most probable leaf predicts well on its own.

  Args:
    path_probs: ``[batch, leaves]`` P^ℓ(x).
    leaf_log_probs: ``[leaves, K]`` log Q^ℓ.
    targets: ``[batch, K]`` target distributions T (one-hot, smoothed, or a teacher's soft
      targets).

  Returns:
    ``[batch]``.
  """
  return -jnp.sum(path_probs * (targets @ leaf_log_probs.T), axis=-1)


def token_cross_entropy(logits: jnp.ndarray, tokens: jnp.ndarray,
                        label_smoothing: float = 0.0) -> jnp.ndarray:
  """Per-token cross-entropy with uniform label smoothing, for sequence models.

  ℓ = −Σ_v q_v log p_v with q = (1 − ε)·onehot(y) + ε/V (Szegedy et al. 2016, which the
  Transformer uses with ε_ls = 0.1, Vaswani et al. 2017 §5.4), computed as
  (1 − ε)·(−log p_y) + ε·(−(1/V)·Σ_v log p_v) so that no ``[..., V]`` one-hot targets are
  built for large vocabularies. The caller masks padding and takes the mean.

  Args:
    logits: ``[..., length, V]`` (computed in float32 here).
    tokens: ``[..., length]`` integer target ids.
    label_smoothing: ε in [0, 1).

  Returns:
    ``[..., length]`` losses.
  """
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_p, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
  if not label_smoothing:
    return nll
  return (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_p, axis=-1)
