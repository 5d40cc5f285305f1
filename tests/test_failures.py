"""Failures found by probing: a save in progress at divergence, damaged checkpoints, full disks
and read-only directories, two runs on one workdir, a stop between the final checkpoint and
the summary, the first step after a resume.

Each case: one line on stderr, its exit status, nothing half-written left behind, and a rerun
that ends bit-identical to an uninterrupted run (``reference_run`` of test_train).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from bagtricks import checkpoint, divergence, train, workdir_lock
from conftest import tiny_config
from test_cli_errors import _one_error_line, _tree_bytes
from test_train import (TOTAL_STEPS, _assert_bitwise_equal, _cli, _final_state, _saved_steps,
                        reference_run)  # noqa: F401  (a fixture)



def _unfinished_copy(reference_run, tmp_path, name="copy"):
  """The reference run's workdir as a run that has not written its summary yet."""
  workdir = tmp_path / name
  shutil.copytree(reference_run["workdir"], workdir)
  os.remove(workdir / "summary.json")
  return workdir


def _records(workdir):
  return [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl")) if l.strip()]


def _computed(record):
  # A metrics record without what depends on the machine's speed.
  return {k: v for k, v in record.items()
          if not k.startswith("run_") and not k.endswith("_per_second")}


def _leftovers(workdir):
  return [d for d in os.listdir(os.path.join(workdir, "checkpoints")) if "tmp" in d]


@pytest.mark.slow
def test_divergence_during_a_save_names_a_checkpoint_that_exists(digits_data_dir, tmp_path,
                                                                 monkeypatch):
  # Every save takes a second to finish, so the divergence is found while one is in progress.
  finalize = ocp.CheckpointManager._finalize  # pylint: disable=protected-access

  def slow_finalize(self, *args, **kwargs):
    time.sleep(1.0)
    return finalize(self, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "_finalize", slow_finalize)
  config = tiny_config(digits_data_dir)
  config.optimizer.base_lr = 1e6
  workdir = tmp_path / "run"
  with pytest.raises(divergence.Diverged) as error:
    train.train_and_evaluate(config, str(workdir))
  message = str(error.value)
  assert not _leftovers(workdir)
  if "no checkpoint was written" in message:
    assert _saved_steps(workdir) == []
  else:
    named = int(re.search(r"checkpoint (\d+), the last with finite parameters", message)[1])
    assert _saved_steps(workdir) == [named]
    assert os.path.exists(workdir / "checkpoints" / str(named) / "_CHECKPOINT_METADATA")


def _run(workdir, digits_data_dir, reference_run, *extra, **popen_kwargs):
  """The tiny CLI run to its end, as a ``CompletedProcess``."""
  proc = _cli(workdir, digits_data_dir, popen_kwargs.pop("cache", reference_run["cache"]),
              *extra, **popen_kwargs)
  out, err = proc.communicate(timeout=600)
  return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _summary(proc):
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _overwrite_in_largest_data_file(workdir, step):
  data_dir = os.path.join(workdir, "checkpoints", str(step), "default", "ocdbt.process_0", "d")
  largest = max((os.path.join(data_dir, n) for n in os.listdir(data_dir)), key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.seek(os.path.getsize(largest) // 4)
    f.write(b"\xff" * 4096)


def test_arrays_that_differ_from_their_checksums_are_named_and_skipped_on_request(
    tmp_path, monkeypatch):
  # Checkpoint 2 is saved with every CRC-32 off by one: its arrays read back, but not as saved.
  state = {"step": np.int32(1), "params": {"w": np.arange(6, dtype=np.float32),
                                           "b": np.ones(2, np.float32)}}
  writer = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), max_to_keep=2)
  writer.save(1, state, force=True)
  writer.wait()
  crc32 = checkpoint._crc32  # pylint: disable=protected-access
  monkeypatch.setattr(checkpoint, "_crc32", lambda array: (crc32(array) + 1) % (1 << 32))
  writer.save(2, {**state, "step": np.int32(2)}, force=True)
  writer.wait()
  writer.close()
  monkeypatch.undo()
  reader = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), max_to_keep=2)
  with pytest.raises(checkpoint.DamagedCheckpointError,
                     match=r"checkpoints/2 is damaged: 3 of its arrays differ from the checksums "
                           r"saved with them \(.*\)\..*resume from checkpoint 1, or rerun with "
                           r"--skip_damaged_checkpoints"):
    reader.restore(state)
  assert int(reader.restore(state, fall_back=True)["step"]) == 1
  assert os.path.isdir(tmp_path / "checkpoints_damaged" / "2")
  reader.close()


@pytest.mark.slow
def test_overwritten_checkpoint_bytes_are_found_and_skipped_on_request(
    reference_run, digits_data_dir, tmp_path):
  workdir = _unfinished_copy(reference_run, tmp_path)
  _overwrite_in_largest_data_file(workdir, TOTAL_STEPS)
  before = _tree_bytes(workdir)
  line = _one_error_line(_run(workdir, digits_data_dir, reference_run), 2)
  latest = workdir / "checkpoints" / str(TOTAL_STEPS)
  # The data files are compressed: overwritten bytes decode to other values, which the
  # checksums find (the test above), or do not decode at all; where they land varies, since
  # the arrays are written concurrently.
  assert re.search(f"Checkpoint {re.escape(str(latest))} (is damaged: .* differ from the "
                   f"checksums saved with them|could not be read)", line), line
  assert f"to resume from checkpoint {TOTAL_STEPS - 1}" in line
  assert "--skip_damaged_checkpoints" in line
  assert _tree_bytes(workdir) == before  # refused, and left as it was

  summary = _summary(_run(workdir, digits_data_dir, reference_run,
                          "--skip_damaged_checkpoints"))
  assert summary["resumed_from_step"] == TOTAL_STEPS - 1
  assert os.path.isdir(workdir / "checkpoints_damaged" / str(TOTAL_STEPS))
  _assert_bitwise_equal(_final_state(str(workdir))[1],
                        _final_state(reference_run["workdir"])[1])
  assert summary["test_accuracy"] == reference_run["summary"]["test_accuracy"]


# Every file the run writes may hold 256 KiB, less than a checkpoint's data file: a full
# disk, as far as the checkpoint is concerned. Writes past it fail with EFBIG (SIGXFSZ is
# ignored, across the exec). Set in the child itself: a preexec_fn would fork a threaded
# process.
_LIMIT_FILE_SIZE = (
    "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10)); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_written_is_one_line_and_leaves_nothing_half_written(
    reference_run, digits_data_dir, tmp_path):
  workdir = tmp_path / "run"
  proc = _run(workdir, digits_data_dir, reference_run, cache=None,
              launcher=("-c", _LIMIT_FILE_SIZE))
  line = _one_error_line(proc, 74)
  assert f"A checkpoint could not be written to {workdir / 'checkpoints'}" in line
  assert "File too large" in line or "os_error_code='27'" in line
  assert "no checkpoint was written, so a rerun starts over" in line
  assert not _leftovers(workdir) and _saved_steps(workdir) == []


def _immutable(path, on: bool) -> bool:
  return subprocess.run(["chattr", "+i" if on else "-i", str(path)],
                        capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_directory_made_read_only_mid_run_keeps_the_last_checkpoint_and_resumes(
    reference_run, digits_data_dir, tmp_path):
  # Root ignores permission bits; an immutable directory (chattr +i) refuses even root.
  probe = tmp_path / "probe"
  probe.mkdir()
  if shutil.which("chattr") is None or not _immutable(probe, True):
    pytest.skip("chattr +i is not available here (needs root on ext2/3/4 or similar)")
  _immutable(probe, False)
  workdir = tmp_path / "run"
  proc = _cli(workdir, digits_data_dir, reference_run["cache"])
  directory = workdir / "checkpoints"
  try:
    deadline = time.time() + 300
    while not _saved_steps(workdir):
      assert proc.poll() is None and time.time() < deadline, "ended before its first save"
      time.sleep(0.02)
    assert _immutable(directory, True)
    out, err = proc.communicate(timeout=600)
  finally:
    _immutable(directory, False)
  kept = _saved_steps(workdir)
  line = _one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), 74)
  assert f"A checkpoint could not be written to {directory}" in line
  assert f"checkpoint {kept[-1]} stays the latest" in line
  # An unfinished save the read-only directory kept is removed by the rerun, never resumed.
  summary = _summary(_run(workdir, digits_data_dir, reference_run))
  assert not _leftovers(workdir)
  assert summary["resumed_from_step"] == kept[-1]
  _assert_bitwise_equal(_final_state(str(workdir))[1],
                        _final_state(reference_run["workdir"])[1])


@pytest.mark.slow
def test_a_second_run_on_a_busy_workdir_is_refused(reference_run, digits_data_dir, tmp_path):
  workdir = _unfinished_copy(reference_run, tmp_path)
  before = _tree_bytes(workdir)
  with workdir_lock.WorkdirLock(str(workdir)):
    line = _one_error_line(_run(workdir, digits_data_dir, reference_run), 75)
  assert f"--workdir={workdir} is in use by process {os.getpid()}" in line
  assert _tree_bytes(workdir) == before


@pytest.mark.slow
def test_a_run_stopped_after_its_final_checkpoint_finishes_with_its_records(
    reference_run, digits_data_dir, tmp_path):
  workdir = _unfinished_copy(reference_run, tmp_path)
  # What a crashed run leaves: a lock file naming a process that has ended.
  (workdir / workdir_lock.LOCK_NAME).write_text(json.dumps({"host": "h", "pid": 1 << 30}))
  summary = _summary(_run(workdir, digits_data_dir, reference_run))
  reference = reference_run["summary"]
  for key in ("train_loss", "skipped_steps", "train_seconds", "first_step_seconds",
              "images_per_second", "steps_this_run", "resumed_from_step", "test_accuracy",
              "test_loss"):
    assert summary[key] == reference[key], key
  assert summary["steps_this_run"] == TOTAL_STEPS


@pytest.mark.slow
def test_the_first_step_after_a_resume_is_logged(reference_run, digits_data_dir, tmp_path):
  workdir = _unfinished_copy(reference_run, tmp_path)
  shutil.rmtree(workdir / "checkpoints" / str(TOTAL_STEPS))  # Resumes at 65 of 66.
  summary = _summary(_run(workdir, digits_data_dir, reference_run))
  assert summary["resumed_from_step"] == TOTAL_STEPS - 1
  assert summary["train_loss"] == reference_run["summary"]["train_loss"]
  assert ([_computed(r) for r in _records(workdir)]
          == [_computed(r) for r in _records(reference_run["workdir"])])


@pytest.mark.slow
def test_sigterm_during_the_final_evaluation_writes_the_summary_first(
    reference_run, digits_data_dir, tmp_path, monkeypatch):
  workdir = _unfinished_copy(reference_run, tmp_path)
  finish_run = train.finish_run

  def terminated_finish(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return finish_run(*args, **kwargs)

  monkeypatch.setattr(train, "finish_run", terminated_finish)
  config = tiny_config(digits_data_dir)
  config.num_epochs = 3
  with pytest.raises(train.Preempted, match="the run has finished"):
    train.train_and_evaluate(config, str(workdir))
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["test_accuracy"] == reference_run["summary"]["test_accuracy"]


@pytest.mark.parametrize("remote", [False, True])
def test_workdir_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path, monkeypatch,
                                                                       remote):
  if remote:  # The object-store protocol, on local files.
    monkeypatch.setattr(workdir_lock.paths, "is_remote", lambda p: True)
  workdir = str(tmp_path / "run")
  with workdir_lock.WorkdirLock(workdir):
    with pytest.raises(workdir_lock.WorkdirBusyError,
                       match=f"is in use by process {os.getpid()} on "):
      workdir_lock.WorkdirLock(workdir).__enter__()
  lock_file = tmp_path / "run" / workdir_lock.LOCK_NAME
  host = json.loads(lock_file.read_text())["host"] if lock_file.exists() else "this"
  # A holder that has ended (a crash): taken over.
  lock_file.write_text(json.dumps({"host": host, "pid": 1 << 30, "since": 0}))
  if remote:
    monkeypatch.setattr(workdir_lock.socket, "gethostname", lambda: host)
  with workdir_lock.WorkdirLock(workdir):
    assert json.loads(lock_file.read_text())["pid"] == os.getpid()
  if remote:  # Another host's lock cannot be checked: reported, with how to clear it.
    assert not lock_file.exists()
    lock_file.write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": 0}))
    with pytest.raises(workdir_lock.WorkdirBusyError, match="If that run has ended, delete"):
      workdir_lock.WorkdirLock(workdir).__enter__()
