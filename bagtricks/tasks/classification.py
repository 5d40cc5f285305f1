"""Single-label classification: softmax cross-entropy, label smoothing, distillation."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import jax.numpy as jnp

from bagtricks import losses
from bagtricks.tasks.base import TaskBase


def logits_of(outputs: Any) -> jnp.ndarray:
  """The class logits of a model's output: the array itself, or ``outputs['logits']``.

  Models return either logits ``[batch, K]`` or a dict holding ``logits`` and whatever else
  their task needs (a soft decision tree's path probabilities, for instance).
  """
  return outputs["logits"] if isinstance(outputs, dict) else outputs


def prediction_heads(outputs: Any, logits: jnp.ndarray) -> Dict[str, jnp.ndarray]:
  """Every prediction a model makes, by accuracy suffix.

  ``''`` is ``logits``; a dict output's other ``<name>_logits`` entries add ``'_<name>'``
  (e.g. a soft tree's ``max_path_logits`` is reported as ``accuracy_max_path``).
  """
  heads = {"": logits}
  if isinstance(outputs, dict):
    heads.update({"_" + k[:-len("_logits")]: v for k, v in outputs.items()
                  if k.endswith("_logits") and k != "logits"})
  return heads


class ClassificationTask(TaskBase):
  """Single-label classification with softmax cross-entropy, optionally distilled.

  Training targets are the labels smoothed by ``losses.smooth_labels`` (Bag of Tricks §5.2):
  they ride in the batch as ``targets`` ``[batch, K]``, so mixup and CutMix can mix them with
  the images. When a distillation teacher has put ``teacher_logits`` into the batch, the loss
  is ``losses.distillation_loss`` (Hinton et al. 2015; §5.3).

  Args:
    num_classes: K.
    input_key: the batch entry the model reads (``'image'``, ``'features'``, ``'tokens'``).
    label_smoothing: ε of ``losses.smooth_labels`` for the training targets (0 = none).
    label_smoothing_mode: ``'paper'`` or ``'optax'``.
    distill_temperature: T of ``losses.distillation_loss`` (used when the batch holds
      ``teacher_logits``).
    distill_soft_weight: w of ``losses.distillation_loss``.
  """

  progress_metrics = {"accuracy": "acc"}

  def __init__(self, num_classes: int, input_key: str = "image", label_smoothing: float = 0.0,
               label_smoothing_mode: str = "paper", distill_temperature: float = 20.0,
               distill_soft_weight: float = 0.5):
    self.num_classes = num_classes
    self.num_outputs = num_classes
    self.input_keys = (input_key,)
    # Batch augmentations mix images and class distributions: images only.
    self.augment_keys = ("image", "targets") if input_key == "image" else None
    self.label_smoothing = label_smoothing
    self.label_smoothing_mode = label_smoothing_mode
    self.distill_temperature = distill_temperature
    self.distill_soft_weight = distill_soft_weight

  # No label smoothing unless the config asks (Bag of Tricks: ε = 0.1).
  config_defaults = {"label_smoothing": 0.0, "label_smoothing_mode": "paper"}

  @staticmethod
  def settings_from_config(config, dataset_info) -> Dict[str, Any]:
    """The constructor's keyword arguments other than ``num_classes``, from the run."""
    return dict(input_key=dataset_info.input_key, label_smoothing=config.label_smoothing,
                label_smoothing_mode=config.label_smoothing_mode,
                distill_temperature=config.distill.temperature,
                distill_soft_weight=config.distill.soft_weight)

  @classmethod
  def from_config(cls, config, dataset_info) -> "ClassificationTask":
    return cls(dataset_info.num_classes, **cls.settings_from_config(config, dataset_info))

  @classmethod
  def check_config(cls, config) -> List[str]:
    problems = []
    mode = config.label_smoothing_mode
    if mode not in losses.LABEL_SMOOTHING_MODES:
      problems.append(f"config.label_smoothing_mode={mode!r} is unknown; use one of "
                      f"{losses.LABEL_SMOOTHING_MODES}.")
    if not isinstance(config.label_smoothing, (int, float)) or not (
        0.0 <= config.label_smoothing < 1.0):
      problems.append(f"config.label_smoothing={config.label_smoothing} must be in [0, 1).")
    return problems

  @classmethod
  def check_for_data(cls, config, dataset_info) -> List[str]:
    if dataset_info.num_classes is None or "label" not in dataset_info.element_spec:
      return [f"config.task={config.task or 'classification'!r} needs class labels, "
              f"and config.dataset.name={dataset_info.name!r} has none (its entries: "
              f"{sorted(dataset_info.element_spec)}); choose a task for its targets."]
    return []

  def class_logits(self, outputs: Any, task_state: Any) -> jnp.ndarray:
    """The class logits ``[batch, K]`` of the model's outputs (float32)."""
    del task_state
    return logits_of(outputs)

  def prepare_train_batch(self, batch):
    """Adds ``targets`` ``[batch, K]``: the labels, smoothed."""
    targets = losses.smooth_labels(batch["label"], self.num_classes, self.label_smoothing,
                                   self.label_smoothing_mode)
    return {**batch, "targets": targets}

  def example_losses(self, outputs: Any, logits: jnp.ndarray, batch) -> jnp.ndarray:
    """Per-example training losses ``[batch]``: cross-entropy, or distillation with a teacher."""
    del outputs
    teacher_logits = batch.get("teacher_logits")
    if teacher_logits is None:
      return losses.softmax_cross_entropy(logits, batch["targets"])
    return losses.distillation_loss(logits, teacher_logits, batch["targets"],
                                    self.distill_temperature, self.distill_soft_weight)

  def train_metrics(self, logits: jnp.ndarray, batch) -> Dict[str, jnp.ndarray]:
    """This device's accuracy against the targets' largest class (for mixed targets, the image
    that contributes most)."""
    return {"accuracy": jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(batch["targets"], -1))}

  def loss(self, outputs, batch, task_state, rng, axis_name: Optional[str]):
    del rng, axis_name
    logits = self.class_logits(outputs, task_state)
    loss = jnp.mean(self.example_losses(outputs, logits, batch))
    return loss, task_state, self.train_metrics(logits, batch)

  def eval_sums(self, outputs, batch, task_state) -> Dict[str, jnp.ndarray]:
    """Masked sums: plain cross-entropy (``loss``), ``count``, and correct predictions
    (``accuracy`` for the main prediction, ``accuracy_<name>`` for each other head)."""
    mask = batch["mask"]
    logits = self.class_logits(outputs, task_state)
    heads = prediction_heads(outputs, logits)
    ce = losses.classification_loss(logits, batch["label"])
    sums = {"loss": jnp.sum(ce * mask), "count": jnp.sum(mask)}
    for suffix, head in heads.items():
      correct = (jnp.argmax(head, -1) == batch["label"]).astype(jnp.float32)
      sums["accuracy" + suffix] = jnp.sum(correct * mask)
    return sums
