"""The distillation teacher: a model of ``models/`` restored from a previous run.

``config.distill`` names the teacher by its run: ``teacher_workdir`` holds its checkpoints, and
its config is ``teacher_config`` (a ``get_config()`` file) or, when that is empty, the
``config.json`` every run writes into its workdir. The teacher may be any architecture whose
task predicts classes (a ``class_logits`` method); it must have been trained on the same
classes and input shape. Only its variables (``params``, ``batch_stats`` and its task state,
e.g. a forest's leaves) are loaded, so its optimizer or precision do not matter.

``TeacherHook`` runs the teacher inside the train step, on the augmented batch, and puts its
logits into the batch as ``teacher_logits`` for the task's loss.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any, List, Optional

import jax
import jax.numpy as jnp
import ml_collections
from jax import lax

import models
from bagtricks import checkpoint, config_fields, paths, tasks
from bagtricks.steps import StepHook, float32_outputs, model_variables
from bagtricks.tasks.base import model_inputs


def _load_config_file(path: str) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location("teacher_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def teacher_config(distill_config) -> ml_collections.ConfigDict:
  """The config the teacher was trained with (see the module docstring)."""
  if distill_config.teacher_config:
    return _load_config_file(distill_config.teacher_config)
  return ml_collections.ConfigDict(json.loads(
      paths.read_text(paths.join(distill_config.teacher_workdir, "config.json"))))


def config_problems(config) -> List[str]:
  """Problems of ``config.distill`` (empty when distillation is off or all is well)."""
  distill = config.distill
  if not distill.enabled:
    return []
  problems = []
  if not distill.temperature > 0:
    problems.append(f"config.distill.temperature={distill.temperature} must be > 0 "
                    "(Bag of Tricks uses 20).")
  if not 0.0 <= distill.soft_weight <= 1.0:
    problems.append(f"config.distill.soft_weight={distill.soft_weight} must be in [0, 1].")
  workdir = distill.teacher_workdir
  train_hint = ("train the teacher first (python train.py --config=<teacher config> "
                f"--workdir={workdir or '<dir>'}) or set config.distill.enabled=False.")
  if not workdir:
    problems.append("config.distill.teacher_workdir is empty: name the workdir of a trained "
                    "teacher run.")
    return problems
  if not checkpoint.has_checkpoint(paths.join(workdir, "checkpoints")):
    problems.append(f"config.distill.teacher_workdir={workdir!r} holds no checkpoint: "
                    + train_hint)
  if distill.teacher_config:
    if not os.path.isfile(distill.teacher_config):
      problems.append(f"config.distill.teacher_config={distill.teacher_config!r} is not a file; "
                      "name the teacher's config file, or leave it empty to use "
                      "config.json in config.distill.teacher_workdir.")
      return problems
  elif not paths.exists(paths.join(workdir, "config.json")):
    problems.append(f"config.distill.teacher_workdir={workdir!r} has no config.json; set "
                    "config.distill.teacher_config to the teacher's config file.")
    return problems
  try:
    name = teacher_config(distill).model.name
  except Exception as e:  # A broken config file: report it with the field.
    problems.append(f"config.distill.teacher_config could not be loaded ({type(e).__name__}: "
                    f"{e}).")
    return problems
  try:
    models.get_spec(name)
  except ValueError as e:
    problems.append(f"the teacher's {str(e)[len('config.'):]}")
  return problems


class TeacherHook(StepHook):
  """Adds ``teacher_logits`` ``[batch, K]`` (float32, no gradient) to the training batch.

  Runs the teacher with ``train=False`` on the batch as the augmentations left it, so the
  student is distilled on the very images it sees.

  Args:
    model: the teacher's Flax module.
    task: the teacher's task (its ``input_keys`` and ``class_logits``).
    dtype: the compute dtype of the teacher's forward pass.
    variables: ``{'params', 'batch_stats', 'task_state'}`` host arrays, passed to the step as
      this hook's variables.
  """

  def __init__(self, model, task, dtype, variables):
    self.model = model
    self.task = task
    self.dtype = dtype
    self._variables = variables

  def variables(self):
    return self._variables

  def prepare_batch(self, batch, step, rng, variables):
    del step, rng
    args, kwargs = model_inputs(self.task, batch, self.dtype)
    outputs = self.model.apply(
        model_variables(variables["params"], variables["batch_stats"]), *args,
        train=False, **kwargs)
    logits = self.task.class_logits(float32_outputs(outputs), variables["task_state"])
    return {**batch, "teacher_logits": lax.stop_gradient(logits)}


def load_teacher(distill_config, dataset_info, dtype: Any = jnp.float32,
                 config: Optional[ml_collections.ConfigDict] = None) -> TeacherHook:
  """Builds the teacher model and its task and restores its weights and task state.

  Args:
    distill_config: ``config.distill``.
    dataset_info: the student's dataset (the teacher's head must match its classes).
    dtype: compute dtype for the teacher's forward pass.
    config: the teacher's config with its defaults (``validate.complete_config``); default
      ``teacher_config(distill_config)`` as it is.

  Returns:
    The ``TeacherHook``.

  Raises:
    checkpoint.CheckpointError: the teacher's checkpoint does not fit its model.
  """
  config = teacher_config(distill_config) if config is None else config
  task = tasks.create_task(config, dataset_info)
  model = models.create_model_from_config(config, dataset_info, num_outputs=task.num_outputs,
                                          dtype=dtype)
  example = dataset_info.example_batch()
  args, kwargs = model_inputs(task, example, jnp.float32)
  template = jax.eval_shape(
      lambda: {**model.init(jax.random.PRNGKey(0), *args, train=False, **kwargs),
               "task_state": task.init_state(jax.random.PRNGKey(0), example)})
  reader = checkpoint.Checkpointer(
      paths.join(distill_config.teacher_workdir, "checkpoints"), read_only=True)
  try:
    restored = reader.restore_variables(dict(template))
  finally:
    reader.close()
  variables = {"params": restored["params"], "batch_stats": restored.get("batch_stats", {}),
               "task_state": restored.get("task_state", {})}
  return TeacherHook(model, task, dtype, variables)


# Knowledge distillation from a trained run: off by default.
DISTILL_FIELDS = config_fields.ConfigFields(
    "distill",
    defaults={"distill.enabled": False, "distill.teacher_workdir": "",
              "distill.teacher_config": "", "distill.temperature": 20.0,
              "distill.soft_weight": 0.5},
    check=config_problems)
