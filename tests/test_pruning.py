"""Channel pruning of a ResNet trunk: rankings by hand, the rebuilt network against masking."""

import jax
import numpy as np
import pytest

from bagtricks import pruning, state
from models.ssd import SSD


def _tiny_ssd(**kwargs):
  return SSD(num_classes=3, width_multiplier=0.125, source_stages=(3, 4), extra_layers=0,
             **kwargs)


def test_rebuilt_network_equals_the_masked_one():
  images = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 1))
  model = _tiny_ssd()
  variables = state.init_variables(model, jax.random.PRNGKey(0), images)
  # Non-trivial statistics, so that a kept channel's normalization matters.
  stats = jax.tree_util.tree_map(lambda x: x + 0.3, variables["batch_stats"])
  params = variables["params"]
  trunk = params["trunk"]
  blocks = pruning.block_names(trunk)
  assert blocks[0] == "stage1_block1" and blocks[-1] == "stage4_block2" and len(blocks) == 8
  rng = np.random.default_rng(0)
  new_params, new_stats = dict(trunk), dict(stats["trunk"])
  masked = jax.tree_util.tree_map(np.array, params)
  widths = []
  for block in blocks:
    width = trunk[block]["conv1"]["kernel"].shape[-1]
    keep = np.sort(rng.choice(width, pruning.kept_channels(width, 0.5), replace=False))
    widths.append(len(keep))
    new_params, new_stats = pruning.prune_block(new_params, new_stats, block, keep)
    dropped = np.setdiff1d(np.arange(width), keep)
    for k in ("scale", "bias"):  # A dropped channel outputs relu(0) = 0 to conv2.
      masked["trunk"][block]["norm1"][k][dropped] = 0.0
  pruned = _tiny_ssd(inner_widths=tuple(widths))
  assert pruning.inner_widths(new_params) == tuple(widths)
  # Jitted: op by op, every layer's ops are compiled one by one.
  got = jax.jit(pruned.apply)({"params": {**params, "trunk": new_params},
                               "batch_stats": {**stats, "trunk": new_stats}}, images)
  expected = jax.jit(model.apply)({"params": masked, "batch_stats": stats}, images)
  for k in ("class_logits", "offsets"):
    np.testing.assert_allclose(got[k], expected[k], rtol=1e-4, atol=1e-5)
  count = lambda p: sum(x.size for x in jax.tree_util.tree_leaves(p))
  assert count(new_params) < count(trunk)


def test_l1_ranking_and_counts_by_hand():
  kernel = np.zeros((3, 3, 2, 4), np.float32)
  kernel[..., 0] = -1.0  # s_0 = 18
  kernel[0, 0, 0, 1] = 5.0  # s_1 = 5
  kernel[..., 3] = 0.5  # s_3 = 9
  trunk = {"stage1_block1": {"conv1": {"kernel": kernel}}, "stem_conv1": {}}
  np.testing.assert_allclose(pruning.l1_ranking(trunk, "stage1_block1"), [18, 5, 0, 9])
  np.testing.assert_array_equal(pruning.top_channels(pruning.l1_ranking(
      trunk, "stage1_block1"), 2), [0, 3])
  assert pruning.kept_channels(10, 0.3) == 7 and pruning.kept_channels(3, 0.9) == 1
  with pytest.raises(ValueError, match=r"the pruned fraction 1.0 must be in \(0, 1\)"):
    pruning.kept_channels(10, 1.0)
  known = pruning.blocks_of((1, 2))
  assert known == ("stage1_block1", "stage2_block1", "stage2_block2")
  assert pruning.stage_of("stage2_block1") == 2
  assert pruning.block_problems(["stage1_block1", "stage9_block1"], known) == [
      "layer 'stage9_block1' is not a prunable block; the trunk's are "
      "('stage1_block1', 'stage2_block1', 'stage2_block2')."]
