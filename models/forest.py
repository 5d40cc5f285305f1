"""Deep Neural Decision Forests (Kontschieder, Fiterau, Criminisi & Rota Bulò, ICCV 2015).

A forest head on any trunk: the trunk's outputs f_n(x) become decisions d_n(x) = σ(f_n(x)),
each tree routes an example to its leaves with μ_ℓ(x) = Π_n d_n(x)^[ℓ↙n] (1 − d_n(x))^[ℓ↘n]
(``models.trees.path_probabilities``), and predicts P_T[y|x] = Σ_ℓ μ_ℓ(x) π_ℓy; the forest
averages its trees. The leaf distributions π are learned either

* by the paper's fixed-point update (Eq. 11), run between epochs on the training data with the
  trunk fixed (``fixed_point_leaf_update``); π is then not a variable of the module at all:
  the module returns the routing μ and whoever holds π (the forest task keeps it in its
  state, out of the optimizer's and the weight EMA's reach) predicts with
  ``forest_log_probs(μ, π)``; or
* jointly with the trunk by gradient descent, as π = softmax(φ) with φ a parameter; the
  module then returns the forest's log-probabilities.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from models.trees import path_probabilities

LEAF_LEARNING = ("fixed_point", "gradient")


def decision_unit_subsets(num_units: int, num_trees: int, depth: int, seed: int) -> np.ndarray:
  """Which of the trunk's outputs drive each tree's 2**depth − 1 decision nodes.

  The paper connects each tree to a random subset of the trunk's fully connected outputs;
  here each tree draws its subset without replacement from a generator seeded by ``seed``.

  Returns:
    int array ``[num_trees, 2**depth - 1]``.
  """
  num_inner = 2**depth - 1
  if num_units < num_inner:
    raise ValueError(f"num_decision_units={num_units} is below the {num_inner} decision nodes "
                     f"of a depth-{depth} tree; use at least {num_inner}.")
  rng = np.random.default_rng(seed)
  return np.stack([rng.choice(num_units, num_inner, replace=False) for _ in range(num_trees)])


def fixed_point_leaf_update(leaf_distributions: jnp.ndarray, routing: jnp.ndarray,
                            labels: jnp.ndarray, mask: jnp.ndarray, num_iterations: int,
                            axis_name: Optional[str] = None) -> jnp.ndarray:
  """The paper's update of the leaf distributions with the decisions fixed (Eq. 11).

      π_ℓy^(t+1) = (1 / Z_ℓ^(t)) Σ_{x: y_x = y} π_ℓy^(t) μ_ℓ(x) / P_T[y | x, π^(t)],

  with Z_ℓ normalizing each leaf's distribution, iterated ``num_iterations`` times (the paper:
  20) from ``leaf_distributions``. A leaf that no example reaches keeps its distribution.

  Args:
    leaf_distributions: π^(0) ``[trees, leaves, K]``, positive (the paper starts from uniform).
    routing: μ ``[examples, trees, leaves]``.
    labels: ``[examples]`` integer class ids.
    mask: ``[examples]``, 0 for padding.
    num_iterations: fixed-point iterations.
    axis_name: also sum over this device axis (every device then holds the same π).

  Returns:
    The updated π ``[trees, leaves, K]``.
  """
  num_classes = leaf_distributions.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * mask[:, None]

  def iteration(_, pi):
    # P_T[y_x | x] of every tree for every example.
    label_pi = jnp.einsum("tly,ny->ntl", pi, targets)
    p_label = jnp.sum(routing * label_pi, axis=-1)  # [examples, trees]
    weights = routing / jnp.maximum(p_label, 1e-30)[..., None]
    numerator = pi * jnp.einsum("ntl,ny->tly", weights, targets)
    if axis_name is not None:
      numerator = lax.psum(numerator, axis_name)
    z = jnp.sum(numerator, axis=-1, keepdims=True)
    return jnp.where(z > 0, numerator / jnp.maximum(z, 1e-30), pi)

  return lax.fori_loop(0, num_iterations, iteration, leaf_distributions.astype(jnp.float32))


def forest_log_probs(routing: jnp.ndarray, leaf_distributions: jnp.ndarray) -> jnp.ndarray:
  """log of the forest's prediction P[y|x] = (1/T) Σ_T Σ_ℓ μ_ℓ(x) π_ℓy.

  Args:
    routing: μ ``[batch, trees, leaves]``.
    leaf_distributions: π ``[trees, leaves, K]``.

  Returns:
    ``[batch, K]`` log-probabilities (floored at 1e-30 before the log).
  """
  probs = jnp.einsum("btl,tlk->bk", routing, leaf_distributions) / routing.shape[1]
  return jnp.log(jnp.maximum(probs, 1e-30))


class NeuralDecisionForest(nn.Module):
  """A decision-forest head on a trunk network (Kontschieder et al. 2015).

  Attributes:
    trunk: any module called as ``trunk(x, train=...)`` returning ``[batch,
      num_decision_units]`` (a ResNet or MLP built with that many outputs).
    num_classes: K.
    num_decision_units: the trunk's outputs f_n.
    num_trees: trees in the forest.
    depth: levels of decision nodes per tree (2**depth leaves).
    leaf_learning: ``'fixed_point'`` (π held outside the module and updated by
      ``fixed_point_leaf_update``) or ``'gradient'`` (π = softmax(φ), φ a parameter).
    feature_seed: seed of ``decision_unit_subsets``.
  """
  trunk: nn.Module
  num_classes: int
  num_decision_units: int
  num_trees: int = 10
  depth: int = 5
  leaf_learning: str = "fixed_point"
  feature_seed: int = 0
  dtype: Any = jnp.float32

  def setup(self):
    if self.leaf_learning not in LEAF_LEARNING:
      raise ValueError(f"leaf_learning={self.leaf_learning!r} is unknown; use one of "
                       f"{LEAF_LEARNING}.")
    if self.leaf_learning == "gradient":
      self.leaf_logits = self.param("leaf_logits", nn.initializers.zeros,
                                    (self.num_trees, 2**self.depth, self.num_classes))

  def routing(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """μ ``[batch, trees, leaves]``: each tree's probability of routing x to each leaf."""
    subsets = decision_unit_subsets(self.num_decision_units, self.num_trees, self.depth,
                                    self.feature_seed)
    f = self.trunk(x, train=train).astype(jnp.float32)
    return path_probabilities(jax.nn.sigmoid(f[:, subsets]))

  def __call__(self, x: jnp.ndarray, train: bool = False):
    """``{'routing': μ [batch, trees, leaves]}`` for fixed-point leaves (predict with
    ``forest_log_probs(μ, π)``); the forest's log-probabilities ``[batch, K]`` for learned
    leaves."""
    mu = self.routing(x, train)
    if self.leaf_learning == "fixed_point":
      return {"routing": mu}
    return forest_log_probs(mu, jax.nn.softmax(self.leaf_logits, axis=-1))
