"""Tests for models/regnet.py: the design-space generator, the presets, SE and the sampler.

Parameter counts and FLOPs of the presets are timm 1.0.31's (`timm.create_model(name)` with
random weights; FLOPs counted by forward hooks on its convs and linears at 224x224).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from bagtricks.state import run_once
from models import regnet

def _param_count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def test_block_widths_follow_eqs_2_to_4_computed_by_hand():
  # RegNetX-200MF: d = 13, w0 = 24, wa = 36.44, wm = 2.49 (the paper's Table 11 / pycls).
  expected = []
  for j in range(13):
    u = 24 + 36.44 * j
    s = round(math.log(u / 24) / math.log(2.49))
    expected.append(int(round(24 * 2.49**s / 8) * 8))
  assert regnet.block_widths(13, 24, 36.44, 2.49) == expected
  stages = regnet.stage_specs(regnet.PRESETS['regnetx_002'])
  # pycls' published RegNetX-200MF: widths 24, 56, 152, 368; depths 1, 1, 4, 7; g = 8.
  assert [s.width for s in stages] == [24, 56, 152, 368]
  assert [s.depth for s in stages] == [1, 1, 4, 7]
  assert {s.group_width for s in stages} == {8}


def test_compatibility_adjustment_by_hand():
  # w = 100, b = 4: w_b = 25; g = 8 fits, w_b → round(25 / 8) · 8 = 24; w = 96.
  assert regnet.compatible_widths(100, 4.0, 8) == (96, 8, 24)
  # A group wider than the bottleneck shrinks to it: w_b = 24, g = min(32, 24) = 24.
  assert regnet.compatible_widths(48, 2.0, 32) == (48, 24, 24)
  # Already compatible: unchanged.
  assert regnet.compatible_widths(152, 1.0, 8) == (152, 8, 152)


_TIMM_COUNTS = {  # name: (parameters, multiply-adds at 224x224, 1000 classes).
    'regnetx_002': (2_684_792, 199_040_872),
    'regnetx_004': (5_157_512, 397_678_568),
    'regnetx_006': (6_196_040, 600_891_112),
    'regnetx_008': (7_259_656, 799_700_712),
    'regnetx_016': (9_190_136, 1_602_850_792),
    'regnetx_032': (15_296_552, 3_176_622_952),
    'regnetx_040': (22_118_248, 3_964_499_816),
    'regnetx_064': (26_209_256, 6_460_292_264),
    'regnetx_080': (39_572_648, 7_995_133_416),
    'regnety_002': (3_162_996, 199_519_076),
    'regnety_004': (4_344_144, 401_849_056),
    'regnety_006': (6_055_160, 601_227_608),
    'regnety_008': (6_263_168, 797_183_328),
    'regnety_016': (11_202_430, 1_612_087_326),
    'regnety_032': (19_436_338, 3_176_496_162),
    'regnety_040': (20_646_656, 3_973_301_344),
    'regnety_064': (30_583_252, 6_355_221_876),
    'regnety_080': (39_180_068, 7_963_074_196),
}


@pytest.mark.parametrize('name', sorted(_TIMM_COUNTS))
def test_preset_parameter_count_and_flops_equal_timm(name):
  expected_params, expected_flops = _TIMM_COUNTS[name]
  model = models.create_model(name)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                             jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  assert _param_count(variables['params']) == expected_params
  assert regnet.flops(regnet.PRESETS[name]) == expected_flops
  # The name's digits are the paper's FLOPs in units of 10^8 (its regnetx_064 is 6.5 GF).
  assert abs(expected_flops / 1e8 - int(name[-3:])) < 1.0


def test_presets_are_registered_with_the_resnet_options():
  assert [n for n in models.MODEL_NAMES if n.startswith('regnet')] == list(
      regnet.MODEL_NAMES) + ['regnet']
  model = models.create_model('regnety_002', num_classes=10, norm='group', small_stem=True,
                              width_multiplier=0.25, drop_block_rate=0.1,
                              dtype=jnp.bfloat16, zero_init_last=False)
  assert (model.se_ratio, model.num_classes, model.norm) == (0.25, 10, 'group')
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                             jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32))
  assert 'batch_stats' not in variables  # GroupNorm.
  # Width 1/4: stem 32 → 8; stage widths scaled, then re-made multiples of the group width.
  assert variables['params']['stem_conv']['kernel'].shape == (3, 3, 1, 8)
  stages = model.stages()
  assert all(s.bottleneck_width % s.group_width == 0 for s in stages)
  logits = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, rngs={'dropout': jax.random.key(1)}),
      variables, jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32))
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  with pytest.raises(ValueError, match='wm=1.0 must be > 1'):
    regnet.RegNet(depth=4, w0=8, wa=8.0, wm=1.0, group_width=8)
  with pytest.raises(ValueError, match='regnetx_002'):
    regnet.create_model('regnetx_003')


def test_squeeze_excitation_matches_numpy():
  se = regnet.SqueezeExcitation(3, kernel_init=jax.nn.initializers.normal(1.0))
  x = np.random.default_rng(0).normal(size=(2, 4, 5, 6)).astype(np.float32)
  params = jax.tree.map(np.asarray, se.init(jax.random.key(0), x))['params']
  pooled = x.mean(axis=(1, 2))  # [batch, channels]
  hidden = np.maximum(pooled @ params['fc1']['kernel'] + params['fc1']['bias'], 0.0)
  gate = 1.0 / (1.0 + np.exp(-(hidden @ params['fc2']['kernel'] + params['fc2']['bias'])))
  expected = x * gate[:, None, None, :]
  np.testing.assert_allclose(np.asarray(se.apply({'params': params}, x)), expected,
                             rtol=1e-5, atol=1e-6)


def test_se_width_is_a_quarter_of_the_block_input_width():
  model = models.create_model('regnety_002')
  params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                          jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))['params']
  # Block inputs: stem 32 → stage 1 (24) → stage 2 (56) → stage 3 (152), ...
  assert params['stage1_block1']['se']['fc1']['kernel'].shape == (24, 8)
  assert params['stage2_block1']['se']['fc1']['kernel'].shape == (56, 6)
  assert params['stage3_block1']['se']['fc1']['kernel'].shape == (152, 14)
  assert params['stage3_block2']['se']['fc1']['kernel'].shape == (152, 38)


def test_tiny_regnet_runs_and_trains_batch_stats():
  model = regnet.RegNet(depth=3, w0=8, wa=8.0, wm=2.0, group_width=4, num_classes=5,
                        se_ratio=0.25, small_stem=True, stem_width=8)
  x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype(np.float32)
  variables = run_once(lambda x: model.init(jax.random.key(0), x, train=False), x)
  logits, state = run_once(
      lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']), variables, x)
  assert logits.shape == (4, 5) and np.all(np.isfinite(logits))
  # Small stem: stage 1 keeps the resolution, and its width equals the stem's (8), so its
  # first block needs no projection; stage 2 downsamples and widens.
  assert 'shortcut' not in variables['params']['stage1_block1']
  assert variables['params']['stage2_block1']['shortcut']['conv']['kernel'].shape == (1, 1, 8, 16)
  # BatchNorm's running mean moved towards the batch mean (momentum 0.9).
  assert not np.allclose(state['batch_stats']['stem_norm']['mean'], 0.0)


def test_sampler_keeps_valid_designs_within_the_flop_budget():
  space = regnet.DesignSpace(depth=(4, 12), w0=(8, 64), wa=(4.0, 64.0), wm=(1.5, 3.0),
                             group_widths=(2, 4, 8), bottleneck_ratios=(1.0, 2.0),
                             num_stages=(2, 3), flop_range=(2e6, 6e6), image_size=8,
                             num_classes=10, in_channels=1, small_stem=True, stem_width=16)
  sampled = regnet.sample_designs(space, 20, seed=3)
  assert len(sampled) == 20
  for design, cost in sampled:
    assert not design.problems()
    assert 4 <= design.depth <= 12 and design.w0 % 8 == 0
    assert len(regnet.stage_specs(design)) in (2, 3)
    assert 2e6 <= cost <= 6e6
    assert cost == regnet.flops(design, image_size=8, num_classes=10, in_channels=1,
                                small_stem=True, stem_width=16)
  assert [d for d, _ in regnet.sample_designs(space, 20, seed=3)] == [d for d, _ in sampled]
  assert len({d for d, _ in sampled}) > 15  # Random, not one design repeated.
  with pytest.raises(ValueError, match='widen the range'):
    regnet.sample_designs(regnet.DesignSpace(flop_range=(1.0, 2.0)), 1, max_draws=200)


def test_flops_count_a_tiny_network_by_hand():
  # d = 1, w0 = 8: one stage, one block of width 8, g = 8 → 1 group; 4x4 input, stem 8.
  design = regnet.RegNetDesign(depth=1, w0=8, wa=0.0, wm=2.0, group_width=8)
  stem = 9 * 3 * 8 * 2 * 2          # 3x3 stride 2: 4x4 → 2x2.
  conv1 = 8 * 8 * 2 * 2             # 1x1 at the block input resolution.
  conv2 = 9 * 8 * 8 * 1 * 1         # 3x3 stride 2: 2x2 → 1x1, one group of 8.
  conv3 = 8 * 8 * 1 * 1
  shortcut = 8 * 8 * 1 * 1          # Stride 2: a projection.
  head = 8 * 10 + 10
  assert regnet.flops(design, image_size=4, num_classes=10, stem_width=8) == (
      stem + conv1 + conv2 + conv3 + shortcut + head)
  # The small stem keeps the 4x4 resolution through the stem and stage 1.
  small = 9 * 3 * 8 * 4 * 4 + 8 * 8 * 4 * 4 + 9 * 8 * 8 * 4 * 4 + 8 * 8 * 4 * 4 + head
  assert regnet.flops(design, image_size=4, num_classes=10, stem_width=8,
                      small_stem=True) == small  # No projection: same width, stride 1.
