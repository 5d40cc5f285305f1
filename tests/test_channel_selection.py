"""DCP / LCP channel selection: sampled boxes and the auxiliary loss by hand and against NumPy,
the greedy selection on a block whose dead channels it must leave, the study's checks."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bagtricks import boxes, channel_selection, pruning, state
from models.ssd import SSD


def test_sampled_boxes_by_hand():
  anchors = jnp.asarray([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.5, 0.5, 1.0],
                         [0.05, 0.0, 0.5, 0.55]])
  gt = jnp.asarray([[0.0, 0.0, 0.5, 0.6], [0.0, 0.0, 0.0, 0.0]])
  got = channel_selection.image_samples(jax.random.PRNGKey(0), anchors, gt,
                                        jnp.asarray([4, 0]), jnp.asarray([True, False]),
                                        0.5, positives=3, negatives=2)
  # Anchors 0 and 3 match the box (IoU 0.83, 0.82); the third positive row is padding.
  assert got["positive"].tolist()[:2] == [True, True] and not got["valid"][2]
  np.testing.assert_allclose(np.sort(got["default"][:2, 0]), [0.0, 0.05])
  np.testing.assert_array_equal(got["label"], [5, 5, 0, 0, 0])
  # The context of a positive encloses its default box and its ground truth.
  row = int(np.argmax(np.asarray(got["default"][:2, 0])))  # Anchor 3.
  np.testing.assert_allclose(got["context"][row], [0.0, 0.0, 0.5, 0.6])
  # The negatives are the unmatched anchors 1 and 2, their own context.
  np.testing.assert_allclose(np.sort(got["default"][3:, 1]), [0.5, 0.5])
  np.testing.assert_allclose(got["context"][3:], got["default"][3:])
  assert got["valid"][3:].all()


def _numpy_auxiliary_loss(logits, offsets, s, localization):
  total, count = 0.0, max(int(s["positive"].sum()), 1)
  for b in range(logits.shape[0]):
    for k in range(logits.shape[1]):
      z = logits[b, k] - logits[b, k].max()
      log_p = z - np.log(np.exp(z).sum())
      if s["valid"][b, k]:
        total -= log_p[s["label"][b, k]]
      if localization and s["positive"][b, k]:
        d, t = s["default"][b, k], s["truth"][b, k]
        dw, dh = d[2] - d[0], d[3] - d[1]
        cx = (d[0] + d[2]) / 2 + offsets[b, k, 0] * 0.1 * dw
        cy = (d[1] + d[3]) / 2 + offsets[b, k, 1] * 0.1 * dh
        w, h = dw * np.exp(0.2 * offsets[b, k, 2]), dh * np.exp(0.2 * offsets[b, k, 3])
        p = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        iw = max(0.0, min(p[2], t[2]) - max(p[0], t[0]))
        ih = max(0.0, min(p[3], t[3]) - max(p[1], t[1]))
        union = w * h + (t[2] - t[0]) * (t[3] - t[1]) - iw * ih
        hull = (max(p[2], t[2]) - min(p[0], t[0])) * (max(p[3], t[3]) - min(p[1], t[1]))
        total += 1.0 - (iw * ih / union - (hull - union) / hull)
  return total / count


@pytest.mark.parametrize("localization", [False, True])
def test_auxiliary_loss_against_numpy(localization):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 4)).astype(np.float32)
  offsets = rng.normal(scale=0.5, size=(2, 5, 4)).astype(np.float32)
  low = rng.uniform(0.0, 0.5, (2, 5, 2))
  samples = {"default": np.concatenate([low, low + rng.uniform(0.1, 0.4, (2, 5, 2))], -1),
             "truth": np.concatenate([low + 0.05, low + 0.3], -1),
             "label": rng.integers(0, 4, (2, 5)),
             "positive": np.asarray([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], bool),
             "valid": np.asarray([[1, 1, 1, 0, 1], [1, 0, 1, 1, 0]], bool)}
  got = channel_selection.auxiliary_loss(jnp.asarray(logits), jnp.asarray(offsets),
                                         {k: jnp.asarray(v) for k, v in samples.items()},
                                         localization)
  np.testing.assert_allclose(got, _numpy_auxiliary_loss(logits, offsets, samples,
                                                        localization), rtol=1e-5)


def _detector_with_dead_channels(dead):
  """A tiny SSD whose first block's ``dead`` inner channels output 0 (conv1 filters zero),
  its residual branches switched on (norm2 scale 1 instead of the zero init)."""
  model = SSD(num_classes=3, width_multiplier=0.125, source_stages=(1, 2), extra_layers=0)
  images = jax.random.uniform(jax.random.PRNGKey(1), (8, 32, 32, 1))
  variables = jax.tree_util.tree_map(np.array, state.init_variables(
      model, jax.random.PRNGKey(0), images))
  trunk = variables["params"]["trunk"]
  for block in pruning.block_names(trunk):
    trunk[block]["norm2"]["scale"][:] = 1.0
  trunk["stage1_block1"]["conv1"]["kernel"][..., dead] = 0.0
  gt = np.tile(np.asarray([[0.1, 0.1, 0.5, 0.5], [0.5, 0.4, 0.9, 0.9]], np.float32), (8, 1, 1))
  batch = {"image": np.asarray(images), "boxes": gt, "classes": np.ones((8, 2), np.int32),
           "valid": np.ones((8, 2), bool)}
  anchors = boxes.ssd_anchors(32, (1, 2), 0, False, (1.0, 2.0, 0.5), 0.2, 0.6)
  return model, variables, anchors, [batch]


@pytest.mark.parametrize("method", ["dcp", pytest.param("lcp", marks=pytest.mark.slow)])
def test_greedy_selection_keeps_the_live_channels(method):
  dead = [1, 3, 4, 6]
  model, variables, anchors, batches = _detector_with_dead_channels(dead)
  settings = channel_selection.SelectionSettings(aux_steps=30, rounds=2, steps_per_round=2,
                                                 positives=4, negatives=8)
  selector = channel_selection.Selector(model, variables, anchors, batches, method, settings)
  kept, params, history = selector.select(0.5, layers=("stage1_block1",))
  # A dead channel's ‖∂L/∂W_j‖ is 0, a live one's is not: the four live channels are kept.
  np.testing.assert_array_equal(kept["stage1_block1"], [0, 2, 5, 7])
  assert history[-1] < history[0]  # The auxiliary networks learned.
  kernel = np.asarray(params["stage1_block1"]["conv2"]["kernel"])
  assert not kernel[:, :, dead].any() and kernel[:, :, [0, 2, 5, 7]].any()
  # The other blocks are left whole.
  np.testing.assert_array_equal(params["stage2_block1"]["conv2"]["kernel"],
                                variables["params"]["trunk"]["stage2_block1"]["conv2"]["kernel"])


def _tiny_pruning_config():
  from configs import ssd_pruning_digits
  from test_detection import tiny_detection_config
  config = tiny_detection_config()
  config.pruning = ssd_pruning_digits.get_config().pruning
  p = config.pruning
  p.fractions = (0.5,)
  p.calibration_images, p.calibration_batch = 16, 8
  p.aux_steps, p.rounds, p.steps_per_round = 4, 2, 1
  p.positives, p.negatives = 4, 8
  p.finetune_epochs = 0.5
  return config


@pytest.mark.parametrize("field, value, message", [
    ("fractions", (0.5, 1.0), r"config.pruning.fractions holds 1.0; a pruned fraction must "
                              r"be in \(0, 1\)."),
    ("layers", ("stage1_block1", "stage2_block9"),
     r"config.pruning.layers holds 'stage2_block9' is not a prunable block; the trunk's are "
     r"\('stage1_block1', 'stage1_block2', 'stage2_block1'"),
    ("methods", ("l1", "lpc"), r"config.pruning.methods holds 'lpc', which is unknown"),
    ("seeds", (), r"config.pruning.seeds=\(\) must be one or more integers."),
])
def test_study_names_bad_pruning_fields(field, value, message):
  from bagtricks.studies import pruning_study
  config = _tiny_pruning_config()
  config.pruning[field] = value
  problems = pruning_study.check_pruning(config)
  assert len(problems) == 1 and re.match(message, problems[0]), problems


def test_study_table_gives_each_method_the_mean_and_spread_of_its_seeds():
  from bagtricks.studies import pruning_study
  costs = {"parameters": 1000, "flops": 2e6}
  rows = [dict(method="unpruned", fraction=0.0, mAP50=0.9, mAP75=0.7, before_finetuning=None,
               images_per_second=100.0, **costs)]
  rows += [dict(method="lcp", fraction=0.5, mAP50=m50, mAP75=m75, before_finetuning=b,
                images_per_second=s, **costs)
           for m50, m75, b, s in [(0.80, 0.60, 0.5, 150.0), (0.84, 0.66, 0.7, 170.0)]]
  lines = pruning_study.markdown_table(rows).splitlines()
  assert lines[2] == "| unpruned | 0 % | 1 | 90.00 | 70.00 | – | 1,000 | 2.0 | 100 |"
  # Two seeds: means 82 / 63 / 60 %, population standard deviations 2 / 3 / 10 points.
  assert lines[3] == ("| lcp | 50 % | 2 | 82.00 ± 2.00 | 63.00 ± 3.00 | 60.00 ± 10.00 | "
                      "1,000 | 2.0 | 160 |")


def test_study_compares_selections_method_against_method_and_seed_against_seed():
  from bagtricks.studies import pruning_study
  a = {"b1": [0, 1], "b2": [0, 1, 2, 3]}
  b = {"b1": [1, 2], "b2": [0, 1, 2, 5]}
  assert pruning_study.shared_channels(a, b) == pytest.approx(4 / 6)
  kept = {("dcp", 0): a, ("dcp", 1): b, ("lcp", 0): a, ("lcp", 1): {"b1": [3, 4],
                                                                   "b2": [4, 5, 6, 7]}}
  rows = [{"method": "unpruned", "fraction": 0.0, "seed": 0}]
  rows += [{"method": m, "fraction": 0.5, "seed": s, "kept": k} for (m, s), k in kept.items()]
  lines = pruning_study.overlap_table(rows).splitlines()
  # dcp/lcp same seed: 6/6 (seed 0) and 1/6 (seed 1); dcp's seeds 4/6; lcp's seeds 0/6.
  assert lines[2:] == ["| 50 % | dcp, seed against seed | 1 | 66.7 |",
                       "| 50 % | dcp against lcp, same seed | 2 | 58.3 |",
                       "| 50 % | lcp, seed against seed | 1 | 0.0 |"]


@pytest.mark.slow
def test_study_prunes_fine_tunes_and_reports(tmp_path):
  from bagtricks.studies import pruning_study
  config = _tiny_pruning_config()
  # DCP runs the same greedy selection as LCP with another auxiliary loss (tested above), and
  # two blocks of different stages exercise what every block does: each is compiled anew.
  config.pruning.methods = ("l1", "lcp")
  config.pruning.layers = ("stage1_block2", "stage3_block1")
  results = pruning_study.run_study(config, str(tmp_path))
  rows = {r["run"]: r for r in results["rows"]}
  assert list(rows) == ["unpruned", "l1_50_s0", "lcp_50_s0"]
  full = rows["unpruned"]
  blocks = pruning.blocks_of(config.model.stage_sizes)
  for name in ("l1_50_s0", "lcp_50_s0"):
    row = rows[name]
    # The named blocks keep half their inner channels: a smaller network, not a masked one.
    assert row["widths"] == [max(1, round(w / 2)) if block in config.pruning.layers else w
                             for block, w in zip(blocks, full_widths(config))]
    assert row["parameters"] < full["parameters"] and row["flops"] < full["flops"]
    assert 0.0 <= row["mAP50"] <= 1.0 and row["images_per_second"] > 0
    assert (tmp_path / name / "finetuned" / "summary.json").exists()
  table = pruning_study.markdown_table(results["rows"])
  assert table.count("\n") == 2 + 3 and "| lcp | 50 % | 1 |" in table
  pruning_study.plot(results, str(tmp_path / "pruning.png"))
  assert (tmp_path / "pruning.png").stat().st_size > 0
  # A second run reuses every selection and run.
  again = pruning_study.run_study(config, str(tmp_path))
  assert [r["mAP50"] for r in again["rows"]] == [r["mAP50"] for r in results["rows"]]


def full_widths(config):
  """The unpruned trunk's inner widths, from a freshly built detector."""
  import models
  from bagtricks import data
  info = data.get_source(config).info()
  model = models.create_model_from_config(config, info)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             info.example_batch()["image"]))["params"]
  return list(pruning.inner_widths(params["trunk"]))
