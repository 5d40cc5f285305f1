"""Orbax checkpoints of the train state: restore-or-init, periodic and preemption saves.

Checkpoints hold the whole ``TrainState`` as host NumPy arrays (step, float32 params, BatchNorm
statistics, optimizer and loss-scale state, PRNG key). The data pipeline is a pure function of
(config, step), so nothing else is needed to resume bit for bit. Orbax writes each checkpoint
into a temporary directory and renames it when complete, so a run killed mid-save (even by
SIGKILL) leaves the previous checkpoint as the latest one.

Every checkpoint also holds a CRC-32 of each saved array, computed from the host arrays before
they are written and checked after they are read, so damaged files (bytes overwritten, not
only truncated) are found at restore instead of silently training on altered values.

A checkpoint that cannot be restored into the state the current config builds (another model,
optimizer or precision) or that is damaged stops the run with an error and is never
overwritten; ``fall_back=True`` moves a damaged one aside (to ``<checkpoints>_damaged/``) and
restores the newest intact one. A save that cannot be written (a full disk, a directory that
became read-only) raises ``paths.WriteError`` naming the directory; the unfinished checkpoint
is removed and the last finished one stays the latest.
"""

from __future__ import annotations

import zlib
from typing import Any, List, Optional

from absl import logging
import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from bagtricks import config_fields, paths


class CheckpointError(RuntimeError):
  """A checkpoint exists but does not fit the current run, or is damaged."""


class DamagedCheckpointError(CheckpointError):
  """The latest checkpoint's files cannot be read or do not match their checksums."""


# The key of the saved tree that holds the arrays' checksums (not part of the state).
CHECKSUMS_KEY = "array_crc32"
_TMP_SUFFIX = ".orbax-checkpoint-tmp"


def has_checkpoint(directory: str) -> bool:
  """Whether ``directory`` (local or remote) holds a finished, step-numbered checkpoint."""
  return paths.isdir(directory) and any(d.isdigit() for d in paths.listdir(directory))


def _to_host_tree(state: Any) -> Any:
  # Orbax stores NumPy arrays, not NumPy scalars; flatten the dataclass/NamedTuple state to
  # plain nested dicts so the on-disk layout does not depend on Python class names.
  tree = flax.serialization.to_state_dict(state)
  return jax.tree_util.tree_map(np.asarray, tree)


def _crc32(array: np.ndarray) -> int:
  return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))


def _checksums(tree: Any) -> np.ndarray:
  # One CRC-32 per array, in the (sorted-key) order JAX flattens nested dicts.
  return np.asarray([_crc32(np.asarray(x)) for x in jax.tree_util.tree_leaves(tree)],
                    np.uint32)


def _damaged_arrays(tree: Any, saved: np.ndarray) -> List[str]:
  """The leaves of ``tree`` whose CRC-32 differs from ``saved`` (all, if the counts differ)."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  if len(flat) != len(saved):
    return [f"{len(flat)} arrays where {len(saved)} were saved"]
  return [jax.tree_util.keystr(path) for (path, x), crc in zip(flat, saved)
          if _crc32(np.asarray(x)) != int(crc)]


def _one_line(error: Exception, limit: int = 300) -> str:
  # The error on one line; a long one keeps its start and its end (where TensorStore puts
  # the operating system's reason, e.g. "No space left on device").
  text = " ".join(str(error).split())
  if len(text) > limit:
    text = text[:limit // 2] + " ... " + text[-limit // 2:]
  return f"{type(error).__name__}: {text}"


def _shape_and_dtype(x: Any) -> tuple:
  # Arrays, NumPy scalars and jax.ShapeDtypeStruct templates all carry both.
  if hasattr(x, "shape") and hasattr(x, "dtype"):
    return tuple(x.shape), np.dtype(x.dtype)
  x = np.asarray(x)
  return x.shape, x.dtype


def _describe(tree: Any) -> dict:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): _shape_and_dtype(x) for path, x in flat}


def _mismatches(expected: dict, found: dict, limit: int = 5) -> list:
  problems = []
  for key in sorted(set(expected) | set(found)):
    if key not in found:
      problems.append(f"missing {key}")
    elif key not in expected:
      problems.append(f"unexpected {key}")
    elif expected[key] != found[key]:
      problems.append(f"{key}: checkpoint has shape/dtype {found[key]}, the config needs "
                      f"{expected[key]}")
  if len(problems) > limit:
    problems = problems[:limit] + [f"... and {len(problems) - limit} more"]
  return problems


class Checkpointer:
  """Saves and restores ``TrainState`` under ``directory`` with Orbax.

  Args:
    directory: where step-numbered checkpoint folders live (``workdir/checkpoints``).
    save_every_steps: periodic save interval.
    max_to_keep: how many recent checkpoints to keep.
  """

  def __init__(self, directory: str, save_every_steps: int = 1, max_to_keep: int = 1,
               read_only: bool = False):
    self.directory = paths.absolute(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, save_interval_steps=save_every_steps,
            create=not read_only, read_only=read_only))
    if not read_only:  # A save that a killed run left unfinished is never resumed from.
      self._discard_unfinished()

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def restore(self, template: Any, fall_back: bool = False) -> Optional[Any]:
    """The latest checkpoint as a state shaped like ``template``, or None if there is none.

    Args:
      template: a freshly initialized host state (its structure, shapes and dtypes are what
        the checkpoint must match).
      fall_back: move a damaged latest checkpoint aside (to ``<directory>_damaged/``) and
        restore the newest intact one instead (None if none is left).

    Returns:
      The restored state (host NumPy leaves) or None.

    Raises:
      DamagedCheckpointError: the latest checkpoint is damaged (and ``fall_back`` is off).
      CheckpointError: the checkpoint was written by an incompatible config.
    """
    hint = (" The checkpoint is left untouched. Start the run in a new --workdir, or run "
            "with the config that wrote it (see config.json in the workdir).")
    found = self._read_intact() if fall_back else self._read_latest("", resuming=True)
    if found is None:
      return None
    where, restored = found
    expected = _to_host_tree(template)
    # A state field that holds nothing (no EMA, no BatchNorm) may be absent from checkpoints
    # written before the field existed; it restores as empty.
    for key, value in expected.items():
      if key not in restored and not jax.tree_util.tree_leaves(value):
        restored[key] = value
    problems = _mismatches(_describe(expected), _describe(restored))
    if problems:
      raise CheckpointError(
          f"Checkpoint {where} does not match the state this config builds: "
          + "; ".join(problems) + "." + hint)
    return flax.serialization.from_state_dict(template, restored)

  def restore_variables(self, template: dict) -> dict:
    """The model variables (and task state) of the latest checkpoint.

    Used to load a trained model (e.g. a distillation teacher) whatever optimizer trained it.

    Args:
      template: the state fields to read, e.g. ``{'params': ..., 'batch_stats': ...,
        'task_state': ...}``, of arrays or ``jax.ShapeDtypeStruct`` (e.g. from
        ``jax.eval_shape`` of the model's init); a field that holds nothing may be absent
        from the checkpoint.

    Returns:
      The fields, host NumPy arrays in the structure of ``template``.

    Raises:
      CheckpointError: there is no checkpoint, it is damaged, or the model does not fit it.
    """
    hint = (" Check that the teacher's workdir and config belong together (the workdir's "
            "config.json records the config that trained it).")
    found = self._read_latest(hint)
    if found is None:
      raise CheckpointError(f"No checkpoint in {self.directory}: train the model there first.")
    where, restored = found
    variables = {key: restored.get(key, {}) for key in template}
    problems = _mismatches(_describe(template), _describe(variables))
    if problems:
      raise CheckpointError(f"Checkpoint {where} does not fit the model: "
                            + "; ".join(problems) + "." + hint)
    return variables

  def read(self, step: Optional[int] = None, hint: str = "") -> Optional[tuple]:
    """The raw checkpoint ``step`` (default: the latest) as nested dicts of host arrays.

    Whatever the checkpoint holds is returned as it is (a train state's fields, or a
    converter's ``{'step', 'params', 'batch_stats'}``), for readers that take only part of it.

    Args:
      step: the step to read; None for the latest.
      hint: what to do, appended to the error.

    Returns:
      ``(path of the step's directory, tree)``, or None when there is no checkpoint.

    Raises:
      CheckpointError: the checkpoint cannot be read or is damaged, or ``step`` is not among
        the steps.
    """
    if step is not None and step not in self._manager.all_steps():
      raise CheckpointError(f"{self.directory} has no checkpoint of step {step} (it has "
                            f"{sorted(self._manager.all_steps())}).{hint}")
    return self._read_latest(hint, step)

  def _read_latest(self, hint: str, step: Optional[int] = None, resuming: bool = False):
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    try:
      return self._read_verified(step)
    except DamagedCheckpointError as e:
      if resuming:
        hint = " " + self._damage_advice(step)
      raise DamagedCheckpointError(f"{e}.{hint}") from e.__cause__

  def _read_verified(self, step: int) -> tuple:
    # (where, tree) of checkpoint `step`, its arrays checked against their saved CRC-32s.
    where = paths.join(self.directory, str(step))
    try:
      tree = self._manager.restore(step, args=ocp.args.StandardRestore())
    except Exception as e:  # Orbax/TensorStore raise many types for damaged files.
      raise DamagedCheckpointError(f"Checkpoint {where} could not be read ({_one_line(e)})"
                                   ) from e
    saved = tree.pop(CHECKSUMS_KEY, None)  # Absent from checkpoints written before checksums.
    if saved is not None:
      damaged = _damaged_arrays(tree, np.asarray(saved))
      if damaged:
        shown = ", ".join(damaged[:3]) + (f" and {len(damaged) - 3} more"
                                          if len(damaged) > 3 else "")
        raise DamagedCheckpointError(
            f"Checkpoint {where} is damaged: {len(damaged)} of its arrays differ from the "
            f"checksums saved with them ({shown})")
    return where, tree

  def _damage_advice(self, step: int) -> str:
    where = paths.join(self.directory, str(step))
    older = [s for s in self.finished_steps() if s < step]
    then = (f"resume from checkpoint {max(older)}" if older
            else "start the run over (no older checkpoint is left)")
    return (f"It is left as it is: move it aside (e.g. mv {where} {self._aside(step)}) to "
            f"{then}, or rerun with --skip_damaged_checkpoints to do so.")

  def _aside(self, step: int) -> str:
    return paths.join(self.directory + "_damaged", str(step))

  def _read_intact(self) -> Optional[tuple]:
    # The newest checkpoint that reads back intact; damaged newer ones are moved aside.
    while True:
      step = self.latest_step()
      if step is None:
        return None
      try:
        return self._read_verified(step)
      except DamagedCheckpointError as e:
        paths.move_tree(paths.join(self.directory, str(step)), self._aside(step))
        self._manager.reload()
        logging.warning("%s; moved it to %s.", e, self._aside(step))

  def finished_steps(self) -> List[int]:
    """The steps of the finished checkpoints on disk (unfinished saves left out)."""
    if not paths.isdir(self.directory):
      return []
    return sorted(int(d) for d in paths.listdir(self.directory) if d.isdigit())

  def latest_finished_step(self) -> Optional[int]:
    """The latest checkpoint on disk once the saves in progress have ended (or failed)."""
    try:
      self._manager.wait_until_finished()
    except Exception:  # pylint: disable=broad-except  # A failed save leaves the older ones.
      self._discard_unfinished()
    steps = self.finished_steps()
    return steps[-1] if steps else None

  def should_save(self, step: int) -> bool:
    return self._manager.should_save(step)

  def save(self, step: int, host_state: Any, force: bool = False) -> None:
    """Starts an (asynchronous) save of ``host_state`` as checkpoint ``step``.

    Raises:
      paths.WriteError: this save, or the previous one still in progress, failed.
    """
    tree = _to_host_tree(host_state)
    tree[CHECKSUMS_KEY] = _checksums(tree)
    try:
      self._manager.save(step, args=ocp.args.StandardSave(tree), force=force)
    except Exception as e:  # pylint: disable=broad-except  # OSError, TensorStore's ValueError.
      raise self._write_failed(e) from e

  def reached_preemption(self, step: int) -> bool:
    """Multi-host preemption agreement (all hosts stop at the same step)."""
    return self._manager.reached_preemption(step)

  def wait(self) -> None:
    """Waits for the saves in progress; raises ``paths.WriteError`` if one failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_failed(e) from e

  def close(self) -> None:
    """Finishes the saves in progress and stops Orbax's threads (``paths.WriteError`` if a
    save failed)."""
    try:
      self._manager.close()
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_failed(e) from e

  def abort(self) -> None:
    """``close`` for a run that is already failing: waits for the saves in progress, removes
    an unfinished one, and raises nothing."""
    try:
      self._manager.close()
    except Exception:  # pylint: disable=broad-except  # The run's own error is reported.
      self._discard_unfinished()

  def _discard_unfinished(self) -> None:
    if jax.process_index() != 0 or not paths.isdir(self.directory):
      return
    for name in paths.listdir(self.directory):
      if _TMP_SUFFIX in name:
        try:
          paths.remove_tree(paths.join(self.directory, name))
        except OSError as e:  # A read-only directory: the next run's Checkpointer removes it.
          logging.warning("Could not remove the unfinished checkpoint %s (%s).", name, e)

  def _write_failed(self, error: Exception) -> "paths.WriteError":
    self._discard_unfinished()
    latest = self.finished_steps()
    kept = (f"checkpoint {latest[-1]} stays the latest" if latest
            else "no checkpoint was written, so a rerun starts over")
    return paths.WriteError(
        f"A checkpoint could not be written to {self.directory} ({_one_line(error)}); "
        f"{kept}. Free space or make the directory writable, then run the same command "
        "again to resume.")


def write_weights(variables: Any, directory: str) -> None:
  """Writes ``{'params', 'batch_stats'}`` as step 0 of a checkpoint in ``directory`` (local or
  ``gs://``), replacing what is there: the form ``config.init_from`` reads (converted or
  pruned weights)."""
  paths.remove_tree(directory)
  checkpointer = Checkpointer(directory)
  state = {"step": np.asarray(0, np.int32), "params": variables["params"],
           "batch_stats": variables.get("batch_stats", {})}
  checkpointer.save(0, state, force=True)
  checkpointer.wait()
  checkpointer.close()


def _checkpoint_problems(config) -> List[str]:
  return (config_fields.positive(config, "checkpoint_every_steps", integer=True)
          + config_fields.positive(config, "keep_checkpoints", integer=True))


# How often the loop saves (and at the end and on SIGTERM), and how many it keeps.
CHECKPOINT_FIELDS = config_fields.ConfigFields(
    "checkpoint", defaults={"checkpoint_every_steps": 1000, "keep_checkpoints": 2},
    check=_checkpoint_problems)
