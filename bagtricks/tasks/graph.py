"""Learning on graphs: node classification, graph classification and node selection.

The batch holds one padded graph per example (``nodes``, ``adjacency``, ``node_mask``; see
``data.graphs``) and one of three targets, which decides the problem:

* ``node_labels`` ``[batch, N]`` (−1: not a target): cross-entropy over the labelled nodes
  of the *global* batch — each device's sum divided by the labelled nodes summed over
  devices, so a device whose copy holds no labels adds nothing and 1 or 8 devices take the
  same step (semi-supervised node classification, Kipf & Welling 2017, eq. 10);
* ``label`` ``[batch]``: cross-entropy of the graph's logits;
* ``answer`` ``[batch]``: the answering node's index; cross-entropy of the softmax over
  each graph's real nodes (GGNN's node selection, Li et al. 2016, section 3.3).

Accuracy is over labelled nodes for the first and over graphs for the others.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import jax.numpy as jnp
from jax import lax

from bagtricks import losses
from bagtricks.tasks.base import EXAMPLES, TaskBase

GRAPH_INPUTS = ("nodes", "adjacency", "node_mask")
GRAPH_TARGETS = ("node_labels", "label", "answer")


def graph_target(element_spec) -> Optional[str]:
  """The target key a graph dataset holds (one of ``GRAPH_TARGETS``), or None."""
  return next((k for k in GRAPH_TARGETS if k in element_spec), None)


class GraphTask(TaskBase):
  """One of the three graph problems, chosen by the dataset's target key.

  Args:
    target: ``'node_labels'``, ``'label'`` or ``'answer'``.
    num_classes: classes of nodes or graphs; None for node selection.
  """

  input_keys = GRAPH_INPUTS
  throughput = EXAMPLES

  def __init__(self, target: str, num_classes: Optional[int]):
    self.target = target
    self.num_outputs = num_classes

  @classmethod
  def from_config(cls, config, dataset_info) -> "GraphTask":
    return cls(graph_target(dataset_info.element_spec), dataset_info.num_classes)

  @classmethod
  def check_for_data(cls, config, dataset_info) -> List[str]:
    spec = dataset_info.element_spec
    if any(k not in spec for k in GRAPH_INPUTS) or graph_target(spec) is None:
      return [f"config.task='graph' needs {list(GRAPH_INPUTS)} and one of "
              f"{list(GRAPH_TARGETS)}, and config.dataset.name={dataset_info.name!r} has "
              f"{sorted(spec)}; use a graph dataset such as 'karate_club'."]
    return []

  def _targets(self, outputs, batch):
    """``(logits [..., C], labels [...], weights [...])`` of the targets in ``batch``."""
    labels = batch[self.target]
    if self.target == "node_labels":
      return outputs, labels, (labels >= 0).astype(jnp.float32)
    return outputs, labels, jnp.ones(labels.shape, jnp.float32)

  def loss(self, outputs, batch, task_state, rng, axis_name: Optional[str]):
    del rng
    logits, labels, weights = self._targets(outputs, batch)
    ce = losses.classification_loss(logits, jnp.maximum(labels, 0)) * weights
    correct = (jnp.argmax(logits, -1) == labels) * weights
    if self.target != "node_labels":
      return jnp.mean(ce), task_state, {"accuracy": jnp.mean(correct)}
    count = jnp.sum(weights)
    devices = 1
    if axis_name is not None:
      count, devices = lax.psum(count, axis_name), lax.psum(1, axis_name)
    # The step averages over devices: each device's share of the global mean, times devices.
    scale = devices / jnp.maximum(count, 1.0)
    return jnp.sum(ce) * scale, task_state, {"accuracy": jnp.sum(correct) * scale}

  def eval_sums(self, outputs, batch, task_state) -> Dict[str, jnp.ndarray]:
    """``count`` (labelled nodes, or graphs), ``accuracy`` and ``loss`` as masked sums."""
    del task_state
    logits, labels, weights = self._targets(outputs, batch)
    example_mask = batch["mask"].reshape(batch["mask"].shape + (1,) * (labels.ndim - 1))
    weights = weights * example_mask
    ce = losses.classification_loss(logits, jnp.maximum(labels, 0))
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"accuracy": jnp.sum(correct * weights), "loss": jnp.sum(ce * weights),
            "count": jnp.sum(weights)}
