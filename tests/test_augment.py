"""Batch augmentations against closed forms and NumPy ports of the papers' reference code."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bagtricks import augment, steps
from bagtricks.parallel import AXIS_NAME, DataParallel
from configs import default


def _distinct_images(batch, size=8, channels=1):
  # Image i is the constant i + 1, so a pixel tells which image it came from.
  values = np.arange(1, batch + 1, dtype=np.float32)[:, None, None, None]
  return jnp.asarray(np.broadcast_to(values, (batch, size, size, channels)))


def _one_hot(batch, classes=10):
  return jnp.asarray(np.eye(classes, dtype=np.float32)[np.arange(batch) % classes])


@pytest.mark.parametrize("seed", range(5))
def test_mixup_mixes_with_reversed_batch(seed):
  images, targets = _distinct_images(6), _one_hot(6)
  mixed, mixed_targets, lam = jax.jit(augment.mixup, static_argnums=3)(
      jax.random.PRNGKey(seed), images, targets, 0.2)
  lam = float(lam)
  x, y = np.asarray(images), np.asarray(targets)
  np.testing.assert_allclose(np.asarray(mixed), lam * x + (1 - lam) * x[::-1], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(mixed_targets), lam * y + (1 - lam) * y[::-1],
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(mixed_targets).sum(-1), 1.0, rtol=1e-6)


def test_mixup_lambda_follows_beta():
  # Beta(α, α) has mean 1/2 and variance 1/(4(2α + 1)): 0.1786 for α = 0.2.
  keys = jax.random.split(jax.random.PRNGKey(0), 400)
  lams = np.asarray(jax.vmap(lambda k: augment.mixup(k, _distinct_images(2), _one_hot(2),
                                                     0.2)[2])(keys))
  assert abs(lams.mean() - 0.5) < 0.05
  assert abs(lams.var() - 1 / (4 * 1.4)) < 0.03


_jit_cutmix = jax.jit(lambda key, x, y: augment.cutmix(key, x, y, 1.0))


@pytest.mark.parametrize("seed", range(20))
def test_cutmix_lambda_is_fraction_of_own_pixels(seed):
  batch, size = 5, 16
  images, targets = _distinct_images(batch, size), _one_hot(batch)
  mixed, mixed_targets, lam = _jit_cutmix(jax.random.PRNGKey(seed), images, targets)
  mixed = np.asarray(mixed)[..., 0]
  lam = float(lam)
  for i in range(batch):
    if i == batch - 1 - i:
      continue  # The middle example is paired with itself.
    own = np.mean(mixed[i] == i + 1)
    assert own == pytest.approx(lam, abs=1e-6)
    # Everything else comes from the paired image, in one axis-aligned box.
    other = mixed[i] == batch - i
    assert np.all(mixed[i][~other] == i + 1)
    if other.any():
      rows, cols = np.where(other)
      assert other.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
  y = np.asarray(targets)
  np.testing.assert_allclose(np.asarray(mixed_targets), lam * y + (1 - lam) * y[::-1],
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(mixed_targets).sum(-1), 1.0, rtol=1e-6)


def test_cutmix_box_matches_reference_formula():
  # Reference code: cut = ⌊H·√(1 − λ)⌋, box [c − ⌊cut/2⌋, c + ⌊cut/2⌋) clipped to the image.
  lam = 0.37
  boxes = jax.vmap(lambda k: jnp.stack(augment.cutmix_box(k, 32, 20, jnp.float32(lam))))(
      jax.random.split(jax.random.PRNGKey(0), 50))
  for box in np.asarray(boxes):
    y1, y2, x1, x2 = (int(v) for v in box)
    cut_h, cut_w = int(32 * math.sqrt(1 - lam)), int(20 * math.sqrt(1 - lam))
    candidates_y = {(min(max(c - cut_h // 2, 0), 32), min(max(c + cut_h // 2, 0), 32))
                    for c in range(32)}
    candidates_x = {(min(max(c - cut_w // 2, 0), 20), min(max(c + cut_w // 2, 0), 20))
                    for c in range(20)}
    assert (y1, y2) in candidates_y and (x1, x2) in candidates_x


def _np_cutout_hole(height, width, cy, cx, size):
  mask = np.ones((height, width), np.float32)
  y1, x1 = cy - size // 2, cx - size // 2
  mask[max(y1, 0):max(min(y1 + size, height), 0), max(x1, 0):max(min(x1 + size, width), 0)] = 0
  return mask


def test_cutout_single_hole_is_a_clipped_square():
  height, width, size = 12, 10, 4
  references = [_np_cutout_hole(height, width, cy, cx, size)
                for cy in range(height) for cx in range(width)]
  masks = jax.vmap(lambda k: augment.cutout_mask(k, height, width, 1, size))(
      jax.random.split(jax.random.PRNGKey(0), 30))
  for mask in np.asarray(masks):
    assert any(np.array_equal(mask, ref) for ref in references)


def test_cutout_mean_hole_area_matches_closed_form():
  # With the centre uniform, E[area] = E[clipped rows]·E[clipped cols] (independent axes).
  height, width, size = 12, 10, 6
  def mean_len(n):
    return np.mean([min(c - size // 2 + size, n) - max(c - size // 2, 0) for c in range(n)])
  expected = mean_len(height) * mean_len(width)
  images = jnp.ones((4000, height, width, 1))
  out = np.asarray(augment.cutout(jax.random.PRNGKey(0), images, 1, size))
  measured = (out == 0).sum(axis=(1, 2, 3)).mean()
  assert measured == pytest.approx(expected, rel=0.03)


def test_cutout_holes_zero_every_channel_and_keep_the_rest():
  images = jax.random.normal(jax.random.PRNGKey(1), (8, 16, 16, 3)) + 10.0
  out = np.asarray(augment.cutout(jax.random.PRNGKey(2), images, 2, 5))
  zero = out == 0
  assert np.all(zero.all(-1) == zero.any(-1))
  np.testing.assert_array_equal(out[~zero], np.asarray(images)[~zero])
  assert 0 < zero[..., 0].sum(axis=(1, 2)).min() and zero[..., 0].sum(axis=(1, 2)).max() <= 50


def _np_official_gridmask(height, width, d, ratio, st_h, st_w):
  """The official GridMask code (mode=1, no rotation), ported loop for loop to NumPy."""
  hh = math.ceil(math.sqrt(height * height + width * width))
  length = math.ceil(d * ratio)
  mask = np.ones((hh, hh), np.float32)
  for i in range(-1, hh // d + 1):
    s, t = d * i + st_h, d * i + st_h + length
    mask[max(min(s, hh), 0):max(min(t, hh), 0), :] *= 0
  for i in range(-1, hh // d + 1):
    s, t = d * i + st_w, d * i + st_w + length
    mask[:, max(min(s, hh), 0):max(min(t, hh), 0)] *= 0
  mask = mask[(hh - height) // 2:(hh - height) // 2 + height,
              (hh - width) // 2:(hh - width) // 2 + width]
  return 1 - mask


def test_gridmask_equals_official_code():
  height, width, d_min, d_max, ratio = 20, 14, 4, 9, 0.6
  references = {(d, sh, sw): _np_official_gridmask(height, width, d, ratio, sh, sw)
                for d in range(d_min, d_max) for sh in range(d) for sw in range(d)}
  masks = jax.vmap(lambda k: augment.gridmask_mask(k, height, width, d_min, d_max, ratio))(
      jax.random.split(jax.random.PRNGKey(0), 25))
  for mask in np.asarray(masks):
    assert any(np.array_equal(mask, ref) for ref in references.values())


@pytest.mark.parametrize("d,ratio", [(6, 0.6), (8, 0.5), (4, 0.3)])
def test_gridmask_removed_count_closed_form(d, ratio):
  # An image of n×n whole units loses n² squares of side d − ⌈r·d⌉, whatever the offsets.
  n = 4
  images = jnp.ones((16, n * d, n * d, 1))
  out = np.asarray(jax.jit(lambda k, x: augment.gridmask(k, x, d, d + 1, ratio, prob=1.0))(
      jax.random.PRNGKey(d), images))
  removed = (out == 0).sum(axis=(1, 2, 3))
  np.testing.assert_array_equal(removed, (n * (d - math.ceil(ratio * d)))**2)


def test_gridmask_rotation_keeps_the_unit_ratio():
  # Rotated, a large image still keeps about 1 − (1 − l/d)² of its pixels.
  d, ratio = 10, 0.6
  out = np.asarray(jax.jit(lambda k, x: augment.gridmask(k, x, d, d + 1, ratio, prob=1.0,
                                                        max_rotation=360))(
      jax.random.PRNGKey(0), jnp.ones((32, 100, 100, 1))))
  assert (out == 1).mean() == pytest.approx(1 - (1 - 6 / 10)**2, abs=0.02)
  assert not np.array_equal(out[0], out[1])


def test_gridmask_probability_and_ramp():
  images = jnp.ones((2000, 8, 8, 1))
  out = np.asarray(jax.jit(lambda k, x: augment.gridmask(k, x, 3, 8, 0.6, prob=0.8))(
      jax.random.PRNGKey(3), images))
  masked = (out == 0).any(axis=(1, 2, 3))
  assert masked.mean() == pytest.approx(0.8, abs=0.03)
  aug = augment.BatchAugment(gridmask_prob=0.8, gridmask_ramp_steps=100)
  assert float(aug.gridmask_prob_at(0)) == 0.0
  assert float(aug.gridmask_prob_at(50)) == pytest.approx(0.4)
  assert float(aug.gridmask_prob_at(300)) == pytest.approx(0.8)


def test_batch_augment_same_key_same_output_and_mix_switch_off():
  aug = augment.BatchAugment(mixup_alpha=0.2, cutmix_alpha=1.0, cutmix_prob=0.5,
                             mix_until_step=10, cutout_holes=1, cutout_size=3,
                             gridmask_prob=0.5, gridmask_d_min=3, gridmask_d_max=6)
  images = jax.random.normal(jax.random.PRNGKey(0), (6, 8, 8, 1))
  targets = _one_hot(6)
  key = jax.random.PRNGKey(7)
  run = jax.jit(aug)
  a = run(key, jnp.int32(3), images, targets)
  b = run(key, jnp.int32(3), images, targets)
  c = run(jax.random.PRNGKey(8), jnp.int32(3), images, targets)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
  assert not np.array_equal(np.asarray(a[1]), np.asarray(targets))  # Mixed before step 10.
  _, late_targets = run(key, jnp.int32(10), images, targets)
  np.testing.assert_array_equal(np.asarray(late_targets), np.asarray(targets))


def test_both_mixes_are_used():
  images, targets = _distinct_images(4, 16), _one_hot(4)
  kinds = set()
  mix = jax.jit(lambda key: augment.mixup_or_cutmix(key, images, targets, 0.4, 1.0, 0.5))
  for seed in range(30):
    mixed, _, lam = mix(jax.random.PRNGKey(seed))
    values = np.unique(np.asarray(mixed)[0])
    # CutMix copies pixels (only the values 1 and 4); mixup blends them (other values).
    kinds.add("cutmix" if set(values) <= {1.0, 4.0} else "mixup")
  assert kinds == {"cutmix", "mixup"}


def test_from_config_converts_epochs_to_steps():
  config = default.get_config()
  config.augment.mixup_alpha = 0.2
  config.augment.mix_off_epochs = 2
  config.augment.gridmask.prob = 0.8
  config.augment.gridmask.ramp_epochs = 5
  aug = augment.batch_augment_from_config(config.augment, steps_per_epoch=10, total_steps=400)
  assert aug.active and aug.mix_until_step == 380 and aug.gridmask_ramp_steps == 50
  assert not augment.batch_augment_from_config(default.get_config().augment, 10, 400).active


@pytest.mark.parametrize("backend", ["pmap", "shard_map"])
@pytest.mark.slow
def test_devices_draw_different_masks(backend):
  # Inside the data-parallel step each device augments with its own key (steps.step_rng):
  # identical inputs on 8 devices come out differently, each as a direct call with that key.
  assert jax.local_device_count() == 8
  aug = augment.BatchAugment(cutmix_alpha=1.0, cutout_holes=1, cutout_size=3)
  base, step = jax.random.PRNGKey(0), jnp.int32(5)
  images = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
  targets = _one_hot(4)

  def per_device(state, batch):
    key = steps.step_rng(state["rng"], state["step"], AXIS_NAME)
    out, _ = aug(key, state["step"], batch["image"], batch["target"])
    return jax.lax.all_gather(out, AXIS_NAME)

  dp = DataParallel(backend)
  compiled = dp.compile(per_device)
  batch = {"image": np.broadcast_to(np.asarray(images), (8,) + images.shape),
           "target": np.broadcast_to(np.asarray(targets), (8,) + targets.shape)}
  gathered = dp.unreplicate(compiled(dp.replicate({"rng": base, "step": step}),
                                     dp.shard_batch(batch)))
  outputs = [np.asarray(gathered[i]) for i in range(8)]
  assert len({o.tobytes() for o in outputs}) == 8
  run = jax.jit(aug)
  for i in (0, 5):
    key = jax.random.fold_in(jax.random.fold_in(base, step), i)
    np.testing.assert_allclose(outputs[i], np.asarray(run(key, step, images, targets)[0]),
                               rtol=1e-6)
