"""DropBlock against the paper's γ, an exact expected drop rate, and its block structure."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from bagtricks import state
from models.layers import DropBlock, drop_block_gamma


def _apply(x, rate, block_size, seed=0, deterministic=False):
  layer = DropBlock(block_size=block_size)
  return layer.apply({}, x, rate, deterministic=deterministic,
                     rngs={"dropout": jax.random.PRNGKey(seed)})


def test_gamma_is_the_paper_formula():
  # Eq. 1: γ = (1 − keep_prob)/block_size² · feat_size²/(feat_size − block_size + 1)².
  assert drop_block_gamma(0.1, 14, 14, 7) == pytest.approx(0.1 / 49 * 196 / 64)
  assert drop_block_gamma(0.1, 7, 7, 7) == pytest.approx(0.1 / 49 * 49)


def _expected_drop_rate(height, width, size, gamma):
  # Unit (i, j) survives iff none of the valid centres whose block covers it fires.
  covers = np.zeros((height, width))
  lo, hi = size // 2, (size - 1) // 2
  for cy in range(lo, height - hi):
    for cx in range(lo, width - hi):
      covers[cy - lo:cy + hi + 1, cx - lo:cx + hi + 1] += 1
  return float(np.mean(1 - (1 - gamma)**covers))


@pytest.mark.parametrize("size,block", [(32, 7), (14, 7), (16, 4)])
def test_measured_drop_rate_matches_target(size, block):
  # Enough maps for a few thousand blocks, so the rate is measured to about ±0.002.
  x = jnp.ones((128, size, size, 32))
  out = np.asarray(jax.jit(lambda v: _apply(v, 0.1, block))(x))
  measured = float(np.mean(out == 0))
  gamma = drop_block_gamma(0.1, size, size, block)
  # Exactly the expected rate (overlapping blocks make it a little under the target) ...
  assert measured == pytest.approx(_expected_drop_rate(size, size, block, gamma), abs=0.007)
  # ... and within tolerance of the target keep_prob = 0.9.
  assert measured == pytest.approx(0.1, abs=0.025)


def test_dropped_units_form_whole_blocks_inside_the_map():
  size, block = 20, 5
  out = np.asarray(_apply(jnp.ones((4, size, size, 3)), 0.05, block, seed=3))
  zero = out == 0
  assert zero.any()
  for b in range(4):
    for c in range(3):
      z = zero[b, :, :, c]
      # Every dropped unit lies in some all-dropped block × block window inside the map.
      full = np.zeros_like(z)
      for y in range(size - block + 1):
        for x in range(size - block + 1):
          if z[y:y + block, x:x + block].all():
            full[y:y + block, x:x + block] = True
      np.testing.assert_array_equal(full, z)


def test_rescaling_preserves_the_sum_and_eval_is_identity():
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 12, 12, 8)) + 1.0
  ones = np.asarray(_apply(jnp.ones_like(x), 0.2, 3))
  kept = ones != 0
  # Kept units are scaled by (number of units)/(number kept), so a map of ones keeps its sum.
  assert ones.sum() == pytest.approx(ones.size, rel=1e-5)
  np.testing.assert_allclose(ones[kept], ones.size / kept.sum(), rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(_apply(x, 0.2, 3, deterministic=True)),
                                np.asarray(x))
  np.testing.assert_array_equal(np.asarray(_apply(x, 0.0, 3)), np.asarray(x))
  # A traced rate of 0 (the start of the schedule inside a jitted step) is exact too.
  np.testing.assert_array_equal(np.asarray(jax.jit(lambda r: _apply(x, r, 3))(0.0)),
                                np.asarray(x))


@pytest.mark.slow
def test_resnet_drop_block_in_stages_3_and_4_only():
  kwargs = dict(num_classes=10, width_multiplier=0.125, small_stem=True)
  plain = models.create_model("resnet18d", **kwargs)
  dropping = models.create_model("resnet18d", drop_block_rate=0.1, drop_block_size=3,
                                 **kwargs)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
  variables = state.init_variables(plain, jax.random.PRNGKey(1), x, train=False)
  # DropBlock has no parameters or statistics of its own.
  shapes = lambda model: jax.eval_shape(lambda: model.init(jax.random.PRNGKey(1), x,
                                                           train=False))
  assert jax.tree_util.tree_structure(shapes(plain)) == jax.tree_util.tree_structure(
      shapes(dropping))

  @jax.jit
  def train_logits(rate):
    out, state = dropping.apply(variables, x, train=True, drop_block_rate=rate,
                                mutable=["batch_stats", "intermediates"],
                                rngs={"dropout": jax.random.PRNGKey(2)},
                                capture_intermediates=lambda m, _: isinstance(m, DropBlock))
    return out, state["intermediates"]

  reference, _ = jax.jit(lambda v: plain.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables)
  # At rate 0 (the start of its schedule) it changes nothing; later it does. Each layer is
  # exact at rate 0 (above); the two networks are compiled as different programs, whose
  # float32 sums XLA may fuse and order differently (1.3e-6 apart on one CPU), hence 1e-5.
  logits, dropped = train_logits(0.0)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(reference), rtol=1e-5, atol=1e-5)
  logits, dropped = train_logits(0.3)
  assert not np.allclose(np.asarray(logits), np.asarray(reference))
  # The DropBlock layers sit in the blocks of stages 3 and 4 only.
  paths = [jax.tree_util.keystr(path)
           for path, _ in jax.tree_util.tree_flatten_with_path(dropped)[0]]
  assert paths and {p.split("'")[1][:6] for p in paths} == {"stage3", "stage4"}
