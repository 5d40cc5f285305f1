"""Tasks: how a batch and a model's output become a loss and metrics.

The train and eval steps are shared by every model; what is specific to a kind of problem
(image classification here) lives in a small task object chosen by config. The train step asks
the task for target distributions, lets the batch augmentations mix them with the images, and
hands them back to the task's loss.
"""

from __future__ import annotations

from typing import Dict, Optional

import jax.numpy as jnp

from bagtricks import losses


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
    if teacher_logits is None:
      return losses.softmax_cross_entropy(logits, targets)
    return losses.distillation_loss(logits, teacher_logits, targets, self.distill_temperature,
                                    self.distill_soft_weight)

  def train_metrics(self, logits: jnp.ndarray, targets: jnp.ndarray) -> Dict[str, jnp.ndarray]:
    """Per-device means, to be averaged across devices.

    Accuracy counts the prediction against the targets' largest class (for mixed targets, the
    image that contributes most).
    """
    return {"accuracy": jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(targets, -1))}

  def eval_sums(self, logits, batch) -> Dict[str, jnp.ndarray]:
    """Masked sums (to be summed across devices): plain cross-entropy, correct, count."""
    mask = batch["mask"]
    ce = losses.classification_loss(logits, batch["label"])
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return {"loss": jnp.sum(ce * mask), "correct": jnp.sum(correct * mask),
            "count": jnp.sum(mask)}
