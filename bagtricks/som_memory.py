"""The self-organizing memory module of Tu, Niu, Chen, Cheng & Zhang (CVPR 2020), in pure JAX.

Learning from web data, where a class's images may not show the class (label noise) and show
it small among clutter (background noise), the paper groups the ROIs (regions) of images that
share a web label into a bag and weights every ROI by the clusters a memory keeps of the
features seen so far. The memory has L slots on a g × g grid (SOM-style):

* keys k_l ∈ R^D: cluster centres in feature space;
* values v_l ∈ Δ^C: the class distribution (web labels) of the ROIs each cluster takes in.

**Scores** of slot l for class c, both read from its value:

* representative score r_{l,c} = v_{l,c}: how much of the cluster comes from class c's
  images (the cluster stands for class c);
* discriminative score d_l = 1 − H(v_l) / log C: 1 for a cluster of one class, 0 for one
  that every class shares alike (background).

**ROI weights** (``roi_weights``): in a bag of web label c, ROI i with feature x_i goes to
its nearest key l_i = argmin_l ‖x_i − k_l‖² and gets w_i = r_{l_i,c} · d_{l_i}; the weights
are normalized in the bag, α_i = w_i / Σ_j w_j. The bag feature is z = Σ_i α_i x_i, from
which the classifier learns the bag's label; α is not differentiated (a nearest-key lookup).

**Update** (``som_update``), one step per training batch from every ROI of the global batch
with its bag's label c_i: ROI i's winner l*_i = argmin_l ‖x_i − k_l‖², its neighbourhood
on the grid h_{l,i} = exp(−‖g_l − g_{l*_i}‖² / 2σ²), the slot's mass m_l = Σ_i h_{l,i}, and

  k_l ← k_l + η Σ_i h_{l,i} (x_i − k_l) / max(m_l, 1),
  v_l ← v_l + η Σ_i h_{l,i} (e_{c_i} − v_l) / max(m_l, 1):

Kohonen's rule, each slot pulled towards the mean of the ROIs that reach it, values kept
distributions. With ``axis_name`` the sums run over every device (``lax.psum``), so every
device holds the same memory. σ and η shrink over training (``exponential_decay``), as in
Kohonen's map: early updates order the whole grid and follow the encoder's fast-moving
features, late ones refine single slots and average many ROIs. (A slot wins a few ROIs of a
batch, so a value moved by a constant large η is the label mix of the last batches' few ROIs,
not the cluster's; README, "Learning from web data", has the measurement.)

The paper's own equations could not be checked against its text; four readings of it were
measured on web digits (README, "Learning from web data") and differ from this one: the
memory updated from the bag features z (keys become averages of unrelated regions while the
weights are spread), from the ROIs weighted by α (the memory and the classifier reinforce
whichever class the first weights favour), an r-score from the slots' sizes (the encoder
maps the background near one point, whose slot is the largest for every class), and a
constant η (the values follow the last batches, above).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

SCORES = ("both", "representative", "discriminative")


class Memory(NamedTuple):
  """The memory's slots: ``keys [L, D]``, ``values [L, C]``."""
  keys: jnp.ndarray
  values: jnp.ndarray


def init_memory(rng: jax.Array, grid: int, feature_dim: int, num_classes: int,
                scale: float = 0.01) -> Memory:
  """``grid``² slots: small random keys, uniform values."""
  slots = grid * grid
  return Memory(keys=scale * jax.random.normal(rng, (slots, feature_dim), jnp.float32),
                values=jnp.full((slots, num_classes), 1.0 / num_classes, jnp.float32))


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
  values = memory.values
  entropy = -jnp.sum(values * jnp.log(jnp.maximum(values, 1e-12)), axis=1, keepdims=True)
  discriminative = jnp.clip(1.0 - entropy / jnp.log(values.shape[1]), 0.0, 1.0)
  if scores == "representative":
    return values
  if scores == "discriminative":
    return jnp.broadcast_to(discriminative, values.shape)
  if scores == "both":
    return values * discriminative
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


def som_update(memory: Memory, features: jnp.ndarray, labels: jnp.ndarray,
               learning_rate: float, width: jnp.ndarray,
               axis_name: Optional[str] = None) -> Memory:
  """One SOM step of the memory from every ROI of a batch of bags (module docstring).

  Args:
    memory: the memory before the step.
    features: ROI features ``[B, N, D]`` (this device's bags).
    labels: the bags' labels ``[B]``.
    learning_rate: η.
    width: σ, the neighbourhood's width in grid cells.
    axis_name: the data-parallel axis whose devices' bags are summed; None for one device.

  Returns:
    The memory after the step, identical on every device.
  """
  bags, rois = features.shape[:2]
  x = lax.stop_gradient(features).astype(jnp.float32).reshape(bags * rois, -1)
  onehot = jax.nn.one_hot(jnp.repeat(labels, rois), memory.values.shape[1],
                          dtype=jnp.float32)  # [B·N, C]
  winners = nearest_slot(x, memory.keys)  # [B·N]
  grid = grid_positions(memory.keys.shape[0])
  squared = jnp.sum(jnp.square(grid[:, None, :] - grid[winners][None]), -1)  # [L, B·N]
  h = jnp.exp(-squared / (2.0 * jnp.square(width)))
  sums = (h @ x, h @ onehot, jnp.sum(h, axis=1))
  if axis_name is not None:
    sums = lax.psum(sums, axis_name)
  hx, hy, mass = sums
  rate = learning_rate / jnp.maximum(mass, 1.0)[:, None]
  return Memory(keys=memory.keys + rate * (hx - mass[:, None] * memory.keys),
                values=memory.values + rate * (hy - mass[:, None] * memory.values))


def exponential_decay(step: jnp.ndarray, total_steps: int, start: float,
                      end: float) -> jnp.ndarray:
  """σ or η at ``step``: from ``start`` down to ``end`` exponentially over ``total_steps``."""
  fraction = jnp.clip(step / max(total_steps, 1), 0.0, 1.0)
  return start * (end / start) ** fraction
