"""README's main command, as a user types it: the default digits job reaches ≥ 97 %."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_default_job_reaches_97_percent(digits_data_dir, tmp_path):
  # Exactly `python train.py` (one CPU device, the default config); only the output and data
  # directories point into the test's temporary space.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run(
      [sys.executable, "train.py", f"--workdir={tmp_path / 'run'}",
       f"--config.dataset.data_dir={digits_data_dir}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert summary["devices"] == 1 and summary["steps"] == 440
  assert summary["test_examples"] == 360
  assert summary["test_accuracy"] >= 0.97
  assert "step 440/440" in proc.stderr  # the progress lines
