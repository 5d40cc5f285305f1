"""The self-organizing memory module of Tu, Niu, Chen, Cheng & Zhang (CVPR 2020), in pure JAX.

Learning from web data, where a class's images may not show the class (label noise) and show
it small among clutter (background noise), the paper groups the ROIs (regions) of images that
share a web label into a bag and weights every ROI by the clusters a memory keeps of the
features seen so far. The memory has L slots on a g × g grid (SOM-style):

* keys k_l ∈ R^D: cluster centres in feature space;
* values v_l ∈ Δ^C: the class distribution of the bags each cluster has taken in;
* wins n_{l,c}: how many bags of class c the slot has won (decayed by γ per update).

**Scores** of slot l for class c:

* discriminative score d_{l,c} = v_{l,c}: the cluster holds (mostly) class c, not others;
* representative score r_{l,c} = n_{l,c} / max_{l'} n_{l',c}: the cluster is where class
  c's bags most often land (0 for a class no slot has won yet).

**ROI weights** (``roi_weights``): in a bag of web label c, ROI i with feature x_i goes to
its nearest key l_i = argmin_l ‖x_i − k_l‖² and gets w_i = r_{l_i,c} · d_{l_i,c}; the weights
are normalized in the bag, α_i = w_i / Σ_j w_j (uniform where every w is 0). The bag feature
is z = Σ_i α_i x_i, from which the classifier learns the bag's label; α is not
differentiated (a nearest-key lookup).

**Update** (``som_update``), one step per training batch from the bag features z_b and
labels c_b of the whole global batch (B bags): each bag's winner l*_b = argmin_l ‖z_b −
k_l‖², its neighbourhood on the grid h_{l,b} = exp(−‖g_l − g_{l*_b}‖² / 2σ²), and

  k_l ← k_l + η Σ_b h_{l,b} (z_b − k_l) / B,
  v_l ← v_l + η Σ_b h_{l,b} (e_{c_b} − v_l) / B,
  n_{l,c} ← γ n_{l,c} + Σ_b [l = l*_b][c = c_b],

the winner and its neighbours pulled towards the bag (Kohonen's rule, averaged over the
batch), values kept distributions. With ``axis_name`` the sums run over every device
(``lax.psum``), so every device holds the same memory. σ shrinks over training
(``neighbourhood_width``): early updates order the whole grid, late ones refine single slots.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

SCORES = ("both", "representative", "discriminative")


class Memory(NamedTuple):
  """The memory's slots: ``keys [L, D]``, ``values [L, C]``, ``wins [L, C]``."""
  keys: jnp.ndarray
  values: jnp.ndarray
  wins: jnp.ndarray


def init_memory(rng: jax.Array, grid: int, feature_dim: int, num_classes: int,
                scale: float = 0.01) -> Memory:
  """``grid``² slots: small random keys, uniform values, no wins."""
  slots = grid * grid
  return Memory(keys=scale * jax.random.normal(rng, (slots, feature_dim), jnp.float32),
                values=jnp.full((slots, num_classes), 1.0 / num_classes, jnp.float32),
                wins=jnp.zeros((slots, num_classes), jnp.float32))


def grid_positions(slots: int) -> jnp.ndarray:
  """``[L, 2]`` (row, column) of each slot on the square grid."""
  grid = int(round(slots ** 0.5))
  index = jnp.arange(slots)
  return jnp.stack([index // grid, index % grid], axis=-1).astype(jnp.float32)


def nearest_slot(features: jnp.ndarray, keys: jnp.ndarray) -> jnp.ndarray:
  """``[...]`` index of the nearest key (Euclidean) of each feature ``[..., D]``."""
  distances = (jnp.sum(features * features, -1)[..., None] + jnp.sum(keys * keys, -1)
               - 2.0 * features @ keys.T)
  return jnp.argmin(distances, axis=-1)


def slot_scores(memory: Memory, scores: str = "both") -> jnp.ndarray:
  """``[L, C]`` score of every slot for every class: r · d, r alone or d alone."""
  discriminative = memory.values
  most = jnp.max(memory.wins, axis=0, keepdims=True)
  representative = jnp.where(most > 0, memory.wins / jnp.maximum(most, 1e-12), 0.0)
  if scores == "representative":
    return representative
  if scores == "discriminative":
    return discriminative
  if scores == "both":
    return representative * discriminative
  raise ValueError(f"scores={scores!r} is unknown; use one of {SCORES}.")


def roi_weights(features: jnp.ndarray, labels: jnp.ndarray, memory: Memory,
                scores: str = "both") -> jnp.ndarray:
  """α: each ROI's weight in its bag, from the scores of its nearest slot for the bag's label.

  Args:
    features: ROI features ``[B, N, D]`` (N ROIs per bag: its images' regions, flattened).
    labels: the bags' web labels ``[B]``.
    memory: the memory.
    scores: which scores weigh (``SCORES``; the paper: both).

  Returns:
    ``[B, N]``, each row summing to 1 (uniform where every score is 0); no gradient.
  """
  features = lax.stop_gradient(features)
  table = slot_scores(memory, scores)  # [L, C]
  slots = nearest_slot(features, memory.keys)  # [B, N]
  w = table[slots, labels[:, None]]
  total = jnp.sum(w, axis=-1, keepdims=True)
  uniform = jnp.full_like(w, 1.0 / w.shape[-1])
  return jnp.where(total > 0, w / jnp.maximum(total, 1e-12), uniform)


def som_update(memory: Memory, bag_features: jnp.ndarray, labels: jnp.ndarray,
               learning_rate: float, width: jnp.ndarray, win_decay: float = 0.99,
               axis_name: Optional[str] = None) -> Memory:
  """One SOM step of the memory from a batch of bag features (module docstring).

  Args:
    memory: the memory before the step.
    bag_features: ``[B, D]`` (this device's bags).
    labels: ``[B]``.
    learning_rate: η.
    width: σ, the neighbourhood's width in grid cells.
    win_decay: γ.
    axis_name: the data-parallel axis whose devices' bags are summed; None for one device.

  Returns:
    The memory after the step, identical on every device.
  """
  z = lax.stop_gradient(bag_features).astype(jnp.float32)
  num_classes = memory.values.shape[1]
  winners = nearest_slot(z, memory.keys)  # [B]
  grid = grid_positions(memory.keys.shape[0])
  squared = jnp.sum(jnp.square(grid[:, None, :] - grid[winners][None]), -1)  # [L, B]
  h = jnp.exp(-squared / (2.0 * jnp.square(width)))
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)  # [B, C]
  sums = (h @ z, h @ onehot, jnp.sum(h, axis=1), jax.nn.one_hot(winners, len(grid)).T @ onehot,
          jnp.asarray(z.shape[0], jnp.float32))
  if axis_name is not None:
    sums = lax.psum(sums, axis_name)
  hz, hy, h_total, won, bags = sums
  keys = memory.keys + learning_rate * (hz - h_total[:, None] * memory.keys) / bags
  values = memory.values + learning_rate * (hy - h_total[:, None] * memory.values) / bags
  return Memory(keys=keys, values=values, wins=win_decay * memory.wins + won)


def neighbourhood_width(step: jnp.ndarray, total_steps: int, start: float,
                        end: float = 0.5) -> jnp.ndarray:
  """σ at ``step``: from ``start`` down to ``end`` exponentially over ``total_steps``."""
  fraction = jnp.clip(step / max(total_steps, 1), 0.0, 1.0)
  return start * (end / start) ** fraction
