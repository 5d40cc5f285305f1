"""Tasks of the differentiable trees: the soft decision tree and the neural decision forest.

Both are classification tasks whose extra state is the task's, not the model's:

* ``SoftTreeTask`` (Frosst & Hinton 2017): the running α_i of the balancing penalty, computed
  over the global batch (summed across devices);
* ``ForestTask`` (Kontschieder et al. 2015): the leaf distributions π of a forest with
  fixed-point leaves, refit on the train split before training and after every epoch.

Kept in the task state, neither is averaged by the weight EMA nor touched by the optimizer.
"""

from __future__ import annotations

from typing import List

import jax
import jax.numpy as jnp
from jax import lax

from bagtricks import losses
from bagtricks.tasks.base import Refit
from bagtricks.tasks.classification import ClassificationTask
from models import forest, registry, trees


class SoftTreeTask(ClassificationTask):
  """A soft decision tree trained with Frosst & Hinton (2017)'s loss, optionally distilled.

  The loss of an example is ``losses.soft_tree_loss`` (each leaf's cross-entropy with the
  targets, weighted by its path probability) plus the balancing penalty
  C = −λ Σ_i 2^(−d_i)·½[log α_i + log(1 − α_i)] (``models.trees.balancing_penalty``), where
  α_i is the path-weighted mean of p_i over the global batch (``models.trees.node_alpha``
  with a psum over the device axis), kept as a running average with a window of
  ``penalty_window``·2^d batches at depth d (``models.trees.alpha_decays``). The running α is
  the task state. With a teacher, the targets are T = (1 − w)·y + w·softmax(t / τ): the paper
  trains the tree on the soft targets of a trained network (w = 1).

  Args:
    num_classes: K.
    depth: the tree's depth (2**depth − 1 inner nodes).
    penalty_strength: λ.
    penalty_window: running-average window of α at the root, in batches; 0 = the batch's α.
    **kwargs: ``ClassificationTask`` arguments.
  """

  def __init__(self, num_classes: int, depth: int, penalty_strength: float = 0.1,
               penalty_window: float = 0.0, **kwargs):
    super().__init__(num_classes, **kwargs)
    self.depth = depth
    self.penalty_strength = penalty_strength
    self.penalty_window = penalty_window

  @classmethod
  def from_config(cls, config, dataset_info) -> "SoftTreeTask":
    return cls(dataset_info.num_classes, config.model.depth,
               config.soft_tree.penalty_strength, config.soft_tree.penalty_window,
               **cls.settings_from_config(config, dataset_info))

  @classmethod
  def check_config(cls, config) -> List[str]:
    problems = super().check_config(config)
    name = str(config.model.name).lower()
    if name != "sdt":
      problems.append(f"config.task='soft_tree' trains a soft decision tree and needs "
                      f"config.model.name='sdt' (got {name!r}); use task='classification' "
                      "for other models.")
    if "soft_tree" not in config:
      problems.append("config.soft_tree is missing: the soft tree task needs "
                      "config.soft_tree.penalty_strength (paper: 0.1) and "
                      "config.soft_tree.penalty_window (0 = the batch's α alone).")
      return problems
    for field, zero in (("penalty_strength", "no balancing penalty"),
                        ("penalty_window", "the batch alone")):
      value = config.soft_tree[field]
      if not isinstance(value, (int, float)) or value < 0:
        problems.append(f"config.soft_tree.{field}={value!r} must be >= 0 (0 = {zero}).")
    return problems

  def init_state(self, rng, example_batch):
    del rng, example_batch
    return {"alpha": jnp.full((2**self.depth - 1,), 0.5, jnp.float32)}

  def example_losses(self, outputs, logits, batch):
    del logits
    targets = batch["targets"]
    teacher_logits = batch.get("teacher_logits")
    if teacher_logits is not None:
      soft = jax.nn.softmax(lax.stop_gradient(teacher_logits) / self.distill_temperature,
                            axis=-1)
      targets = (1.0 - self.distill_soft_weight) * targets + self.distill_soft_weight * soft
    return losses.soft_tree_loss(outputs["path_probs"], outputs["leaf_log_probs"], targets)

  def loss(self, outputs, batch, task_state, rng, axis_name):
    del rng
    right = outputs["right_probs"]
    alpha = trees.node_alpha(right, trees.node_reach_probabilities(right), axis_name)
    decay = jnp.asarray(trees.alpha_decays(self.depth, self.penalty_window), jnp.float32)
    alpha = decay * task_state["alpha"] + (1 - decay) * alpha
    penalty = trees.balancing_penalty(alpha, jnp.asarray(trees.node_depths(self.depth),
                                                         jnp.float32), self.penalty_strength)
    logits = self.class_logits(outputs, task_state)
    loss = jnp.mean(self.example_losses(outputs, logits, batch) + penalty)
    new_state = {"alpha": lax.stop_gradient(alpha)}
    return loss, new_state, self.train_metrics(logits, batch)


class ForestTask(ClassificationTask):
  """A neural decision forest whose leaf distributions π are fit by the paper's fixed point.

  The model returns the routing μ ``[batch, trees, leaves]``; the task predicts
  log P[y|x] = log (1/T) Σ_T Σ_ℓ μ_ℓ π_ℓy (``models.forest_log_probs``) with π from its state,
  trains the network on that prediction's cross-entropy with π fixed, and refits π
  (``refit_state``: ``iterations`` of Eq. 11 from uniform, ``models.fixed_point_leaf_update``,
  summed over every device's examples) on the unaugmented train split before the first step
  and after every epoch.

  Args:
    num_classes: K.
    num_trees: trees of the forest.
    depth: levels of decision nodes (2**depth leaves per tree).
    iterations: fixed-point iterations per refit (the paper: 20).
    refit_batches: eval-sized batches of the train split per refit (0 = the whole split).
    **kwargs: ``ClassificationTask`` arguments.
  """

  def __init__(self, num_classes: int, num_trees: int, depth: int, iterations: int = 20,
               refit_batches: int = 0, **kwargs):
    super().__init__(num_classes, **kwargs)
    self.num_trees = num_trees
    self.depth = depth
    self.iterations = iterations
    self.refit = Refit(every_epochs=1, max_batches=refit_batches)

  @classmethod
  def from_config(cls, config, dataset_info) -> "ForestTask":
    return cls(dataset_info.num_classes, config.model.num_trees, config.model.depth,
               config.forest.leaf_iterations, config.forest.leaf_update_batches,
               **cls.settings_from_config(config, dataset_info))

  @classmethod
  def check_config(cls, config) -> List[str]:
    problems = super().check_config(config)
    name = str(config.model.name).lower()
    leaf_learning = config.model.get("leaf_learning", "fixed_point")
    if name != "ndf" or leaf_learning != "fixed_point":
      problems.append("config.task='forest' fits the leaves of a neural decision forest and "
                      "needs config.model.name='ndf' with config.model.leaf_learning="
                      f"'fixed_point' (got {name!r}, {leaf_learning!r}).")
    if "forest" not in config:
      problems.append("config.forest is missing: a fixed-point forest needs "
                      "config.forest.leaf_iterations (paper: 20) and "
                      "config.forest.leaf_update_batches (0 = the whole train split).")
      return problems
    problems += registry.positive(config.forest, "leaf_iterations", integer=True,
                                  prefix="config.forest.")
    batches = config.forest.leaf_update_batches
    if not isinstance(batches, int) or batches < 0:
      problems.append(f"config.forest.leaf_update_batches={batches!r} must be an integer "
                      ">= 0 (0 = the whole train split).")
    return problems

  def init_state(self, rng, example_batch):
    del rng, example_batch
    shape = (self.num_trees, 2**self.depth, self.num_classes)
    return {"leaf_distributions": jnp.full(shape, 1.0 / self.num_classes, jnp.float32)}

  def class_logits(self, outputs, task_state):
    return forest.forest_log_probs(outputs["routing"], task_state["leaf_distributions"])

  def refit_state(self, outputs, batch, task_state, axis_name):
    leaves = task_state["leaf_distributions"]
    uniform = jnp.full_like(leaves, 1.0 / leaves.shape[-1])
    new_leaves = forest.fixed_point_leaf_update(uniform, outputs["routing"], batch["label"],
                                                batch["mask"], self.iterations, axis_name)
    return {**task_state, "leaf_distributions": new_leaves}
