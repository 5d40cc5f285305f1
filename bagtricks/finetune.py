"""Fine-tuning from another run's checkpoint: ``config.init_from``.

"Rethinking ImageNet Pre-training" (He, Girshick & Dollár 2018) compares a network fine-tuned
from pre-trained weights with the same network trained from scratch. ``config.init_from``
starts a run from the weights of a checkpoint instead of a random initialization:

* the source is a train run's workdir (its latest checkpoint under ``<workdir>/checkpoints``),
  a checkpoints directory (its latest step), one step's directory under it, or the output
  directory of a weight converter (``<out_dir>/checkpoints``, step 0, holding
  ``{'step', 'params', 'batch_stats'}``);
* only ``params`` and ``batch_stats`` are read; optimizer state, step, PRNG key and task
  state start fresh, so the optimizer, schedule and precision may differ from the source's;
* each model variable is matched by its path name (``stage1_block1/conv1/kernel``) and shape:
  same name and shape → loaded; absent from the checkpoint → left new (its random
  initialization); matching ``config.init_reinit`` → re-initialized on purpose; a shape that
  differs only in its last axis, which is the task's output count (the classifier head when
  the class count differs) → re-initialized. Any other shape difference is an error naming
  every such variable, raised before anything is compiled;
* the names loaded, re-initialized, left new and unused are logged and written to
  ``<workdir>/init_from.json``.

A run that already has its own checkpoint resumes from it and does not read ``init_from``
again. The parameter groups of ``config.optimizer.param_groups`` (``optim.with_param_groups``)
give the per-group learning-rate multipliers or frozen layers of fine-tuning.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np
from absl import logging

from bagtricks import checkpoint, config_fields, optim, paths

COLLECTIONS = ("params", "batch_stats")


class InitFromError(checkpoint.CheckpointError):
  """``config.init_from`` names no checkpoint, or its variables do not fit the model."""


def resolve(path: str) -> Tuple[str, Optional[int]]:
  """Where ``config.init_from`` points: ``(checkpoints directory, step or None for latest)``.

  Raises:
    InitFromError: no checkpoint there.
  """
  full = paths.absolute(path)
  if checkpoint.has_checkpoint(paths.join(full, "checkpoints")):
    return paths.join(full, "checkpoints"), None
  if checkpoint.has_checkpoint(full):
    return full, None
  parent, leaf = str(paths.path(full).parent), paths.path(full).name
  if leaf.isdigit() and paths.isdir(full):
    return parent, int(leaf)
  raise InitFromError(
      f"config.init_from={path!r} holds no checkpoint: give a finished run's workdir (its "
      "latest checkpoint under <workdir>/checkpoints is read), a checkpoints directory, one "
      "step's directory under it, or a converter's output directory; or set "
      "config.init_from='' to train from scratch.")


def read_pretrained(path: str) -> Tuple[str, Dict[str, Any]]:
  """The ``params`` and ``batch_stats`` of the checkpoint ``path`` names (see ``resolve``).

  Returns:
    ``(where, {'params': nested dict, 'batch_stats': nested dict})`` of host NumPy arrays.

  Raises:
    InitFromError: no checkpoint there, or it holds no ``params``.
    checkpoint.CheckpointError: the checkpoint cannot be read.
  """
  directory, step = resolve(path)
  reader = checkpoint.Checkpointer(directory, read_only=True)
  try:
    found = reader.read(step, hint=f" (config.init_from={path!r})")
  finally:
    reader.close()
  where, tree = found
  if not isinstance(tree, dict) or not isinstance(tree.get("params"), dict):
    raise InitFromError(f"config.init_from={path!r}: checkpoint {where} holds no 'params' "
                        "(a train state or a converter's {'step', 'params', 'batch_stats'} "
                        "is expected).")
  return where, {c: tree.get(c) or {} for c in COLLECTIONS}


def _flat(tree: Any) -> Dict[str, Any]:
  return {optim.path_name(path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


@dataclasses.dataclass
class InitPlan:
  """What ``plan_init`` decided, per variable ``'<collection>/<path name>'``.

  Attributes:
    source: the checkpoint read (its step directory).
    values: the loaded arrays, keyed like the name lists.
    loaded: variables taken from the checkpoint.
    reinitialized: variables the checkpoint has but that keep their new initialization
      (``config.init_reinit``, or a head whose class count differs).
    new: variables the checkpoint lacks.
    unused: checkpoint variables the model does not have.
  """
  source: str
  values: Dict[str, np.ndarray]
  loaded: List[str]
  reinitialized: List[str]
  new: List[str]
  unused: List[str]

  def report(self) -> Dict[str, Any]:
    """The name lists (what ``init_from.json`` holds)."""
    return {"source": self.source, "loaded": self.loaded, "reinitialized": self.reinitialized,
            "new": self.new, "unused": self.unused}


def plan_init(shapes: Dict[str, Any], pretrained: Dict[str, Any], num_outputs: Optional[int],
              source: str = "", reinit_pattern: str = "") -> InitPlan:
  """Matches the model's variables with a checkpoint's, by path name and shape.

  Args:
    shapes: the model's ``{'params', 'batch_stats'}`` (arrays or ``jax.ShapeDtypeStruct``,
      e.g. ``state.variable_shapes``).
    pretrained: the checkpoint's ``{'params', 'batch_stats'}``.
    num_outputs: the model's output count (the classes); a variable whose shape differs only
      in its last axis, and whose new last axis is ``num_outputs``, is the head and is
      re-initialized.
    source: where the checkpoint came from (for messages).
    reinit_pattern: a regular expression; variables whose path name (without the collection)
      it matches (``re.search``) are re-initialized whatever their shape.

  Returns:
    The ``InitPlan``.

  Raises:
    InitFromError: a variable of the same name has another shape (and is not the head), or
      no variable at all could be loaded; every offending name is listed.
  """
  reinit = re.compile(reinit_pattern) if reinit_pattern else None
  values, loaded, reinitialized, new, unused, problems = {}, [], [], [], [], []
  for collection in COLLECTIONS:
    model_vars = _flat(shapes.get(collection) or {})
    ckpt_vars = _flat(pretrained.get(collection) or {})
    for name, spec in model_vars.items():
      key = f"{collection}/{name}"
      if name not in ckpt_vars:
        new.append(key)
        continue
      have, want = tuple(np.shape(ckpt_vars[name])), tuple(spec.shape)
      if reinit is not None and reinit.search(name):
        reinitialized.append(key)
      elif have == want:
        values[key] = np.asarray(ckpt_vars[name], dtype=spec.dtype)
        loaded.append(key)
      elif (len(have) == len(want) and have[:-1] == want[:-1] and want
            and want[-1] == num_outputs):
        reinitialized.append(key)  # The classifier head of another class count.
      else:
        problems.append(f"{key} has shape {have} in the checkpoint and {want} in the model")
    unused += [f"{collection}/{n}" for n in ckpt_vars if n not in model_vars]
  if problems:
    shown = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
    raise InitFromError(
        f"config.init_from={source!r}: {len(problems)} variable(s) do not fit the model: "
        + "; ".join(shown) + ". Start from a checkpoint of the same architecture and width, "
        "or re-initialize them on purpose with config.init_reinit='<regex of their names>'.")
  if not loaded:
    model_names = list(_flat(shapes.get("params") or {}))[:3]
    ckpt_names = list(_flat(pretrained.get("params") or {}))[:3]
    raise InitFromError(
        f"config.init_from={source!r}: no variable of the model was found in the checkpoint "
        f"(the model's names look like {model_names}, the checkpoint's like {ckpt_names}); it "
        "was written by another architecture.")
  return InitPlan(source, values, loaded, reinitialized, new, unused)


def apply_plan(host_state, plan: InitPlan):
  """``host_state`` with the plan's loaded values in ``params`` and ``batch_stats``.

  The weight EMA, when the run keeps one, starts from the loaded weights too; the optimizer
  state stays as initialized (its moments are zeros whatever the weights).

  Args:
    host_state: a freshly initialized ``TrainState`` of host arrays.
    plan: the result of ``plan_init`` for the same model.

  Returns:
    The new ``TrainState``.
  """

  def load(collection, tree):
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: plan.values.get(f"{collection}/{optim.path_name(path)}", leaf),
        tree)

  params = load("params", host_state.params)
  batch_stats = load("batch_stats", host_state.batch_stats)
  ema = host_state.ema
  if ema:
    ema = {**ema, "params": params, "batch_stats": batch_stats}
  return host_state.replace(params=params, batch_stats=batch_stats, ema=ema)


def log_plan(plan: InitPlan, workdir: Optional[str] = None) -> None:
  """Logs the plan's name lists and writes them to ``<workdir>/init_from.json``."""
  logging.info("Initialized from %s: %d variables loaded, %d re-initialized, %d new, "
               "%d checkpoint variables unused.", plan.source, len(plan.loaded),
               len(plan.reinitialized), len(plan.new), len(plan.unused))
  for label, names in (("loaded", plan.loaded), ("re-initialized", plan.reinitialized),
                       ("new", plan.new), ("unused", plan.unused)):
    if names:
      logging.info("init_from %s: %s", label, ", ".join(names))
  if workdir is not None:
    paths.write_text(paths.join(workdir, "init_from.json"), json.dumps(plan.report(), indent=1))


def config_problems(config) -> List[str]:
  """Problems of ``config.init_from`` and ``config.init_reinit`` found without reading."""
  problems = []
  init_from = config.init_from
  if not isinstance(init_from, str):
    problems.append(f"config.init_from={init_from!r} must be a path (a run's workdir or a "
                    "checkpoint directory) or '' (train from scratch).")
  pattern = config.init_reinit
  if not isinstance(pattern, str):
    problems.append(f"config.init_reinit={pattern!r} must be a regular expression or ''.")
  else:
    try:
      re.compile(pattern)
    except re.error as e:
      problems.append(f"config.init_reinit={pattern!r} is not a regular expression ({e}).")
  if pattern and not init_from:
    problems.append(f"config.init_reinit={pattern!r} needs config.init_from (the checkpoint "
                    "to start from); set both, or neither.")
  return problems


# Fine-tuning from another run's weights: from scratch by default.
FINETUNE_FIELDS = config_fields.ConfigFields(
    "init_from", defaults={"init_from": "", "init_reinit": ""}, check=config_problems)
