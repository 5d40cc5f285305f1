"""Orbax checkpoints of the train state: restore-or-init, periodic and preemption saves.

Checkpoints hold the whole ``TrainState`` as host NumPy arrays (step, float32 params, BatchNorm
statistics, optimizer and loss-scale state, PRNG key). The data pipeline is a pure function of
(config, step), so nothing else is needed to resume bit for bit. Orbax writes each checkpoint
into a temporary directory and renames it when complete, so a run killed mid-save (even by
SIGKILL) leaves the previous checkpoint as the latest one.

A checkpoint that cannot be restored into the state the current config builds (another model,
optimizer or precision, or damaged files) stops the run with an error and is never overwritten.
"""

from __future__ import annotations

from typing import Any, List, Optional

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from bagtricks import config_fields, paths


class CheckpointError(RuntimeError):
  """A checkpoint exists but does not fit the current run."""


def has_checkpoint(directory: str) -> bool:
  """Whether ``directory`` (local or remote) holds a finished, step-numbered checkpoint."""
  return paths.isdir(directory) and any(d.isdigit() for d in paths.listdir(directory))


def _to_host_tree(state: Any) -> Any:
  # Orbax stores NumPy arrays, not NumPy scalars; flatten the dataclass/NamedTuple state to
  # plain nested dicts so the on-disk layout does not depend on Python class names.
  tree = flax.serialization.to_state_dict(state)
  return jax.tree_util.tree_map(np.asarray, tree)


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

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def restore(self, template: Any) -> Optional[Any]:
    """The latest checkpoint as a state shaped like ``template``, or None if there is none.

    Args:
      template: a freshly initialized host state (its structure, shapes and dtypes are what
        the checkpoint must match).

    Returns:
      The restored state (host NumPy leaves) or None.

    Raises:
      CheckpointError: the checkpoint is damaged or was written by an incompatible config.
    """
    hint = (" The checkpoint is left untouched. Start the run in a new --workdir, or run "
            "with the config that wrote it (see config.json in the workdir).")
    found = self._read_latest(hint)
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
      CheckpointError: the checkpoint cannot be read, or ``step`` is not among the steps.
    """
    if step is not None and step not in self._manager.all_steps():
      raise CheckpointError(f"{self.directory} has no checkpoint of step {step} (it has "
                            f"{sorted(self._manager.all_steps())}).{hint}")
    return self._read_latest(hint, step)

  def _read_latest(self, hint: str, step: Optional[int] = None):
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    where = paths.join(self.directory, str(step))
    try:
      return where, self._manager.restore(step, args=ocp.args.StandardRestore())
    except Exception as e:  # Orbax/TensorStore raise many types for damaged files.
      raise CheckpointError(
          f"Checkpoint {where} could not be read ({type(e).__name__}: {str(e)[:200]})."
          + hint) from e

  def should_save(self, step: int) -> bool:
    return self._manager.should_save(step)

  def save(self, step: int, host_state: Any, force: bool = False) -> None:
    """Starts an (asynchronous) save of ``host_state`` as checkpoint ``step``."""
    self._manager.save(step, args=ocp.args.StandardSave(_to_host_tree(host_state)), force=force)

  def reached_preemption(self, step: int) -> bool:
    """Multi-host preemption agreement (all hosts stop at the same step)."""
    return self._manager.reached_preemption(step)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _checkpoint_problems(config) -> List[str]:
  return (config_fields.positive(config, "checkpoint_every_steps", integer=True)
          + config_fields.positive(config, "keep_checkpoints", integer=True))


# How often the loop saves (and at the end and on SIGTERM), and how many it keeps.
CHECKPOINT_FIELDS = config_fields.ConfigFields(
    "checkpoint", defaults={"checkpoint_every_steps": 1000, "keep_checkpoints": 2},
    check=_checkpoint_problems)
