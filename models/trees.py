"""Differentiable decision trees: Deep Neural Decision Trees and Soft Decision Trees.

* ``DNDT`` — Yang, Garcia Morillo & Hospedales, "Deep Neural Decision Trees" (2018).
* ``SoftDecisionTree`` — Frosst & Hinton, "Distilling a Neural Network Into a Soft Decision
  Tree" (2017).

Both are plain Flax modules; the losses that are specific to them live in the soft tree task
(``bagtricks/tasks/``) and their pictures and rules in ``models/explain.py``.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# ------------------------------------------------------------------------------------------
# Deep Neural Decision Trees.


def soft_binning_logits(x: jnp.ndarray, cut_points: jnp.ndarray,
                        temperature: float) -> jnp.ndarray:
  """(w·x + b) / τ of ``soft_binning``, before the softmax (same arguments and shape)."""
  cuts = jnp.sort(cut_points, axis=-1)
  n = cuts.shape[-1]
  w = jnp.arange(1, n + 2, dtype=x.dtype)
  b = jnp.concatenate([jnp.zeros(cuts.shape[:-1] + (1,), cuts.dtype),
                       -jnp.cumsum(cuts, axis=-1)], axis=-1)
  return (x[..., None] * w + b) / temperature


def soft_binning(x: jnp.ndarray, cut_points: jnp.ndarray, temperature: float) -> jnp.ndarray:
  """DNDT's differentiable binning of scalars into n + 1 intervals (Yang et al. 2018, Eq. 1).

  With the n cut points sorted, β_1 < … < β_n, and

      w = [1, 2, …, n + 1],   b = [0, −β_1, −β_1 − β_2, …, −β_1 − … − β_n],

  the bin memberships are softmax((w·x + b) / τ). Consecutive logits differ by (x − β_i) / τ,
  so as τ → 0 this is the one-hot indicator of the interval (β_{i−1}, β_i] holding x.

  Args:
    x: values ``[..., features]``.
    cut_points: ``[..., features, n]`` (broadcastable against ``x``); sorted here, so the raw
      parameters may be in any order (the paper's code sorts them the same way).
    temperature: τ > 0 (the paper's code uses 0.1).

  Returns:
    Bin memberships ``[..., features, n + 1]``, each row summing to 1.
  """
  return jax.nn.softmax(soft_binning_logits(x, cut_points, temperature), axis=-1)


def kronecker_leaves(bins: jnp.ndarray) -> jnp.ndarray:
  """The leaf memberships of a DNDT: the Kronecker product of its features' bins.

  z = f_1 ⊗ f_2 ⊗ … ⊗ f_D (Yang et al. 2018, Eq. 2); feature 1 varies slowest, so leaf
  index = Σ_d bin_d · Π_{e>d} (n_e + 1), as in ``np.kron``.

  Args:
    bins: ``[..., features, n + 1]`` from ``soft_binning``.

  Returns:
    ``[..., (n + 1) ** features]``.
  """
  leaves = bins[..., 0, :]
  for d in range(1, bins.shape[-2]):
    leaves = (leaves[..., :, None] * bins[..., d, None, :]).reshape(leaves.shape[:-1] + (-1,))
  return leaves


def leaf_bin_incidence(num_features: int, num_bins: int) -> np.ndarray:
  """M ``[features · bins, leaves]``: M[d·bins + i, ℓ] = 1 iff leaf ℓ takes bin i of feature d.

  Leaves are ordered as in ``kronecker_leaves`` (feature 1 varies slowest).
  """
  leaves = np.arange(num_bins**num_features)
  m = np.zeros((num_features * num_bins, leaves.size), np.float32)
  for d in range(num_features):
    digit = leaves // num_bins**(num_features - 1 - d) % num_bins
    m[d * num_bins + digit, leaves] = 1.0
  return m


def log_kronecker_leaves(log_bins: jnp.ndarray) -> jnp.ndarray:
  """log of ``kronecker_leaves``, from log bin memberships, as one matrix product.

  log z_ℓ = Σ_d log f_d[i_d(ℓ)] = (log f_1 ‖ … ‖ log f_D) @ M (``leaf_bin_incidence``). The
  same numbers as the chain of outer products, but a matmul forward and backward: on XLA:CPU
  the reshaped outer products' gradient took about 30× longer for 10 features. Working from
  log-softmax bins also keeps underflowing memberships finite.

  Args:
    log_bins: ``[..., features, n + 1]``.

  Returns:
    ``[..., (n + 1) ** features]``.
  """
  num_features, num_bins = log_bins.shape[-2:]
  incidence = jnp.asarray(leaf_bin_incidence(num_features, num_bins), log_bins.dtype)
  return log_bins.reshape(log_bins.shape[:-2] + (-1,)) @ incidence


def dndt_leaf_count(num_cut: int, num_features: int) -> int:
  """Leaves of one DNDT tree: Π_d (n_d + 1) = (num_cut + 1) ** num_features."""
  return (num_cut + 1) ** num_features


def tree_feature_subsets(num_features: int, num_trees: int, features_per_tree: int,
                         seed: int) -> np.ndarray:
  """The features each tree of a DNDT forest splits on (the paper's random subspaces).

  A single tree with ``features_per_tree`` 0 (or ≥ ``num_features``) uses every feature, in
  order. Otherwise each tree draws ``features_per_tree`` distinct features, sorted, from a
  NumPy generator seeded with ``seed`` — fixed by the config, so the rule export and a resumed
  run see the same subsets.

  Returns:
    int array ``[num_trees, features_per_tree]``.
  """
  if not features_per_tree or features_per_tree >= num_features:
    if num_trees == 1:
      return np.arange(num_features)[None]
    features_per_tree = num_features
  rng = np.random.default_rng(seed)
  return np.stack([np.sort(rng.choice(num_features, features_per_tree, replace=False))
                   for _ in range(num_trees)])


class DNDT(nn.Module):
  """Deep Neural Decision Tree, or a random-subspace forest of them (Yang et al. 2018).

  Every feature of a tree is soft-binned by its own learned cut points (``soft_binning``); the
  Kronecker product of the bins is a one-hot-like vector over the tree's leaves
  (``kronecker_leaves``) and the class logits are that vector times a learned leaf score
  matrix. For many features the paper grows a forest instead ("10 trees × 10 features" beyond
  12 features): each tree splits on its own random feature subset, and the trees' class
  probabilities are averaged (``ensemble='average'``) or, at evaluation, counted as votes
  (``ensemble='vote'``: log((votes + mean probability) / (trees + 1)), so the majority wins and
  the mean probability breaks ties; training always uses the average, which has a gradient).

  Attributes:
    num_classes: K.
    num_cut: cut points per feature (n; the tree has (n + 1) ** features leaves).
    temperature: τ of the soft binning.
    num_trees: 1 for a single tree.
    features_per_tree: features of each tree; 0 = all.
    ensemble: ``'average'`` or ``'vote'``.
    feature_seed: seed of ``tree_feature_subsets``.
    max_leaves: refuse trees with more leaves than this (the leaf vector is ``[batch, leaves]``
      per tree, and its count is exponential in the features).
    dtype: computation dtype.
  """
  num_classes: int
  num_cut: int = 1
  temperature: float = 0.1
  num_trees: int = 1
  features_per_tree: int = 0
  ensemble: str = "average"
  feature_seed: int = 0
  max_leaves: int = 16384
  dtype: Any = jnp.float32

  def feature_subsets(self, num_features: int) -> np.ndarray:
    return tree_feature_subsets(num_features, self.num_trees, self.features_per_tree,
                                self.feature_seed)

  def check_size(self, num_features: int) -> None:
    """Raises ``ValueError`` if a tree would have more than ``max_leaves`` leaves."""
    if self.ensemble not in ("average", "vote"):
      raise ValueError(f"ensemble={self.ensemble!r} is unknown; use 'average' or 'vote'.")
    if self.num_cut < 1 or self.num_trees < 1 or self.temperature <= 0:
      raise ValueError(f"num_cut={self.num_cut} and num_trees={self.num_trees} must be >= 1 and "
                       f"temperature={self.temperature} > 0.")
    per_tree = self.feature_subsets(num_features).shape[1]
    leaves = dndt_leaf_count(self.num_cut, per_tree)
    if leaves > self.max_leaves:
      raise ValueError(
          f"a DNDT tree on {per_tree} features with num_cut={self.num_cut} has "
          f"({self.num_cut} + 1)^{per_tree} = {leaves:,} leaves, above max_leaves="
          f"{self.max_leaves:,}. Use the forest mode (e.g. num_trees=10, features_per_tree=10, "
          f"the paper's setting beyond 12 features: {dndt_leaf_count(self.num_cut, 10):,} "
          "leaves per tree), or lower num_cut.")

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """Class logits ``[batch, num_classes]`` of features ``x`` ``[batch, features]``."""
    num_features = x.shape[-1]
    self.check_size(num_features)
    subsets = self.feature_subsets(num_features)
    num_trees, per_tree = subsets.shape
    num_leaves = dndt_leaf_count(self.num_cut, per_tree)
    # The paper's code draws cut points and leaf scores from U[0, 1); the features here are
    # standardized, so cut points start in U[-1, 1) around the data instead.
    cut_points = self.param(
        "cut_points", lambda k, s: jax.random.uniform(k, s, jnp.float32, -1.0, 1.0),
        (num_trees, per_tree, self.num_cut))
    leaf_scores = self.param("leaf_scores", nn.initializers.uniform(1.0),
                             (num_trees, num_leaves, self.num_classes))
    x = x.astype(self.dtype)[:, subsets]  # [batch, trees, features per tree]
    log_bins = jax.nn.log_softmax(
        soft_binning_logits(x, cut_points.astype(self.dtype), self.temperature), axis=-1)
    leaves = jnp.exp(log_kronecker_leaves(log_bins))  # kronecker_leaves of the bins
    logits = jnp.einsum("btl,tlk->btk", leaves, leaf_scores.astype(self.dtype))
    if num_trees == 1:
      return logits[:, 0]
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    mean_probs = jnp.mean(probs, axis=1)
    if self.ensemble == "vote" and not train:
      votes = jnp.sum(jax.nn.one_hot(jnp.argmax(probs, -1), self.num_classes), axis=1)
      return jnp.log((votes + mean_probs) / (num_trees + 1))
    return jnp.log(mean_probs)


# ------------------------------------------------------------------------------------------
# Routing through complete binary trees (shared with the neural decision forest).


def path_probabilities(right_probs: jnp.ndarray) -> jnp.ndarray:
  """Probability of reaching each leaf of complete binary trees.

  Inner nodes are numbered breadth-first (root 0, children of i are 2i + 1 and 2i + 2); the
  probability of a leaf is the product, along its path, of p_i where the path turns right
  at node i and 1 − p_i where it turns left (Frosst & Hinton 2017: P^ℓ(x); Kontschieder
  et al. 2015: μ_ℓ(x)). Leaves are numbered left to right.

  Args:
    right_probs: ``[..., 2**depth - 1]`` probabilities p_i of turning right.

  Returns:
    ``[..., 2**depth]``, summing to 1 over the last axis.
  """
  num_inner = right_probs.shape[-1]
  depth = int(round(math.log2(num_inner + 1)))
  probs = jnp.ones(right_probs.shape[:-1] + (1,), right_probs.dtype)
  for level in range(depth):
    p = right_probs[..., 2**level - 1:2**(level + 1) - 1]  # This level's nodes, left to right.
    probs = jnp.stack([probs * (1 - p), probs * p], axis=-1).reshape(p.shape[:-1] + (-1,))
  return probs


def node_reach_probabilities(right_probs: jnp.ndarray) -> jnp.ndarray:
  """Probability of reaching each inner node (``[..., 2**depth - 1]``, breadth-first)."""
  num_inner = right_probs.shape[-1]
  depth = int(round(math.log2(num_inner + 1)))
  levels = [jnp.ones(right_probs.shape[:-1] + (1,), right_probs.dtype)]
  for level in range(1, depth):
    levels.append(path_probabilities(right_probs[..., :2**level - 1]))
  return jnp.concatenate(levels, axis=-1)


def node_depths(depth: int) -> np.ndarray:
  """Depth of each inner node of a complete tree, breadth-first (root = 0)."""
  return np.concatenate([np.full(2**d, d) for d in range(depth)])


# ------------------------------------------------------------------------------------------
# Soft Decision Tree.


def balancing_penalty(alpha: jnp.ndarray, depths: jnp.ndarray, strength: float,
                      eps: float = 1e-6) -> jnp.ndarray:
  """Frosst & Hinton (2017)'s penalty for inner nodes that send everything one way.

  C = −λ Σ_i 2^(−d_i) · (½ log α_i + ½ log(1 − α_i)), where α_i is the path-weighted
  mean probability of turning right at node i (``node_alpha``) and d_i its depth.

  Args:
    alpha: ``[inner_nodes]``.
    depths: ``[inner_nodes]``.
    strength: λ.
    eps: α is clipped to [eps, 1 − eps] so a saturated node gives a large finite penalty.
  """
  alpha = jnp.clip(alpha, eps, 1.0 - eps)
  return -strength * jnp.sum(2.0**(-depths) * 0.5 * (jnp.log(alpha) + jnp.log1p(-alpha)))


def node_alpha(right_probs: jnp.ndarray, reach: jnp.ndarray,
               axis_name: Optional[str] = None) -> jnp.ndarray:
  """α_i = Σ_x P^i(x) p_i(x) / Σ_x P^i(x) over the batch (and devices with ``axis_name``).

  Args:
    right_probs: ``[batch, inner_nodes]`` p_i(x).
    reach: ``[batch, inner_nodes]`` P^i(x), from ``node_reach_probabilities``.
    axis_name: sum over this device axis too, so every device sees the global batch's α.
  """
  num = jnp.sum(reach * right_probs, axis=0)
  den = jnp.sum(reach, axis=0)
  if axis_name is not None:
    num, den = lax.psum((num, den), axis_name)
  return num / jnp.maximum(den, 1e-12)


def alpha_decays(depth: int, window: float) -> np.ndarray:
  """Per-node decay of the running α: a window of ``window · 2^d`` batches at depth d.

  Frosst & Hinton: "an exponentially decaying running average … with a time window that is
  exponentially proportional to the depth of the node". decay = 1 − 1 / (window · 2^d);
  ``window`` 0 means no running average (α of the batch alone).
  """
  if window <= 0:
    return np.zeros(2**depth - 1)
  return 1.0 - 1.0 / np.maximum(window * 2.0**node_depths(depth), 1.0)


class SoftDecisionTree(nn.Module):
  """A soft binary decision tree over flattened inputs (Frosst & Hinton 2017).

  Inner node i turns right with p_i(x) = σ(β(x·w_i + b_i)); leaf ℓ holds a class distribution
  Q^ℓ = softmax(φ^ℓ) and is reached with the path probability P^ℓ(x). The module is a pure
  function of its parameters: the training loss −Σ_ℓ P^ℓ(x) Σ_k T_k log Q^ℓ_k
  (``bagtricks.losses.soft_tree_loss``) and the balancing penalty over the running α_i
  (``balancing_penalty``, ``node_alpha``, ``alpha_decays``) are computed by the soft tree
  task from ``right_probs``, with α kept in the task's state.

  Attributes:
    num_classes: K.
    depth: levels of inner nodes (2**depth leaves).
    inverse_temperature: β.
    dtype: computation dtype.

  Returns (``__call__``): a dict with
    ``logits`` ``[batch, K]``: log Σ_ℓ P^ℓ Q^ℓ, the path-weighted mixture;
    ``max_path_logits`` ``[batch, K]``: log Q of the most probable leaf (the paper's
    interpretable prediction);
    ``path_probs`` ``[batch, leaves]``; ``leaf_log_probs`` ``[leaves, K]``;
    ``right_probs`` ``[batch, inner_nodes]``: p_i(x), float32.
  """
  num_classes: int
  depth: int = 4
  inverse_temperature: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> dict:
    del train
    if self.depth < 1:
      raise ValueError(f"depth={self.depth} must be >= 1.")
    x = x.reshape(x.shape[0], -1).astype(self.dtype)
    num_inner = 2**self.depth - 1
    z = nn.Dense(num_inner, dtype=self.dtype, name="inner")(x)
    right = jax.nn.sigmoid(self.inverse_temperature * z.astype(jnp.float32))
    leaf_logits = self.param("leaf_logits", nn.initializers.normal(0.1),
                             (2**self.depth, self.num_classes))
    leaf_log_probs = jax.nn.log_softmax(leaf_logits, axis=-1)
    path = path_probabilities(right)
    logits = jax.nn.logsumexp(jnp.log(jnp.maximum(path, 1e-30))[:, :, None]
                              + leaf_log_probs[None], axis=1)
    max_path_logits = leaf_log_probs[jnp.argmax(path, axis=-1)]
    return {"logits": logits, "max_path_logits": max_path_logits, "path_probs": path,
            "leaf_log_probs": leaf_log_probs, "right_probs": right}


__all__: Sequence[str] = (
    "DNDT", "SoftDecisionTree", "soft_binning", "soft_binning_logits", "kronecker_leaves",
    "log_kronecker_leaves", "leaf_bin_incidence", "dndt_leaf_count",
    "tree_feature_subsets", "path_probabilities", "node_reach_probabilities", "node_depths",
    "balancing_penalty", "node_alpha", "alpha_decays")
