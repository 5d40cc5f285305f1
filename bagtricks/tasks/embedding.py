"""Embedding learning on the one train loop: center loss, Git loss and Circle loss.

* ``CenterLossTask`` (``config.task = 'center_loss'``): softmax cross-entropy plus the center
  loss (Wen et al. 2016) and the Git loss's push term (Calefati et al. 2018) on the model's
  feature layer (``config.model.feature_dim``); the class centers are the task state, updated
  from the global batch. Both weights 0 is softmax alone, with the centers still tracked so
  that the same metrics exist for it.
* ``CircleLossTask`` (``config.task = 'circle_loss'``): the Circle loss (Sun et al. 2020),
  pair-wise over the whole global batch (embeddings gathered from every device) or
  class-level on a cosine classifier.

Both report, on the test split, how the features cluster (``embedding_spread``) and
retrieval recall@k (``recall_at_k``), computed on the host from every test example.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

from bagtricks import losses
from bagtricks.tasks.base import TaskBase
from bagtricks.tasks.classification import ClassificationTask, logits_of

CIRCLE_FORMS = ("pair", "class")
RECALL_KS = (1, 5)


def embedding_spread(features: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
  """How tightly the features of each class cluster, and how far apart the classes are.

  With μ_k the mean feature of class k over the given examples:

  * ``intra_class_spread``: the mean over examples of ‖x_i − μ_{y_i}‖;
  * ``inter_class_distance``: the mean over pairs of classes k < l of ‖μ_k − μ_l‖;
  * ``spread_ratio``: their ratio (scale-free; lower is more discriminative).

  Classes without examples are left out.

  Args:
    features: ``[n, D]``.
    labels: ``[n]`` integer classes.

  Returns:
    The three numbers by name.
  """
  features = np.asarray(features, np.float64)
  labels = np.asarray(labels)
  classes = np.unique(labels)
  means = np.stack([features[labels == k].mean(axis=0) for k in classes])
  index = np.searchsorted(classes, labels)
  intra = float(np.mean(np.linalg.norm(features - means[index], axis=-1)))
  pairs = [np.linalg.norm(means[a] - means[b]) for a in range(len(classes))
           for b in range(a + 1, len(classes))]
  inter = float(np.mean(pairs)) if pairs else float("nan")
  return {"intra_class_spread": intra, "inter_class_distance": inter,
          "spread_ratio": intra / inter if inter > 0 else float("nan")}


def recall_at_k(embeddings: np.ndarray, labels: np.ndarray,
                ks: Sequence[int] = RECALL_KS) -> Dict[str, float]:
  """Retrieval recall@k: every example queries all the others by cosine similarity.

  recall@k is the fraction of queries with at least one example of their class among their k
  nearest neighbours (the query itself left out), the metric of Sun et al. (2020, §4.3).

  Args:
    embeddings: ``[n, D]``.
    labels: ``[n]``.
    ks: the k to report.

  Returns:
    ``{'recall_at_<k>': fraction}``.
  """
  x = np.asarray(embeddings, np.float64)
  x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  similarities = x @ x.T
  np.fill_diagonal(similarities, -np.inf)
  order = np.argsort(-similarities, axis=1, kind="stable")
  labels = np.asarray(labels)
  hits = labels[order] == labels[:, None]  # [n, n - 1 ranked neighbours + self last]
  return {f"recall_at_{k}": float(np.mean(np.any(hits[:, :k], axis=1))) for k in ks}


def _needs_features(config, task: str, example: int) -> List[str]:
  width = config.model.get("feature_dim", 0)
  if not isinstance(width, int) or width <= 0:
    return [f"config.task={task!r} trains the model's feature layer: set "
            f"config.model.feature_dim to its width (e.g. {example}; a ResNet's "
            f"feature_dim), got {width!r}."]
  return []


class CenterLossTask(ClassificationTask):
  """Softmax cross-entropy + λ_c·center loss + λ_g·Git push term, centers in the task state.

  ℓ_i = CE_i + λ_c·½‖x_i − c_{y_i}‖² + λ_g·Σ_{j≠y_i} 1/(1 + ‖x_i − c_j‖²) (Calefati et al. 2018,
  Eq. 4; λ_g = 0 is Wen et al. 2016's joint supervision; λ_c = λ_g = 0 is softmax alone), on
  the features x of the model's feature layer. After the loss, the centers take one step of
  ``losses.update_centers`` (α, sums over the global batch), so every device keeps the same
  centers. The defaults are the Git loss paper's λ_c = 0.01, λ_g = 0.1.

  Args:
    num_classes: K.
    feature_dim: D, the width of the features.
    center_weight: λ_c.
    push_weight: λ_g.
    center_alpha: α of the center update (Wen et al.: 0.5).
    **kwargs: ``ClassificationTask`` arguments.
  """

  progress_metrics = {"accuracy": "acc", "center_loss": "center"}

  def __init__(self, num_classes: int, feature_dim: int, center_weight: float = 0.01,
               push_weight: float = 0.1, center_alpha: float = 0.5, **kwargs):
    super().__init__(num_classes, **kwargs)
    # The centers follow the labels: images and labels must not be mixed.
    self.augment_keys = None
    self.feature_dim = feature_dim
    self.center_weight = center_weight
    self.push_weight = push_weight
    self.center_alpha = center_alpha

  @classmethod
  def from_config(cls, config, dataset_info) -> "CenterLossTask":
    c = config.center_loss
    return cls(dataset_info.num_classes, config.model.feature_dim, c.center_weight,
               c.push_weight, c.center_alpha,
               **cls.settings_from_config(config, dataset_info))

  @classmethod
  def check_config(cls, config) -> List[str]:
    problems = super().check_config(config) + _needs_features(config, "center_loss", 2)
    if "center_loss" not in config:
      return problems + ["config.center_loss is missing: the center_loss task needs "
                         "config.center_loss.center_weight (λ_c, Git loss paper: 0.01), "
                         "push_weight (λ_g, 0.1; 0 = center loss alone) and center_alpha "
                         "(α, 0.5)."]
    c = config.center_loss
    for field in ("center_weight", "push_weight"):
      if not isinstance(c[field], (int, float)) or c[field] < 0:
        problems.append(f"config.center_loss.{field}={c[field]!r} must be >= 0 (0 = off).")
    if not isinstance(c.center_alpha, (int, float)) or not 0 < c.center_alpha <= 1:
      problems.append(f"config.center_loss.center_alpha={c.center_alpha!r} must be in (0, 1] "
                      "(Wen et al.: 0.5).")
    return problems

  def init_state(self, rng, example_batch):
    del rng, example_batch
    return {"centers": jnp.zeros((self.num_classes, self.feature_dim), jnp.float32)}

  def loss(self, outputs, batch, task_state, rng, axis_name: Optional[str]):
    del rng
    logits = logits_of(outputs)
    features = outputs["features"]
    centers = task_state["centers"]
    labels = batch["label"]
    center = losses.center_loss(features, labels, centers)
    push = losses.git_push_loss(features, labels, centers)
    ce = self.example_losses(outputs, logits, batch)
    loss = jnp.mean(ce + self.center_weight * center + self.push_weight * push)
    new_centers = losses.update_centers(centers, features, labels, self.center_alpha,
                                        axis_name)
    metrics = {**self.train_metrics(logits, batch), "center_loss": jnp.mean(center),
               "push_loss": jnp.mean(push)}
    return loss, {"centers": new_centers}, metrics

  def eval_sums(self, outputs, batch, task_state) -> Dict[str, jnp.ndarray]:
    """The classification sums plus ``nearest_center_accuracy``: the nearest of the task
    state's centers is the example's class."""
    sums = super().eval_sums(outputs, batch, task_state)
    x = outputs["features"]
    distances = jnp.sum(jnp.square(x[:, None, :] - task_state["centers"][None]), axis=-1)
    correct = (jnp.argmin(distances, axis=-1) == batch["label"]).astype(jnp.float32)
    sums["nearest_center_accuracy"] = jnp.sum(correct * batch["mask"])
    return sums

  def eval_examples(self, outputs, batch) -> Dict[str, jnp.ndarray]:
    return {"features": outputs["features"], "label": batch["label"]}

  def examples_summary(self, examples) -> Dict[str, float]:
    return {**embedding_spread(examples["features"], examples["label"]),
            **recall_at_k(examples["features"], examples["label"])}


class CircleLossTask(TaskBase):
  """The Circle loss (Sun et al. 2020), pair-wise over the global batch or class-level.

  ``form='pair'``: every example of the global batch is an anchor; its positives are the
  batch's other examples of its class and its negatives those of other classes, with cosine
  similarities of the feature layer's embeddings (``losses.pairwise_circle_loss``). Each
  device gathers the embeddings of all devices (``lax.all_gather``) and scores its own
  anchors, so the loss, and its gradient, are those of one device holding the whole batch.
  Feed it P×K batches (``dataset.name='digits_pk'``) so that every anchor has positives.
  ``form='class'``: s_p and s_n are the cosines to the normalized class weights of a cosine
  classifier (``config.model.cosine_head``; ``losses.class_circle_loss``).

  Args:
    num_classes: K.
    input_key: the batch entry the model reads.
    form: ``'pair'`` or ``'class'``.
    margin: m (0.25).
    gamma: γ (256 face recognition, 80 fine-grained retrieval).
  """

  def __init__(self, num_classes: int, input_key: str = "image", form: str = "pair",
               margin: float = 0.25, gamma: float = 256.0):
    self.num_classes = num_classes
    self.num_outputs = num_classes
    self.input_keys = (input_key,)
    self.form = form
    self.margin = margin
    self.gamma = gamma
    self.progress_metrics = {"accuracy": "acc"} if form == "class" else {}

  @classmethod
  def from_config(cls, config, dataset_info) -> "CircleLossTask":
    c = config.circle
    return cls(dataset_info.num_classes, dataset_info.input_key, c.form, c.margin, c.gamma)

  @classmethod
  def check_config(cls, config) -> List[str]:
    problems = _needs_features(config, "circle_loss", 64)
    if "circle" not in config:
      return problems + ["config.circle is missing: the circle_loss task needs "
                         "config.circle.form ('pair' or 'class'), margin (m, 0.25) and "
                         "gamma (γ, 256 or 80)."]
    c = config.circle
    if c.form not in CIRCLE_FORMS:
      problems.append(f"config.circle.form={c.form!r} is unknown; use one of {CIRCLE_FORMS}.")
    elif c.form == "class" and not config.model.get("cosine_head", False):
      problems.append("config.circle.form='class' scores cosines to the class weights: set "
                      "config.model.cosine_head=True.")
    if not isinstance(c.margin, (int, float)) or not 0 <= c.margin < 1:
      problems.append(f"config.circle.margin={c.margin!r} must be in [0, 1) (the paper: "
                      "0.25).")
    if not isinstance(c.gamma, (int, float)) or c.gamma <= 0:
      problems.append(f"config.circle.gamma={c.gamma!r} must be > 0 (the paper: 256 or 80).")
    return problems

  @classmethod
  def check_for_data(cls, config, dataset_info) -> List[str]:
    return ClassificationTask.check_for_data(config, dataset_info)

  def example_losses(self, outputs, batch, axis_name: Optional[str]) -> jnp.ndarray:
    """This device's anchors' losses ``[per_device]``."""
    labels = batch["label"]
    if self.form == "class":
      return losses.class_circle_loss(logits_of(outputs), labels, self.margin, self.gamma)
    embeddings = outputs["features"]
    index = jnp.arange(labels.shape[0])
    gallery, gallery_labels = embeddings, labels
    if axis_name is not None:
      gallery = lax.all_gather(embeddings, axis_name, tiled=True)
      gallery_labels = lax.all_gather(labels, axis_name, tiled=True)
      index = index + lax.axis_index(axis_name) * labels.shape[0]
    return losses.pairwise_circle_loss(embeddings, labels, index, gallery, gallery_labels,
                                       self.margin, self.gamma)

  def loss(self, outputs, batch, task_state, rng, axis_name: Optional[str]):
    del rng
    loss = jnp.mean(self.example_losses(outputs, batch, axis_name))
    metrics = {}
    if self.form == "class":
      metrics["accuracy"] = jnp.mean(jnp.argmax(logits_of(outputs), -1) == batch["label"])
    return loss, task_state, metrics

  def eval_sums(self, outputs, batch, task_state) -> Dict[str, jnp.ndarray]:
    """``count``, and for the class-level form ``accuracy`` (the largest cosine)."""
    del task_state
    mask = batch["mask"]
    sums = {"count": jnp.sum(mask)}
    if self.form == "class":
      correct = (jnp.argmax(logits_of(outputs), -1) == batch["label"]).astype(jnp.float32)
      sums["accuracy"] = jnp.sum(correct * mask)
    return sums

  def eval_examples(self, outputs, batch) -> Dict[str, jnp.ndarray]:
    return {"features": outputs["features"], "label": batch["label"]}

  def examples_summary(self, examples) -> Dict[str, float]:
    return {**recall_at_k(examples["features"], examples["label"]),
            **embedding_spread(examples["features"], examples["label"])}
