"""A single-shot detector (SSD, Liu et al. 2016) on a ResNet trunk.

The trunk's last stages (``source_stages``) and ``extra_layers`` more maps (each a 1×1 then a
stride-2 3×3 conv, as the paper's extra feature layers) are the feature maps; on each, a 3×3
conv predicts, for every cell and each of its default boxes, C + 1 class logits (0 is the
background) and 4 box offsets (``bagtricks.boxes.encode``) against the default boxes of
``bagtricks.boxes.ssd_anchors`` (which knows the trunk's strides), in the order the outputs
are flattened: map by map, cell by cell, box by box.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from models.resnet import ResNet
from models.xla_cpu.conv import Conv


GEOMETRY = ("source_stages", "extra_layers", "small_stem", "aspect_ratios")


def geometry(model_kwargs) -> dict:
  """The fields of ``config.model`` that place the default boxes (``GEOMETRY``), with the
  ``SSD`` defaults for those not given."""
  return {name: model_kwargs.get(name, getattr(SSD, name)) for name in GEOMETRY}


def trunk_of(model: "SSD", **overrides) -> ResNet:
  """The detector's ResNet trunk (``features_only``: every stage's map), as ``model`` builds
  it under the name ``'trunk'``; ``overrides`` replace its fields (e.g. ``inner_widths``)."""
  fields = dict(stage_sizes=tuple(model.stage_sizes), block="basic", num_classes=1,
                variant=model.variant, features_only=True,
                inner_widths=tuple(model.inner_widths),
                width_multiplier=model.width_multiplier, small_stem=model.small_stem,
                conv_algorithm=model.conv_algorithm, axis_name=model.axis_name,
                dtype=model.dtype)
  return ResNet(**{**fields, **overrides})


class SSD(nn.Module):
  """``[batch, H, W, C]`` images → ``{'class_logits' [batch, A, C + 1], 'offsets' [batch, A,
  4]}`` for the A default boxes.

  Attributes:
    num_classes: C, the object classes (the background is one more).
    stage_sizes: the ResNet trunk's blocks per stage ((2, 2, 2, 2): ResNet-18).
    source_stages: the trunk stages (1-based) whose outputs are feature maps.
    extra_layers: more maps after the trunk, each half the last one's side.
    extra_width: the extra layers' output width (their 1×1 convs use half).
    aspect_ratios: a, per cell and map (1 included); the extra box adds one more.
    inner_widths: the trunk's channels inside each basic block (``ResNet.inner_widths``; ()
      unpruned): a channel-pruned detector is rebuilt with them.
    width_multiplier, small_stem, variant, conv_algorithm, axis_name, dtype: the trunk's
      ResNet options (``axis_name``: BatchNorm's statistics over every device);
      ``conv_algorithm`` and ``dtype`` apply to the extra layers and heads too.
  """
  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  source_stages: Sequence[int] = (2, 3, 4)
  extra_layers: int = 1
  extra_width: int = 64
  aspect_ratios: Sequence[float] = (1.0, 2.0, 0.5)
  inner_widths: Sequence[int] = ()
  width_multiplier: float = 1.0
  small_stem: bool = False
  variant: str = "D"
  conv_algorithm: str = "native"
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  def boxes_per_cell(self) -> int:
    return len(self.aspect_ratios) + 1

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool = False):
    stages = trunk_of(self, name="trunk")(images, train=train)
    maps = [stages[s - 1] for s in self.source_stages]
    # The extra layers and heads compute their convolutions as the trunk does.
    conv = functools.partial(Conv, dtype=self.dtype, algorithm=self.conv_algorithm)
    x = maps[-1]
    for k in range(self.extra_layers):
      x = nn.relu(conv(max(self.extra_width // 2, 1), (1, 1), name=f"extra{k + 1}_reduce")(x))
      x = nn.relu(conv(self.extra_width, (3, 3), strides=2, padding=1,
                       name=f"extra{k + 1}")(x))
      maps.append(x)
    per_cell = self.boxes_per_cell()
    logits, offsets = [], []
    for k, feature_map in enumerate(maps):
      batch = feature_map.shape[0]
      c = conv(per_cell * (self.num_classes + 1), (3, 3), padding=1,
               name=f"class_head{k + 1}")(feature_map)
      b = conv(per_cell * 4, (3, 3), padding=1, name=f"box_head{k + 1}")(feature_map)
      logits.append(c.reshape(batch, -1, self.num_classes + 1))
      offsets.append(b.reshape(batch, -1, 4))
    return {"class_logits": jnp.concatenate(logits, 1).astype(jnp.float32),
            "offsets": jnp.concatenate(offsets, 1).astype(jnp.float32)}
