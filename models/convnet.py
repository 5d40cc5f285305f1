"""What the ResNets and RegNets share: one options definition, their layers and checks.

`ConvNetOptions` holds the options both families take (width multiplier, small stem, zero-γ,
norm, DropBlock, initialization, dtypes, the convolution algorithm) with their checks, and
builds the layer factories a network's blocks call: `conv_layer` (a bias-free square
convolution with PyTorch's symmetric padding, computed as `conv_algorithm` says), `norm_layer`
(BatchNorm or GroupNorm), DropBlock, and `ProjectionShortcut`.
"""

import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from models.layers import DropBlock
from models.xla_cpu import CONV_ALGORITHMS, Conv, max_pool

NORMS = ('batch', 'group')
KERNEL_INITS = ('he_normal', 'xavier_uniform')
_MAX_GROUP_NORM_GROUPS = 32

# A callable that builds a (not yet called) Flax module, e.g. a partially applied
# `conv_layer` or `norm_layer`.
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

  This is `max_groups` (32) when it divides `num_channels`; otherwise the largest divisor of
  `num_channels` that is at most `max_groups`, so that narrow networks (small width
  multipliers) still get a valid GroupNorm.

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


def check_choice(field: str, value: Any, allowed: Sequence[Any]) -> None:
  """Raises a ValueError naming `field` and the allowed values unless `value` is one."""
  if value not in allowed:
    raise ValueError(f'Invalid {field}={value!r}; allowed values are '
                     f'{", ".join(repr(a) for a in allowed)}.')


def conv_layer(features: int, kernel_size: int, *, strides: int = 1, groups: int = 1,
               name: str, kernel_init: Callable[..., Any], dtype: Any, param_dtype: Any,
               algorithm: str = 'native') -> nn.Conv:
  """Builds a bias-free square conv with PyTorch-style symmetric padding.

  Args:
    features: Number of output channels.
    kernel_size: Height and width of the kernel (odd).
    strides: Stride in both spatial dimensions.
    groups: Number of channel groups (grouped convolution, as in ResNeXt and RegNet); 1 for
      a dense conv.
    name: Name of the submodule.
    kernel_init: Initializer of the kernel [k, k, in_channels / groups, features].
    dtype: Compute dtype.
    param_dtype: Dtype of the kernel.
    algorithm: How the convolution is computed, one of `xla_cpu.CONV_ALGORITHMS`; the
      parameters do not depend on it.

  Returns:
    The unbound `xla_cpu.Conv` module (an `nn.Conv`).
  """
  # Pad kernel_size // 2 on both sides, as torchvision/timm do. 'SAME' would pad a stride-2
  # conv on an even-sized input only at the bottom/right, which gives the same output shape
  # but shifts the sampling grid by one pixel, so weights ported from those libraries would
  # see different pixels.
  padding = kernel_size // 2
  return Conv(features, kernel_size=(kernel_size, kernel_size), strides=(strides, strides),
              padding=((padding, padding), (padding, padding)), feature_group_count=groups,
              use_bias=False, kernel_init=kernel_init, dtype=dtype, param_dtype=param_dtype,
              algorithm=algorithm, name=name)


def norm_layer(num_channels: int, *, name: str, zero_init: bool = False, kind: str,
               train: bool, momentum: float, epsilon: float, axis_name: Optional[str],
               dtype: Any, param_dtype: Any) -> nn.Module:
  """Builds a BatchNorm or GroupNorm layer.

  Args:
    num_channels: Number of channels of the normalized feature map (used to pick the number
      of GroupNorm groups).
    name: Name of the submodule.
    zero_init: Whether to initialize the scale (gamma) to zeros instead of ones.
    kind: 'batch' or 'group'.
    train: Whether BatchNorm normalizes with batch statistics (and updates its running
      averages) rather than with its running averages.
    momentum: BatchNorm running-average decay (Flax convention).
    epsilon: Added to the variance for numerical stability (both norms).
    axis_name: Named device axis over which BatchNorm averages its batch statistics, or None
      for per-device statistics.
    dtype: Compute dtype.
    param_dtype: Dtype of scale and bias.

  Returns:
    The unbound normalization module.
  """
  scale_init = nn.initializers.zeros if zero_init else nn.initializers.ones
  if kind == 'batch':
    return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=epsilon,
                        axis_name=axis_name, dtype=dtype, param_dtype=param_dtype,
                        scale_init=scale_init, name=name)
  return nn.GroupNorm(num_groups=group_norm_num_groups(num_channels), epsilon=epsilon,
                      dtype=dtype, param_dtype=param_dtype, scale_init=scale_init, name=name)


def maybe_drop_block(factory: Optional[ModuleFactory], drop_rate: Any, x: jnp.ndarray,
                     name: str) -> jnp.ndarray:
  """`x` through a DropBlock layer built by `factory`, or `x` itself without one."""
  return x if factory is None else factory(name=name)(x, drop_rate)


class ProjectionShortcut(nn.Module):
  """Shortcut branch of a block whose input and output shapes differ.

  Attributes:
    features: Number of output channels.
    strides: Spatial downsampling factor.
    avg_pool_downsample: If True (ResNet-D), downsample with a `strides` x `strides` average
      pool followed by a stride-1 1x1 conv; otherwise (v1/B/C, RegNet) with a strided 1x1
      conv.
    conv: Factory of conv layers (see `conv_layer`).
    norm: Factory of normalization layers (see `norm_layer`).
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
      # Equivalent of PyTorch's AvgPool2d(ceil_mode=True, count_include_pad=False): odd
      # sizes get a partial last window that is averaged over its valid pixels only.
      window = (self.strides, self.strides)
      x = nn.avg_pool(x, window, strides=window, padding='SAME', count_include_pad=False)
      conv_strides = 1
    x = self.conv(self.features, 1, strides=conv_strides, name='conv')(x)
    return self.norm(self.features, name='norm')(x)


def stem_max_pool(x: jnp.ndarray, algorithm: str) -> jnp.ndarray:
  """The ResNet stem's 3x3 stride-2 max pool with torchvision/timm's symmetric padding."""
  # 'SAME' would pad only the bottom/right of an even input and shift every window by a pixel.
  return max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), algorithm=algorithm)


def global_average_pool(x: jnp.ndarray) -> jnp.ndarray:
  """[batch, height, width, channels] → [batch, channels], in float32.

  The head pools and classifies in float32 so that low-precision training still gets
  full-precision logits for the softmax/cross-entropy.
  """
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def head_layer(num_classes: int, kernel_init: Callable[..., Any], param_dtype: Any,
               name: str = 'head') -> nn.Dense:
  """The float32 classifier (bias starting at zero)."""
  return nn.Dense(num_classes, dtype=jnp.float32, param_dtype=param_dtype,
                  kernel_init=kernel_init, bias_init=nn.initializers.zeros, name=name)


class Layers(NamedTuple):
  """The layer factories of one call of a network (see `ConvNetOptions.layers`)."""
  conv: ModuleFactory
  norm: ModuleFactory
  drop_block: Optional[ModuleFactory]
  dense_init: Callable[..., Any]
  conv_init: Callable[..., Any]


class ConvNetOptions(nn.Module, kw_only=True):
  """The options every ResNet and RegNet takes (keyword-only), with their checks.

  Attributes:
    width_multiplier: Scales every channel count; scaled counts are rounded to the nearest
      integer and are at least 1.
    small_stem: For 8-32 px inputs: the network downsamples by 8 instead of 32 (each family
      says how: no stem stride and no max pool for the ResNets, no stem stride and a stage 1
      that keeps the resolution for the RegNets).
    zero_init_last: Whether the last norm layer of each block's residual branch starts with
      scale (gamma) zero, making every block start as relu(shortcut) ("zero gamma" trick).
      Shortcut norms start at one.
    norm: 'batch' (BatchNorm) or 'group' (GroupNorm with 32 groups; layers whose channel
      count is not divisible by 32 use the largest divisor of the channel count that is at
      most 32, see `group_norm_num_groups`).
    axis_name: If set, BatchNorm averages its batch statistics across this named device axis
      (pmap / shard_map / vmap). Ignored by GroupNorm.
    bn_momentum: BatchNorm running-average decay, Flax convention (0.9 equals PyTorch's
      momentum=0.1).
    bn_epsilon: Epsilon of the normalization layers (BatchNorm and GroupNorm).
    kernel_init: 'he_normal': convs use variance_scaling(2.0, 'fan_out', 'normal') as
      torchvision/timm, and the classifier uses PyTorch's default Linear init (uniform in
      +-1/sqrt(fan_in)). 'xavier_uniform' (the Bag of Tricks baseline): convs and classifier
      are uniform in [-a, a] with a = sqrt(6 / (fan_in + fan_out)). The classifier bias
      starts at zero.
    drop_block_rate: Target DropBlock rate 1 - keep_prob (Ghiasi et al. 2018: 0.1); 0
      disables DropBlock. The trainer may pass a scheduled rate to `__call__`.
    drop_block_size: DropBlock block side (paper: 7), capped per feature map.
    drop_block_stages: 1-based stages whose blocks use DropBlock (paper: 3 and 4).
    dtype: Compute dtype of the convolutional trunk (e.g. bfloat16 for mixed precision).
      Pooling and classifier always run in float32.
    param_dtype: Dtype of the parameters.
    conv_algorithm: How convolutions and the stem's max pool are computed
      (`xla_cpu.CONV_ALGORITHMS`): 'native' (XLA's own, the default: every JAX transformation
      works), 'auto' (XLA:CPU's fast algorithms where the computation runs on the CPU, XLA's
      own elsewhere; the trainer's default), 'blocked' or 'onednn'. Same parameters, results
      equal up to float rounding.
  """
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
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  conv_algorithm: str = 'native'

  def check_options(self, num_classes: int, num_stages: int) -> None:
    """Raises a ValueError naming the first invalid option (before any tracing)."""
    check_choice('norm', self.norm, NORMS)
    check_choice('kernel_init', self.kernel_init, KERNEL_INITS)
    check_choice('conv_algorithm', self.conv_algorithm, CONV_ALGORITHMS)
    if num_classes < 1:
      raise ValueError(f'num_classes must be positive, got {num_classes}.')
    if not self.width_multiplier > 0:
      raise ValueError(f'width_multiplier must be positive, got {self.width_multiplier}.')
    if not 0.0 <= self.drop_block_rate < 1.0:
      raise ValueError(f'drop_block_rate must be in [0, 1), got {self.drop_block_rate}.')
    if self.drop_block_size < 1:
      raise ValueError(f'drop_block_size must be positive, got {self.drop_block_size}.')
    if self.drop_block_rate > 0 and any(s not in range(1, num_stages + 1)
                                        for s in self.drop_block_stages):
      raise ValueError(f'drop_block_stages={tuple(self.drop_block_stages)} must name stages '
                       f'1..{num_stages}.')

  def initializers(self) -> Tuple[Callable[..., Any], Callable[..., Any]]:
    """Returns the (conv, dense) kernel initializers for `kernel_init`."""
    if self.kernel_init == 'xavier_uniform':
      xavier = nn.initializers.xavier_uniform()
      return xavier, xavier
    he_normal_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
    # PyTorch's default nn.Linear init, which torchvision/timm keep for the classifier:
    # kaiming_uniform(a=sqrt(5)) = uniform(+-1/sqrt(fan_in)).
    torch_linear_default = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')
    return he_normal_fan_out, torch_linear_default

  def layers(self, train: bool) -> Layers:
    """The conv, norm and DropBlock factories of a call with `train`, and the initializers."""
    conv_init, dense_init = self.initializers()
    conv = functools.partial(conv_layer, kernel_init=conv_init, dtype=self.dtype,
                             param_dtype=self.param_dtype, algorithm=self.conv_algorithm)
    norm = functools.partial(norm_layer, kind=self.norm, train=train, momentum=self.bn_momentum,
                             epsilon=self.bn_epsilon, axis_name=self.axis_name, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    drop_block = None
    if self.drop_block_rate > 0:
      drop_block = functools.partial(DropBlock, block_size=self.drop_block_size,
                                     deterministic=not train)
    return Layers(conv=conv, norm=norm, drop_block=drop_block, dense_init=dense_init,
                  conv_init=conv_init)

  def stage_drop_block(self, layers: Layers, stage_index: int) -> Optional[ModuleFactory]:
    """The DropBlock factory of 0-based stage `stage_index`, or None where it has none."""
    return layers.drop_block if stage_index + 1 in self.drop_block_stages else None
