"""Two processes × 4 CPU devices, coordinated by jax.distributed, train one model together."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO
from test_train import TINY_FLAGS

# The first 320 train digits: each process reads 160, 5 batches of its 32, for the tiny
# config's 3 epochs (a step across processes costs about a second here: every gradient
# all-reduce crosses them).
TRAIN_SPLIT = "train[:320]"
TOTAL_STEPS = 15


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["pmap", "shard_map"])
def test_two_processes_train_one_model(digits_data_dir, tmp_path, backend):
  port = _free_port()
  workdir = tmp_path / "run"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  procs = []
  for process_id in range(2):
    cmd = [sys.executable, os.path.join(REPO, "train.py"), f"--workdir={workdir}",
           f"--config.dataset.data_dir={digits_data_dir}", *TINY_FLAGS,
           f"--config.parallel={backend}", f"--config.dataset.train_split={TRAIN_SPLIT}",
           "--config.distributed.enabled=True",
           f"--config.distributed.coordinator_address=localhost:{port}",
           "--config.distributed.num_processes=2",
           f"--config.distributed.process_id={process_id}"]
    procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  results = [p.communicate(timeout=900) for p in procs]
  for p, (_, err) in zip(procs, results):
    assert p.returncode == 0, err[-3000:]
  summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
  for summary in summaries:
    assert summary["devices"] == 8 and summary["steps"] == TOTAL_STEPS
    # Each process evaluated its half; the psum over 8 devices counts all 360 once.
    assert summary["test_examples"] == 360
  assert summaries[0]["test_accuracy"] == summaries[1]["test_accuracy"]
  # Only process 0 writes the summary and metrics; the checkpoint is written once.
  with open(workdir / "summary.json") as f:
    assert json.load(f) == summaries[0]
  manager = ocp.CheckpointManager(str(workdir / "checkpoints"))
  assert manager.latest_step() == TOTAL_STEPS
  state = manager.restore(TOTAL_STEPS, args=ocp.args.StandardRestore())
  manager.close()
  assert int(np.asarray(state["step"])) == TOTAL_STEPS
