"""Losses (pure JAX): classification, embeddings, multi-label with unknown labels, and labels
from several annotators.

Classification losses take float32 logits ``[batch, num_classes]`` and return per-example
values ``[batch]``; the caller takes the (masked) mean. The embedding losses (center loss, Git
loss, Circle loss) take features ``[batch, D]``, the batch-all triplet loss strips of them
``[strips, batch, D]``; the multi-label losses take labels in
{1: positive, −1: negative, 0: unknown}.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

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


# ------------------------------------------------------------------------------------------
# Embedding losses: center loss, Git loss, Circle loss.


def center_loss(features: jnp.ndarray, labels: jnp.ndarray, centers: jnp.ndarray) -> jnp.ndarray:
  """Center loss (Wen et al. 2016, Eq. 2): ½‖x_i − c_{y_i}‖² per example.

  The centers are not trained by the gradient (they are updated by ``update_centers``), so no
  gradient flows into them here.

  Args:
    features: deep features x ``[batch, D]``.
    labels: integer class ids y ``[batch]``.
    centers: class centers c ``[K, D]``.

  Returns:
    ``[batch]`` losses.
  """
  own = lax.stop_gradient(centers)[labels]
  return 0.5 * jnp.sum(jnp.square(features.astype(jnp.float32) - own), axis=-1)


def update_centers(centers: jnp.ndarray, features: jnp.ndarray, labels: jnp.ndarray,
                   alpha: float = 0.5, axis_name: Optional[str] = None) -> jnp.ndarray:
  """One center update of Wen et al. (2016, Eq. 4 and Algorithm 1).

  Δc_j = Σ_{i: y_i = j} (c_j − x_i) / (1 + n_j) with n_j the examples of class j, and
  c_j ← c_j − α·Δc_j. With ``axis_name`` the sums Σ x_i and n_j are taken over the global batch
  (``lax.psum`` over the device axis), so every device gets the same centers, equal to those
  of one device holding the whole batch. A class absent from the batch keeps its center.

  Args:
    centers: ``[K, D]``.
    features: ``[batch, D]`` (no gradient flows through the update).
    labels: ``[batch]`` integer class ids.
    alpha: the centers' learning rate α (the paper: 0.5).
    axis_name: the device axis to sum over, or None for this batch alone.

  Returns:
    The new centers ``[K, D]``.
  """
  one_hot = jax.nn.one_hot(labels, centers.shape[0], dtype=jnp.float32)  # [batch, K]
  counts = jnp.sum(one_hot, axis=0)  # n_j
  sums = one_hot.T @ lax.stop_gradient(features.astype(jnp.float32))  # Σ_{y_i=j} x_i
  if axis_name is not None:
    counts, sums = lax.psum((counts, sums), axis_name)
  delta = (counts[:, None] * centers - sums) / (1.0 + counts[:, None])
  return centers - alpha * delta


def git_push_loss(features: jnp.ndarray, labels: jnp.ndarray,
                  centers: jnp.ndarray) -> jnp.ndarray:
  """The push term of the Git loss (Calefati et al. 2018, Eq. 3): Σ_{j≠y_i} 1/(1 + ‖x_i − c_j‖²).

  It pushes each feature away from the other classes' centers (no gradient flows into the
  centers).

  Args:
    features: ``[batch, D]``.
    labels: ``[batch]`` integer class ids.
    centers: ``[K, D]``.

  Returns:
    ``[batch]`` losses.
  """
  centers = lax.stop_gradient(centers)
  x = features.astype(jnp.float32)
  squared = jnp.sum(jnp.square(x[:, None, :] - centers[None, :, :]), axis=-1)  # [batch, K]
  others = 1.0 - jax.nn.one_hot(labels, centers.shape[0], dtype=jnp.float32)
  return jnp.sum(others / (1.0 + squared), axis=-1)


# A finite stand-in for −∞ in masked log-sum-exps: exp of it is 0 and its gradient is 0, where
# −∞ would give NaN gradients for a row with nothing in it.
_MASKED_LOGIT = -1e9


def _circle_logits(sp, sn, margin, gamma):
  # γ·α_p·(s_p − Δ_p) and γ·α_n·(s_n − Δ_n) with the paper's self-paced weights (no gradient).
  alpha_p = lax.stop_gradient(jnp.maximum(1.0 + margin - sp, 0.0))
  alpha_n = lax.stop_gradient(jnp.maximum(sn + margin, 0.0))
  return -gamma * alpha_p * (sp - (1.0 - margin)), gamma * alpha_n * (sn - margin)


def circle_loss(sp: jnp.ndarray, sn: jnp.ndarray, margin: float = 0.25,
                gamma: float = 256.0) -> jnp.ndarray:
  """Circle loss of one anchor (Sun et al. 2020, Eq. 4 with Eq. 5-6).

  L = log[1 + Σ_n exp(γ α_n (s_n − Δ_n)) · Σ_p exp(−γ α_p (s_p − Δ_p))], with
  α_p = [1 + m − s_p]₊ and α_n = [s_n + m]₊ (treated as constants), Δ_p = 1 − m, Δ_n = m,
  computed stably as softplus(logsumexp(negatives) + logsumexp(positives)).

  Args:
    sp: the anchor's within-class similarities ``[P]``.
    sn: its between-class similarities ``[N]``.
    margin: m (the paper: 0.25).
    gamma: the scale γ (the paper: 256 for face recognition, 80 for fine-grained retrieval).

  Returns:
    The scalar loss.
  """
  positive, negative = _circle_logits(sp.astype(jnp.float32), sn.astype(jnp.float32), margin,
                                      gamma)
  return jax.nn.softplus(jax.nn.logsumexp(negative) + jax.nn.logsumexp(positive))


def masked_circle_loss(similarities: jnp.ndarray, positive_mask: jnp.ndarray,
                       negative_mask: jnp.ndarray, margin: float = 0.25,
                       gamma: float = 256.0) -> jnp.ndarray:
  """``circle_loss`` of many anchors at once, each against the columns its masks select.

  Row a is ``circle_loss(similarities[a][positive_mask[a]], similarities[a][negative_mask[a]])``;
  a row without positives or without negatives has loss 0 (the paper's sum is empty) and a
  zero gradient.

  Args:
    similarities: ``[anchors, candidates]`` similarities s.
    positive_mask: ``[anchors, candidates]``, true for the anchor's within-class pairs.
    negative_mask: ``[anchors, candidates]``, true for its between-class pairs.
    margin: m.
    gamma: γ.

  Returns:
    ``[anchors]`` losses.
  """
  s = similarities.astype(jnp.float32)
  positive, negative = _circle_logits(s, s, margin, gamma)
  positive = jnp.where(positive_mask, positive, _MASKED_LOGIT)
  negative = jnp.where(negative_mask, negative, _MASKED_LOGIT)
  return jax.nn.softplus(jax.nn.logsumexp(negative, axis=-1)
                         + jax.nn.logsumexp(positive, axis=-1))


def pairwise_circle_loss(anchors: jnp.ndarray, anchor_labels: jnp.ndarray,
                         anchor_index: jnp.ndarray, gallery: jnp.ndarray,
                         gallery_labels: jnp.ndarray, margin: float = 0.25,
                         gamma: float = 256.0) -> jnp.ndarray:
  """The pair-wise Circle loss (Sun et al. 2020, Eq. 4) of anchors against a batch.

  Similarities are cosines; every other example of the gallery with the anchor's label is a
  positive, every example of another label a negative (the anchor itself is neither).

  Args:
    anchors: embeddings ``[A, D]``.
    anchor_labels: ``[A]``.
    anchor_index: each anchor's row in the gallery ``[A]`` (to leave out the self-pair).
    gallery: embeddings ``[G, D]`` (e.g. the whole global batch, anchors included).
    gallery_labels: ``[G]``.
    margin: m.
    gamma: γ.

  Returns:
    ``[A]`` losses.
  """
  similarities = normalize(anchors) @ normalize(gallery).T  # [A, G]
  same = anchor_labels[:, None] == gallery_labels[None, :]
  not_self = anchor_index[:, None] != jnp.arange(gallery.shape[0])[None, :]
  return masked_circle_loss(similarities, same & not_self, ~same, margin, gamma)


def _euclidean(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """``[..., A, G]`` Euclidean distances of ``a [..., A, D]`` to ``b [..., G, D]``; the
  square root is taken of at least 1e-12, so that a zero distance has a finite gradient."""
  squared = (jnp.sum(a * a, -1)[..., :, None] + jnp.sum(b * b, -1)[..., None, :]
             - 2.0 * a @ jnp.swapaxes(b, -1, -2))
  return jnp.sqrt(jnp.maximum(squared, 1e-12))


def batch_all_triplet_sums(anchors: jnp.ndarray, anchor_labels: jnp.ndarray,
                           anchor_index: jnp.ndarray, gallery: jnp.ndarray,
                           gallery_labels: jnp.ndarray, margin: float = 0.2):
  """Batch-all triplet terms (Hermans et al. 2017; GaitSet's loss) of anchors against a batch.

  For every anchor a, positive p (same label, p ≠ a) and negative n (another label) of the
  gallery: l_apn = max(0, m + d(a, p) − d(a, n)), d Euclidean, per strip s (the leading axis).
  GaitSet averages l over the triplets where it is not zero, per strip, then over strips:
  ``loss_sum / max(nonzero, 1)`` once the sums of every device are added.

  Args:
    anchors: ``[S, A, D]``.
    anchor_labels: ``[A]``.
    anchor_index: each anchor's row in the gallery ``[A]``.
    gallery: ``[S, G, D]`` (e.g. the whole global batch, anchors included).
    gallery_labels: ``[G]``.
    margin: m.

  Returns:
    ``(loss_sum [S], nonzero [S], distance_sums {'positive', 'negative'}: [S] sums of d(a, p)
    and d(a, n) over the pairs, pair_counts {'positive', 'negative'} scalars)``.
  """
  distances = _euclidean(anchors, gallery)  # [S, A, G]
  same = anchor_labels[:, None] == gallery_labels[None, :]
  positive = same & (anchor_index[:, None] != jnp.arange(gallery.shape[1])[None, :])
  negative = ~same
  terms = margin + distances[:, :, :, None] - distances[:, :, None, :]  # [S, A, P, N]
  valid = positive[:, :, None] & negative[:, None, :]
  terms = jnp.where(valid[None], jnp.maximum(terms, 0.0), 0.0)
  sums = {"positive": jnp.sum(jnp.where(positive[None], distances, 0.0), axis=(1, 2)),
          "negative": jnp.sum(jnp.where(negative[None], distances, 0.0), axis=(1, 2))}
  counts = {"positive": jnp.sum(positive), "negative": jnp.sum(negative)}
  return jnp.sum(terms, axis=(1, 2, 3)), jnp.sum(terms > 0, axis=(1, 2, 3)), sums, counts


def batch_all_triplet_loss(embeddings: jnp.ndarray, labels: jnp.ndarray,
                           margin: float = 0.2) -> jnp.ndarray:
  """GaitSet's loss on one batch ``[S, B, D]``: each strip's mean over its non-zero triplets,
  averaged over strips (``batch_all_triplet_sums`` with the batch as anchors and gallery)."""
  index = jnp.arange(embeddings.shape[1])
  loss_sum, nonzero, _, _ = batch_all_triplet_sums(embeddings, labels, index, embeddings,
                                                   labels, margin)
  return jnp.mean(loss_sum / jnp.maximum(nonzero, 1))


def class_circle_loss(cosines: jnp.ndarray, labels: jnp.ndarray, margin: float = 0.25,
                      gamma: float = 256.0) -> jnp.ndarray:
  """The class-level Circle loss (Sun et al. 2020, §3.1): one positive, K − 1 negatives.

  s_p = cos(x, w_y) and s_n = cos(x, w_j), j ≠ y, on the normalized class weights w of a
  cosine classifier.

  Args:
    cosines: ``[batch, K]`` cosine similarities to the class weights.
    labels: ``[batch]`` integer class ids.
    margin: m.
    gamma: γ.

  Returns:
    ``[batch]`` losses.
  """
  own = jax.nn.one_hot(labels, cosines.shape[-1], dtype=jnp.bool_)
  return masked_circle_loss(cosines, own, ~own, margin, gamma)


def normalize(x: jnp.ndarray, epsilon: float = 1e-12) -> jnp.ndarray:
  """Rows scaled to unit L2 norm (``[..., D]`` → ``[..., D]``, float32)."""
  x = x.astype(jnp.float32)
  return x * lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), epsilon))


# ------------------------------------------------------------------------------------------
# Multi-label losses with unknown labels.

# g(p) = α p^γ + β with γ = 1, g(1) = 1 and g(0.1) = 5 (Durand et al. 2019, §3.1).
PARTIAL_BCE_ALPHA = -40.0 / 9.0
PARTIAL_BCE_BETA = 49.0 / 9.0


def known_label_bce(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Binary cross-entropy of the known labels, summed and divided by the number of classes C.

  ℓ = −(1/C) Σ_c [1[y_c = 1] log σ(x_c) + 1[y_c = −1] log(1 − σ(x_c))]: with every label
  known this is the ordinary multi-label BCE; unknown labels (0) contribute nothing.

  Args:
    logits: ``[batch, C]``.
    labels: ``[batch, C]`` in {1: positive, −1: negative, 0: unknown}.

  Returns:
    ``[batch]`` losses.
  """
  x = logits.astype(jnp.float32)
  positive = (labels > 0).astype(jnp.float32)
  negative = (labels < 0).astype(jnp.float32)
  # log(1 − σ(x)) = log σ(−x).
  log_likelihood = positive * jax.nn.log_sigmoid(x) + negative * jax.nn.log_sigmoid(-x)
  return -jnp.sum(log_likelihood, axis=-1) / x.shape[-1]


def partial_bce(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Partial binary cross-entropy (Durand et al. 2019, Eq. 2).

  ℓ = g(p)·``known_label_bce``, where p is the example's fraction of known labels and
  g(p) = α p + β with α = −40/9, β = 49/9 (γ = 1, g(1) = 1, g(0.1) = 5): an example with few
  known labels weighs as much as a fully labelled one. An example with no known label has
  loss 0.

  Args:
    logits: ``[batch, C]``.
    labels: ``[batch, C]`` in {1: positive, −1: negative, 0: unknown}.

  Returns:
    ``[batch]`` losses.
  """
  known_fraction = jnp.mean((labels != 0).astype(jnp.float32), axis=-1)
  scale = PARTIAL_BCE_ALPHA * known_fraction + PARTIAL_BCE_BETA
  return scale * known_label_bce(logits, labels)


def _annotator_weights(weights: Optional[jnp.ndarray], num_annotators: int) -> jnp.ndarray:
  if weights is None:
    return jnp.ones((num_annotators,), jnp.float32)
  return jnp.asarray(weights, jnp.float32)


def annotators_cross_entropy(logits: jnp.ndarray, annotations: jnp.ndarray,
                             weights: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """Cross-entropy against every annotator's label: training on the union of the labels.

  ℓ = Σ_k w_k [ỹ_k ≠ −1] (−log p_ỹ_k), with p = softmax(logits): each label an image has is
  one training example, as when inconsistently annotated datasets are simply merged.

  Args:
    logits: ``[batch, C]``.
    annotations: int ``[batch, K]``, −1 where annotator k gave no label.
    weights: ``[K]`` per-annotator weights w_k (default 1).

  Returns:
    ``[batch]``.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  given = annotations >= 0
  picked = jnp.take_along_axis(log_probs, jnp.where(given, annotations, 0), axis=-1)
  w = _annotator_weights(weights, annotations.shape[-1])
  return -jnp.sum(jnp.where(given, picked, 0.0) * w, axis=-1)


def latent_truth_nll(truth_logits: jnp.ndarray, log_transitions: jnp.ndarray,
                     annotations: jnp.ndarray,
                     weights: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """The Latent Truth Net loss (Zeng, Shan & Chen, ECCV 2018, IPA2LT §3.3).

  The network predicts the latent truth p(y | x) and each annotator k labels through its
  transition matrix T_k (row-stochastic, T_k[i, j] = P(ỹ_k = j | y = i)), so its label's
  probability is (p T_k)_j = Σ_i p_i T_k[i, j]. The loss is the negative log-likelihood of the
  labels present,

      ℓ = −Σ_k w_k [ỹ_k ≠ −1] log (p T_k)[ỹ_k],

  computed in log space: log (p T_k)_j = logsumexp_i (log p_i + log T_k[i, j]).

  Args:
    truth_logits: ``[batch, C]``: the logits of p(y | x).
    log_transitions: ``[K, C, C]``: log T_k, each row's exponentials summing to 1.
    annotations: int ``[batch, K]``, −1 where annotator k gave no label.
    weights: ``[K]`` per-annotator weights w_k (default 1).

  Returns:
    ``[batch]``.
  """
  log_p = jax.nn.log_softmax(truth_logits.astype(jnp.float32), axis=-1)
  # [batch, K, C]: log P(ỹ_k = j | x) for every annotator and class.
  log_noisy = jax.nn.logsumexp(log_p[:, None, :, None] + log_transitions[None], axis=2)
  given = annotations >= 0
  picked = jnp.take_along_axis(log_noisy, jnp.where(given, annotations, 0)[..., None],
                               axis=-1)[..., 0]
  w = _annotator_weights(weights, annotations.shape[-1])
  return -jnp.sum(jnp.where(given, picked, 0.0) * w, axis=-1)


def mean_transition_trace(log_transitions: jnp.ndarray) -> jnp.ndarray:
  """Σ_k tr(T_k) / C: the trace penalty of Tanno et al. (CVPR 2019) on the annotators' T_k.

  The likelihood alone cannot tell a confident truth seen through noisy annotators from a
  hesitant truth seen through reliable ones (p T_k is the same product); adding λ·Σ_k tr(T_k)
  prefers the noisiest annotators that still explain the labels, which recovers the true T_k
  when the annotators are right more often than not.

  Args:
    log_transitions: ``[K, C, C]``: log T_k.

  Returns:
    A scalar.
  """
  diagonals = jnp.exp(jnp.diagonal(log_transitions, axis1=-2, axis2=-1))
  return jnp.sum(jnp.mean(diagonals, axis=-1))
