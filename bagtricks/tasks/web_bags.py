"""Learning from web data: bags of regions pooled by a self-organizing memory, or baselines.

``WebBagsTask`` (``config.task = 'web_bags'``, the ``region_encoder`` model's default) reads
bags of regions (``data.web_digits``) with their web label and the region model's per-region
``logits`` and ``features``. ``config.web_bags.pooling`` chooses how a bag becomes one
prediction:

* ``'memory'`` (Tu et al., CVPR 2020): the regions are weighted by the scores of their
  nearest memory slot for the bag's label (``som_memory.roi_weights``), the bag's logits are
  Σ_i α_i · logits_i (= the head applied to the bag feature Σ_i α_i x_i, the head being
  linear), trained by cross-entropy with the web label; then the memory takes one SOM step
  from every ROI of the global batch (``som_memory.som_update``). The first
  ``warmup_epochs`` weigh the regions uniformly while the memory learns. ``scores`` drops
  one of the two scores (the ablation);
* ``'mean'``: multi-instance learning with the regions averaged, no memory;
* ``'max'``: multi-instance learning with each class's largest region logit, no memory;
* ``'whole_image'``: plain cross-entropy, every image's last region (the whole image) with
  its web label.

The task state is the memory and the step (for σ's schedule and the warm-up). Evaluation is
the accuracy on clean test images (a bag of one region).
"""

from __future__ import annotations

from typing import Dict, List, Optional

import jax.numpy as jnp
import numpy as np

from bagtricks import losses, som_memory
from bagtricks.tasks.base import TaskBase

POOLINGS = ("memory", "mean", "max", "whole_image")


class WebBagsTask(TaskBase):
  """Bags of regions with their web label → one prediction per bag (module docstring).

  Args:
    num_classes: C.
    feature_dim: D, the region features' width.
    pooling: one of ``POOLINGS``.
    scores: which memory scores weigh the regions (``som_memory.SCORES``).
    grid: the memory is ``grid`` × ``grid`` slots.
    learning_rate: (η at the start, η at the end) of the SOM step.
    width: (σ at the start, σ at the end) of the neighbourhood, in grid cells.
    warmup_steps: steps with uniform weights before the memory weighs the regions.
    total_steps: the run's steps (σ's and η's schedules).
  """

  progress_metrics = {"bag_accuracy": "acc", "weight_on_digit": "on_digit"}
  config_defaults = {"web_bags.pooling": "memory", "web_bags.scores": "both",
                     "web_bags.grid": 8, "web_bags.learning_rate": (0.5, 0.01),
                     "web_bags.width": (4.0, 0.5), "web_bags.warmup_epochs": 2.0}

  def __init__(self, num_classes: int, feature_dim: int, pooling: str = "memory",
               scores: str = "both", grid: int = 8, learning_rate=(0.5, 0.01),
               width=(4.0, 0.5), warmup_steps: int = 0, total_steps: int = 1):
    self.input_keys = ("regions",)
    self.num_classes = self.num_outputs = num_classes
    self.feature_dim = feature_dim
    self.pooling = pooling
    self.scores = scores
    self.grid = grid
    self.learning_rate = tuple(learning_rate)
    self.width = tuple(width)
    self.warmup_steps = warmup_steps
    self.total_steps = total_steps

  @classmethod
  def from_config(cls, config, dataset_info) -> "WebBagsTask":
    c = config.web_bags
    steps = dataset_info.steps_per_epoch
    return cls(dataset_info.num_classes, config.model.backbone.feature_dim, c.pooling,
               c.scores, c.grid, tuple(c.learning_rate), tuple(c.width),
               int(round(c.warmup_epochs * steps)), int(round(config.num_epochs * steps)))

  @classmethod
  def check_config(cls, config) -> List[str]:
    c = config.get("web_bags", {})
    problems = []
    if c.get("pooling", "memory") not in POOLINGS:
      problems.append(f"config.web_bags.pooling={c.get('pooling')!r} is unknown; use one of "
                      f"{POOLINGS}.")
    if c.get("scores", "both") not in som_memory.SCORES:
      problems.append(f"config.web_bags.scores={c.get('scores')!r} is unknown; use one of "
                      f"{som_memory.SCORES}.")
    grid = c.get("grid", 8)
    if not isinstance(grid, int) or grid < 1:
      problems.append(f"config.web_bags.grid={grid!r} must be a positive integer (grid × grid "
                      "memory slots).")
    rate = tuple(c.get("learning_rate", (0.5, 0.01)))
    if len(rate) != 2 or not all(isinstance(r, (int, float)) and 0 < r <= 1 for r in rate):
      problems.append(f"config.web_bags.learning_rate={rate!r} must be (start, end) in (0, 1].")
    width = tuple(c.get("width", (4.0, 0.5)))
    if len(width) != 2 or not all(isinstance(w, (int, float)) and w > 0 for w in width):
      problems.append(f"config.web_bags.width={width!r} must be (start, end) > 0 grid cells.")
    return problems

  @classmethod
  def check_for_data(cls, config, dataset_info) -> List[str]:
    spec = dataset_info.element_spec
    if "regions" not in spec or "holds_digit" not in spec:
      return [f"config.task='web_bags' reads bags of regions with their web label, and "
              f"config.dataset.name={dataset_info.name!r} has {sorted(spec)}; use "
              "dataset.name='web_digits'."]
    if config.web_bags.pooling == "whole_image" and config.dataset.get("regions") != "whole":
      return ["config.web_bags.pooling='whole_image' trains on whole images: set "
              "config.dataset.regions='whole'."]
    return []

  def init_state(self, rng, example_batch):
    del example_batch
    memory = som_memory.init_memory(rng, self.grid, self.feature_dim, self.num_classes)
    # Plain dicts checkpoint as they are (a NamedTuple would come back a dict).
    return {"memory": memory._asdict(), "step": jnp.zeros((), jnp.int32)}

  def weights(self, features, labels, task_state) -> jnp.ndarray:
    """α ``[B, N]`` of the bags' N regions: the memory's, or uniform."""
    uniform = jnp.full(features.shape[:2], 1.0 / features.shape[1], jnp.float32)
    if self.pooling != "memory":
      return uniform
    memory = som_memory.Memory(**task_state["memory"])
    weighed = som_memory.roi_weights(features, labels, memory, self.scores)
    return jnp.where(task_state["step"] >= self.warmup_steps, weighed, uniform)

  def loss(self, outputs, batch, task_state, rng, axis_name: Optional[str]):
    del rng
    labels = batch["label"]
    bags, size, regions = outputs["logits"].shape[:3]
    logits = outputs["logits"].reshape(bags, size * regions, -1).astype(jnp.float32)
    features = outputs["features"].reshape(bags, size * regions, -1).astype(jnp.float32)
    alpha = self.weights(features, labels, task_state)
    state = {**task_state, "step": task_state["step"] + 1}
    if self.pooling == "whole_image":
      whole = outputs["logits"][:, :, -1].astype(jnp.float32)  # [B, bag, C]
      ce = losses.classification_loss(whole, jnp.broadcast_to(labels[:, None], whole.shape[:2]))
      bag_logits = jnp.mean(whole, axis=1)
    else:
      bag_logits = (jnp.max(logits, axis=1) if self.pooling == "max"
                    else jnp.einsum("bn,bnc->bc", alpha, logits))
      ce = losses.classification_loss(bag_logits, labels)
    if self.pooling == "memory":
      step = task_state["step"]
      rate = som_memory.exponential_decay(step, self.total_steps, *self.learning_rate)
      width = som_memory.exponential_decay(step, self.total_steps, *self.width)
      memory = som_memory.som_update(
          som_memory.Memory(**task_state["memory"]), features, labels, rate, width, axis_name)
      state["memory"] = memory._asdict()
    holds = batch["holds_digit"].reshape(bags, -1).astype(jnp.float32)
    metrics = {"bag_accuracy": jnp.mean(jnp.argmax(bag_logits, -1) == labels),
               "weight_on_digit": jnp.mean(jnp.sum(alpha * holds, axis=1))}
    return jnp.mean(ce), state, metrics

  def eval_sums(self, outputs, batch, task_state) -> Dict[str, jnp.ndarray]:
    """``accuracy`` of each bag's first region (a clean test image is a bag of one)."""
    del task_state
    predicted = jnp.argmax(outputs["logits"][:, 0, 0], axis=-1)
    correct = (predicted == batch["label"]).astype(jnp.float32)
    return {"count": jnp.sum(batch["mask"]), "accuracy": jnp.sum(correct * batch["mask"])}



def weight_on_digit(alpha: np.ndarray, holds_digit: np.ndarray, noisy: np.ndarray) -> float:
  """The mean share of a clean image's region weight on the crops that hold its digit.

  Args:
    alpha: ``[B, bag, R]`` region weights (each bag's sum 1).
    holds_digit: ``[B, bag, R]`` the crops that hold the image's digit.
    noisy: ``[B, bag]`` label-noise images (left out).
  """
  per_image = alpha.sum(axis=-1)
  on_digit = (alpha * holds_digit).sum(axis=-1)
  clean = ~noisy & (per_image > 0)
  return float(np.mean(on_digit[clean] / per_image[clean]))


def noisy_image_auc(image_weights: np.ndarray, noisy: np.ndarray) -> float:
  """AUC of the image weights separating clean (positive) from noisy images: the chance
  that a clean image outweighs a noisy one, ties counting half (Mann–Whitney)."""
  clean, dirty = image_weights[~noisy], image_weights[noisy]
  greater = (clean[:, None] > dirty[None, :]).sum()
  ties = (clean[:, None] == dirty[None, :]).sum()
  return float((greater + 0.5 * ties) / (len(clean) * len(dirty)))
