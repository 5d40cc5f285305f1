"""End to end: the train loop, resume after SIGKILL/SIGTERM, bad input, the cifar10 config."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from bagtricks import checkpoint, data, events, train, validate
from conftest import REPO, tiny_config

# The CLI overrides that turn configs/default.py into tiny_config (3 epochs of 22 steps).
TINY_FLAGS = ["--config.model.width_multiplier=0.125", "--config.batch_size=64",
              "--config.eval_batch_size=64", "--config.num_epochs=3",
              "--config.schedule.warmup_epochs=0.5", "--config.log_every_steps=5",
              "--config.eval_every_epochs=0", "--config.checkpoint_every_steps=5"]
TOTAL_STEPS = 66


def _cli(workdir, data_dir, cache_dir, *extra, bucket_root=None, launcher=(), **popen_kwargs):
  """The training command on the tiny config; with ``bucket_root``, under the fake Cloud
  Storage of tests/fake_gcs.py, whose ``gs://`` objects are files under that directory.
  ``cache_dir`` None: no compilation cache. ``launcher``: Python arguments before the
  command (e.g. ``-c`` code that sets limits, then runs ``sys.argv[1:]``)."""
  env = dict(os.environ)
  if cache_dir is None:
    env = {k: v for k, v in env.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  else:
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
  command = [os.path.join(REPO, "train.py")]
  if bucket_root is not None:
    command = [os.path.join(REPO, "tests", "fake_gcs.py"), str(bucket_root)]
  cmd = [sys.executable, *launcher, *command, f"--workdir={workdir}",
         f"--config.dataset.data_dir={data_dir}", *TINY_FLAGS, *extra]
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **popen_kwargs)


def _finish(proc, timeout=600):
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, out, err


def _saved_steps(workdir):
  path = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(path):
    return []
  return sorted(int(d) for d in os.listdir(path) if d.isdigit())


def _final_state(workdir):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  step = manager.latest_step()
  state = manager.restore(step, args=ocp.args.StandardRestore())
  manager.close()
  return step, state


def _assert_bitwise_equal(a, b):
  leaves_a, tree_a = jax.tree_util.tree_flatten(a)
  leaves_b, tree_b = jax.tree_util.tree_flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reference_run(digits_data_dir, tmp_path_factory):
  """An uninterrupted CLI run of the tiny config; its summary and final checkpoint."""
  root = tmp_path_factory.mktemp("runs")
  cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")  # The session's (conftest), if any.
  workdir = root / "reference"
  code, out, err = _finish(_cli(workdir, digits_data_dir, cache))
  assert code == 0, err[-3000:]
  return {"workdir": str(workdir), "cache": cache, "root": root,
          "summary": json.loads(out.strip().splitlines()[-1])}


@pytest.mark.slow
def test_cli_run_writes_summary_metrics_and_events(reference_run):
  summary = reference_run["summary"]
  workdir = reference_run["workdir"]
  with open(os.path.join(workdir, "summary.json")) as f:
    assert json.load(f) == summary
  for key in ("test_accuracy", "steps", "train_seconds", "images_per_second"):
    assert key in summary
  assert summary["steps"] == TOTAL_STEPS and summary["test_examples"] == 360
  assert summary["devices"] == 8
  # Three epochs of a width-1/8 ResNet-18-D already learn digits (chance is 0.1).
  assert summary["test_accuracy"] > 0.5
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  train_lines = [l for l in lines if "loss" in l]
  assert [l["step"] for l in train_lines][-1] == TOTAL_STEPS
  assert {"learning_rate", "images_per_second", "accuracy"} <= set(train_lines[-1])
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  assert _saved_steps(workdir)[-1] == TOTAL_STEPS


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_exact(reference_run, digits_data_dir):
  workdir = os.path.join(reference_run["root"], "killed")
  proc = _cli(workdir, digits_data_dir, reference_run["cache"])
  deadline = time.time() + 300
  while not [s for s in _saved_steps(workdir) if s >= 10]:
    assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  killed_at = _saved_steps(workdir)[-1]
  assert killed_at < TOTAL_STEPS

  code, out, err = _finish(_cli(workdir, digits_data_dir, reference_run["cache"]))
  assert code == 0, err[-3000:]
  summary = json.loads(out.strip().splitlines()[-1])
  assert summary["resumed_from_step"] >= killed_at and summary["steps"] == TOTAL_STEPS
  step_a, resumed = _final_state(workdir)
  step_b, uninterrupted = _final_state(reference_run["workdir"])
  assert step_a == step_b == TOTAL_STEPS
  _assert_bitwise_equal(resumed, uninterrupted)
  assert summary["test_accuracy"] == reference_run["summary"]["test_accuracy"]
  # The steps logged after the last checkpoint before the kill are logged once, not twice.
  steps = [json.loads(l)["step"] for l in open(os.path.join(workdir, "metrics.jsonl"))
           if "loss" in json.loads(l)]
  assert steps == sorted(set(steps)) and steps[-1] == TOTAL_STEPS


@pytest.mark.slow
def test_sigterm_saves_and_resumes(reference_run, digits_data_dir):
  workdir = os.path.join(reference_run["root"], "terminated")
  proc = _cli(workdir, digits_data_dir, reference_run["cache"])
  deadline = time.time() + 300
  while not _saved_steps(workdir):
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  code, _, err = _finish(proc)
  assert code == 143, err[-3000:]
  assert "run the same command again to resume" in err
  stopped_at = _saved_steps(workdir)[-1]
  assert 0 < stopped_at < TOTAL_STEPS
  assert f"SIGTERM at step {stopped_at}:" in err  # saved where it stopped, not earlier
  code, out, err = _finish(_cli(workdir, digits_data_dir, reference_run["cache"]))
  assert code == 0, err[-3000:]
  assert json.loads(out.strip().splitlines()[-1])["resumed_from_step"] == stopped_at
  _assert_bitwise_equal(_final_state(workdir)[1], _final_state(reference_run["workdir"])[1])


@pytest.mark.slow
def test_workdir_in_a_bucket_runs_resumes_after_sigkill_and_evaluates_again(
    reference_run, digits_data_dir, tmp_path):
  """A ``gs://`` workdir on a fake Cloud Storage: records, events and checkpoints all reach the
  bucket (no local ``gs:`` directory, no appends), and a killed run resumes bit for bit."""
  bucket = tmp_path / "bucket_root"
  local = bucket / "bucket" / "run"  # Where the fake keeps gs://bucket/run.
  workdir = "gs://bucket/run"
  proc = _cli(workdir, digits_data_dir, reference_run["cache"], bucket_root=bucket)
  deadline = time.time() + 300
  while not [s for s in _saved_steps(local) if s >= 10
             and os.path.exists(os.path.join(local, "checkpoints", str(s), "commit_success.txt"))]:
    assert proc.poll() is None and time.time() < deadline, (
        "run ended before it could be killed: " + proc.communicate()[1][-3000:])
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert not os.path.exists(local / "summary.json")

  code, out, err = _finish(_cli(workdir, digits_data_dir, reference_run["cache"],
                                bucket_root=bucket))
  assert code == 0, err[-3000:]
  summary = json.loads(out.strip().splitlines()[-1])
  assert 10 <= summary["resumed_from_step"] < TOTAL_STEPS and summary["steps"] == TOTAL_STEPS
  _assert_bitwise_equal(_final_state(local)[1], _final_state(reference_run["workdir"])[1])
  assert summary["test_accuracy"] == reference_run["summary"]["test_accuracy"]
  assert not os.path.exists(os.path.join(REPO, "gs:")) and not os.path.exists("gs:")

  code, out, err = _finish(_cli(workdir, digits_data_dir, reference_run["cache"],
                                "--evaluate_again", bucket_root=bucket))
  assert code == 0, err[-3000:]
  again = json.loads((local / "summary.json").read_text())
  assert again["evaluations"] == 2 and again["test_accuracy"] == summary["test_accuracy"]
  assert json.loads((local / "config.json").read_text())["model"]["width_multiplier"] == 0.125
  records = [json.loads(l) for l in (local / "metrics.jsonl").read_text().splitlines()]
  steps = [r["step"] for r in records if "loss" in r]
  assert steps == sorted(set(steps)) and steps[-1] == TOTAL_STEPS
  assert [r["evaluation"] for r in records if "evaluation" in r] == [2]
  # TensorBoard holds each training step once too, across the killed and the resumed run.
  logged = [e.step for f in events.event_files(str(local)) for e in events.read_events(f)
            if any(v.tag == "loss" for v in e.summary.value)]
  assert sorted(logged) == sorted(set(logged)) and max(logged) == TOTAL_STEPS


def _tree_bytes(path):
  result = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      with open(full, "rb") as f:
        result[os.path.relpath(full, path)] = f.read()
  return result


@pytest.mark.slow
def test_incompatible_checkpoint_is_refused_and_kept(reference_run, digits_data_dir, tmp_path):
  workdir = str(tmp_path / "copy")
  shutil.copytree(reference_run["workdir"], workdir)
  before = _tree_bytes(os.path.join(workdir, "checkpoints"))
  os.remove(os.path.join(workdir, "config.json"))  # else the config check refuses it first
  os.remove(os.path.join(workdir, "summary.json"))
  config = tiny_config(digits_data_dir)
  config.num_epochs = 3
  config.model.width_multiplier = 0.25  # a different model than the one saved
  with pytest.raises(checkpoint.CheckpointError, match=r"does not match.*new --workdir"):
    train.train_and_evaluate(config, workdir)
  assert _tree_bytes(os.path.join(workdir, "checkpoints")) == before


@pytest.mark.slow
def test_corrupt_checkpoint_is_refused_and_kept(reference_run, digits_data_dir, tmp_path):
  workdir = str(tmp_path / "copy")
  shutil.copytree(reference_run["workdir"], workdir)
  os.remove(os.path.join(workdir, "summary.json"))  # an unfinished run reads its checkpoint
  latest = os.path.join(workdir, "checkpoints", str(TOTAL_STEPS))
  for root, _, files in os.walk(latest):
    for name in files:
      if name != "_CHECKPOINT_METADATA" and "commit" not in name:
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(max(os.path.getsize(os.path.join(root, name)) // 3, 1))
  before = _tree_bytes(os.path.join(workdir, "checkpoints"))
  config = tiny_config(digits_data_dir)
  config.num_epochs = 3
  with pytest.raises(checkpoint.CheckpointError, match="could not be read"):
    train.train_and_evaluate(config, workdir)
  assert _tree_bytes(os.path.join(workdir, "checkpoints")) == before


@pytest.mark.parametrize("field, value, message", [
    ("model.name", "resnet51", "config.model.name='resnet51' is unknown"),
    ("precision", "fp8", "config.precision='fp8' is unknown"),
    ("optimizer.name", "adagrad", "config.optimizer.name='adagrad' is unknown"),
    ("optimizer.base_lr", 0.0, "config.optimizer.base_lr=0.0 must be > 0"),
    ("optimizer.base_lr", -0.1, "config.optimizer.base_lr=-0.1 must be > 0"),
    ("batch_size", 0, "config.batch_size=0 must be a positive integer"),
    ("batch_size", 12, "config.batch_size=12 does not divide evenly over 8 devices"),
    ("eval_batch_size", 20, "config.eval_batch_size=20 does not divide evenly"),
    ("parallel", "pjit", "config.parallel='pjit' is unknown"),
    ("host_memory", "keep", "config.host_memory='keep' is unknown"),
    ("model.norm", "layer", "config.model"),
    ("dataset.train_pp", "random_crop(8)", "config.dataset.train_pp"),
])
def test_bad_config_is_one_clear_error_before_compiling(tmp_path, field, value, message):
  config = tiny_config(str(tmp_path / "tfds"))
  node = config
  *parents, leaf = field.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(validate.ConfigError) as info:
    train.train_and_evaluate(config, str(tmp_path / "work"))
  assert message in str(info.value)
  # Raised before anything was read or written: no dataset prepared, no checkpoint dir.
  assert not os.path.exists(tmp_path / "tfds")
  assert not os.path.exists(tmp_path / "work" / "checkpoints")


def test_several_bad_fields_are_reported_together(tmp_path):
  config = tiny_config(str(tmp_path))
  config.model.name = "vgg"
  config.batch_size = -4
  with pytest.raises(validate.ConfigError) as info:
    train.train_and_evaluate(config, str(tmp_path / "work"))
  assert "config.model.name" in str(info.value) and "config.batch_size" in str(info.value)


def test_missing_dataset_stops_before_compiling(tmp_path):
  config = tiny_config(str(tmp_path / "empty"))
  config.dataset.name = "cifar10"
  with pytest.raises(data.DataError, match="tfds build cifar10"):
    train.train_and_evaluate(config, str(tmp_path / "work"))
  assert not os.path.exists(tmp_path / "work" / "checkpoints")


@pytest.mark.slow
def test_cli_reports_bad_config_without_traceback(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "train.py"), f"--workdir={tmp_path}",
       "--config.model.name=resnet51"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert "config.model.name='resnet51' is unknown" in proc.stderr
  assert "Traceback" not in proc.stderr


def _write_mock_cifar10_metadata(root, train_examples, test_examples):
  """TFDS metadata (split sizes) for cifar10, so mock_data can serve it with no files."""
  from tensorflow_datasets.core import splits as splits_lib
  builder = tfds.builder("cifar10", data_dir=str(root))
  builder.info.set_splits(splits_lib.SplitDict([
      splits_lib.SplitInfo(name="train", shard_lengths=[train_examples], num_bytes=0,
                           filename_template=None),
      splits_lib.SplitInfo(name="test", shard_lengths=[test_examples], num_bytes=0,
                           filename_template=None)]))
  path = os.path.join(str(root), "cifar10", str(builder.version))
  os.makedirs(path)
  builder.info.write_to_directory(path)


@pytest.mark.slow
def test_cifar10_config_runs_two_steps_on_mock_data(tmp_path):
  from configs import cifar10_resnet18d
  _write_mock_cifar10_metadata(tmp_path / "meta", train_examples=32, test_examples=16)
  config = cifar10_resnet18d.get_config()
  config.model.width_multiplier = 0.125
  config.batch_size = 16
  config.eval_batch_size = 8
  config.num_epochs = 1
  config.schedule.warmup_epochs = 0.5
  config.log_every_steps = 1
  with tfds.testing.mock_data(num_examples=32, policy=tfds.testing.MockPolicy.USE_FILES,
                              data_dir=str(tmp_path / "meta")):
    summary = train.train_and_evaluate(config, str(tmp_path / "work"))
  assert summary["steps"] == 2
  assert summary["test_examples"] == 16
  assert 0.0 <= summary["test_accuracy"] <= 1.0


@pytest.mark.slow
def test_cli_distills_from_a_teacher_checkpoint(reference_run, digits_data_dir):
  # The reference run (ResNet-18-D) teaches a different architecture (ResNet-18 v1).
  workdir = os.path.join(reference_run["root"], "student")
  code, out, err = _finish(_cli(
      workdir, digits_data_dir, reference_run["cache"], "--config.model.name=resnet18",
      "--config.num_epochs=1", "--config.distill.enabled=True",
      f"--config.distill.teacher_workdir={reference_run['workdir']}"))
  assert code == 0, err[-3000:]
  summary = json.loads(out.strip().splitlines()[-1])
  assert summary["steps"] == TOTAL_STEPS // 3
  # The soft term T²·CE(softmax(t/T), softmax(s/T)) with T = 20 dominates: ≈ ½·400·ln 10.
  assert summary["train_loss"] > 100
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["distill"]["teacher_workdir"] == reference_run["workdir"]


@pytest.mark.slow
def test_teacher_that_does_not_fit_is_refused(reference_run, digits_data_dir, tmp_path):
  config = tiny_config(digits_data_dir)
  config.distill.enabled = True
  config.distill.teacher_workdir = reference_run["workdir"]
  # This file describes a ResNet-50-D: the saved ResNet-18-D weights do not fit it.
  config.distill.teacher_config = os.path.join(REPO, "configs", "imagenet_resnet50d.py")
  with pytest.raises(checkpoint.CheckpointError, match="does not fit the model"):
    train.train_and_evaluate(config, str(tmp_path / "work"))


@pytest.mark.parametrize("field, value, message", [
    ("augment.mixup_alpha", -0.2, "config.augment.mixup_alpha=-0.2 must be >= 0"),
    ("augment.cutmix_prob", 1.5, "config.augment.cutmix_prob=1.5 must be in [0.0, 1.0]"),
    ("augment.mix_off_epochs", 5.0, "config.augment.mix_off_epochs=5.0 must be below"),
    ("augment.cutout.num_holes", -1, "config.augment.cutout.num_holes=-1"),
    ("augment.gridmask.prob", 2.0, "config.augment.gridmask.prob=2.0 must be in [0.0, 1.0]"),
    ("ema.decay", 1.0, "config.ema.decay=1.0 must be in [0, 1)"),
    ("model.drop_block_rate", 1.2, "drop_block_rate must be in [0, 1)"),
    ("distill.enabled", True, "config.distill.teacher_workdir is empty"),
])
def test_bad_refinement_config_is_refused_before_compiling(tmp_path, field, value, message):
  test_bad_config_is_one_clear_error_before_compiling(tmp_path, field, value, message)


def test_missing_teacher_names_the_field_and_the_fix(tmp_path):
  config = tiny_config(str(tmp_path / "tfds"))
  config.distill.enabled = True
  config.distill.teacher_workdir = str(tmp_path / "no_teacher")
  config.distill.temperature = 0.0
  with pytest.raises(validate.ConfigError) as info:
    train.train_and_evaluate(config, str(tmp_path / "work"))
  message = str(info.value)
  assert "config.distill.temperature=0.0 must be > 0" in message
  assert "holds no checkpoint: train the teacher first" in message
  assert not os.path.exists(tmp_path / "work" / "checkpoints")


def test_checkpoint_without_an_empty_state_field_still_restores(tmp_path):
  # Written before TrainState had `ema`: with EMA off (ema = {}) it restores as before.
  from bagtricks.state import TrainState
  template = TrainState(step=np.int32(0), params={"w": np.ones(3, np.float32)}, batch_stats={},
                        opt_state={}, rng=np.zeros(2, np.uint32))
  old = {"step": np.int32(7), "params": {"w": np.full(3, 2.0, np.float32)}, "batch_stats": {},
         "opt_state": {}, "rng": np.zeros(2, np.uint32)}
  manager = ocp.CheckpointManager(str(tmp_path / "checkpoints"))
  manager.save(7, args=ocp.args.StandardSave(old))
  manager.wait_until_finished()
  manager.close()
  restored = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), 1, 1).restore(template)
  assert int(restored.step) == 7 and restored.ema == {}
  np.testing.assert_array_equal(restored.params["w"], 2.0)
