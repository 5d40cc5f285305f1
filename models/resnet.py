"""ResNet family from "Bag of Tricks for Image Classification with CNNs".

Implements the original ResNet (He et al. 2016, called `v1` here) and the
ResNet-B, ResNet-C and ResNet-D tweaks of He et al. 2019 (Figures 1 and 2):

* `v1`: in a downsampling bottleneck block the stride 2 sits on the first 1x1
  conv, which therefore ignores three quarters of its input.
* `B`: the stride 2 moves to the 3x3 conv of the bottleneck.
* `C`: B, plus the 7x7 stem conv is replaced by three 3x3 convs ("deep stem").
* `D`: C, plus the projection shortcut of a downsampling block does a 2x2
  average pool followed by a stride-1 1x1 conv, instead of a stride-2 1x1 conv.

Layer widths and layouts follow torchvision / timm so that parameter counts
match theirs exactly (e.g. ResNet-50: 25,557,032; ResNet-50-D: 25,576,264).

The models only map images to logits; they know nothing about training, data
or devices.
"""

import functools
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from models.convnet import ConvNetOptions
from models.convnet import global_average_pool
from models.convnet import head_layer
from models.convnet import maybe_drop_block
from models.convnet import ModuleFactory
from models.convnet import ProjectionShortcut
from models.convnet import check_choice
from models.convnet import scale_width
from models.convnet import stem_max_pool

VARIANTS = ('v1', 'B', 'C', 'D')
BLOCKS = ('basic', 'bottleneck')

# Output channels of the standard stem conv and the bottleneck width of the
# first stage; every further stage doubles it.
_BASE_WIDTH = 64
# Widths of the three 3x3 convs of the deep stem (variants C and D).
_DEEP_STEM_WIDTHS = (32, 32, 64)
_BOTTLENECK_EXPANSION = 4


class BasicBlock(nn.Module):
  """Two 3x3 convs plus shortcut (ResNet-18/34); identical for v1 and B.

  Attributes:
    features: Number of output channels.
    strides: Stride of the first 3x3 conv (and of the shortcut).
    avg_pool_shortcut: Whether a downsampling projection shortcut uses the
      ResNet-D average pool.
    zero_init_last: Whether the last norm of the residual branch starts with
      scale zero, so the block starts as relu(shortcut).
    conv: Factory of conv layers (see `convnet.conv_layer`).
    norm: Factory of normalization layers (see `convnet.norm_layer`).
    drop_block: Factory of `DropBlock` layers, applied after every norm of
      the block (residual branch and projection shortcut) as in the DropBlock
      paper's ResNet; None for none.
    inner_features: Channels between the two convs (default `features`); a
      channel-pruned block has fewer.
  """
  features: int
  strides: int
  avg_pool_shortcut: bool
  zero_init_last: bool
  conv: ModuleFactory
  norm: ModuleFactory
  drop_block: Optional[ModuleFactory] = None
  inner_features: Optional[int] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, drop_rate: Any = 0.0) -> jnp.ndarray:
    """Applies the block.

    Args:
      x: [batch, height, width, in_channels].
      drop_rate: DropBlock rate (used only with `drop_block`).

    Returns:
      [batch, ceil(height / strides), ceil(width / strides), features].
    """
    drop = functools.partial(maybe_drop_block, self.drop_block, drop_rate)
    inner = self.inner_features or self.features
    residual = self.conv(inner, 3, strides=self.strides, name='conv1')(x)
    residual = nn.relu(self.norm(inner, name='norm1')(residual))
    residual = drop(residual, 'drop1')
    residual = self.conv(self.features, 3, name='conv2')(residual)
    residual = self.norm(self.features, name='norm2',
                         zero_init=self.zero_init_last)(residual)
    residual = drop(residual, 'drop2')

    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = ProjectionShortcut(
          self.features, self.strides, self.avg_pool_shortcut,
          conv=self.conv, norm=self.norm, name='shortcut')(x)
      shortcut = drop(shortcut, 'drop_shortcut')
    return nn.relu(residual + shortcut)


class BottleneckBlock(nn.Module):
  """1x1 reduce, 3x3, 1x1 expand (x4) plus shortcut (ResNet-50/101/152).

  Attributes:
    features: Bottleneck width; the block outputs `4 * features` channels.
    strides: Spatial downsampling factor of the block.
    stride_on_3x3: If True (variants B, C, D) the stride is applied by the 3x3
      conv; if False (v1) by the first 1x1 conv.
    avg_pool_shortcut: Whether a downsampling projection shortcut uses the
      ResNet-D average pool.
    zero_init_last: Whether the last norm of the residual branch starts with
      scale zero, so the block starts as relu(shortcut).
    conv: Factory of conv layers (see `convnet.conv_layer`).
    norm: Factory of normalization layers (see `convnet.norm_layer`).
    drop_block: Factory of `DropBlock` layers (see `BasicBlock`), or None.
  """
  features: int
  strides: int
  stride_on_3x3: bool
  avg_pool_shortcut: bool
  zero_init_last: bool
  conv: ModuleFactory
  norm: ModuleFactory
  drop_block: Optional[ModuleFactory] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, drop_rate: Any = 0.0) -> jnp.ndarray:
    """Applies the block.

    Args:
      x: [batch, height, width, in_channels].
      drop_rate: DropBlock rate (used only with `drop_block`).

    Returns:
      [batch, ceil(height / strides), ceil(width / strides), 4 * features].
    """
    drop = functools.partial(maybe_drop_block, self.drop_block, drop_rate)
    out_features = self.features * _BOTTLENECK_EXPANSION
    strides_1x1 = 1 if self.stride_on_3x3 else self.strides
    strides_3x3 = self.strides if self.stride_on_3x3 else 1

    residual = self.conv(self.features, 1, strides=strides_1x1,
                         name='conv1')(x)
    residual = nn.relu(self.norm(self.features, name='norm1')(residual))
    residual = drop(residual, 'drop1')
    residual = self.conv(self.features, 3, strides=strides_3x3,
                         name='conv2')(residual)
    residual = nn.relu(self.norm(self.features, name='norm2')(residual))
    residual = drop(residual, 'drop2')
    residual = self.conv(out_features, 1, name='conv3')(residual)
    residual = self.norm(out_features, name='norm3',
                         zero_init=self.zero_init_last)(residual)
    residual = drop(residual, 'drop3')

    shortcut = x
    if self.strides != 1 or x.shape[-1] != out_features:
      shortcut = ProjectionShortcut(
          out_features, self.strides, self.avg_pool_shortcut,
          conv=self.conv, norm=self.norm, name='shortcut')(x)
      shortcut = drop(shortcut, 'drop_shortcut')
    return nn.relu(residual + shortcut)


class ResNet(ConvNetOptions):
  """ResNet with the v1/B/C/D variants of He et al. 2019.

  Parameter tree: the stem is `stem_conv`/`stem_norm` (v1, B) or
  `stem_conv{1,2,3}`/`stem_norm{1,2,3}` (C, D); blocks are
  `stage{s}_block{b}` (both 1-based) with `conv{i}`/`norm{i}` and, where the
  shortcut is a projection, `shortcut/conv` and `shortcut/norm`; the
  classifier is `head`.

  Attributes:
    stage_sizes: Number of blocks per stage, e.g. (3, 4, 6, 3). Stage `i`
      (0-based) has width 64 * 2**i; the first block of every stage but the
      first downsamples by 2.
    block: 'basic' (two 3x3 convs) or 'bottleneck' (1x1, 3x3, 1x1 with
      expansion 4).
    num_classes: Number of output logits.
    variant: 'v1' (original ResNet, the paper's baseline), 'B', 'C' or 'D'.
    small_stem: For 8-32 px inputs: the stem convs all have stride 1 (v1/B
      use a single 3x3 conv of width 64 instead of the 7x7 conv) and there is
      no max pool, so the stages see the full input resolution.
    feature_dim: Width of a linear feature layer `feature` between the pooled
      trunk and the classifier (0 = none). With it the model returns
      `{'logits', 'features'}` so that embedding losses see the features (2
      for the 2-D pictures of Wen et al. 2016 and Calefati et al. 2018).
    cosine_head: The classifier computes cos(x, w_k) between its input and each
      normalized class weight, without bias (the class-level form of the
      Circle loss, Sun et al. 2020), instead of x·W + b.
    inner_widths: For basic blocks, the channels between each block's two
      convs, one per block in order (stage 1 first); () keeps the stage
      widths. A channel-pruned network is rebuilt with them.
    features_only: Return the output of every stage (a tuple of [batch, h, w, c]
      maps, stage 1 first) instead of logits; no pooling, feature layer or
      classifier is built (a detector's trunk, as timm's `features_only`).

  The options shared with RegNet (width_multiplier, small_stem, zero_init_last, norm,
  axis_name, bn_momentum, bn_epsilon, kernel_init, drop_block_*, dtype, param_dtype,
  conv_algorithm) are `convnet.ConvNetOptions`, keyword-only.
  """
  stage_sizes: Sequence[int]
  block: str
  num_classes: int
  variant: str = 'D'
  feature_dim: int = 0
  cosine_head: bool = False
  inner_widths: Sequence[int] = ()
  features_only: bool = False

  def __post_init__(self):
    # Validate on construction so that a typo fails before any tracing.
    check_choice('variant', self.variant, VARIANTS)
    check_choice('block', self.block, BLOCKS)
    if not self.stage_sizes or any(n < 1 for n in self.stage_sizes):
      raise ValueError('stage_sizes must be a non-empty sequence of positive '
                       f'block counts, got {self.stage_sizes!r}.')
    if self.inner_widths and (self.block != 'basic' or len(self.inner_widths) != sum(
        self.stage_sizes) or any(w < 1 for w in self.inner_widths)):
      raise ValueError(f'inner_widths={tuple(self.inner_widths)} must give one positive width '
                       f'per basic block ({sum(self.stage_sizes)}).')
    if not isinstance(self.feature_dim, int) or self.feature_dim < 0:
      raise ValueError('feature_dim must be an integer >= 0 (0 = no feature '
                       f'layer), got {self.feature_dim!r}.')
    self.check_options(self.num_classes, len(self.stage_sizes))
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = True,
               drop_block_rate: Any = None) -> jnp.ndarray:
    """Computes class logits.

    Args:
      x: Images [batch, height, width, channels].
      train: Whether BatchNorm uses batch statistics and updates its running
        averages (the 'batch_stats' collection must then be mutable) or uses
        the running averages. DropBlock is active only in training (it then
        needs a 'dropout' PRNG stream).
      drop_block_rate: The DropBlock rate of this step (a float or traced
        scalar, e.g. scheduled from 0 to `self.drop_block_rate`); None uses
        `self.drop_block_rate`. Ignored when `self.drop_block_rate` is 0.

    Returns:
      Logits [batch, num_classes], always float32; with a `feature_dim`, the
      dict `{'logits': [batch, num_classes], 'features': [batch,
      feature_dim]}`.
    """
    layers = self.layers(train)
    conv, norm = layers.conv, layers.norm
    width = functools.partial(scale_width, multiplier=self.width_multiplier)

    x = jnp.asarray(x, self.dtype)

    # Stem.
    stem_strides = 1 if self.small_stem else 2
    if self.variant in ('C', 'D'):
      for i, stem_width in enumerate(_DEEP_STEM_WIDTHS, start=1):
        features = width(stem_width)
        x = conv(features, 3, strides=stem_strides if i == 1 else 1,
                 name=f'stem_conv{i}')(x)
        x = nn.relu(norm(features, name=f'stem_norm{i}')(x))
    else:
      features = width(_BASE_WIDTH)
      x = conv(features, 3 if self.small_stem else 7, strides=stem_strides,
               name='stem_conv')(x)
      x = nn.relu(norm(features, name='stem_norm')(x))
    if not self.small_stem:
      x = stem_max_pool(x, self.conv_algorithm)

    if drop_block_rate is None:
      drop_block_rate = self.drop_block_rate

    # Stages.
    stage_outputs = []
    inner_widths = iter(self.inner_widths)
    for stage_index, num_blocks in enumerate(self.stage_sizes):
      features = width(_BASE_WIDTH * 2**stage_index)
      for block_index in range(num_blocks):
        strides = 2 if stage_index > 0 and block_index == 0 else 1
        common = dict(
            features=features,
            strides=strides,
            avg_pool_shortcut=self.variant == 'D',
            zero_init_last=self.zero_init_last,
            conv=conv,
            norm=norm,
            drop_block=self.stage_drop_block(layers, stage_index),
            name=f'stage{stage_index + 1}_block{block_index + 1}')
        if self.block == 'basic':
          x = BasicBlock(inner_features=next(inner_widths, None), **common)(
              x, drop_block_rate)
        else:
          x = BottleneckBlock(stride_on_3x3=self.variant != 'v1',
                              **common)(x, drop_block_rate)
      stage_outputs.append(x)
    if self.features_only:
      return tuple(stage_outputs)

    x = global_average_pool(x)
    features = None
    if self.feature_dim:
      # Linear, as the papers' 2-D feature layers: the embedding losses act on it.
      features = x = nn.Dense(
          self.feature_dim, dtype=jnp.float32, param_dtype=self.param_dtype,
          kernel_init=layers.dense_init, name='feature')(x)
    if self.cosine_head:
      logits = CosineClassifier(self.num_classes, kernel_init=layers.dense_init,
                                param_dtype=self.param_dtype, name='head')(x)
    else:
      logits = head_layer(self.num_classes, layers.dense_init, self.param_dtype)(x)
    if features is None:
      return logits
    return {'logits': logits, 'features': features}


class CosineClassifier(nn.Module):
  """cos(x, w_k) for each class k: normalized inputs times normalized weights.

  Attributes:
    num_classes: K.
    kernel_init: initializer of the class weights `kernel` [features, K].
    param_dtype: Dtype of the parameters.
  """
  num_classes: int
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """[batch, features] -> cosines [batch, num_classes] in [-1, 1], float32."""
    x = x.astype(jnp.float32)
    kernel = self.param('kernel', self.kernel_init,
                        (x.shape[-1], self.num_classes), self.param_dtype)
    kernel = kernel.astype(jnp.float32)
    x = x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-12))
    kernel = kernel / jnp.sqrt(
        jnp.maximum(jnp.sum(kernel * kernel, 0, keepdims=True), 1e-12))
    return x @ kernel


# depth -> (block, stage_sizes), as in torchvision/timm.
_DEPTHS: Dict[int, Tuple[str, Tuple[int, ...]]] = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
}


def _constructor(depth: int, variant: str) -> Callable[..., ResNet]:
  """Returns the public constructor of ResNet-`depth` in `variant`."""
  block, stage_sizes = _DEPTHS[depth]
  suffix = '' if variant == 'v1' else variant

  def constructor(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    return ResNet(stage_sizes=stage_sizes, block=block,
                  num_classes=num_classes, variant=variant, **kwargs)

  constructor.__name__ = constructor.__qualname__ = f'ResNet{depth}{suffix}'
  variant_text = ('the original ResNet (v1)' if variant == 'v1'
                  else f'ResNet-{variant} tweaks')
  constructor.__doc__ = f"""ResNet-{depth} with {variant_text}.

  Args:
    num_classes: Number of output logits.
    **kwargs: Any other `ResNet` attribute except `stage_sizes`, `block` and
      `variant` (e.g. width_multiplier, small_stem, norm, dtype).

  Returns:
    The `ResNet` module ({block} blocks, stage sizes {stage_sizes}).
  """
  return constructor


ResNet18 = _constructor(18, 'v1')
ResNet18B = _constructor(18, 'B')
ResNet18C = _constructor(18, 'C')
ResNet18D = _constructor(18, 'D')
ResNet34 = _constructor(34, 'v1')
ResNet34B = _constructor(34, 'B')
ResNet34C = _constructor(34, 'C')
ResNet34D = _constructor(34, 'D')
ResNet50 = _constructor(50, 'v1')
ResNet50B = _constructor(50, 'B')
ResNet50C = _constructor(50, 'C')
ResNet50D = _constructor(50, 'D')
ResNet101 = _constructor(101, 'v1')
ResNet101B = _constructor(101, 'B')
ResNet101C = _constructor(101, 'C')
ResNet101D = _constructor(101, 'D')
ResNet152 = _constructor(152, 'v1')
ResNet152B = _constructor(152, 'B')
ResNet152C = _constructor(152, 'C')
ResNet152D = _constructor(152, 'D')

_CONSTRUCTORS: Dict[str, Callable[..., ResNet]] = {
    fn.__name__.lower(): fn for fn in (
        ResNet18, ResNet18B, ResNet18C, ResNet18D,
        ResNet34, ResNet34B, ResNet34C, ResNet34D,
        ResNet50, ResNet50B, ResNet50C, ResNet50D,
        ResNet101, ResNet101B, ResNet101C, ResNet101D,
        ResNet152, ResNet152B, ResNet152C, ResNet152D,
    )
}

# Names accepted by `create_model`, e.g. 'resnet50' (v1) or 'resnet50d'.
MODEL_NAMES: Tuple[str, ...] = tuple(_CONSTRUCTORS)


def create_model(name: str, **kwargs: Any) -> ResNet:
  """Builds a model by name.

  Args:
    name: One of `MODEL_NAMES`, e.g. 'resnet18', 'resnet50b', 'resnet50d'
      (case-insensitive).
    **kwargs: Passed to the constructor, e.g. num_classes, width_multiplier.

  Returns:
    The `ResNet` module.

  Raises:
    ValueError: If `name` is unknown; the message lists the known names.
  """
  constructor = _CONSTRUCTORS.get(name.lower())
  if constructor is None:
    raise ValueError(f'Unknown model name {name!r}; known names are '
                     f'{", ".join(MODEL_NAMES)}.')
  return constructor(**kwargs)
