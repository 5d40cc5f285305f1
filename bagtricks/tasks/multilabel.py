"""Multi-label classification with unknown labels (Durand et al. 2019), scored by mAP.

The batch holds ``labels`` ``[batch, C]`` in {1: positive, −1: negative, 0: unknown} and, for
comparisons, ``full_labels`` ``[batch, C]`` with every label known (``data.digit_sets``'s
``digits_mosaic``). ``config.multilabel.loss`` chooses the training loss:

* ``'full_bce'``: BCE on every label (``full_labels``), the oracle;
* ``'known_bce'``: BCE on the known labels only, divided by C (``losses.known_label_bce``);
* ``'partial_bce'``: the partial-BCE of Durand et al. (``losses.partial_bce``).

Evaluation scores every class of every test example and reports the mean average precision
over the whole split (``mean_average_precision``) on the full labels.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import jax.numpy as jnp
import numpy as np

from bagtricks import losses
from bagtricks.tasks.base import TaskBase

MULTILABEL_LOSSES = ("full_bce", "known_bce", "partial_bce")


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
  """Average precision of one class: the mean, over its positives, of the precision at the
  rank of each positive when the examples are sorted by decreasing score.

  AP = (1/|P|) Σ_{i∈P} |{j ∈ P: rank_j ≤ rank_i}| / rank_i (the area under the
  precision-recall curve without interpolation, as ``sklearn.metrics.average_precision_score``
  for untied scores). Tied scores are ranked in their given order.

  Args:
    scores: ``[n]``.
    positives: ``[n]`` booleans.

  Returns:
    The AP, or NaN for a class without positives (it has no precision-recall curve).
  """
  positives = np.asarray(positives, bool)
  if not positives.any():
    return float("nan")
  order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
  ranked = positives[order]
  hits = np.cumsum(ranked)
  ranks = np.arange(1, len(ranked) + 1)
  return float(np.mean(hits[ranked] / ranks[ranked]))


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
  """The mean over classes of ``average_precision`` over the whole split.

  Classes without a positive example are left out of the mean (their AP is undefined); NaN
  if no class has one.

  Args:
    scores: ``[n, C]``.
    labels: ``[n, C]``, positive where > 0.

  Returns:
    mAP in [0, 1].
  """
  scores = np.asarray(scores)
  labels = np.asarray(labels)
  per_class = [average_precision(scores[:, c], labels[:, c] > 0)
               for c in range(scores.shape[1])]
  defined = [ap for ap in per_class if not np.isnan(ap)]
  return float(np.mean(defined)) if defined else float("nan")


class MultiLabelTask(TaskBase):
  """C independent sigmoid outputs trained with one of ``MULTILABEL_LOSSES``.

  Args:
    num_classes: C.
    input_key: the batch entry the model reads.
    loss: ``'full_bce'``, ``'known_bce'`` or ``'partial_bce'`` (see the module docstring).
  """

  def __init__(self, num_classes: int, input_key: str = "image", loss: str = "partial_bce"):
    self.num_classes = num_classes
    self.num_outputs = num_classes
    self.input_keys = (input_key,)
    self.loss_name = loss

  @classmethod
  def from_config(cls, config, dataset_info) -> "MultiLabelTask":
    return cls(dataset_info.num_classes, dataset_info.input_key, config.multilabel.loss)

  @classmethod
  def check_config(cls, config) -> List[str]:
    if "multilabel" not in config:
      return ["config.multilabel is missing: the multilabel task needs config.multilabel.loss, "
              f"one of {MULTILABEL_LOSSES}."]
    loss = config.multilabel.loss
    if loss not in MULTILABEL_LOSSES:
      return [f"config.multilabel.loss={loss!r} is unknown; use one of {MULTILABEL_LOSSES}."]
    return []

  @classmethod
  def check_for_data(cls, config, dataset_info) -> List[str]:
    spec = dataset_info.element_spec
    if "labels" not in spec or "full_labels" not in spec or dataset_info.num_classes is None:
      return [f"config.task='multilabel' needs multi-hot 'labels' and 'full_labels', and "
              f"config.dataset.name={dataset_info.name!r} has {sorted(spec)}; use "
              "dataset.name='digits_mosaic'."]
    return []

  def loss(self, outputs, batch, task_state, rng, axis_name: Optional[str]):
    del rng, axis_name
    if self.loss_name == "full_bce":
      example_losses = losses.known_label_bce(outputs, batch["full_labels"])
    elif self.loss_name == "known_bce":
      example_losses = losses.known_label_bce(outputs, batch["labels"])
    else:
      example_losses = losses.partial_bce(outputs, batch["labels"])
    return jnp.mean(example_losses), task_state, {}

  def eval_sums(self, outputs, batch, task_state) -> Dict[str, jnp.ndarray]:
    """``count`` and ``loss``: the BCE on every label (``full_labels``)."""
    del task_state
    mask = batch["mask"]
    bce = losses.known_label_bce(outputs, batch["full_labels"])
    return {"loss": jnp.sum(bce * mask), "count": jnp.sum(mask)}

  def eval_examples(self, outputs, batch) -> Dict[str, jnp.ndarray]:
    return {"scores": outputs, "full_labels": batch["full_labels"]}

  def examples_summary(self, examples) -> Dict[str, float]:
    return {"mAP": mean_average_precision(examples["scores"], examples["full_labels"])}
