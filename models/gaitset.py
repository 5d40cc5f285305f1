"""GaitSet (Chao et al., AAAI 2019): a walk as an unordered set of silhouettes.

A CNN embeds every frame; **set pooling** SP combines a set of frame feature maps into one,
permutation invariant; the **multilayer global pipeline** (MGP) adds the set-level features of
three depths; **Horizontal Pyramid Mapping** (HPM) cuts the last feature maps into horizontal
strips at scales s ∈ {1, 2, 4, 8, 16} and maps each strip, pooled as mean + max over its
pixels, by its own fully connected layer:

  frames ─C1─C2─(pool)─C3─C4─(pool)─C5─C6─ SP ───────────────────────┐
              │             │                                         ├─ HPM → 2 × Σ_s s strips
              SP → G1─G2─(pool)─(+SP)─ G3─G4 ─────────────(+)─────────┘

(C: the frame branch's 3×3 convolutions, the first 5×5; G: the global branch's; 32, 64, 128
channels in pairs, leaky ReLU.) With s up to 16 that is 31 strips for each of the frame
branch and the global branch, 62 in all, each a ``embedding_dim`` vector: the sequence's
embedding, trained by the batch-all triplet loss per strip
(``bagtricks.losses.batch_all_triplet_sums``).

Set pooling (``SET_POOLINGS``, the paper's alternatives): element-wise ``max`` over frames
(the paper's choice), ``mean``, ``median``, and ``attention``: a 1×1 convolution of the
set's statistics (max, mean, median) gives a sigmoid map that refines every frame's features
before their max.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

SET_POOLINGS = ("max", "mean", "median", "attention")


class SetPooling(nn.Module):
  """``[batch, frames, h, w, c]`` → ``[batch, h, w, c]``, invariant to the order of frames."""
  kind: str = "max"

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    if self.kind == "max":
      return jnp.max(x, axis=1)
    if self.kind == "mean":
      return jnp.mean(x, axis=1)
    if self.kind == "median":
      return jnp.median(x, axis=1)
    if self.kind == "attention":
      statistics = jnp.concatenate(
          [jnp.max(x, axis=1), jnp.mean(x, axis=1), jnp.median(x, axis=1)], axis=-1)
      refine = nn.Conv(x.shape[-1], (1, 1), dtype=x.dtype, name="refine")(statistics)
      return jnp.max(x * nn.sigmoid(refine)[:, None], axis=1)
    raise ValueError(f"set_pooling={self.kind!r} is unknown; use one of {SET_POOLINGS}.")


def horizontal_pyramid(x: jnp.ndarray, scales: Sequence[int]) -> jnp.ndarray:
  """HPM's pooling: ``[batch, h, w, c]`` → ``[batch, Σ scales, c]``, strip by strip.

  At scale s the h rows are cut into s strips of h/s rows (top first); each strip is pooled to
  the mean plus the max of its pixels.

  Raises:
    ValueError: h is not divisible by a scale.
  """
  batch, h, w, c = x.shape
  strips = []
  for s in scales:
    if h % s:
      raise ValueError(f"the feature map's {h} rows cannot be cut into {s} strips; use "
                       "scales that divide the silhouette height / 4.")
    z = x.reshape(batch, s, (h // s) * w, c)
    strips.append(jnp.mean(z, axis=2) + jnp.max(z, axis=2))
  return jnp.concatenate(strips, axis=1)


class GaitSet(nn.Module):
  """Silhouette sets ``[batch, frames, H, W(, 1)]`` → strip embeddings ``[batch, strips, D]``.

  Attributes:
    embedding_dim: D, each strip's embedding width (the paper: 256).
    channels: the three conv stages' widths (the paper: 32, 64, 128).
    scales: HPM's strip counts (the paper: 1, 2, 4, 8, 16 on 64-row silhouettes; each must
      divide H / 4).
    set_pooling: one of ``SET_POOLINGS``.
    dtype: computation dtype.
  """
  embedding_dim: int = 256
  channels: Sequence[int] = (32, 64, 128)
  scales: Sequence[int] = (1, 2, 4, 8, 16)
  set_pooling: str = "max"
  dtype: Any = jnp.float32

  def _conv(self, x, features, kernel, name):
    x = nn.Conv(features, (kernel, kernel), padding="SAME", use_bias=False, dtype=self.dtype,
                name=name)(x)
    return nn.leaky_relu(x, 0.01)

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    del train
    if x.ndim == 4:
      x = x[..., None]
    batch, frames = x.shape[:2]
    c1, c2, c3 = self.channels

    def pool(h, depth):  # [batch·frames, ...] → the set's [batch, ...]; one module per depth.
      return SetPooling(self.set_pooling, name=f"set_pool{depth}")(
          h.reshape(batch, frames, *h.shape[1:]))

    def halve(h):
      return nn.max_pool(h, (2, 2), strides=(2, 2))

    h = x.reshape(batch * frames, *x.shape[2:]).astype(self.dtype)
    h = halve(self._conv(self._conv(h, c1, 5, "set1"), c1, 3, "set2"))
    g = halve(self._conv(self._conv(pool(h, 1), c2, 3, "global1"), c2, 3, "global2"))
    h = halve(self._conv(self._conv(h, c2, 3, "set3"), c2, 3, "set4"))
    g = self._conv(self._conv(g + pool(h, 2), c3, 3, "global3"), c3, 3, "global4")
    h = self._conv(self._conv(h, c3, 3, "set5"), c3, 3, "set6")
    h = pool(h, 3)
    g = g + h
    strips = jnp.concatenate([horizontal_pyramid(h, self.scales),
                              horizontal_pyramid(g, self.scales)], axis=1)  # [B, P, c3]
    # A separate fully connected layer per strip (the reference's fc_bin [P, c, D]).
    weights = self.param("strip_fc", nn.initializers.xavier_uniform(),
                         (strips.shape[1], c3, self.embedding_dim), jnp.float32)
    return jnp.einsum("bpc,pcd->bpd", strips, weights.astype(self.dtype))
