"""Max pooling whose gradient is fast on XLA:CPU, equal to `flax.linen.max_pool`'s.

The gradient of a max pool sends each window's output gradient to the window's largest input
(the first one in row-major window order when several are equal):
`dx[n, s·h + i − p, s·w + j − p, c] += dy[n, h, w, c]` for the offset `(i, j)` of that input.
JAX writes it as `select_and_scatter_add`, which XLA:CPU expands into an iota-indexed scatter:
measured on a 2-core AMD EPYC, about 100 ms of a 1.2 s ResNet-50-D train step (batch 8, 224 px,
the stem's 3×3 stride-2 pool on 112×112×64 maps). Here the forward pass also records which
window offset won (one byte per output), and the gradient is the sum over the k·k offsets of
`where(argmax == offset, dy, 0)` placed at the strided positions by `lax.pad` with interior
padding: elementwise work XLA fuses into one loop. 'auto' uses it in computations lowered for
the CPU and `flax.linen.max_pool` elsewhere, 'blocked' everywhere, as `conv.py` does for
convolutions; 'native', the default, is `flax.linen.max_pool`.
"""

import functools
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from models.xla_cpu.conv import check_algorithm, on_cpu_only


def _window_offsets(window_shape: Tuple[int, int]):
  return [(i, j) for i in range(window_shape[0]) for j in range(window_shape[1])]


def _strided_window(x_padded, offset, strides, out_shape):
  """x_padded[:, i + s_h·h, j + s_w·w, :] for h < out_h, w < out_w."""
  (i, j), (s_h, s_w), (out_h, out_w) = offset, strides, out_shape
  return x_padded[:, i:i + s_h * (out_h - 1) + 1:s_h, j:j + s_w * (out_w - 1) + 1:s_w, :]


def _pool_with_argmax(x, window_shape, strides, padding):
  """The max over each window [batch, out_h, out_w, channels] and the winning offset's index."""
  x_padded = jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),), constant_values=-jnp.inf)
  out_shape = tuple((size - k) // s + 1 for size, k, s
                    in zip(x_padded.shape[1:3], window_shape, strides))
  pooled, argmax = None, None
  for index, offset in enumerate(_window_offsets(window_shape)):
    candidate = _strided_window(x_padded, offset, strides, out_shape)
    if pooled is None:
      pooled, argmax = candidate, jnp.zeros(candidate.shape, jnp.uint8)
    else:
      # Strictly greater: the first of equal values keeps the gradient, as in XLA's
      # select_and_scatter with `ge`.
      argmax = jnp.where(candidate > pooled, jnp.uint8(index), argmax)
      pooled = jnp.maximum(pooled, candidate)
  return pooled, argmax


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _max_pool(x, window_shape, strides, padding, input_size):
  del input_size  # (height, width) of x, for the gradient.
  return _pool_with_argmax(x, window_shape, strides, padding)[0]


def _max_pool_fwd(x, window_shape, strides, padding, input_size):
  del input_size
  pooled, argmax = _pool_with_argmax(x, window_shape, strides, padding)
  return pooled, argmax


def _max_pool_bwd(window_shape, strides, padding, input_size, argmax, output_grad):
  height, width = input_size
  (low_h, high_h), (low_w, high_w) = padding
  padded_h, padded_w = height + low_h + high_h, width + low_w + high_w
  out_h, out_w = output_grad.shape[1:3]
  zero = jnp.zeros((), output_grad.dtype)
  input_grad = None
  for index, (i, j) in enumerate(_window_offsets(window_shape)):
    routed = jnp.where(argmax == index, output_grad, zero)
    # Output (h, w) lands on padded input (i + s_h·h, j + s_w·w): interior padding spaces the
    # rows and columns by the stride, edge padding shifts them to the offset.
    placed = lax.pad(routed, zero, (
        (0, 0, 0),
        (i, padded_h - i - (strides[0] * (out_h - 1) + 1), strides[0] - 1),
        (j, padded_w - j - (strides[1] * (out_w - 1) + 1), strides[1] - 1),
        (0, 0, 0)))
    input_grad = placed if input_grad is None else input_grad + placed
  return (input_grad[:, low_h:low_h + height, low_w:low_w + width, :],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: jnp.ndarray, window_shape: Sequence[int], strides: Optional[Sequence[int]] = None,
             padding: Sequence[Tuple[int, int]] = ((0, 0), (0, 0)),
             algorithm: str = 'native') -> jnp.ndarray:
  """2-D max pooling, `flax.linen.max_pool` with a CPU-friendly gradient.

  Args:
    x: [batch, height, width, channels], floating point.
    window_shape: (window_h, window_w).
    strides: (stride_h, stride_w); None: (1, 1).
    padding: ((low_h, high_h), (low_w, high_w)); padded positions never win.
    algorithm: One of `conv.CONV_ALGORITHMS`: 'native' is `flax.linen.max_pool`, 'blocked'
      this module's gradient, 'auto' and 'onednn' the latter in computations lowered for the
      CPU only.

  Returns:
    [batch, out_height, out_width, channels], out = (size + low + high − window) // stride + 1.
  """
  window_shape = tuple(int(k) for k in window_shape)
  strides = (1, 1) if strides is None else tuple(int(s) for s in strides)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  check_algorithm(algorithm)

  def native(x_):
    return nn.max_pool(x_, window_shape, strides=strides, padding=padding)

  if (algorithm == 'native' or x.ndim != 4 or not jnp.issubdtype(x.dtype, jnp.floating)
      or not len(window_shape) == len(strides) == len(padding) == 2
      or window_shape[0] * window_shape[1] > 255):  # The winning offset is stored as a uint8.
    return native(x)
  return on_cpu_only(algorithm, (x,),
                     lambda x_: _max_pool(x_, window_shape, strides, padding, x.shape[1:3]),
                     native)
