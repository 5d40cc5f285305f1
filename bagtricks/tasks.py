"""Tasks: how a batch and a model's output become a loss and metrics.

The train and eval steps are shared by every model; what is specific to a kind of problem
(image classification here) lives in a small task object chosen by config. The train step asks
the task for target distributions, lets the batch augmentations mix them with the images, and
hands them back to the task's loss.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp

from bagtricks import losses

TASKS = ("classification", "soft_tree")


def logits_of(outputs: Any) -> jnp.ndarray:
  """The class logits of a model's output: the array itself, or ``outputs['logits']``.

  Models return either logits ``[batch, K]`` or a dict holding ``logits`` and whatever else
  their task needs (a soft decision tree's path probabilities, for instance).
  """
  return outputs["logits"] if isinstance(outputs, dict) else outputs


def prediction_heads(outputs: Any) -> Dict[str, jnp.ndarray]:
  """Every prediction a model makes, by accuracy suffix.

  ``''`` is ``logits_of(outputs)``; a dict's other ``<name>_logits`` entries add ``'_<name>'``
  (e.g. a soft tree's ``max_path_logits`` is reported as ``test_accuracy_max_path``).
  """
  heads = {"": logits_of(outputs)}
  if isinstance(outputs, dict):
    heads.update({"_" + k[:-len("_logits")]: v for k, v in outputs.items()
                  if k.endswith("_logits") and k != "logits"})
  return heads


class ClassificationTask:
  """Single-label classification with softmax cross-entropy, optionally distilled.

  Args:
    num_classes: K.
    label_smoothing: ε of ``losses.smooth_labels`` for the training targets (0 = none).
    label_smoothing_mode: ``'paper'`` or ``'optax'``.
    distill_temperature: T of ``losses.distillation_loss`` (used when teacher logits are given).
    distill_soft_weight: w of ``losses.distillation_loss``.
  """

  def __init__(self, num_classes: int, label_smoothing: float = 0.0,
               label_smoothing_mode: str = "paper", distill_temperature: float = 20.0,
               distill_soft_weight: float = 0.5):
    self.num_classes = num_classes
    self.label_smoothing = label_smoothing
    self.label_smoothing_mode = label_smoothing_mode
    self.distill_temperature = distill_temperature
    self.distill_soft_weight = distill_soft_weight

  def train_targets(self, batch: Dict[str, jnp.ndarray]) -> jnp.ndarray:
    """Training target distributions ``[batch, num_classes]`` (label smoothing applied)."""
    return losses.smooth_labels(batch["label"], self.num_classes, self.label_smoothing,
                                self.label_smoothing_mode)

  def train_loss(self, logits: jnp.ndarray, targets: jnp.ndarray,
                 teacher_logits: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """Per-example training losses ``[batch]``: cross-entropy, or distillation with a teacher."""
    logits = logits_of(logits)
    if teacher_logits is None:
      return losses.softmax_cross_entropy(logits, targets)
    return losses.distillation_loss(logits, teacher_logits, targets, self.distill_temperature,
                                    self.distill_soft_weight)

  def train_metrics(self, logits: jnp.ndarray, targets: jnp.ndarray) -> Dict[str, jnp.ndarray]:
    """Per-device means, to be averaged across devices.

    Accuracy counts the prediction against the targets' largest class (for mixed targets, the
    image that contributes most).
    """
    logits = logits_of(logits)
    return {"accuracy": jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(targets, -1))}

  def eval_sums(self, outputs, batch) -> Dict[str, jnp.ndarray]:
    """Masked sums (to be summed across devices): plain cross-entropy, correct, count.

    ``correct`` counts the main prediction; ``correct_<name>`` each other prediction head
    (``prediction_heads``).
    """
    mask = batch["mask"]
    heads = prediction_heads(outputs)
    ce = losses.classification_loss(heads[""], batch["label"])
    sums = {"loss": jnp.sum(ce * mask), "count": jnp.sum(mask)}
    for suffix, logits in heads.items():
      correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
      sums["correct" + suffix] = jnp.sum(correct * mask)
    return sums


class SoftTreeTask(ClassificationTask):
  """A soft decision tree trained with Frosst & Hinton (2017)'s loss, optionally distilled.

  The loss of an example is ``losses.soft_tree_loss`` (each leaf's cross-entropy with the
  targets, weighted by its path probability) plus the model's balancing penalty. With a
  teacher, the targets are T = (1 − w)·y + w·softmax(t / τ): the paper trains the tree on the
  soft targets of a trained network (w = 1).
  """

  def train_loss(self, outputs: dict, targets: jnp.ndarray,
                 teacher_logits: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    if teacher_logits is not None:
      soft = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits) / self.distill_temperature,
                            axis=-1)
      targets = (1.0 - self.distill_soft_weight) * targets + self.distill_soft_weight * soft
    per_example = losses.soft_tree_loss(outputs["path_probs"], outputs["leaf_log_probs"],
                                        targets)
    return per_example + outputs["penalty"]


def task_from_config(config, num_classes: int) -> ClassificationTask:
  """The task ``config.task`` names (default ``'classification'``), with its settings."""
  name = config.get("task", "classification")
  task_class = {"classification": ClassificationTask, "soft_tree": SoftTreeTask}[name]
  return task_class(num_classes, config.label_smoothing, config.label_smoothing_mode,
                    config.distill.temperature, config.distill.soft_weight)
