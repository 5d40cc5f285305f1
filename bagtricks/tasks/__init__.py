"""Tasks by name: how a batch and a model's output become a loss and metrics.

``config.task`` names the task (empty: the model's own default, e.g. ``'soft_tree'`` for a
soft decision tree); ``register_task`` adds one, and an import path
``'package.module:ClassName'`` names a task class defined anywhere on the Python path. Every
task follows the protocol of ``tasks.base.Task``.
"""

from __future__ import annotations

import importlib
from typing import Callable, Dict, List, Type

import models
from bagtricks import config_fields
from bagtricks.tasks.base import EXAMPLES, IMAGES, TOKENS, Refit, Task, TaskBase, Throughput
from bagtricks.tasks.classification import ClassificationTask, logits_of, prediction_heads
from bagtricks.tasks.detection import DetectionTask
from bagtricks.tasks.embedding import CenterLossTask, CircleLossTask
from bagtricks.tasks.gait import GaitTask
from bagtricks.tasks.graph import GRAPH_TARGETS, GraphTask
from bagtricks.tasks.latent_truth import LATENT_TRUTH_METHODS, LatentTruthTask
from bagtricks.tasks.multilabel import MultiLabelTask
from bagtricks.tasks.sequence import Seq2SeqTask
from bagtricks.tasks.trees import ForestTask, SoftTreeTask
from bagtricks.tasks.web_bags import WebBagsTask

_REGISTRY: Dict[str, Type] = {}


def register_task(name: str) -> Callable[[Type], Type]:
  """Class decorator: ``@register_task('regression')`` makes ``config.task='regression'``
  build that class with its ``from_config(config, dataset_info)``."""

  def register(cls: Type) -> Type:
    _REGISTRY[name] = cls
    return cls

  return register


register_task("classification")(ClassificationTask)
register_task("soft_tree")(SoftTreeTask)
register_task("forest")(ForestTask)
register_task("seq2seq")(Seq2SeqTask)
register_task("center_loss")(CenterLossTask)
register_task("circle_loss")(CircleLossTask)
register_task("multilabel")(MultiLabelTask)
register_task("latent_truth")(LatentTruthTask)
register_task("graph")(GraphTask)
register_task("gait")(GaitTask)
register_task("web_bags")(WebBagsTask)
register_task("detection")(DetectionTask)


def task_names() -> tuple:
  """Every registered task name."""
  return tuple(_REGISTRY)


def task_name(config) -> str:
  """``config.task``, or when it is empty the default task of ``config.model``'s model."""
  name = config.task
  if name:
    return name
  return models.get_spec(config.model.name).default_task(models.registry.model_kwargs(
      config.model))


def get_task_class(name: str) -> Type:
  """The task class of a registered name or an import path ``'module:ClassName'``.

  Raises:
    ValueError: unknown name or an import path that does not resolve.
  """
  if ":" in name:
    module_name, _, attribute = name.partition(":")
    try:
      return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as e:
      raise ValueError(f"config.task={name!r} does not import ({type(e).__name__}: {e}); "
                       "give 'package.module:ClassName' on the Python path.") from e
  if name not in _REGISTRY:
    raise ValueError(f"config.task={name!r} is unknown; use one of {task_names()} or an "
                     "import path 'package.module:ClassName'.")
  return _REGISTRY[name]


def create_task(config, dataset_info) -> Task:
  """The task of a run, built for its dataset."""
  return get_task_class(task_name(config)).from_config(config, dataset_info)


def config_problems(config) -> List[str]:
  """The task's own config checks (and an unknown task name) before anything is built."""
  try:
    name = task_name(config)
  except ValueError:
    return []  # An unknown model: its own check reports it.
  try:
    task_class = get_task_class(name)
  except ValueError as e:
    return [str(e)]
  return list(task_class.check_config(config))


def task_defaults(config) -> dict:
  """``config.task`` (empty: the model's default) and the defaults of the task it names."""
  try:
    task_class = get_task_class(task_name(config))
  except (ValueError, KeyError, AttributeError):
    return {"task": ""}  # An unknown model or task: its check reports it.
  return {"task": "", **task_class.config_defaults}


# The task and the optional fields of the task it names.
TASK_FIELDS = config_fields.ConfigFields("task", defaults=task_defaults, check=config_problems)


def data_problems(config, dataset_info) -> List[str]:
  """The task's checks against the dataset (e.g. classification needs class labels)."""
  task_class = get_task_class(task_name(config))
  check = getattr(task_class, "check_for_data", None)
  return list(check(config, dataset_info)) if check else []


__all__ = ["TASK_FIELDS", "CenterLossTask", "CircleLossTask", "ClassificationTask",
           "config_problems", "create_task", "data_problems", "DetectionTask", "EXAMPLES",
           "ForestTask", "GaitTask", "get_task_class", "GRAPH_TARGETS", "GraphTask", "IMAGES",
           "LATENT_TRUTH_METHODS", "LatentTruthTask", "logits_of", "MultiLabelTask",
           "prediction_heads", "Refit", "register_task", "Seq2SeqTask", "SoftTreeTask", "Task",
           "TaskBase", "task_name", "task_names", "Throughput", "TOKENS", "WebBagsTask"]
