"""Learning from several inconsistent annotators (IPA2LT, Zeng, Shan & Chen, ECCV 2018).

The batch holds ``annotations`` ``[batch, K]`` (each annotator's label, −1 where missing),
the label aggregations computed on the host from them alone (``majority_vote``,
``dawid_skene``) and ``true_label``, which is only evaluated against, never trained on
(``data.annotators``). ``config.latent_truth.method`` chooses what the model learns from:

* ``'ltnet'``: the Latent Truth Net loss −Σ_k w_k log (p T_k)[ỹ_k]
  (``losses.latent_truth_nll``), with the T_k the model learns (``models.LatentTruthNet``);
* ``'union'``: cross-entropy against every label present (``losses.annotators_cross_entropy``),
  the datasets merged as they are;
* ``'majority_vote'``, ``'dawid_skene'``: cross-entropy against that aggregated label.

w_k is ``config.latent_truth.annotator_weights`` (empty: 1 for every annotator). Evaluation
scores the truth head against ``true_label``.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import jax.numpy as jnp

from bagtricks import losses
from bagtricks.tasks.base import TaskBase
from bagtricks.tasks.classification import logits_of

LATENT_TRUTH_METHODS = ("ltnet", "union", "majority_vote", "dawid_skene")


class LatentTruthTask(TaskBase):
  """The truth classifier trained by one of ``LATENT_TRUTH_METHODS``.

  Args:
    num_classes: C.
    num_annotators: K.
    method: one of ``LATENT_TRUTH_METHODS`` (see the module docstring).
    annotator_weights: w_k per annotator; empty: all 1.
    trace_weight: λ of the trace penalty on the T_k (LTNet only).
    input_key: the batch entry the backbone reads (the source's ``input_key``).
  """

  progress_metrics = {"agreement": "agree"}
  config_defaults = {"latent_truth.method": "ltnet", "latent_truth.annotator_weights": (),
                     "latent_truth.trace_weight": 0.0}

  def __init__(self, num_classes: int, num_annotators: int, method: str = "ltnet",
               annotator_weights=(), trace_weight: float = 0.0, input_key: str = "image"):
    self.num_classes = num_classes
    self.num_outputs = num_classes
    self.num_annotators = num_annotators
    self.input_keys = (input_key,)
    self.method = method
    self.weights = (jnp.asarray(annotator_weights, jnp.float32) if len(annotator_weights)
                    else None)
    self.trace_weight = trace_weight

  @classmethod
  def from_config(cls, config, dataset_info) -> "LatentTruthTask":
    return cls(dataset_info.num_classes, dataset_info.element_spec["annotations"].shape[0],
               config.latent_truth.method, tuple(config.latent_truth.annotator_weights),
               config.latent_truth.trace_weight, dataset_info.input_key)

  @classmethod
  def check_config(cls, config) -> List[str]:
    method = config.latent_truth.method
    problems = []
    if method not in LATENT_TRUTH_METHODS:
      problems.append(f"config.latent_truth.method={method!r} is unknown; use one of "
                      f"{LATENT_TRUTH_METHODS}.")
    if method == "ltnet" and config.model.name != "latent_truth":
      problems.append(f"config.latent_truth.method='ltnet' learns transition matrices, and "
                      f"config.model.name={config.model.name!r} has none; use "
                      "model.name='latent_truth' with the network as model.backbone.")
    weights = tuple(config.latent_truth.annotator_weights)
    if any(not isinstance(w, (int, float)) or w < 0 for w in weights):
      problems.append(f"config.latent_truth.annotator_weights={weights!r} must be weights "
                      ">= 0, one per annotator (empty: all 1).")
    return problems

  @classmethod
  def check_for_data(cls, config, dataset_info) -> List[str]:
    spec = dataset_info.element_spec
    needed = ("annotations", "majority_vote", "dawid_skene", "true_label")
    if any(k not in spec for k in needed) or len(spec["annotations"].shape) != 1:
      return [f"config.task='latent_truth' needs {list(needed)} with annotations [K], and "
              f"config.dataset.name={dataset_info.name!r} has {sorted(spec)}; use "
              "dataset.name='digits_annotated' or 'faces_annotated'."]
    annotators = spec["annotations"].shape[0]
    weights = tuple(config.latent_truth.annotator_weights)
    if weights and len(weights) != annotators:
      return [f"config.latent_truth.annotator_weights has {len(weights)} weights for the "
              f"{annotators} annotators of config.dataset.name={dataset_info.name!r}; give "
              f"{annotators} (or none)."]
    return []

  def example_losses(self, outputs, batch) -> jnp.ndarray:
    """``[batch]``: the method's loss of each example."""
    logits = logits_of(outputs)
    if self.method == "ltnet":
      return losses.latent_truth_nll(logits, outputs["log_transitions"], batch["annotations"],
                                     self.weights)
    if self.method == "union":
      return losses.annotators_cross_entropy(logits, batch["annotations"], self.weights)
    # An aggregated label is one annotator's: −1 (nobody labelled the item) adds nothing.
    return losses.annotators_cross_entropy(logits, batch[self.method][:, None])

  def loss(self, outputs, batch, task_state, rng, axis_name: Optional[str]):
    del rng, axis_name
    logits = logits_of(outputs)
    annotations = batch["annotations"]
    predicted = jnp.argmax(logits, -1)[:, None]
    given = annotations >= 0
    # How often the truth head agrees with the labels it is given (no true labels in training).
    agreement = jnp.sum((predicted == annotations) & given) / jnp.maximum(jnp.sum(given), 1)
    loss = jnp.mean(self.example_losses(outputs, batch))
    if self.method == "ltnet" and self.trace_weight:
      loss += self.trace_weight * losses.mean_transition_trace(outputs["log_transitions"])
    return loss, task_state, {"agreement": agreement}

  def eval_sums(self, outputs, batch, task_state) -> Dict[str, jnp.ndarray]:
    """``count``, ``accuracy`` (the truth head against ``true_label``) and ``loss`` (its
    cross-entropy against it), masked sums."""
    del task_state
    mask = batch["mask"]
    logits = logits_of(outputs)
    correct = (jnp.argmax(logits, -1) == batch["true_label"]).astype(jnp.float32)
    ce = losses.classification_loss(logits, batch["true_label"])
    return {"accuracy": jnp.sum(correct * mask), "loss": jnp.sum(ce * mask),
            "count": jnp.sum(mask)}
