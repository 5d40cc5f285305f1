"""The Latent Truth Net of IPA2LT (Zeng, Shan & Chen, ECCV 2018): any backbone and one
transition matrix per annotator.

The backbone predicts the latent truth p(y | x) = softmax(f(x)); annotator k labels through
T_k, P(ỹ_k = j | x) = Σ_i p_i T_k[i, j] (``bagtricks.losses.latent_truth_nll``). T_k must stay
row-stochastic while it is learned. The reference code keeps the raw entries, clips those below
0.01 and renormalizes every row at each forward pass; here each row is a softmax of free
logits, T_k[i] = softmax(θ_k[i]):

* it is row-stochastic for any θ, so no step of the optimizer can leave the simplex and there
  is nothing to repair after it;
* every entry keeps a gradient (a clipped entry has none, so an annotator's confusion that
  starts below the clip is never learned);
* log T_k is ``log_softmax(θ_k)``, exact in log space, which the loss uses.

θ is initialized so that T_k = d·I + (1 − d)/(C − 1)·(1 − I), near the identity (d =
``init_diagonal``). θ is named ``transition_logits``, so the optimizers' weight-decay mask
(kernels only) leaves it undecayed: decay would pull every T_k toward the uniform matrix.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def near_identity_logits(num_annotators: int, num_classes: int,
                         diagonal: float) -> np.ndarray:
  """θ ``[K, C, C]`` with softmax(θ_k[i]) = ``diagonal`` at i and the rest spread evenly."""
  off = (1.0 - diagonal) / (num_classes - 1)
  row = np.full((num_classes, num_classes), np.log(off))
  np.fill_diagonal(row, np.log(diagonal))
  return np.broadcast_to(row, (num_annotators, num_classes, num_classes)).astype(np.float32)


class LatentTruthNet(nn.Module):
  """``backbone`` as the latent-truth classifier, with K learned transition matrices.

  Attributes:
    backbone: a module mapping the input to class logits ``[batch, C]``.
    num_annotators: K.
    num_classes: C (the backbone's head width).
    init_diagonal: d of the initial T_k, in (1/C, 1).
  """
  backbone: nn.Module
  num_annotators: int
  num_classes: int
  init_diagonal: float = 0.9

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False, **kwargs: Any):
    """Returns ``{'logits': [batch, C] (the truth), 'log_transitions': [K, C, C] (log T_k)}``."""
    logits = self.backbone(x, train=train, **kwargs)
    theta = self.param(
        "transition_logits",
        lambda rng: jnp.asarray(near_identity_logits(self.num_annotators, self.num_classes,
                                                     self.init_diagonal)))
    return {"logits": logits,
            "log_transitions": nn.log_softmax(theta.astype(jnp.float32), axis=-1)}
