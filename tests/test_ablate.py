"""The ablation runner: cumulative settings through the train loop, its table and plot."""

import json
import os
import subprocess
import sys

import pytest

from bagtricks.studies import ablate
from configs import default
from conftest import REPO


def test_steps_are_cumulative():
  config = default.get_config()
  for name in ("baseline", "resnet_d", "cosine", "label_smoothing", "mixup", "gridmask"):
    ablate.STEPS[name][1](config)
  assert config.model.name == "resnet18d" and config.schedule.name == "cosine"
  assert config.label_smoothing == 0.1 and config.augment.mixup_alpha == 0.2
  assert config.augment.gridmask.prob == 0.8 and config.augment.gridmask.d_max == 8
  baseline = default.get_config()
  ablate.STEPS["baseline"][1](baseline)
  assert baseline.model.name == "resnet18" and baseline.schedule.name == "step"
  assert tuple(baseline.schedule.decay_epochs) == (10, 20, 30)  # 30/60/90 of 120, scaled.


def test_markdown_table_deltas():
  rows = [{"step": "baseline", "label": "A", "accuracies": [90.0], "accuracy": 90.0, "std": 0.0,
           "ema_accuracy": None, "images_per_second": 100.0, "train_seconds": 1.0},
          {"step": "cosine", "label": "B", "accuracies": [92.5], "accuracy": 92.5, "std": 0.0,
           "ema_accuracy": None, "images_per_second": 90.0, "train_seconds": 1.0},
          {"step": "mixup", "label": "C", "accuracies": [92.0], "accuracy": 92.0, "std": 0.0,
           "ema_accuracy": None, "images_per_second": 80.0, "train_seconds": 1.0}]
  lines = ablate.markdown_table(rows).splitlines()
  assert lines[3].split(" | ")[2:5] == ["92.50", "+2.50", "+2.50"]
  assert lines[4].split(" | ")[2:5] == ["92.00", "-0.50", "+2.00"]
  assert lines[4].endswith("| 79.29 |")  # The paper's Table 6 value for the same step.


def test_unknown_step_is_refused():
  with pytest.raises(ablate.AblationError, match="unknown names"):
    ablate.run_ablation(default.get_config(), ["baseline", "autoaugment"], "/nonexistent",
                        [0], "resnet34d")


@pytest.mark.slow
def test_ablation_cli_on_digits(digits_data_dir, tmp_path):
  workdir = tmp_path / "ablate"
  cmd = [sys.executable, "-m", "bagtricks.studies.ablate", f"--workdir={workdir}",
         "--steps=baseline,distill", "--teacher_model=resnet18",
         "--teacher_width=0.25", "--eval_every_epochs=0.5",
         f"--config.dataset.data_dir={digits_data_dir}", "--config.model.width_multiplier=0.125",
         "--config.batch_size=64", "--config.num_epochs=1",
         "--config.schedule.warmup_epochs=0.2", "--config.log_every_steps=5"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = (workdir / "ablation.md").read_text()
  assert table in proc.stdout
  for label in ("ResNet (v1), step decay", "+ distillation"):
    assert label in table
  assert "Teacher for distillation: resnet18" in table
  png = (workdir / "ablation.png").read_bytes()
  assert png.startswith(b"\x89PNG") and len(png) > 10_000
  rows = json.loads((workdir / "ablation.json").read_text())
  assert [r["step"] for r in rows] == ["baseline", "distill"]
  # Each setting is its own run of the one train loop; the teacher is a run too.
  for name in ("00_baseline", "01_distill", "teacher"):
    with open(workdir / name / "summary.json") as f:
      assert json.load(f)["steps"] == 22
  with open(workdir / "01_distill" / "config.json") as f:
    config = json.load(f)
  assert config["distill"]["enabled"] and config["distill"]["teacher_workdir"] == str(
      workdir / "teacher")
  assert config["model"]["name"] == "resnet18" and config["schedule"]["name"] == "step"
  with open(workdir / "teacher" / "config.json") as f:
    assert json.load(f)["model"]["width_multiplier"] == 0.25

  # Run again: every finished run is reused, nothing is trained, the table is the same.
  mtime = os.path.getmtime(workdir / "01_distill" / "metrics.jsonl")
  again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "has finished; its records are left as they are" in again.stderr
  assert os.path.getmtime(workdir / "01_distill" / "metrics.jsonl") == mtime
  assert (workdir / "ablation.md").read_text() == table
