"""RegNet from "Designing Network Design Spaces" (Radosavovic et al. 2020).

A RegNet is a ResNet-like network of bottleneck blocks whose per-block widths follow a
quantized linear function (§3.3 of the paper):

* continuous widths u_j = w_0 + w_a · j for the blocks j = 0 … d - 1 (Eq. 2);
* s_j = round(log(u_j / w_0) / log(w_m)) (Eq. 3), and the block width is w_0 · w_m^{s_j}
  rounded to a multiple of 8 (Eq. 4);
* consecutive blocks of equal width form a stage; the first block of every stage halves the
  resolution (except stage 1's with `small_stem`);
* every block is the X block of the paper's AnyNet space: 1x1 conv to the bottleneck width
  w / b, a 3x3 group conv of group width g, a 1x1 conv back to w; the group width and the
  bottleneck width are made compatible (g = min(g, w / b), then w / b rounded to a multiple of
  g, and w = (w / b) · b);
* RegNetY adds squeeze-and-excitation (Hu et al. 2018) after the 3x3 conv, reducing to
  round(0.25 · the block's input width) channels.

The stem is one 3x3 stride-2 conv of width 32; the head is global average pooling and a fully
connected layer. Layer names, widths and layouts follow timm's `regnet.py`, so that parameter
counts and FLOPs equal timm's (e.g. `regnetx_002`: 2,684,792 parameters) and timm weights
load one to one. The options and layers are the ResNets' (`convnet.ConvNetOptions`), so every
ResNet option (norm choice, zero-γ, DropBlock, dtype, convolution algorithm) applies.

`sample_designs` draws random (d, w_0, w_a, w_m, g, b) from the RegNet design space under a
FLOP budget, as the paper does to compare design spaces by their error distributions.
"""

import dataclasses
import functools
import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from models.convnet import ConvNetOptions
from models.convnet import global_average_pool
from models.convnet import head_layer
from models.convnet import maybe_drop_block
from models.convnet import ModuleFactory
from models.convnet import ProjectionShortcut
from models.convnet import scale_width

# Stem width of every RegNet in the paper (§3.1, Figure 3).
STEM_WIDTH = 32
# Block widths are multiples of this (Eq. 4).
WIDTH_QUANTUM = 8


@dataclasses.dataclass(frozen=True)
class RegNetDesign:
  """A point of the RegNet design space (the paper's six parameters, plus SE).

  Attributes:
    depth: d, the number of blocks.
    w0: w_0 > 0, the initial width (a multiple of 8).
    wa: w_a ≥ 0, the slope of the linear widths.
    wm: w_m > 1, the width multiplier between stages.
    group_width: g, the channels per group of the 3x3 conv.
    bottleneck_ratio: b, the block width divided by its bottleneck width (1 for the
      paper's best models).
    se_ratio: 0 for RegNetX; 0.25 for RegNetY (SE width over the block's input width).
  """
  depth: int
  w0: int
  wa: float
  wm: float
  group_width: int
  bottleneck_ratio: float = 1.0
  se_ratio: float = 0.0

  def problems(self) -> List[str]:
    """What makes this design invalid (empty when valid), each naming its field."""
    found = []
    if not isinstance(self.depth, int) or self.depth < 1:
      found.append(f'depth={self.depth!r} must be a positive integer.')
    if not isinstance(self.w0, int) or self.w0 <= 0 or self.w0 % WIDTH_QUANTUM:
      found.append(f'w0={self.w0!r} must be a positive multiple of {WIDTH_QUANTUM}.')
    if not self.wa >= 0:
      found.append(f'wa={self.wa!r} must be ≥ 0.')
    if not self.wm > 1:
      found.append(f'wm={self.wm!r} must be > 1.')
    if not isinstance(self.group_width, int) or self.group_width < 1:
      found.append(f'group_width={self.group_width!r} must be a positive integer.')
    if not self.bottleneck_ratio > 0:
      found.append(f'bottleneck_ratio={self.bottleneck_ratio!r} must be > 0.')
    if not 0 <= self.se_ratio < 1:
      found.append(f'se_ratio={self.se_ratio!r} must be in [0, 1).')
    return found


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """One stage of a generated RegNet.

  Attributes:
    width: Output channels of every block of the stage.
    depth: Number of blocks.
    group_width: Channels per group of the 3x3 convs (after the compatibility adjustment).
    bottleneck_width: Channels of the 3x3 conv, a multiple of `group_width`.
  """
  width: int
  depth: int
  group_width: int
  bottleneck_width: int


def block_widths(depth: int, w0: int, wa: float, wm: float,
                 quantum: int = WIDTH_QUANTUM) -> List[int]:
  """The quantized per-block widths of the paper's Eqs. 2-4.

  u_j = w_0 + w_a · j, s_j = round(log(u_j / w_0) / log(w_m)), and
  w_j = round(w_0 · w_m^{s_j} / q) · q for j = 0 … d - 1.

  Args:
    depth: d.
    w0: w_0.
    wa: w_a.
    wm: w_m.
    quantum: q, the width quantum (8).

  Returns:
    The d block widths, non-decreasing.
  """
  # float32 as timm computes them: a float64 log can round an exact tie the other way.
  continuous = np.arange(depth, dtype=np.float32) * np.float32(wa) + np.float32(w0)
  exponents = np.round(np.log(continuous / np.float32(w0)) / np.float32(math.log(wm)))
  widths = np.round(np.float32(w0) * np.power(np.float32(wm), exponents) / quantum) * quantum
  return [int(w) for w in widths]


def compatible_widths(width: int, bottleneck_ratio: float,
                      group_width: int) -> Tuple[int, int, int]:
  """The paper's compatibility adjustment of block width, bottleneck ratio and group width.

  The bottleneck width w_b = w / b must be a multiple of the group width, and a group cannot
  be wider than w_b: g' = min(g, w_b), w_b' = round(w_b / g') · g', w' = w_b' · b.

  Args:
    width: w, the block width.
    bottleneck_ratio: b.
    group_width: g.

  Returns:
    (w', g', w_b').
  """
  bottleneck = int(width / bottleneck_ratio)
  group_width = min(group_width, bottleneck)
  bottleneck = int(round(bottleneck / group_width) * group_width)
  return int(bottleneck * bottleneck_ratio), group_width, bottleneck


def stage_specs(design: RegNetDesign, width_multiplier: float = 1.0) -> List[StageSpec]:
  """Groups a design's block widths into stages (equal consecutive widths) and adjusts them.

  Args:
    design: The design-space point.
    width_multiplier: Scales stage widths and group widths before the compatibility
      adjustment (1.0 keeps the paper's/timm's networks exactly).

  Returns:
    The stages, first to last.

  Raises:
    ValueError: The design is invalid (the message names the field).
  """
  problems = design.problems()
  if problems:
    raise ValueError('Invalid RegNet design: ' + ' '.join(problems))
  widths = block_widths(design.depth, design.w0, design.wa, design.wm)
  stages = []
  for width in sorted(set(widths)):
    width_scaled = scale_width(width, width_multiplier)
    group = scale_width(design.group_width, width_multiplier)
    out_width, group, bottleneck = compatible_widths(width_scaled, design.bottleneck_ratio,
                                                     group)
    stages.append(StageSpec(width=out_width, depth=widths.count(width), group_width=group,
                            bottleneck_width=bottleneck))
  return stages


def _block_strides(stage_index: int, block_index: int, small_stem: bool) -> int:
  # The first block of every stage downsamples, except stage 1's under the small stem: like
  # the ResNets' small stem (no stem stride, no max pool), 8-32 px inputs are downsampled
  # by 8 instead of 32.
  first_stage_kept = small_stem and stage_index == 0
  return 2 if block_index == 0 and not first_stage_kept else 1


def _conv_output_size(size: int, strides: int) -> int:
  # A k x k conv with padding k // 2 (odd k) or a 1x1 conv without padding: ceil(size / s).
  return -(-size // strides)


def flops(design: RegNetDesign, image_size: int = 224, num_classes: int = 1000,
          in_channels: int = 3, stem_width: int = STEM_WIDTH, small_stem: bool = False,
          width_multiplier: float = 1.0) -> int:
  """Multiply-adds of one forward pass, counted as the paper (pycls) and timm's tables do.

  Convolutions cost k² · c_in / groups · c_out · H_out · W_out (plus c_out · H_out · W_out for a
  bias), fully connected layers c_in · c_out (+ c_out for a bias); norms, activations and
  pooling are not counted.

  Args:
    design: The design-space point.
    image_size: Input height and width.
    num_classes: Classifier width.
    in_channels: Input channels.
    stem_width: Stem conv width (before `width_multiplier`).
    small_stem: Whether the stem conv and stage 1 keep the resolution (as
      `RegNet.small_stem`).
    width_multiplier: As `RegNet.width_multiplier`.

  Returns:
    The multiply-add count.
  """
  stem = scale_width(stem_width, width_multiplier)
  size = image_size if small_stem else _conv_output_size(image_size, 2)
  total = 9 * in_channels * stem * size * size
  in_width = stem
  for stage_index, spec in enumerate(stage_specs(design, width_multiplier)):
    for block_index in range(spec.depth):
      strides = _block_strides(stage_index, block_index, small_stem)
      out_size = _conv_output_size(size, strides)
      bottleneck = spec.bottleneck_width
      total += in_width * bottleneck * size * size  # conv1, at the input resolution.
      total += 9 * bottleneck * spec.group_width * out_size * out_size  # conv2 (grouped).
      if design.se_ratio:
        se_width = int(round(in_width * design.se_ratio))
        total += 2 * bottleneck * se_width + se_width + bottleneck  # fc1, fc2 with biases.
      total += bottleneck * spec.width * out_size * out_size  # conv3.
      if strides != 1 or in_width != spec.width:
        total += in_width * spec.width * out_size * out_size  # Projection shortcut.
      in_width, size = spec.width, out_size
  return total + in_width * num_classes + num_classes


class SqueezeExcitation(nn.Module):
  """Squeeze-and-excitation (Hu et al. 2018): x · σ(W_2 relu(W_1 mean_hw(x) + b_1) + b_2).

  Attributes:
    reduced_features: Width of the bottleneck of the gate (W_1's outputs).
    kernel_init: Initializer of W_1 and W_2.
    dtype: Compute dtype.
    param_dtype: Parameter dtype.
  """
  reduced_features: int
  kernel_init: Callable[..., Any]
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """Gates every channel of `x`.

    Args:
      x: [batch, height, width, channels].

    Returns:
      [batch, height, width, channels], `x` times a per-example, per-channel gate in (0, 1).
    """
    dense = functools.partial(nn.Dense, kernel_init=self.kernel_init, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    squeezed = jnp.mean(x, axis=(1, 2), keepdims=True)
    gate = nn.relu(dense(self.reduced_features, name='fc1')(squeezed))
    gate = nn.sigmoid(dense(x.shape[-1], name='fc2')(gate))
    return x * gate


class RegNetBlock(nn.Module):
  """The X block (Y block with `se_features`): 1x1, 3x3 group conv, [SE], 1x1, plus shortcut.

  Attributes:
    features: Output channels w.
    strides: Stride of the 3x3 conv and of the shortcut.
    bottleneck_width: Channels of the 3x3 conv, w / b.
    group_width: Channels per group of the 3x3 conv.
    se_features: Width of the SE gate's bottleneck; 0 for no SE (RegNetX).
    zero_init_last: Whether the last norm starts with scale zero.
    conv: Factory of conv layers (`convnet.conv_layer`).
    norm: Factory of normalization layers (`convnet.norm_layer`).
    se_init: Kernel initializer of the SE layers.
    drop_block: Factory of `DropBlock` layers applied after every norm, or None.
  """
  features: int
  strides: int
  bottleneck_width: int
  group_width: int
  se_features: int
  zero_init_last: bool
  conv: ModuleFactory
  norm: ModuleFactory
  se_init: Callable[..., Any]
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
    drop = functools.partial(maybe_drop_block, self.drop_block, drop_rate)
    width = self.bottleneck_width
    residual = self.conv(width, 1, name='conv1')(x)
    residual = drop(nn.relu(self.norm(width, name='norm1')(residual)), 'drop1')
    residual = self.conv(width, 3, strides=self.strides, groups=width // self.group_width,
                         name='conv2')(residual)
    residual = drop(nn.relu(self.norm(width, name='norm2')(residual)), 'drop2')
    if self.se_features:
      residual = SqueezeExcitation(self.se_features, kernel_init=self.se_init,
                                   dtype=residual.dtype, name='se')(residual)
    residual = self.conv(self.features, 1, name='conv3')(residual)
    residual = self.norm(self.features, name='norm3', zero_init=self.zero_init_last)(residual)
    residual = drop(residual, 'drop3')

    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = ProjectionShortcut(
          self.features, self.strides, avg_pool_downsample=False, conv=self.conv,
          norm=self.norm, name='shortcut')(x)
      shortcut = drop(shortcut, 'drop_shortcut')
    return nn.relu(residual + shortcut)


class RegNet(ConvNetOptions):
  """RegNetX / RegNetY generated from a design-space point.

  Parameter tree (as `resnet.ResNet`): `stem_conv`/`stem_norm`; blocks `stage{s}_block{b}`
  (1-based) with `conv{1,2,3}`/`norm{1,2,3}`, `se/fc{1,2}` (RegNetY) and, where the shortcut
  is a projection, `shortcut/conv` and `shortcut/norm`; the classifier `head`.

  Attributes:
    depth: d, the number of blocks.
    w0: w_0, the initial width (a multiple of 8).
    wa: w_a, the width slope.
    wm: w_m, the stage width multiplier.
    group_width: g.
    num_classes: Number of output logits.
    bottleneck_ratio: b (1 for the paper's named models).
    se_ratio: 0 (RegNetX) or 0.25 (RegNetY): SE width over the block's input width.
    stem_width: Stem conv width (32 in the paper).
    small_stem: For 8-32 px inputs: the stem conv has stride 1 and the first stage does not
      downsample, so that the network downsamples by 8 instead of 32 (as the ResNets'
      small stem, which drops the stem stride and the max pool).

  The options shared with the ResNets (width_multiplier, which scales the stem, stage and
  group widths (see `stage_specs`), small_stem, zero_init_last, norm, axis_name,
  bn_momentum, bn_epsilon, kernel_init, drop_block_*, dtype, param_dtype, conv_algorithm)
  are `convnet.ConvNetOptions`, keyword-only.
  """
  depth: int
  w0: int
  wa: float
  wm: float
  group_width: int
  num_classes: int = 1000
  bottleneck_ratio: float = 1.0
  se_ratio: float = 0.0
  stem_width: int = STEM_WIDTH

  def __post_init__(self):
    # Validate on construction so that a bad value fails before any tracing.
    self.check_options(self.num_classes, len(self.stages()))  # Raises on an invalid design.
    super().__post_init__()

  def design(self) -> RegNetDesign:
    """The design-space point of this network."""
    return RegNetDesign(depth=self.depth, w0=self.w0, wa=self.wa, wm=self.wm,
                        group_width=self.group_width, bottleneck_ratio=self.bottleneck_ratio,
                        se_ratio=self.se_ratio)

  def stages(self) -> List[StageSpec]:
    """The generated stages (widths after `width_multiplier` and the compatibility rules)."""
    return stage_specs(self.design(), self.width_multiplier)

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = True,
               drop_block_rate: Any = None) -> jnp.ndarray:
    """Computes class logits.

    Args:
      x: Images [batch, height, width, channels].
      train: Whether BatchNorm uses batch statistics (and updates 'batch_stats') and
        DropBlock is active (it then needs a 'dropout' PRNG stream).
      drop_block_rate: This step's DropBlock rate; None uses `self.drop_block_rate`.

    Returns:
      Logits [batch, num_classes], always float32.
    """
    layers = self.layers(train)
    conv, norm = layers.conv, layers.norm

    x = jnp.asarray(x, self.dtype)
    stem_width = scale_width(self.stem_width, self.width_multiplier)
    x = conv(stem_width, 3, strides=1 if self.small_stem else 2, name='stem_conv')(x)
    x = nn.relu(norm(stem_width, name='stem_norm')(x))

    if drop_block_rate is None:
      drop_block_rate = self.drop_block_rate

    for stage_index, spec in enumerate(self.stages()):
      for block_index in range(spec.depth):
        in_width = x.shape[-1]
        x = RegNetBlock(
            features=spec.width,
            strides=_block_strides(stage_index, block_index, self.small_stem),
            bottleneck_width=spec.bottleneck_width,
            group_width=spec.group_width,
            se_features=int(round(in_width * self.se_ratio)) if self.se_ratio else 0,
            zero_init_last=self.zero_init_last,
            conv=conv,
            norm=norm,
            se_init=layers.conv_init,
            drop_block=self.stage_drop_block(layers, stage_index),
            name=f'stage{stage_index + 1}_block{block_index + 1}')(x, drop_block_rate)

    return head_layer(self.num_classes, layers.dense_init, self.param_dtype)(
        global_average_pool(x))


# The paper's named models (Tables in its Appendix), as timm defines them; the name's digits
# are the FLOPs in units of 10^8.
PRESETS: Dict[str, RegNetDesign] = {
    'regnetx_002': RegNetDesign(depth=13, w0=24, wa=36.44, wm=2.49, group_width=8),
    'regnetx_004': RegNetDesign(depth=22, w0=24, wa=24.48, wm=2.54, group_width=16),
    'regnetx_006': RegNetDesign(depth=16, w0=48, wa=36.97, wm=2.24, group_width=24),
    'regnetx_008': RegNetDesign(depth=16, w0=56, wa=35.73, wm=2.28, group_width=16),
    'regnetx_016': RegNetDesign(depth=18, w0=80, wa=34.01, wm=2.25, group_width=24),
    'regnetx_032': RegNetDesign(depth=25, w0=88, wa=26.31, wm=2.25, group_width=48),
    'regnetx_040': RegNetDesign(depth=23, w0=96, wa=38.65, wm=2.43, group_width=40),
    'regnetx_064': RegNetDesign(depth=17, w0=184, wa=60.83, wm=2.07, group_width=56),
    'regnetx_080': RegNetDesign(depth=23, w0=80, wa=49.56, wm=2.88, group_width=120),
    'regnety_002': RegNetDesign(depth=13, w0=24, wa=36.44, wm=2.49, group_width=8,
                                se_ratio=0.25),
    'regnety_004': RegNetDesign(depth=16, w0=48, wa=27.89, wm=2.09, group_width=8,
                                se_ratio=0.25),
    'regnety_006': RegNetDesign(depth=15, w0=48, wa=32.54, wm=2.32, group_width=16,
                                se_ratio=0.25),
    'regnety_008': RegNetDesign(depth=14, w0=56, wa=38.84, wm=2.4, group_width=16,
                                se_ratio=0.25),
    'regnety_016': RegNetDesign(depth=27, w0=48, wa=20.71, wm=2.65, group_width=24,
                                se_ratio=0.25),
    'regnety_032': RegNetDesign(depth=21, w0=80, wa=42.63, wm=2.66, group_width=24,
                                se_ratio=0.25),
    'regnety_040': RegNetDesign(depth=22, w0=96, wa=31.41, wm=2.24, group_width=64,
                                se_ratio=0.25),
    'regnety_064': RegNetDesign(depth=25, w0=112, wa=33.22, wm=2.27, group_width=72,
                                se_ratio=0.25),
    'regnety_080': RegNetDesign(depth=17, w0=192, wa=76.82, wm=2.19, group_width=56,
                                se_ratio=0.25),
}

MODEL_NAMES: Tuple[str, ...] = tuple(PRESETS)


def create_model(name: str, **kwargs: Any) -> RegNet:
  """Builds a named RegNet (timm's names, e.g. 'regnetx_002', 'regnety_080').

  Args:
    name: One of `MODEL_NAMES` (case-insensitive).
    **kwargs: Any other `RegNet` attribute (num_classes, small_stem, norm, dtype, ...).

  Returns:
    The `RegNet` module.

  Raises:
    ValueError: `name` is unknown; the message lists the known names.
  """
  design = PRESETS.get(name.lower())
  if design is None:
    raise ValueError(f'Unknown RegNet name {name!r}; known names are '
                     f'{", ".join(MODEL_NAMES)}.')
  return RegNet(**dataclasses.asdict(design), **kwargs)


@dataclasses.dataclass(frozen=True)
class DesignSpace:
  """Ranges of the RegNet design space to sample from (§3 and §4 of the paper).

  The paper's RegNet space: d ≤ 64, w_0 and w_a < 256 (w_0 a multiple of 8),
  1.5 ≤ w_m ≤ 3, b ∈ {1, 2, 4}, g ∈ {1, 2, 4, …, 32}; depth, widths and w_m are drawn
  log-uniformly (as pycls' sweeps do), b and g uniformly from their sets. Only networks with
  `num_stages` stages and FLOPs in `flop_range` are kept.

  Attributes:
    depth: Inclusive range of d.
    w0: Inclusive range of w_0 (drawn as a multiple of 8).
    wa: Range of w_a.
    wm: Range of w_m.
    group_widths: Choices of g.
    bottleneck_ratios: Choices of b.
    se_ratio: 0 (RegNetX) or 0.25 (RegNetY).
    num_stages: Allowed stage counts.
    flop_range: Inclusive FLOP (multiply-add) range at `image_size`.
    image_size: Input side for the FLOP count.
    num_classes: Classifier width for the FLOP count.
    in_channels: Input channels for the FLOP count.
    small_stem: Whether the networks use the stride-1 stem.
    stem_width: Stem width.
  """
  depth: Tuple[int, int] = (12, 28)
  w0: Tuple[int, int] = (8, 248)
  wa: Tuple[float, float] = (8.0, 256.0)
  wm: Tuple[float, float] = (1.5, 3.0)
  group_widths: Tuple[int, ...] = (1, 2, 4, 8, 16, 32)
  bottleneck_ratios: Tuple[float, ...] = (1.0, 2.0, 4.0)
  se_ratio: float = 0.0
  num_stages: Tuple[int, ...] = (4,)
  flop_range: Tuple[float, float] = (360e6, 400e6)
  image_size: int = 224
  num_classes: int = 1000
  in_channels: int = 3
  small_stem: bool = False
  stem_width: int = STEM_WIDTH


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
  return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def sample_designs(space: DesignSpace, count: int, seed: int = 0,
                   max_draws: int = 1_000_000) -> List[Tuple[RegNetDesign, int]]:
  """Draws `count` random designs from `space` whose FLOPs lie within its budget.

  Rejection sampling, as the paper samples "n models from a design space" in a FLOP regime:
  each parameter is drawn independently and the design is kept only if it is valid, has an
  allowed number of stages and its FLOPs are in `space.flop_range`.

  Args:
    space: The ranges and the budget.
    count: Number of designs.
    seed: NumPy random seed.
    max_draws: Give up after this many draws.

  Returns:
    `count` pairs (design, FLOPs).

  Raises:
    ValueError: Fewer than `count` designs were found in `max_draws` draws (the budget or
      the ranges are too narrow).
  """
  rng = np.random.default_rng(seed)
  found = []
  for _ in range(max_draws):
    if len(found) == count:
      break
    w0 = WIDTH_QUANTUM * int(round(_log_uniform(rng, *space.w0) / WIDTH_QUANTUM))
    design = RegNetDesign(
        depth=int(round(_log_uniform(rng, *space.depth))),
        w0=max(WIDTH_QUANTUM, w0),
        wa=round(_log_uniform(rng, *space.wa), 2),
        wm=round(_log_uniform(rng, *space.wm), 3),
        group_width=int(rng.choice(space.group_widths)),
        bottleneck_ratio=float(rng.choice(space.bottleneck_ratios)),
        se_ratio=space.se_ratio)
    if design.problems() or len(stage_specs(design)) not in space.num_stages:
      continue
    cost = flops(design, image_size=space.image_size, num_classes=space.num_classes,
                 in_channels=space.in_channels, small_stem=space.small_stem,
                 stem_width=space.stem_width)
    if space.flop_range[0] <= cost <= space.flop_range[1]:
      found.append((design, cost))
  if len(found) < count:
    raise ValueError(f'Only {len(found)} of {count} designs in {max_draws} draws fit the '
                     f'FLOP range {space.flop_range}; widen the range or the design space.')
  return found
