"""A multilayer perceptron: the tabular baseline and the trunk of a neural decision forest."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
  """Dense → ReLU layers over flattened inputs, then a linear layer of ``num_classes`` outputs.

  Attributes:
    num_classes: outputs of the last layer (classes, or a forest's decision units).
    hidden: widths of the hidden layers; ``()`` is a linear model (the paper's shallow NDF
      feeds a forest from one such layer).
    dtype: computation dtype.
  """
  num_classes: int
  hidden: Sequence[int] = (50, 50)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """``[batch, ...]`` → ``[batch, num_classes]``."""
    del train
    x = x.reshape(x.shape[0], -1).astype(self.dtype)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)
