"""Convolutions that train fast on XLA:CPU, numerically equal to `lax.conv_general_dilated`.

XLA:CPU runs a convolution's forward pass and input gradient near its matrix-multiply speed,
but its weight gradient (the contraction over batch and space of input patches with the
output gradient) much slower: measured on a 2-core AMD EPYC, a 3×3, 64→64 convolution on
128 images of 32×32 takes 75 ms forward and 185 ms for its weight gradient, and a 1×1, 64→256
convolution on 8 images of 56×56 takes 4 ms forward and 16 ms for its weight gradient. Two
reformulations fix that without changing the result beyond float rounding:

* A 1×1 convolution is a matrix product over channels, `y[n, h, w, :] = x[n, s·h, s·w, :] @ K`
  (stride `s`). Written as `lax.dot_general`, its weight gradient `Σ_{n,h,w} xᵀ dy` is one
  matrix product too (3× faster than the convolution's weight gradient above). XLA:CPU's
  matrix kernels need one operand of it transposed in memory, and left to itself XLA often
  transposes the larger (the output gradient of an expanding 1×1 convolution, 4× the input),
  writing it transposed straight out of the BatchNorm gradient that produces it; a custom VJP
  transposes the smaller operand instead (`_matmul_weight_grad`: a ResNet-50-D train step
  14 % faster).
* A k×k convolution's weight gradient is a sum over images,
  `dK[i, j, c, o] = Σ_n Σ_{h,w} x_pad[n, s·h + i, s·w + j, c] · dy[n, h, w, o]`, and
  XLA:CPU's kernel is several times faster on a few images at a time whose input and output
  gradient fit in the core's cache (about 1 MiB) than on the whole batch at once. The weight
  gradient is therefore computed per block of images and the blocks' gradients summed
  (`weight_gradient_block`), in a `jax.custom_vjp` whose forward pass and input gradient
  also run per block (10-30 % faster). (The blocks are unrolled: inside a loop XLA:CPU falls
  back to a slow convolution emitter.)

A third reformulation is for small maps. XLA:CPU's k×k convolution is many times slower per
FLOP on maps of a few pixels a side (a ResNet's last stage on small images, a detector's
coarsest maps) than on larger ones, in all three passes, while the same sums as one matrix
product run at its matrix-multiply speed. A k×k convolution whose output is at most
`_SMALL_MAP` pixels a side is therefore computed from its patches
(`_small_map_conv`), whatever its size: plain XLA operations, so every transformation
differentiates it (forward mode included), and no custom VJP is needed.

Faster still are oneDNN's convolution kernels, which `onednn.py` runs inside the
jitted program as XLA FFI calls (all three passes of float32, ungrouped convolutions at
430-620 GFLOP/s on a 2-core AVX-512 machine, against 200-400 for XLA's): with its extension
available (the `onednn` extra), `algorithm='onednn'` (and 'auto' on CPU) uses them in place of
the first two reformulations above where `onednn_conv.supports` the convolution, and the
reformulations elsewhere; small maps stay matrix products.

`conv_general_dilated(..., algorithm='auto')` chooses these for computations that run on
the CPU (`lax.platform_dependent`: decided when the computation is lowered for its platform,
not by `jax.default_backend()`), for small maps whatever their size, and otherwise for 1×1
convolutions with inputs of at least 256 KiB and k×k ones of at least 1 MiB (smaller ones keep
XLA's program: blocking them made the 8×8 digits job of configs/default.py no faster);
lowered for a GPU or TPU, 'auto' is XLA's native convolution (cuDNN / the TPU's convolution
units). `algorithm='native'`, the default, is `lax.conv_general_dilated` itself everywhere.
`Conv` is `flax.linen.Conv` with this function, so its parameters are the same (`kernel`
[kh, kw, in_features / groups, features], optional `bias`).

The other fast algorithms define their gradients with `jax.custom_vjp`: they work under `jit`,
`grad`, `vmap`, `shard_map`, `pmap` and `jax.export`, but not under forward-mode
differentiation (`jax.jvp`, `jax.hessian`, `jax.jacfwd`), which is why the models default to
'native' and the trainer's config (`config.model.conv_algorithm='auto'`) turns them on.
"""

import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

import models.xla_cpu.onednn as onednn

# 'native': lax.conv_general_dilated, on every platform (the default); 'auto': on the CPU,
# 'onednn' where its extension is available, else 'blocked', and 'native' on other platforms;
# 'blocked': 1×1 convolutions as matrix products, k×k weight gradients per block of images (on
# every platform); 'onednn': on the CPU, 'blocked' with oneDNN's convolutions (onednn.py) in
# its place where they apply, and 'native' on other platforms.
CONV_ALGORITHMS = ('native', 'auto', 'blocked', 'onednn')

# Bytes of one block's input plus output gradient that keep XLA:CPU's weight-gradient kernel
# in cache.
_BLOCK_BYTES = 1 << 20
# 1×1 convolutions of smaller inputs keep XLA's program: too small to gain anything (the 8×8
# digits job of configs/default.py, whose largest 1×1 input is 128 KiB), and results that
# differ in float rounding change a short training run's trajectory for nothing.
_MIN_MATMUL_BYTES = 1 << 18
# k×k convolutions whose output is at most this many pixels a side are one matrix product of
# their patches (`_small_map_conv`); from 4×4 up, XLA's convolution is as fast.
_SMALL_MAP = 3
# Blocks grow to up to this many times the kernel's bytes when that is more than
# `_BLOCK_BYTES`: each block adds a kernel-sized gradient to the sum (`weight_gradient_block`).
_BLOCK_KERNEL_RATIO = 1
# At most this many blocks per convolution: each is one convolution in the compiled program.
_MAX_BLOCKS = 64

# The only layout the fast paths handle: flax's NHWC images and HWIO kernels.
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))


def check_algorithm(algorithm: str) -> None:
  """Raises a ValueError naming the allowed values unless `algorithm` is in `CONV_ALGORITHMS`."""
  if algorithm not in CONV_ALGORITHMS:
    raise ValueError(f'Invalid conv_algorithm={algorithm!r}; allowed values are '
                     f'{", ".join(repr(a) for a in CONV_ALGORITHMS)}.')


def resolve_algorithm(algorithm: str, platform: str) -> str:
  """The concrete algorithm of `algorithm` in a computation lowered for `platform`.

  Args:
    algorithm: One of `CONV_ALGORITHMS`.
    platform: 'cpu', 'cuda', 'rocm', 'tpu', ...

  Returns:
    'native', 'blocked' or 'onednn'. 'onednn' is a CPU algorithm: elsewhere it is 'native'.

  Raises:
    ValueError: If `algorithm` is not one of `CONV_ALGORITHMS`, or is 'onednn' on the CPU
      without its extension (`onednn.unavailable_reason()`).
  """
  check_algorithm(algorithm)
  if algorithm in ('native', 'blocked'):
    return algorithm
  if platform != 'cpu':
    return 'native'
  if algorithm == 'onednn' and not onednn.available():
    raise ValueError(f"conv_algorithm='onednn' is unavailable: "
                     f"{onednn.unavailable_reason()}; use 'auto' or 'blocked'.")
  return 'onednn' if onednn.available() else 'blocked'


def on_cpu_only(algorithm: str, args: Tuple[Any, ...], cpu: Callable[..., Any],
                native: Callable[..., Any]) -> Any:
  """`cpu(*args)` where the computation runs on the CPU, `native(*args)` elsewhere.

  'blocked' is `cpu` on every platform (it is XLA code), 'auto' and 'onednn' only in a
  computation lowered for the CPU: the choice follows the platform the computation is lowered
  for (`lax.platform_dependent`), so a CPU computation in a process whose default backend is a
  GPU takes the CPU path, and a GPU computation never does.
  """
  if algorithm == 'blocked':
    return cpu(*args)
  return lax.platform_dependent(*args, cpu=cpu, default=native)


def weight_gradient_block(batch_size: int, image_bytes: int, kernel_bytes: int) -> int:
  """Images per block of a blocked weight gradient.

  A block's input plus output gradient should fit in the core's cache (`_BLOCK_BYTES`), but a
  kernel larger than that lets blocks grow to its size: every block adds a kernel-sized
  gradient to the sum, which costs more than the blocking saves once the kernel outweighs the
  block (measured on a ResNet-50-D at batch 8, whose 3×3, 512→512 kernels of 9 MiB train
  fastest as one block, and a ResNet-18-D at batch 128, whose 3×3, 256→256 kernels of
  2.25 MiB train fastest in blocks of 16 8×8 images).

  Args:
    batch_size: Images in the batch.
    image_bytes: Bytes of one image's input plus output gradient.
    kernel_bytes: Bytes of the kernel.

  Returns:
    The largest divisor of `batch_size` whose block holds at most max(`_BLOCK_BYTES`,
    `_BLOCK_KERNEL_RATIO` · `kernel_bytes`) (at least 1, and at least
    `batch_size / _MAX_BLOCKS`), or `batch_size` (one block: XLA's own weight gradient) when
    no divisor gives at most `_MAX_BLOCKS` blocks.
  """
  block_bytes = max(_BLOCK_BYTES, _BLOCK_KERNEL_RATIO * kernel_bytes)
  target = max(1, block_bytes // max(image_bytes, 1), -(-batch_size // _MAX_BLOCKS))
  block = max(d for d in range(1, min(target, batch_size) + 1) if batch_size % d == 0)
  # A batch size with few divisors (a prime) could need many more blocks than allowed.
  return block if batch_size // block <= _MAX_BLOCKS else batch_size


def _native(x, kernel, strides, padding, groups):
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC,
                                  feature_group_count=groups)


def _block_size(x, output_size, kernel) -> int:
  """`weight_gradient_block` of a convolution of `x` [batch, ...] giving `output_size` values."""
  batch_size = x.shape[0]
  image_bytes = (x.size + output_size) // batch_size * x.dtype.itemsize
  return weight_gradient_block(batch_size, image_bytes, kernel.size * kernel.dtype.itemsize)


def _per_block(fn, block, *arrays):
  """`fn` applied to consecutive blocks of `block` images of `arrays`, concatenated."""
  batch_size = arrays[0].shape[0]
  if block == batch_size:
    return fn(*arrays)
  return jnp.concatenate([fn(*(a[start:start + block] for a in arrays))
                          for start in range(0, batch_size, block)])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _blocked_conv(x, kernel, strides, padding, groups, block):
  # The forward pass and the input gradient run per block too: 10-30 % faster on XLA:CPU for
  # the 3×3 convolutions of a ResNet at 16 and 32 px (measured per layer).
  return _per_block(lambda x_: _native(x_, kernel, strides, padding, groups), block, x)


def _blocked_conv_fwd(x, kernel, strides, padding, groups, block):
  return _blocked_conv(x, kernel, strides, padding, groups, block), (x, kernel)


def _blocked_conv_bwd(strides, padding, groups, block, residuals, output_grad):
  x, kernel = residuals

  def block_input_grad(x_block, grad_block):
    _, input_vjp = jax.vjp(lambda x_: _native(x_, kernel, strides, padding, groups), x_block)
    return input_vjp(grad_block)[0]

  input_grad = _per_block(block_input_grad, block, x, output_grad)

  def block_weight_grad(x_block, grad_block):
    _, kernel_vjp = jax.vjp(lambda k: _native(x_block, k, strides, padding, groups), kernel)
    return kernel_vjp(grad_block)[0]

  batch_size = x.shape[0]
  # Sum the blocks' gradients in float32 so low-precision compute loses nothing to the sum.
  weight_grad = jnp.zeros(kernel.shape, jnp.float32)
  for start in range(0, batch_size, block):
    weight_grad += block_weight_grad(x[start:start + block],
                                     output_grad[start:start + block]).astype(jnp.float32)
  return input_grad, weight_grad.astype(kernel.dtype)


_blocked_conv.defvjp(_blocked_conv_fwd, _blocked_conv_bwd)


def _matmul_weight_grad(x: jnp.ndarray, output_grad: jnp.ndarray, precision: Any) -> jnp.ndarray:
  """`xᵀ · output_grad` [in, out] of x [rows, in] and output_grad [rows, out], in float32.

  Both operands are contracted over their major (rows) axis, and XLA:CPU's matrix-multiply
  kernels take row-major operands only, so one of them is transposed in memory first. Left to
  itself XLA often transposes the larger one; here it is the smaller: `xᵀ · g` when in ≤ out,
  else `(gᵀ · x)ᵀ`.
  """
  if x.shape[1] <= output_grad.shape[1]:
    return lax.dot(x.T, output_grad, precision=precision, preferred_element_type=jnp.float32)
  return lax.dot(output_grad.T, x, precision=precision, preferred_element_type=jnp.float32).T


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _matmul_conv(x, weights, precision, preferred_element_type):
  """`x` [..., in] @ `weights` [in, out] with the weight gradient of `_matmul_weight_grad`."""
  return lax.dot_general(x, weights, (((x.ndim - 1,), (0,)), ((), ())), precision=precision,
                         preferred_element_type=preferred_element_type)


def _matmul_conv_fwd(x, weights, precision, preferred_element_type):
  return _matmul_conv(x, weights, precision, preferred_element_type), (x, weights)


def _matmul_conv_bwd(precision, preferred_element_type, residuals, output_grad):
  del preferred_element_type  # The gradients take the dtypes of the inputs.
  x, weights = residuals
  output_grad = output_grad.astype(jnp.result_type(x, weights))
  input_grad = lax.dot_general(output_grad, weights, (((x.ndim - 1,), (1,)), ((), ())),
                               precision=precision).astype(x.dtype)
  weight_grad = _matmul_weight_grad(x.reshape(-1, x.shape[-1]),
                                    output_grad.reshape(-1, weights.shape[1]), precision)
  return input_grad, weight_grad.astype(weights.dtype)


_matmul_conv.defvjp(_matmul_conv_fwd, _matmul_conv_bwd)


def _pointwise_conv(x: jnp.ndarray, kernel: jnp.ndarray, strides: Tuple[int, int],
                    groups: int, precision: Any,
                    preferred_element_type: Any) -> jnp.ndarray:
  """A 1×1 convolution without padding as a matrix product over channels.

  Args:
    x: [batch, height, width, in_features].
    kernel: [1, 1, in_features / groups, features].
    strides: (stride_h, stride_w).
    groups: Feature groups; group `g` maps input channels `g·cin_g…` to outputs `g·cout_g…`.
    precision: Passed to `lax.dot_general`.
    preferred_element_type: Passed to `lax.dot_general`.

  Returns:
    [batch, ceil(height / stride_h), ceil(width / stride_w), features].
  """
  if strides != (1, 1):
    x = x[:, ::strides[0], ::strides[1]]
  weights = kernel[0, 0]  # [in_features / groups, features]
  if groups == 1:
    return _matmul_conv(x, weights, precision, preferred_element_type)
  batch, height, width, _ = x.shape
  group_in, features = weights.shape
  x = x.reshape(batch, height, width, groups, group_in)
  weights = weights.reshape(group_in, groups, features // groups)
  # [groups, batch, height, width, features / groups] with the group as batch dimension.
  y = lax.dot_general(x, weights, (((4,), (0,)), ((3,), (1,))), precision=precision,
                      preferred_element_type=preferred_element_type)
  return jnp.moveaxis(y, 0, 3).reshape(batch, height, width, features)


def _small_map_conv(x: jnp.ndarray, kernel: jnp.ndarray, strides: Tuple[int, int],
                    padding: Tuple[Tuple[int, int], ...]) -> jnp.ndarray:
  """A convolution as one matrix product of its input's patches (for small maps).

  y[n, h, w, :] = concat_{i < kh, j < kw} x_pad[n, s_h·h + i, s_w·w + j, :] · K', with x_pad
  the padded input and K' the kernel reshaped to [kh · kw · in_features, features]: the
  concatenation's (i, j, c) order is the HWIO kernel's.

  Args:
    x: [batch, height, width, in_features].
    kernel: [kh, kw, in_features, features] (no feature groups).
    strides: (stride_h, stride_w).
    padding: ((low_h, high_h), (low_w, high_w)), none negative.

  Returns:
    [batch, out_height, out_width, features], as `lax.conv_general_dilated` gives.
  """
  kh, kw, in_features, features = kernel.shape
  x = jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),))
  out_h = (x.shape[1] - kh) // strides[0] + 1
  out_w = (x.shape[2] - kw) // strides[1] + 1
  taps = [x[:, i:i + strides[0] * (out_h - 1) + 1:strides[0],
            j:j + strides[1] * (out_w - 1) + 1:strides[1]]
          for i in range(kh) for j in range(kw)]
  return jnp.concatenate(taps, axis=-1) @ kernel.reshape(kh * kw * in_features, features)


def _fast_conv(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
               dimension_numbers, groups: int, batch_group_count: int, precision: Any,
               preferred_element_type: Any, algorithm: str) -> Optional[Callable[..., Any]]:
  """The 'blocked' or 'onednn' computation of these operands as a function of (lhs, rhs).

  None where XLA's own convolution is the answer: another layout, string padding, dilation,
  batch groups, inputs too small to gain anything, one block of images. A k×k convolution
  with an output of at most `_SMALL_MAP` pixels a side is `_small_map_conv`, whatever its size.
  """
  dimension_numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  if (lhs.ndim != 4 or dimension_numbers != _NHWC or isinstance(padding, str)
      or any(d != 1 for d in (lhs_dilation or (1, 1)) + tuple(rhs_dilation or (1, 1)))
      or batch_group_count != 1):
    return None
  strides = tuple(window_strides)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  input_bytes = lhs.size * lhs.dtype.itemsize
  pointwise = rhs.shape[:2] == (1, 1) and padding == ((0, 0), (0, 0))
  out_size = [(size + lo + hi - k) // stride + 1 for size, (lo, hi), k, stride
              in zip(lhs.shape[1:3], padding, rhs.shape[:2], strides)]
  if (rhs.shape[:2] != (1, 1) and max(out_size) <= _SMALL_MAP and groups == 1
      and min(min(pads) for pads in padding) >= 0
      and precision is None and preferred_element_type is None):
    return lambda x, k: _small_map_conv(x, k, strides, padding)
  if input_bytes < (_MIN_MATMUL_BYTES if pointwise else _BLOCK_BYTES):
    # Too small to gain anything: keep XLA's program as it is (e.g. the 8×8 digits job).
    return None
  if (algorithm == 'onednn' and precision is None and preferred_element_type is None
      and onednn.supports(lhs, rhs, strides, groups, padding)):
    return lambda x, k: onednn.conv2d(x, k, strides, padding)
  if pointwise:
    return lambda x, k: _pointwise_conv(x, k, strides, groups, precision,
                                        preferred_element_type)
  if precision is not None or preferred_element_type is not None:
    return None
  block = _block_size(lhs, lhs.shape[0] * out_size[0] * out_size[1] * rhs.shape[3], rhs)
  if block == lhs.shape[0]:
    return None  # One block: XLA's own convolution, without a custom VJP around it.
  return lambda x, k: _blocked_conv(x, k, strides, padding, groups, block)


def conv_general_dilated(lhs: jnp.ndarray,
                         rhs: jnp.ndarray,
                         window_strides: Sequence[int],
                         padding: Any,
                         lhs_dilation: Optional[Sequence[int]] = None,
                         rhs_dilation: Optional[Sequence[int]] = None,
                         dimension_numbers: Any = None,
                         feature_group_count: int = 1,
                         batch_group_count: int = 1,
                         precision: Any = None,
                         preferred_element_type: Any = None,
                         *,
                         algorithm: str = 'native') -> jnp.ndarray:
  """`lax.conv_general_dilated` with the CPU-friendly algorithms of this module.

  The 'blocked' algorithm applies to 2-D convolutions in flax's layout (images
  [batch, height, width, channels], kernels [kh, kw, in / groups, out]) with explicit
  padding, no dilation and no batch groups: k×k ones without feature groups whose output is at
  most `_SMALL_MAP` (3) pixels a side are one matrix product of their patches
  (`_small_map_conv`), whatever their size; unpadded 1×1 convolutions whose input is at least
  `_MIN_MATMUL_BYTES` (256 KiB) are matrix products (`_pointwise_conv`); the rest, when their
  input is at least `_BLOCK_BYTES` (1 MiB), run XLA's convolution, its input gradient and its
  weight gradient per block of images (`weight_gradient_block`), or are XLA's convolution
  where the whole batch is one block. 'onednn' is 'blocked' with `onednn.conv2d` for those of
  them that `onednn.supports` (without `precision` or `preferred_element_type`). 'auto' is
  'onednn' where its extension is available, else 'blocked', in computations lowered for the
  CPU (`on_cpu_only`).
  Anything else, and 'native', is `lax.conv_general_dilated` itself.

  Args:
    lhs: Images, e.g. [batch, height, width, in_features].
    rhs: Kernel, e.g. [kh, kw, in_features / feature_group_count, features].
    window_strides: Strides, as in `lax.conv_general_dilated`.
    padding: Padding, as in `lax.conv_general_dilated`.
    lhs_dilation: Input dilation, as in `lax.conv_general_dilated`.
    rhs_dilation: Kernel dilation, as in `lax.conv_general_dilated`.
    dimension_numbers: Layouts, as in `lax.conv_general_dilated`.
    feature_group_count: Feature groups (grouped and depthwise convolutions).
    batch_group_count: Batch groups, as in `lax.conv_general_dilated`.
    precision: As in `lax.conv_general_dilated`.
    preferred_element_type: As in `lax.conv_general_dilated`.
    algorithm: One of `CONV_ALGORITHMS`.

  Returns:
    The convolution's output, e.g. [batch, out_height, out_width, features].
  """
  def native(x, kernel):
    return lax.conv_general_dilated(
        x, kernel, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type)

  check_algorithm(algorithm)
  if algorithm == 'native':
    return native(lhs, rhs)
  fast = _fast_conv(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                    dimension_numbers, feature_group_count, batch_group_count, precision,
                    preferred_element_type, resolve_algorithm(algorithm, 'cpu'))
  if fast is None:
    return native(lhs, rhs)
  return on_cpu_only(algorithm, (lhs, rhs), fast, native)


class Conv(nn.Conv):
  """`flax.linen.Conv` computed by `conv_general_dilated` with `algorithm`.

  Same attributes and parameters as `flax.linen.Conv` (`kernel`
  [kh, kw, in_features / feature_group_count, features], `bias` [features] when `use_bias`),
  so checkpoints and weight converters do not depend on the algorithm.

  Attributes:
    algorithm: One of `CONV_ALGORITHMS`.
  """
  algorithm: str = 'native'

  def __post_init__(self):
    # The name is checked here; whether 'onednn' is available, when the step is traced.
    check_algorithm(self.algorithm)
    if self.conv_general_dilated is None and self.conv_general_dilated_cls is None:
      object.__setattr__(self, 'conv_general_dilated',
                         functools.partial(conv_general_dilated, algorithm=self.algorithm))
    super().__post_init__()
