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

from models.conv import CONV_ALGORITHMS, Conv
from models.layers import DropBlock
from models.pooling import max_pool

VARIANTS = ('v1', 'B', 'C', 'D')
BLOCKS = ('basic', 'bottleneck')
NORMS = ('batch', 'group')
KERNEL_INITS = ('he_normal', 'xavier_uniform')

# Output channels of the standard stem conv and the bottleneck width of the
# first stage; every further stage doubles it.
_BASE_WIDTH = 64
# Widths of the three 3x3 convs of the deep stem (variants C and D).
_DEEP_STEM_WIDTHS = (32, 32, 64)
_BOTTLENECK_EXPANSION = 4
_MAX_GROUP_NORM_GROUPS = 32

# A callable that builds a (not yet called) Flax module, e.g. a partially
# applied `_conv` or `_norm`.
ModuleFactory = Callable[..., nn.Module]


def scale_width(width: int, multiplier: float) -> int:
  """Scales a channel count by a width multiplier.

  Args:
    width: The channel count of the full-width network.
    multiplier: The width multiplier.

  Returns:
    `width * multiplier` rounded to the nearest integer, at least 1.
  """
  return max(1, int(round(width * multiplier)))


def group_norm_num_groups(num_channels: int,
                          max_groups: int = _MAX_GROUP_NORM_GROUPS) -> int:
  """Number of GroupNorm groups used for a layer with `num_channels` channels.

  This is `max_groups` (32) when it divides `num_channels`; otherwise the
  largest divisor of `num_channels` that is at most `max_groups`, so that
  narrow networks (small width multipliers) still get a valid GroupNorm.

  Args:
    num_channels: Number of channels of the normalized feature map.
    max_groups: Upper bound on the number of groups.

  Returns:
    The number of groups.
  """
  for num_groups in range(min(max_groups, num_channels), 0, -1):
    if num_channels % num_groups == 0:
      return num_groups
  raise ValueError(f'num_channels must be positive, got {num_channels}.')


def _check_choice(field: str, value: Any, allowed: Sequence[Any]) -> None:
  if value not in allowed:
    raise ValueError(f'Invalid {field}={value!r}; allowed values are '
                     f'{", ".join(repr(a) for a in allowed)}.')


def _conv(features: int,
          kernel_size: int,
          *,
          strides: int = 1,
          groups: int = 1,
          name: str,
          kernel_init: Callable[..., Any],
          dtype: Any,
          param_dtype: Any,
          algorithm: str = 'auto') -> nn.Conv:
  """Builds a bias-free square conv with PyTorch-style symmetric padding.

  Args:
    features: Number of output channels.
    kernel_size: Height and width of the kernel (odd).
    strides: Stride in both spatial dimensions.
    groups: Number of channel groups (grouped convolution, as in ResNeXt and
      RegNet); 1 for a dense conv.
    name: Name of the submodule.
    kernel_init: Initializer of the kernel
      [k, k, in_channels / groups, features].
    dtype: Compute dtype.
    param_dtype: Dtype of the kernel.
    algorithm: How the convolution is computed, one of `conv.CONV_ALGORITHMS`
      ('auto': XLA's convolution on GPU/TPU, the CPU-friendly 'blocked' one on
      CPU); the parameters do not depend on it.

  Returns:
    The unbound `conv.Conv` module (an `nn.Conv`).
  """
  # Pad kernel_size // 2 on both sides, as torchvision/timm do. 'SAME' would
  # pad a stride-2 conv on an even-sized input only at the bottom/right, which
  # gives the same output shape but shifts the sampling grid by one pixel, so
  # weights ported from those libraries would see different pixels.
  padding = kernel_size // 2
  return Conv(
      features,
      kernel_size=(kernel_size, kernel_size),
      strides=(strides, strides),
      padding=((padding, padding), (padding, padding)),
      feature_group_count=groups,
      use_bias=False,
      kernel_init=kernel_init,
      dtype=dtype,
      param_dtype=param_dtype,
      algorithm=algorithm,
      name=name)


def _norm(num_channels: int,
          *,
          name: str,
          zero_init: bool = False,
          kind: str,
          train: bool,
          momentum: float,
          epsilon: float,
          axis_name: Optional[str],
          dtype: Any,
          param_dtype: Any) -> nn.Module:
  """Builds a BatchNorm or GroupNorm layer.

  Args:
    num_channels: Number of channels of the normalized feature map (used to
      pick the number of GroupNorm groups).
    name: Name of the submodule.
    zero_init: Whether to initialize the scale (gamma) to zeros instead of
      ones.
    kind: 'batch' or 'group'.
    train: Whether BatchNorm normalizes with batch statistics (and updates its
      running averages) rather than with its running averages.
    momentum: BatchNorm running-average decay (Flax convention).
    epsilon: Added to the variance for numerical stability (both norms).
    axis_name: Named device axis over which BatchNorm averages its batch
      statistics, or None for per-device statistics.
    dtype: Compute dtype.
    param_dtype: Dtype of scale and bias.

  Returns:
    The unbound normalization module.
  """
  scale_init = nn.initializers.zeros if zero_init else nn.initializers.ones
  if kind == 'batch':
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=momentum,
        epsilon=epsilon,
        axis_name=axis_name,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=scale_init,
        name=name)
  return nn.GroupNorm(
      num_groups=group_norm_num_groups(num_channels),
      epsilon=epsilon,
      dtype=dtype,
      param_dtype=param_dtype,
      scale_init=scale_init,
      name=name)


def _maybe_drop_block(factory: Optional[ModuleFactory], drop_rate: Any,
                      x: jnp.ndarray, name: str) -> jnp.ndarray:
  return x if factory is None else factory(name=name)(x, drop_rate)


class ProjectionShortcut(nn.Module):
  """Shortcut branch of a block whose input and output shapes differ.

  Attributes:
    features: Number of output channels.
    strides: Spatial downsampling factor.
    avg_pool_downsample: If True (ResNet-D), downsample with a
      `strides` x `strides` average pool followed by a stride-1 1x1 conv;
      otherwise (v1/B/C) with a strided 1x1 conv.
    conv: Factory of conv layers (see `_conv`).
    norm: Factory of normalization layers (see `_norm`).
  """
  features: int
  strides: int
  avg_pool_downsample: bool
  conv: ModuleFactory
  norm: ModuleFactory

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """Projects the block input onto the block output's shape.

    Args:
      x: Block input [batch, height, width, in_channels].

    Returns:
      [batch, ceil(height / strides), ceil(width / strides), features].
    """
    conv_strides = self.strides
    if self.avg_pool_downsample and self.strides > 1:
      # Equivalent of PyTorch's AvgPool2d(ceil_mode=True,
      # count_include_pad=False): odd sizes get a partial last window that is
      # averaged over its valid pixels only.
      window = (self.strides, self.strides)
      x = nn.avg_pool(x, window, strides=window, padding='SAME',
                      count_include_pad=False)
      conv_strides = 1
    x = self.conv(self.features, 1, strides=conv_strides, name='conv')(x)
    return self.norm(self.features, name='norm')(x)


class BasicBlock(nn.Module):
  """Two 3x3 convs plus shortcut (ResNet-18/34); identical for v1 and B.

  Attributes:
    features: Number of output channels.
    strides: Stride of the first 3x3 conv (and of the shortcut).
    avg_pool_shortcut: Whether a downsampling projection shortcut uses the
      ResNet-D average pool.
    zero_init_last: Whether the last norm of the residual branch starts with
      scale zero, so the block starts as relu(shortcut).
    conv: Factory of conv layers (see `_conv`).
    norm: Factory of normalization layers (see `_norm`).
    drop_block: Factory of `DropBlock` layers, applied after every norm of
      the block (residual branch and projection shortcut) as in the DropBlock
      paper's ResNet; None for none.
  """
  features: int
  strides: int
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
      [batch, ceil(height / strides), ceil(width / strides), features].
    """
    drop = functools.partial(_maybe_drop_block, self.drop_block, drop_rate)
    residual = self.conv(self.features, 3, strides=self.strides,
                         name='conv1')(x)
    residual = nn.relu(self.norm(self.features, name='norm1')(residual))
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
    conv: Factory of conv layers (see `_conv`).
    norm: Factory of normalization layers (see `_norm`).
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
    drop = functools.partial(_maybe_drop_block, self.drop_block, drop_rate)
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


class ResNet(nn.Module):
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
    width_multiplier: Scales every channel count (stem and stages); scaled
      counts are rounded to the nearest integer and are at least 1.
    small_stem: For 8-32 px inputs: the stem convs all have stride 1 (v1/B
      use a single 3x3 conv of width 64 instead of the 7x7 conv) and there is
      no max pool, so the stages see the full input resolution.
    zero_init_last: Whether the last norm layer of each block's residual
      branch starts with scale (gamma) zero, making every block start as
      relu(shortcut) ("zero gamma" trick). Shortcut norms start at one.
    norm: 'batch' (BatchNorm) or 'group' (GroupNorm with 32 groups; layers
      whose channel count is not divisible by 32 use the largest divisor of
      the channel count that is at most 32, see `group_norm_num_groups`).
    axis_name: If set, BatchNorm averages its batch statistics across this
      named device axis (pmap / shard_map / vmap). Ignored by GroupNorm.
    bn_momentum: BatchNorm running-average decay, Flax convention
      (0.9 equals PyTorch's momentum=0.1).
    bn_epsilon: Epsilon of the normalization layers (BatchNorm and GroupNorm).
    kernel_init: 'he_normal': convs use variance_scaling(2.0, 'fan_out',
      'normal') as torchvision/timm, and the classifier uses PyTorch's default
      Linear init (uniform in +-1/sqrt(fan_in)). 'xavier_uniform' (the
      paper's baseline): convs and classifier are uniform in [-a, a] with
      a = sqrt(6 / (fan_in + fan_out)). The classifier bias starts at zero.
    drop_block_rate: Target DropBlock rate 1 - keep_prob (Ghiasi et al.
      2018: 0.1); 0 disables DropBlock. The trainer may pass a scheduled rate
      to `__call__`.
    drop_block_size: DropBlock block side (paper: 7), capped per feature map.
    drop_block_stages: 1-based stages whose blocks use DropBlock (paper: 3
      and 4).
    feature_dim: Width of a linear feature layer `feature` between the pooled
      trunk and the classifier (0 = none). With it the model returns
      `{'logits', 'features'}` so that embedding losses see the features (2
      for the 2-D pictures of Wen et al. 2016 and Calefati et al. 2018).
    cosine_head: The classifier computes cos(x, w_k) between its input and each
      normalized class weight, without bias (the class-level form of the
      Circle loss, Sun et al. 2020), instead of x·W + b.
    dtype: Compute dtype of the convolutional trunk (e.g. bfloat16 for mixed
      precision). Pooling and classifier always run in float32.
    param_dtype: Dtype of the parameters.
    conv_algorithm: How convolutions are computed (`conv.CONV_ALGORITHMS`):
      'auto' (XLA's native convolution on GPU/TPU, 'blocked' on CPU), 'native'
      or 'blocked' (1x1 convs as matrix products, weight gradients per block
      of images; see models/conv.py), and so is the stem's max pool
      (models/pooling.py). Same parameters and results either way.
  """
  stage_sizes: Sequence[int]
  block: str
  num_classes: int
  variant: str = 'D'
  width_multiplier: float = 1.0
  small_stem: bool = False
  zero_init_last: bool = True
  norm: str = 'batch'
  axis_name: Optional[str] = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  kernel_init: str = 'he_normal'
  drop_block_rate: float = 0.0
  drop_block_size: int = 7
  drop_block_stages: Sequence[int] = (3, 4)
  feature_dim: int = 0
  cosine_head: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  conv_algorithm: str = 'auto'

  def __post_init__(self):
    # Validate on construction so that a typo fails before any tracing.
    _check_choice('variant', self.variant, VARIANTS)
    _check_choice('block', self.block, BLOCKS)
    _check_choice('norm', self.norm, NORMS)
    _check_choice('kernel_init', self.kernel_init, KERNEL_INITS)
    _check_choice('conv_algorithm', self.conv_algorithm, CONV_ALGORITHMS)
    if not self.stage_sizes or any(n < 1 for n in self.stage_sizes):
      raise ValueError('stage_sizes must be a non-empty sequence of positive '
                       f'block counts, got {self.stage_sizes!r}.')
    if self.num_classes < 1:
      raise ValueError(f'num_classes must be positive, got {self.num_classes}.')
    if not self.width_multiplier > 0:
      raise ValueError('width_multiplier must be positive, got '
                       f'{self.width_multiplier}.')
    if not 0.0 <= self.drop_block_rate < 1.0:
      raise ValueError('drop_block_rate must be in [0, 1), got '
                       f'{self.drop_block_rate}.')
    if self.drop_block_size < 1:
      raise ValueError('drop_block_size must be positive, got '
                       f'{self.drop_block_size}.')
    if not isinstance(self.feature_dim, int) or self.feature_dim < 0:
      raise ValueError('feature_dim must be an integer >= 0 (0 = no feature '
                       f'layer), got {self.feature_dim!r}.')
    if self.drop_block_rate > 0 and any(
        s not in range(1, len(self.stage_sizes) + 1)
        for s in self.drop_block_stages):
      raise ValueError(f'drop_block_stages={tuple(self.drop_block_stages)} '
                       f'must name stages 1..{len(self.stage_sizes)}.')
    super().__post_init__()

  def _initializers(self) -> Tuple[Callable[..., Any], Callable[..., Any]]:
    """Returns the (conv, dense) kernel initializers for `kernel_init`."""
    if self.kernel_init == 'xavier_uniform':
      xavier = nn.initializers.xavier_uniform()
      return xavier, xavier
    he_normal_fan_out = nn.initializers.variance_scaling(
        2.0, 'fan_out', 'normal')
    # PyTorch's default nn.Linear init, which torchvision/timm keep for the
    # classifier: kaiming_uniform(a=sqrt(5)) = uniform(+-1/sqrt(fan_in)).
    torch_linear_default = nn.initializers.variance_scaling(
        1.0 / 3.0, 'fan_in', 'uniform')
    return he_normal_fan_out, torch_linear_default

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
    conv_init, dense_init = self._initializers()
    conv = functools.partial(
        _conv, kernel_init=conv_init, dtype=self.dtype,
        param_dtype=self.param_dtype, algorithm=self.conv_algorithm)
    norm = functools.partial(
        _norm, kind=self.norm, train=train, momentum=self.bn_momentum,
        epsilon=self.bn_epsilon, axis_name=self.axis_name, dtype=self.dtype,
        param_dtype=self.param_dtype)
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
      # Symmetric padding of 1 as in torchvision/timm ('SAME' would pad only the
      # bottom/right of an even input and shift every window by a pixel).
      x = max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                   algorithm=self.conv_algorithm)

    if drop_block_rate is None:
      drop_block_rate = self.drop_block_rate
    drop_block = None
    if self.drop_block_rate > 0:
      drop_block = functools.partial(DropBlock, block_size=self.drop_block_size,
                                     deterministic=not train)

    # Stages.
    for stage_index, num_blocks in enumerate(self.stage_sizes):
      features = width(_BASE_WIDTH * 2**stage_index)
      stage_drop_block = (drop_block if stage_index + 1 in self.drop_block_stages
                          else None)
      for block_index in range(num_blocks):
        strides = 2 if stage_index > 0 and block_index == 0 else 1
        name = f'stage{stage_index + 1}_block{block_index + 1}'
        common = dict(
            features=features,
            strides=strides,
            avg_pool_shortcut=self.variant == 'D',
            zero_init_last=self.zero_init_last,
            conv=conv,
            norm=norm,
            drop_block=stage_drop_block,
            name=name)
        if self.block == 'basic':
          x = BasicBlock(**common)(x, drop_block_rate)
        else:
          x = BottleneckBlock(stride_on_3x3=self.variant != 'v1',
                              **common)(x, drop_block_rate)

    # Head: pool and classify in float32 so low-precision training still gets
    # full-precision logits for the softmax/cross-entropy.
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    features = None
    if self.feature_dim:
      # Linear, as the papers' 2-D feature layers: the embedding losses act on it.
      features = x = nn.Dense(
          self.feature_dim, dtype=jnp.float32, param_dtype=self.param_dtype,
          kernel_init=dense_init, name='feature')(x)
    if self.cosine_head:
      logits = CosineClassifier(self.num_classes, kernel_init=dense_init,
                                param_dtype=self.param_dtype, name='head')(x)
    else:
      logits = nn.Dense(
          self.num_classes,
          dtype=jnp.float32,
          param_dtype=self.param_dtype,
          kernel_init=dense_init,
          bias_init=nn.initializers.zeros,
          name='head')(x)
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
