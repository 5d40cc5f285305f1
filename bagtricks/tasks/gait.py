"""Gait recognition as metric learning on sets of silhouettes (GaitSet, Chao et al. 2019).

``GaitTask`` (``config.task = 'gait'``, the ``gaitset`` model's default) trains the model's
strip embeddings ``[batch, strips, D]`` with the batch-all triplet loss per strip (the
paper's §3.5, margin 0.2): each device's sequences are the anchors, the gallery is the whole
global batch (``lax.all_gather``), and each strip's loss is its sum over the triplets of every
device divided by the global count of non-zero triplets, then averaged over strips, so 1 and 8
devices train alike. The progress metrics are those the reference code logs: the number of
non-zero triplets per strip (``full_loss_num``) and the mean distances of positive and
negative pairs.

Evaluation embeds every test sequence (the strips flattened into one vector) and scores them
on the host by CASIA-B's protocol (``gait_protocol.rank1_by_view``): gallery NM 1–4, probes NM
5–6, BG 1–2 and CL 1–2, rank-1 per probe view averaged over the other gallery views
(``rank1_nm``, ``rank1_bg``, ``rank1_cl``; ``rank1_<probe>_<view>`` per probe view).
"""

from __future__ import annotations

from typing import Dict, List, Optional

import jax.numpy as jnp
import numpy as np
from jax import lax

from bagtricks import losses
from bagtricks import gait_protocol
from bagtricks.gait_protocol import META_KEYS
from bagtricks.tasks.base import TaskBase


class GaitTask(TaskBase):
  """The batch-all triplet loss per strip on P×K sets, rank-1 by CASIA-B's protocol.

  Args:
    input_key: the batch entry holding the sets of frames.
    margin: m of the triplet loss (the paper: 0.2).
  """

  progress_metrics = {"full_loss_num": "nonzero"}
  config_defaults = {"triplet.margin": 0.2}

  def __init__(self, input_key: str = "frames", margin: float = 0.2):
    self.input_keys = (input_key,)
    self.margin = margin

  @classmethod
  def from_config(cls, config, dataset_info) -> "GaitTask":
    return cls(dataset_info.input_key, config.triplet.margin)

  @classmethod
  def check_config(cls, config) -> List[str]:
    margin = config.get("triplet", {}).get("margin", 0.2)
    if not isinstance(margin, (int, float)) or isinstance(margin, bool) or margin < 0:
      return [f"config.triplet.margin={margin!r} must be >= 0 (the paper: 0.2)."]
    return []

  @classmethod
  def check_for_data(cls, config, dataset_info) -> List[str]:
    del config
    missing = [k for k in ("label",) + META_KEYS if k not in dataset_info.element_spec]
    if missing:
      return [f"config.task='gait' needs sets of frames with their person, view, condition "
              f"and sequence, and config.dataset.name={dataset_info.name!r} lacks {missing}; "
              "use config.dataset.name='gait_walkers'."]
    return []

  def loss(self, outputs, batch, task_state, rng, axis_name: Optional[str]):
    del rng
    strips = jnp.swapaxes(outputs, 0, 1).astype(jnp.float32)  # [S, per_device, D]
    labels = batch["label"]
    index = jnp.arange(labels.shape[0])
    gallery, gallery_labels, devices = strips, labels, 1
    if axis_name is not None:
      gallery = lax.all_gather(strips, axis_name, axis=1, tiled=True)
      gallery_labels = lax.all_gather(labels, axis_name, tiled=True)
      index = index + lax.axis_index(axis_name) * labels.shape[0]
      devices = lax.psum(1, axis_name)
    loss_sum, nonzero, distance_sums, pairs = losses.batch_all_triplet_sums(
        strips, labels, index, gallery, gallery_labels, self.margin)
    if axis_name is not None:
      nonzero, distance_sums, pairs = lax.psum((nonzero, distance_sums, pairs), axis_name)
    nonzero = nonzero.astype(jnp.float32)
    # The step averages gradients over devices: each device's share of the global mean,
    # times the number of devices.
    loss = devices * jnp.mean(loss_sum / jnp.maximum(nonzero, 1.0))
    metrics = {"full_loss_num": jnp.mean(nonzero),
               "positive_distance": jnp.mean(distance_sums["positive"])
               / jnp.maximum(pairs["positive"], 1),
               "negative_distance": jnp.mean(distance_sums["negative"])
               / jnp.maximum(pairs["negative"], 1)}
    return loss, task_state, metrics

  def eval_sums(self, outputs, batch, task_state) -> Dict[str, jnp.ndarray]:
    del outputs, task_state
    return {"count": jnp.sum(batch["mask"])}

  def eval_examples(self, outputs, batch) -> Dict[str, jnp.ndarray]:
    return {"embedding": outputs.reshape(outputs.shape[0], -1),
            **{k: batch[k] for k in META_KEYS}}

  def examples_summary(self, examples) -> Dict[str, float]:
    return rank1_summary(examples["embedding"], examples)


def rank1_summary(embeddings: np.ndarray, meta) -> Dict[str, float]:
  """Rank-1 of each probe set, identical view excluded: its mean over the probe views
  (``rank1_nm``, ...) and each probe view's (``rank1_nm_<view>``, ...)."""
  views = tuple(int(v) for v in np.unique(meta["view"]))
  results = {}
  for probe, table in gait_protocol.rank1_by_view(embeddings, meta, views).items():
    per_view = gait_protocol.excluding_identical_view(table)
    results[f"rank1_{probe.lower()}"] = float(np.mean(per_view))
    results.update({f"rank1_{probe.lower()}_{v}": float(r) for v, r in zip(views, per_view)})
  return results
