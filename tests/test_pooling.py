"""models/xla_cpu/pooling.py's max pool against `flax.linen.max_pool` and a hand-computed gradient."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import lowered_text
from models.xla_cpu import pooling

# (window, strides, padding, input size): the ResNet stem's pool, non-overlapping, stride 1,
# a non-square window with asymmetric padding, and an odd input size.
CASES = [
    ((3, 3), (2, 2), ((1, 1), (1, 1)), (4, 9, 9, 3)),
    ((2, 2), (2, 2), ((0, 0), (0, 0)), (2, 8, 6, 2)),
    ((3, 3), (1, 1), ((1, 1), (1, 1)), (2, 5, 5, 4)),
    ((3, 2), (2, 1), ((1, 0), (0, 1)), (3, 7, 6, 2)),
    ((3, 3), (2, 2), ((1, 1), (1, 1)), (2, 10, 7, 1)),
]


def _grad(pool, x, weights):
  return jax.grad(lambda x_: jnp.sum(pool(x_) * weights))(x)


@pytest.mark.parametrize("window,strides,padding,shape", CASES)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_max_pool_equals_flax(window, strides, padding, shape, ties):
  rng = np.random.default_rng(0)
  x = rng.normal(size=shape).astype(np.float32)
  if ties:
    x = np.maximum(x, 0)  # After a ReLU: windows full of equal zeros.
  ours = lambda x_: pooling.max_pool(x_, window, strides, padding, algorithm="blocked")
  theirs = lambda x_: nn.max_pool(x_, window, strides=strides, padding=padding)
  np.testing.assert_array_equal(ours(x), theirs(x))
  weights = rng.normal(size=theirs(x).shape).astype(np.float32)
  np.testing.assert_allclose(jax.jit(lambda x_: _grad(ours, x_, weights))(x),
                             _grad(theirs, x, weights), rtol=1e-6, atol=1e-6)


def test_gradient_by_hand():
  """Each window's gradient goes to its largest input, the first one of equal values."""
  x = np.array([[1., 5., 2., 0.],
                [3., 5., 9., 9.],
                [4., 4., 4., 4.],
                [0., 1., 2., 3.]], np.float32)[None, :, :, None]
  # 3×3 windows, stride 2, padding 1: outputs (0,0) over rows/cols -1..1, (0,1) over -1..1 ×
  # 1..3, (1,0) over 1..3 × -1..1, (1,1) over 1..3 × 1..3.
  pooled = pooling.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)), algorithm="blocked")
  np.testing.assert_array_equal(pooled[0, :, :, 0], [[5., 9.], [5., 9.]])
  grad = jax.grad(lambda x_: jnp.sum(pooling.max_pool(
      x_, (3, 3), (2, 2), ((1, 1), (1, 1)), algorithm="blocked") * jnp.array(
          [[1., 10.], [100., 1000.]])[None, :, :, None]))(x)
  expected = np.zeros((4, 4), np.float32)
  expected[0, 1] = 1.  # (0,0): the 5 at row 0 comes before the 5 at row 1.
  expected[1, 2] = 10. + 1000.  # (0,1) and (1,1): the first 9, at column 2.
  expected[1, 1] = 100.  # (1,0): the 5 at row 1 (rows 1..3, columns 0..1).
  np.testing.assert_array_equal(grad[0, :, :, 0], expected)


def test_padding_never_wins():
  x = -np.arange(1, 17, dtype=np.float32).reshape(1, 4, 4, 1)  # All negative: -1 … -16.
  pooled = pooling.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)), algorithm="blocked")
  # Each window's top-left input inside the image (rows/columns 0 or 1) is its largest.
  np.testing.assert_array_equal(pooled[0, :, :, 0], [[-1., -2.], [-5., -6.]])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision(dtype):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), dtype)
  args = ((3, 3), (2, 2), ((1, 1), (1, 1)))
  ours = pooling.max_pool(x, *args, algorithm="blocked")
  assert ours.dtype == dtype
  np.testing.assert_array_equal(ours, nn.max_pool(x, args[0], strides=args[1], padding=args[2]))
  grad = jax.grad(lambda x_: jnp.sum(pooling.max_pool(x_, *args, algorithm="blocked")
                                     .astype(jnp.float32)))(x)
  ref = jax.grad(lambda x_: jnp.sum(nn.max_pool(x_, args[0], strides=args[1], padding=args[2])
                                    .astype(jnp.float32)))(x)
  assert grad.dtype == dtype
  np.testing.assert_array_equal(np.asarray(grad, np.float32), np.asarray(ref, np.float32))


def test_automatic_choice_per_platform():
  x = np.zeros((1, 6, 6, 2), np.float32)

  def pooled_grad(algorithm):
    return jax.grad(lambda x_: jnp.sum(pooling.max_pool(x_, (3, 3), (2, 2), ((1, 1), (1, 1)),
                                                        algorithm=algorithm)))

  # XLA's gradient of a max pool is a select_and_scatter; this module's is not. 'auto' is
  # this module's where the computation is lowered for the CPU, XLA's elsewhere.
  assert "select_and_scatter" in lowered_text(pooled_grad("native"), x)
  assert "select_and_scatter" not in lowered_text(pooled_grad("auto"), x)
  for platform in ("cuda", "tpu"):
    assert "select_and_scatter" in lowered_text(pooled_grad("auto"), x, platform=platform)
    assert "select_and_scatter" not in lowered_text(pooled_grad("blocked"), x,
                                                    platform=platform)
  with pytest.raises(ValueError, match="conv_algorithm='fast'"):
    pooling.max_pool(x, (3, 3), algorithm="fast")
