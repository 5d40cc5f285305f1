"""Tasks: how a batch and a model's output become a loss and metrics.

The train and eval steps are shared by every model; what is specific to a kind of problem
(image classification here) lives in a small task object chosen by config.
"""

from __future__ import annotations

from typing import Dict

import jax.numpy as jnp

from bagtricks import losses


class ClassificationTask:
  """Single-label classification with softmax cross-entropy.

  Args:
    num_classes: K.
    label_smoothing: ε of ``losses.smooth_labels`` for the training loss (0 = none).
    label_smoothing_mode: ``'paper'`` or ``'optax'``.
  """

  def __init__(self, num_classes: int, label_smoothing: float = 0.0,
               label_smoothing_mode: str = "paper"):
    self.num_classes = num_classes
    self.label_smoothing = label_smoothing
    self.label_smoothing_mode = label_smoothing_mode

  def train_loss(self, logits: jnp.ndarray, batch: Dict[str, jnp.ndarray]) -> jnp.ndarray:
    """Per-example training losses ``[batch]`` (label smoothing applied)."""
    return losses.classification_loss(logits, batch["label"], self.label_smoothing,
                                      self.label_smoothing_mode)

  def train_metrics(self, logits, batch) -> Dict[str, jnp.ndarray]:
    """Per-device means, to be averaged across devices."""
    return {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}

  def eval_sums(self, logits, batch) -> Dict[str, jnp.ndarray]:
    """Masked sums (to be summed across devices): plain cross-entropy, correct, count."""
    mask = batch["mask"]
    ce = losses.classification_loss(logits, batch["label"])
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return {"loss": jnp.sum(ce * mask), "correct": jnp.sum(correct * mask),
            "count": jnp.sum(mask)}
