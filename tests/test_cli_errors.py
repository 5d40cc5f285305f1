"""What a user meets when something goes wrong, through the command line.

Every failure kind: one line on stderr that names the field or path, the exit status (2 for a
usage error, 1 for a diverged run), no traceback, and a workdir holding nothing broken (no
non-finite checkpoint, strict JSON, no step twice in ``metrics.jsonl``, no half-made
workdir). Also: a finished run rerun is left as it is, and the log holds the run's own lines.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO
from test_train import TINY_FLAGS, TOTAL_STEPS

# A log line of our own: absl's prefix, e.g. "I1130 11:58:09.214288 1406 train.py:250] ...".
_OWN_LOG_LINE = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+\.py:\d+\] ")


def _cli(cwd, *flags, data_dir=None, timeout=600):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "TF_CPP_MIN_LOG_LEVEL")}
  if data_dir:
    env["TFDS_DATA_DIR"] = str(data_dir)
  return subprocess.run([sys.executable, os.path.join(REPO, "train.py"), *flags], cwd=str(cwd),
                        env=env, capture_output=True, text=True, timeout=timeout)


def _one_error_line(proc, status):
  """The single ``error:`` line; every other stderr line is one of the run's own log lines."""
  assert proc.returncode == status, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  others = [l for l in proc.stderr.splitlines()
            if l.strip() and not l.startswith("error:") and not _OWN_LOG_LINE.match(l)]
  assert len(errors) == 1 and not others, proc.stderr[-3000:]
  return errors[0]


def _refuse(constant):
  raise ValueError(f"not strict JSON: {constant}")


def _strict_json_lines(path):
  with open(path) as f:
    return [json.loads(line, parse_constant=_refuse) for line in f if line.strip()]


def _checkpoints(workdir):
  manager = ocp.CheckpointManager(os.path.join(str(workdir), "checkpoints"))
  states = {s: manager.restore(s, args=ocp.args.StandardRestore())
            for s in manager.all_steps()}
  manager.close()
  return states


def _tree_bytes(path):
  # Every file but the workdir's lock, which each run that takes it rewrites.
  found = {}
  for root, _, files in os.walk(path):
    for name in files:
      if name == ".lock":
        continue
      with open(os.path.join(root, name), "rb") as f:
        found[os.path.relpath(os.path.join(root, name), path)] = f.read()
  return found


def _slow(*values):
  return pytest.param(*values, marks=pytest.mark.slow)


@pytest.fixture(scope="module")
def finished(digits_data_dir, tmp_path_factory):
  """A finished tiny run (its workdir) and its stderr."""
  root = tmp_path_factory.mktemp("cli")
  proc = _cli(root, "--workdir=run", *TINY_FLAGS, data_dir=digits_data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return root, root / "run", proc


# Two cases in the fast tier, every case in the full one.
@pytest.mark.parametrize("flags, names", [
    (["--config=no_such_config.py"], "--config=no_such_config.py: no such file"),
    _slow(["--config=broken.py"], "at line 2 of broken.py; fix the file"),
    _slow(["--config.no_such_field=1"], "the config has no field config.no_such_field"),
    _slow(["--config.model.widht_multiplier=0.5"],
          "Did you mean config.model.width_multiplier?"),
    _slow(["--config.batch_size=many"], "--config.batch_size=many"),
    (["--config.optimizer.base_lr=-1"], "config.optimizer.base_lr=-1.0 must be > 0"),
    _slow(["--workdir=a_file"], "--workdir=a_file is a file"),
    _slow(["--workdir=a_file/run"], "--workdir=a_file/run cannot be created"),
    _slow(["--config.dataset.name=cifar10", "--config.dataset.data_dir=empty"],
          "config.dataset.name='cifar10' is not prepared"),
    _slow(["--config.dataset.name=sklearn_diabetes"], "needs class labels"),
    _slow(["--config.task=no_module:Task"], "config.task='no_module:Task' does not import"),
    _slow(["--config.eval_every_epochs=-1"], "config.eval_every_epochs=-1.0 must be >= 0"),
    _slow(["positional"], "unexpected arguments ['positional']"),
    _slow(["--config.optimizer.base_lr=nan"],
          "config.optimizer.base_lr=nan is not a finite number"),
    _slow(["--config.optimizer.weight_decay=nan"],
          "config.optimizer.weight_decay=nan is not a finite number"),
    _slow(["--config.optimizer.grad_clip_norm=inf"],
          "config.optimizer.grad_clip_norm=inf is not a finite number"),
    _slow([f"--config={os.path.join(REPO, 'configs', 'default.py')}:extra"],
          "takes no argument, so ':extra' cannot be passed to it"),
    _slow([f"--config={os.path.join(REPO, 'configs', 'transformer_reverse.py')}",
           "--config.dataset.name=sklearn_digits"],
          "config.dataset.name='sklearn_digits' is an image dataset, and this config has no "
          "config.dataset.image_size"),
])
def test_bad_command_line_is_one_line_exit_2_and_writes_nothing(tmp_path, flags, names):
  (tmp_path / "broken.py").write_text("def get_config():\n  return {'a': }\n")
  (tmp_path / "a_file").write_text("")
  before = sorted(os.listdir(tmp_path))
  args = flags if any(f.startswith("--workdir") for f in flags) else ["--workdir=run", *flags]
  line = _one_error_line(_cli(tmp_path, *args), 2)
  assert names in line
  assert sorted(os.listdir(tmp_path)) == before  # no workdir, nothing else either


@pytest.mark.slow
def test_workdir_of_another_config_is_refused_untouched(finished):
  _, workdir, _ = finished
  before = _tree_bytes(workdir)
  line = _one_error_line(_cli(workdir.parent, f"--workdir={workdir}", *TINY_FLAGS,
                              "--config.model.width_multiplier=0.25"), 2)
  assert "holds a run of another config" in line
  assert "config.model.width_multiplier was 0.125 there, 0.25 now" in line
  assert _tree_bytes(workdir) == before


@pytest.mark.slow
def test_damaged_checkpoint_is_one_line_and_left_as_it_is(finished, digits_data_dir, tmp_path):
  _, workdir, _ = finished
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  os.remove(copy / "summary.json")  # an unfinished run, so the checkpoint is read
  latest = copy / "checkpoints" / str(TOTAL_STEPS)
  for root, _, files in os.walk(latest):
    for name in files:
      if name != "_CHECKPOINT_METADATA" and "commit" not in name:
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(max(os.path.getsize(os.path.join(root, name)) // 3, 1))
  before = _tree_bytes(copy)
  line = _one_error_line(_cli(tmp_path, f"--workdir={copy}", *TINY_FLAGS,
                              data_dir=digits_data_dir), 2)
  assert f"Checkpoint {latest} could not be read" in line
  assert f"move it aside (e.g. mv {latest} " in line
  assert f"to resume from checkpoint {TOTAL_STEPS - 1}" in line
  assert _tree_bytes(copy) == before


@pytest.mark.slow
@pytest.mark.parametrize("precision, base_lr", [("fp32", 1e4), ("bf16", 1e4), ("fp16", 1e4),
                                                ("fp32", 1e6)])
def test_divergence_stops_with_status_1_and_keeps_the_last_finite_checkpoint(
    digits_data_dir, tmp_path, precision, base_lr):
  # At 1e6 the loss is already non-finite while the first checkpoint is being written.
  proc = _cli(tmp_path, "--workdir=run", *TINY_FLAGS, f"--config.precision={precision}",
              f"--config.optimizer.base_lr={base_lr}", data_dir=digits_data_dir)
  line = _one_error_line(proc, 1)
  assert "--config.optimizer.base_lr" in line
  if re.search(r"training diverged by step \d+: \S+ holds non-finite values", line):
    pass  # Found in the state about to be saved, before a logging step saw the loss.
  elif precision == "fp16":
    assert "loss scale fell to its floor" in line or "steps were skipped" in line
  else:
    assert re.search(r"training diverged at step \d+: the training loss is (nan|inf) "
                     r"\(learning rate ", line), line
  workdir = tmp_path / "run"
  assert not os.path.exists(workdir / "summary.json")
  states = _checkpoints(workdir)
  assert states and f"checkpoint {max(states)}," in line
  for state in states.values():
    for leaf in jax.tree_util.tree_leaves(state):
      leaf = np.asarray(leaf)
      if np.issubdtype(leaf.dtype, np.floating):
        assert np.all(np.isfinite(leaf))
  records = _strict_json_lines(workdir / "metrics.jsonl")
  assert records and all("step" in r for r in records)


@pytest.mark.slow
def test_rerunning_a_finished_run_leaves_its_records(finished, digits_data_dir):
  root, workdir, _ = finished
  before = _tree_bytes(workdir)
  proc = _cli(root, f"--workdir={workdir}", *TINY_FLAGS, data_dir=digits_data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "has finished; its records are left as they are" in proc.stderr
  assert json.loads(proc.stdout.splitlines()[-1]) == json.load(open(workdir / "summary.json"))
  assert _tree_bytes(workdir) == before


@pytest.mark.slow
def test_evaluate_again_adds_to_the_records(finished, digits_data_dir, tmp_path):
  _, workdir, _ = finished
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  old_summary = json.load(open(copy / "summary.json"))
  old_records = _strict_json_lines(copy / "metrics.jsonl")
  proc = _cli(tmp_path, f"--workdir={copy}", "--evaluate_again", *TINY_FLAGS,
              data_dir=digits_data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.load(open(copy / "summary.json"))
  assert summary["evaluations"] == 2
  for key in ("train_seconds", "images_per_second", "train_loss", "steps"):
    assert summary[key] == old_summary[key]
  assert summary["test_accuracy"] == pytest.approx(old_summary["test_accuracy"])
  records = _strict_json_lines(copy / "metrics.jsonl")
  assert records[:len(old_records)] == old_records and len(records) == len(old_records) + 1
  assert records[-1]["evaluation"] == 2 and records[-1]["step"] == TOTAL_STEPS


@pytest.mark.slow
def test_the_log_holds_the_runs_own_lines(finished):
  _, workdir, proc = finished
  for noise in ("oneDNN", "absl::InitializeLog", "libtpu", "Downloading and preparing",
                "Traceback"):
    assert noise not in proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert all(_OWN_LOG_LINE.match(l) for l in lines), proc.stderr[-3000:]
  assert any(f"step {TOTAL_STEPS}/{TOTAL_STEPS}" in l for l in lines)
  # And strict JSON everywhere.
  _strict_json_lines(workdir / "metrics.jsonl")
  with open(workdir / "summary.json") as f:
    json.load(f, parse_constant=_refuse)

