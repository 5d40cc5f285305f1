"""The design-space runner: sampled RegNets through the train loop, their EDF, table and plot."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bagtricks import validate
from bagtricks.studies import design_space
from configs import regnet_space_digits
from conftest import REPO


def test_edf_counts_errors_strictly_below_each_point():
  errors = [3.0, 1.0, 2.0, 2.0]
  # F(e) = (1/n) #{i : e_i < e}, by hand.
  np.testing.assert_allclose(design_space.edf(errors, np.array([0.5, 1.0, 1.5, 2.5, 3.5])),
                             [0.0, 0.0, 0.25, 0.75, 1.0])


def test_spaces_come_from_the_config_and_unknown_names_are_refused():
  config = regnet_space_digits.get_config()
  space_x = design_space.design_space_of(config, "RegNetX")
  space_y = design_space.design_space_of(config, "RegNetY")
  assert (space_x.se_ratio, space_y.se_ratio) == (0.0, 0.25)
  assert (space_x.image_size, space_x.in_channels, space_x.small_stem) == (8, 1, True)
  with pytest.raises(design_space.DesignSpaceError, match="RegNetZ.*RegNetX"):
    design_space.design_space_of(config, "RegNetZ")
  config.model.name = "resnet18d"
  with pytest.raises(design_space.DesignSpaceError, match="model.name='regnet'"):
    design_space.run_design_space(config, "/nonexistent")


def test_generic_regnet_config_is_checked_field_by_field():
  config = regnet_space_digits.get_config()
  validate.validate_config(config, num_local_devices=1)
  config.model.wm = 1.0
  config.model.w0 = 12
  with pytest.raises(validate.ConfigError) as error:
    validate.validate_config(config, num_local_devices=1)
  assert "config.model.wm=1.0 must be > 1" in str(error.value)
  assert "config.model.w0=12 must be a positive multiple of 8" in str(error.value)
  # The presets take the default digits config's ResNet options as they are.
  from configs import default  # pylint: disable=import-outside-toplevel
  preset = default.get_config()
  preset.model.name = "regnety_002"
  validate.validate_config(preset, num_local_devices=1)


@pytest.mark.slow
def test_design_space_cli_on_digits(digits_data_dir, tmp_path):
  workdir = tmp_path / "space"
  cmd = [sys.executable, "-m", "bagtricks.studies.design_space", f"--workdir={workdir}",
         f"--config.dataset.data_dir={digits_data_dir}", "--config.design_space.num_models=1",
         "--config.design_space.spaces=RegNetX", "--config.num_epochs=1",
         "--config.schedule.warmup_epochs=0.2", "--config.batch_size=64"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = (workdir / "design_space.md").read_text()
  assert table in proc.stdout and "| RegNetX | 1 |" in table
  rows = json.loads((workdir / "design_space.json").read_text())
  assert len(rows) == 1 and rows[0]["space"] == "RegNetX"
  low, high = regnet_space_digits.get_config().design_space.flop_range
  assert low <= rows[0]["flops"] <= high
  # The sampled design was trained by the one train loop, as the generic 'regnet' model.
  with open(workdir / "RegNetX_00" / "config.json") as f:
    run_config = json.load(f)
  assert run_config["model"]["name"] == "regnet"
  assert run_config["model"]["depth"] == rows[0]["design"]["depth"]
  with open(workdir / "RegNetX_00" / "summary.json") as f:
    assert 100 * (1 - json.load(f)["test_accuracy"]) == pytest.approx(rows[0]["error"])
  png = (workdir / "edf.png").read_bytes()
  assert png.startswith(b"\x89PNG") and len(png) > 10_000
  assert os.path.getsize(workdir / "design_space.md") > 0
