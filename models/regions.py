"""Bags of regions: any image model applied to every region of every image of a bag.

Multi-instance learning on web images (Tu et al., CVPR 2020) sees a bag as the regions
(ROIs) of the images that share a web label. ``RegionEncoder`` runs its ``backbone`` (a model
with a feature layer, returning ``{'logits', 'features'}``) on every region at once and
keeps the bag's layout, so a task can weigh the regions and pool the bag.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class RegionEncoder(nn.Module):
  """``[batch, bag, regions, H, W(, C)]`` → per-region ``{'logits' [batch, bag, regions, K],
  'features' [batch, bag, regions, D]}``.

  Attributes:
    backbone: an image model returning ``{'logits', 'features'}`` (e.g. a ResNet with a
      ``feature_dim``); its logits must be linear in its features (a linear head), so that
      the logits of a weighted sum of region features are the same sum of region logits.
  """
  backbone: nn.Module

  @nn.compact
  def __call__(self, regions: jnp.ndarray, train: bool = False, **kwargs: Any):
    if regions.ndim == 5:
      regions = regions[..., None]
    layout = regions.shape[:3]
    outputs = self.backbone(regions.reshape((-1,) + regions.shape[3:]), train=train, **kwargs)
    if not isinstance(outputs, dict) or "features" not in outputs:
      raise ValueError("the region encoder's backbone must return {'logits', 'features'}: "
                       "give it a feature layer (config.model.backbone.feature_dim > 0).")
    return {k: v.reshape(layout + v.shape[1:]) for k, v in outputs.items()}
