"""Layers shared by the models."""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def drop_block_gamma(drop_rate, height: int, width: int, block_size: int):
  """DropBlock's seed rate γ (Ghiasi et al. 2018, Eq. 1, for an H × W feature map).

  γ = (1 − keep_prob)/block_size² · (H·W)/((H − block_size + 1)(W − block_size + 1)),

  the paper's w²/(w − block_size + 1)² written for rectangles: block centres are drawn only
  where a whole block fits, and γ is raised so that about ``drop_rate`` of the units would be
  dropped if blocks did not overlap.

  Args:
    drop_rate: 1 − keep_prob (a float or a traced scalar).
    height: H.
    width: W.
    block_size: block side, at most min(H, W).

  Returns:
    γ.
  """
  valid = (height - block_size + 1) * (width - block_size + 1)
  return drop_rate / block_size**2 * (height * width) / valid


class DropBlock(nn.Module):
  """DropBlock (Ghiasi et al. 2018, Algorithm 1), as in the paper's TPU reference code.

  In training, centres are sampled from Bernoulli(γ) (``drop_block_gamma``) at the positions
  where a whole ``block_size`` × ``block_size`` block fits, independently per example and
  channel; every unit within a sampled block is zeroed, and the output is rescaled by
  (number of units)/(number kept) over the batch. The block side is capped at the feature map's
  smaller side. At evaluation (``deterministic``) or with ``drop_rate`` 0 it is the identity.

  The drop rate is a call argument so that the trainer can schedule it (the paper raises it
  linearly from 0 to its target, i.e. keep_prob from 1 to e.g. 0.9).

  Attributes:
    block_size: block side (paper: 7).
    deterministic: if True, the identity.
  """
  block_size: int = 7
  deterministic: Optional[bool] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, drop_rate, deterministic: Optional[bool] = None):
    """Applies DropBlock.

    Args:
      x: ``[batch, height, width, channels]``.
      drop_rate: 1 − keep_prob, a float or a traced scalar in [0, 1).
      deterministic: overrides the attribute of the same name.

    Returns:
      Same shape and dtype as ``x``. Uses the ``'dropout'`` PRNG stream in training.
    """
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    if deterministic or (isinstance(drop_rate, (int, float)) and drop_rate == 0):
      return x
    _, height, width, _ = x.shape
    size = min(self.block_size, height, width)
    gamma = drop_block_gamma(drop_rate, height, width, size)
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    # A block centred at c covers [c − ⌊size/2⌋, c + ⌊(size − 1)/2⌋].
    valid = ((rows >= size // 2) & (rows < height - (size - 1) // 2)
             & (cols >= size // 2) & (cols < width - (size - 1) // 2))
    noise = jax.random.uniform(self.make_rng("dropout"), x.shape, jnp.float32)
    seeds = (noise < gamma) & valid[None, :, :, None]
    # Grow every seed into its block: unit i is dropped if a seed lies in
    # [i − ⌊(size − 1)/2⌋, i + ⌊size/2⌋], a max over that window.
    pad = ((size - 1) // 2, size // 2)
    dropped = lax.reduce_window(seeds.astype(jnp.float32), 0.0, lax.max,
                                (1, size, size, 1), (1, 1, 1, 1), ((0, 0), pad, pad, (0, 0)))
    keep = 1.0 - dropped
    scale = keep.size / jnp.maximum(jnp.sum(keep), 1.0)
    return (x * (keep * scale).astype(x.dtype)).astype(x.dtype)
