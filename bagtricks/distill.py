"""The distillation teacher: a model of ``models/`` restored from a previous run.

``config.distill`` names the teacher by its run: ``teacher_workdir`` holds its checkpoints, and
its config is ``teacher_config`` (a ``get_config()`` file) or, when that is empty, the
``config.json`` every run writes into its workdir. The teacher may be any architecture; it must
have been trained on the same classes and image shape. Only its variables (``params`` and
``batch_stats``) are loaded, so its optimizer or precision do not matter.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any, List, Tuple

import jax
import jax.numpy as jnp
import ml_collections

import models
from bagtricks import checkpoint


def _load_config_file(path: str) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location("teacher_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def teacher_config(distill_config) -> ml_collections.ConfigDict:
  """The config the teacher was trained with (see the module docstring)."""
  if distill_config.teacher_config:
    return _load_config_file(distill_config.teacher_config)
  with open(os.path.join(distill_config.teacher_workdir, "config.json")) as f:
    return ml_collections.ConfigDict(json.load(f))


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
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir) or not any(d.isdigit() for d in os.listdir(ckpt_dir)):
    problems.append(f"config.distill.teacher_workdir={workdir!r} holds no checkpoint: "
                    + train_hint)
  if distill.teacher_config:
    if not os.path.isfile(distill.teacher_config):
      problems.append(f"config.distill.teacher_config={distill.teacher_config!r} is not a file; "
                      "name the teacher's config file, or leave it empty to use "
                      "config.json in config.distill.teacher_workdir.")
      return problems
  elif not os.path.isfile(os.path.join(workdir, "config.json")):
    problems.append(f"config.distill.teacher_workdir={workdir!r} has no config.json; set "
                    "config.distill.teacher_config to the teacher's config file.")
    return problems
  try:
    name = teacher_config(distill).model.name
  except Exception as e:  # A broken config file: report it with the field.
    problems.append(f"config.distill.teacher_config could not be loaded ({type(e).__name__}: "
                    f"{e}).")
    return problems
  if name not in models.MODEL_NAMES:
    problems.append(f"the teacher's model.name={name!r} is unknown; use one of "
                    f"{models.MODEL_NAMES}.")
  return problems


def load_teacher(distill_config, num_classes: int, input_shape: Tuple[int, int, int],
                 dtype: Any = jnp.float32):
  """Builds the teacher model and restores its weights.

  Args:
    distill_config: ``config.distill``.
    num_classes: the student's number of classes (the teacher's head must match).
    input_shape: ``(height, width, channels)``.
    dtype: compute dtype for the teacher's forward pass.

  Returns:
    ``(model, variables)``: the Flax module (to be run with ``train=False``) and its host
    variables.

  Raises:
    checkpoint.CheckpointError: the teacher's checkpoint does not fit its model.
  """
  from bagtricks.validate import build_model_kwargs  # validate imports this module.
  config = teacher_config(distill_config)
  model = models.create_model(config.model.name, num_classes=num_classes, dtype=dtype,
                              **build_model_kwargs(config))
  template = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + tuple(input_shape)),
                         train=False))
  reader = checkpoint.Checkpointer(
      os.path.join(distill_config.teacher_workdir, "checkpoints"), read_only=True)
  try:
    variables = reader.restore_variables(dict(template))
  finally:
    reader.close()
  return model, variables
