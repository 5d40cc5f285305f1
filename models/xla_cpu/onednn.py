"""2-D convolutions on XLA:CPU through oneDNN, with their gradients, as XLA FFI custom calls.

XLA:CPU's own convolutions (YNNPACK and Eigen kernels on images in [batch, height, width,
channels]) reach 200-400 GFLOP/s per pass on a 2-core AVX-512 machine; oneDNN's JIT kernels
(oneDNN 3.2), on the same arrays, reach 430-620 GFLOP/s in all three passes of a training
step (measured per convolution, 3×3 at batch 128 from 32×32×64 to 8×8×256, outside XLA). This
module runs those kernels inside a jitted program:

  forward:          y[n, h, w, o]  = Σ_{i,j,c} x_pad[n, s·h + i, s·w + j, c] · K[i, j, c, o]
  input gradient:   dx[n, h', w', c] = Σ_{h,w,i,j,o: s·h + i - p_top = h', s·w + j - p_left = w'}
                                       dy[n, h, w, o] · K[i, j, c, o]
  weight gradient:  dK[i, j, c, o] = Σ_{n,h,w} x_pad[n, s·h + i, s·w + j, c] · dy[n, h, w, o]

(`conv2d` is a `jax.custom_vjp` whose backward pass is the last two), numerically
`lax.conv_general_dilated` up to float32 rounding. The kernels live in a compiled extension
(source `csrc/onednn_conv.cc`) that `extension.build()` compiles on first use where the
`onednn` extra is installed, on Linux x86-64. Where it is not (a plain install, another
platform, no compiler), `available()` is False, `unavailable_reason()` says why, and
`conv.py`'s 'auto' keeps its XLA algorithms.

The calls run one at a time (each already uses every core through OpenMP); their operands
keep XLA's layouts (only kernels are reordered into oneDNN's), so the step's memory is XLA's
plus per-thread buffers for reordered kernels and scratch space.
"""

import ctypes
import functools
import os
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

import models.xla_cpu.extension as extension

_TARGET_PREFIX = 'bagtricks_onednn_conv_'
_PASSES = ('forward', 'backward_data', 'backward_weights')

Padding = Tuple[Tuple[int, int], Tuple[int, int]]


@functools.lru_cache(maxsize=None)
def _load() -> Tuple[Optional[ctypes.CDLL], str]:
  """Loads the extension and registers its handlers with XLA: (the library, why not)."""
  path, missing = extension.build()
  if path is None:
    return None, missing
  library = extension.onednn_library()
  # oneDNN threads with GNU OpenMP, whose threads by default spin for milliseconds after each
  # parallel region, taking a core from XLA's threads that run the rest of the step (the
  # ResNet-50-D train step of benchmarks/compare_torch.py: 7 % slower). libgomp reads its wait
  # policy once, when it is loaded, so it is set to passive for that moment only, unless the
  # user chose one; another OpenMP runtime loaded later (PyTorch's) sees the environment as
  # it was.
  policy_unset = 'OMP_WAIT_POLICY' not in os.environ
  if policy_unset:
    os.environ['OMP_WAIT_POLICY'] = 'PASSIVE'
  try:
    # The extension needs libdnnl.so.3, which is not on the loader's search path: loading it
    # first by its full path lets the extension's dependency resolve to it by name.
    ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)
    handlers = ctypes.CDLL(path)
  except OSError as e:
    return None, f'loading {path} failed: {e}'
  finally:
    if policy_unset:
      del os.environ['OMP_WAIT_POLICY']
  handlers.bagtricks_onednn_version.restype = ctypes.c_char_p
  handlers.bagtricks_onednn_check_bounds.argtypes = [ctypes.c_int]
  for name in _PASSES:
    jax.ffi.register_ffi_target(_TARGET_PREFIX + name,
                                jax.ffi.pycapsule(getattr(handlers, _TARGET_PREFIX + name)),
                                platform='cpu')
  return handlers, ''


def available() -> bool:
  """Whether the oneDNN convolutions can run in this process (on the CPU backend)."""
  return _load()[0] is not None


def unavailable_reason() -> str:
  """Why `available()` is False ('' when it is True)."""
  return _load()[1]


def version() -> Optional[str]:
  """The oneDNN version the extension runs on, e.g. '3.2.0'; None when unavailable."""
  handlers = _load()[0]
  return None if handlers is None else handlers.bagtricks_onednn_version().decode()


def set_bounds_checking(enabled: bool) -> None:
  """Bounds-checking mode, for tests: oneDNN writes into guarded copies first.

  With it on, a kernel that writes past its output or scratch space makes the call fail with
  an error naming the convolution, instead of corrupting memory. It costs a copy of every
  output.

  Args:
    enabled: Whether to check.
  """
  handlers = _load()[0]
  if handlers is not None:
    handlers.bagtricks_onednn_check_bounds(int(enabled))


def supports(x: jax.Array, kernel: jax.Array, strides: Sequence[int], groups: int,
             padding: Padding) -> bool:
  """Whether `conv2d` handles this convolution.

  Float32 operands, one group, non-negative padding, and the strides oneDNN's kernels were
  checked with (tests/test_onednn_conv.py, in bounds-checking mode): equal along both axes,
  and 1 for 1×1 kernels (oneDNN 3.2's 1×1 weight-gradient kernel writes past its buffers
  with unequal strides).

  Args:
    x: Images [batch, height, width, in_features].
    kernel: [kh, kw, in_features / groups, features].
    strides: (stride_h, stride_w).
    groups: Feature groups.
    padding: ((top, bottom), (left, right)).

  Returns:
    Whether `conv2d` applies.
  """
  pointwise = tuple(kernel.shape[:2]) == (1, 1)
  return (x.ndim == 4 and kernel.ndim == 4 and groups == 1 and x.dtype == jnp.float32
          and kernel.dtype == jnp.float32 and x.shape[3] == kernel.shape[2]
          and all(p >= 0 for pair in padding for p in pair)
          and strides[0] == strides[1] and (strides[0] == 1 or not pointwise))


def output_shape(x_shape, kernel_shape, strides, padding) -> Tuple[int, int, int, int]:
  """[batch, out_height, out_width, features] of a convolution of these shapes."""
  batch, height, width, _ = x_shape
  kernel_h, kernel_w, _, features = kernel_shape
  (top, bottom), (left, right) = padding
  return (batch, (height + top + bottom - kernel_h) // strides[0] + 1,
          (width + left + right - kernel_w) // strides[1] + 1, features)


def _match_varying(*arrays):
  """`arrays`, each cast to vary over the union of their manual mesh axes.

  Inside `jax.shard_map` images vary over the batch axis while a replicated kernel does not;
  an FFI call needs its operands to agree. Casting the kernel, like any `lax` operation on
  both would, makes its gradient the sum over devices (the cast's transpose).
  """
  varying = frozenset().union(*(jax.typeof(a).manual_axis_type.varying for a in arrays))
  return tuple(
      jax.lax.pcast(a, tuple(sorted(missing)), to='varying')
      if (missing := varying - jax.typeof(a).manual_axis_type.varying) else a
      for a in arrays)


def _call(name: str, shape, a: jax.Array, b: jax.Array, strides, padding: Padding):
  (top, bottom), (left, right) = padding
  # The result's type is the first operand's (its mesh, sharding and varying axes) with the
  # result's shape.
  result = jax.typeof(a).update(shape=tuple(shape), dtype=jnp.dtype(jnp.float32),
                                weak_type=False)
  # 'sequential': under vmap each member of the mapped batch is its own call.
  return jax.ffi.ffi_call(_TARGET_PREFIX + name, result, vmap_method='sequential')(
                              a, b, stride_h=np.int64(strides[0]),
                              stride_w=np.int64(strides[1]), pad_top=np.int64(top),
                              pad_bottom=np.int64(bottom), pad_left=np.int64(left),
                              pad_right=np.int64(right))


def conv2d(x: jax.Array, kernel: jax.Array, strides: Tuple[int, int],
           padding: Padding) -> jax.Array:
  """A 2-D convolution by oneDNN: `lax.conv_general_dilated` in flax's layout.

  Args:
    x: float32 [batch, height, width, in_features].
    kernel: float32 [kh, kw, in_features, features].
    strides: (stride_h, stride_w).
    padding: ((top, bottom), (left, right)), non-negative.

  Returns:
    float32 [batch, out_height, out_width, features] (`output_shape`).

  Raises:
    RuntimeError: If the extension is not available (`unavailable_reason()`).
    ValueError: If `supports` says no.
  """
  if not available():
    raise RuntimeError(f'oneDNN convolutions are unavailable: {unavailable_reason()}')
  if not supports(x, kernel, strides, 1, padding):
    raise ValueError(f'conv2d does not handle images {x.shape} {x.dtype}, kernel '
                     f'{kernel.shape} {kernel.dtype}, strides {tuple(strides)}, padding '
                     f'{tuple(padding)}: see supports().')
  x, kernel = _match_varying(x, kernel)
  return _conv2d(x, kernel, tuple(strides), tuple(map(tuple, padding)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d(x, kernel, strides, padding):
  return _call('forward', output_shape(x.shape, kernel.shape, strides, padding), x, kernel,
               strides, padding)


def _conv2d_fwd(x, kernel, strides, padding):
  return _conv2d(x, kernel, strides, padding), (x, kernel)


def _conv2d_bwd(strides, padding, residuals, output_grad):
  x, kernel = residuals
  input_grad = _call('backward_data', x.shape, output_grad, kernel, strides, padding)
  kernel_grad = _call('backward_weights', kernel.shape, x, output_grad, strides, padding)
  return input_grad, kernel_grad


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)
