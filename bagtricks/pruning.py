"""Channel pruning of a ResNet trunk's basic blocks: the network rebuilt with fewer channels.

A basic block's prunable channels are the ones between its two convs (conv1's filters, norm1,
conv2's input channels): removing one changes no shape outside the block, as in the channel
pruning of ResNets by DCP (Zhuang et al. 2018) and LCP (Xie et al. 2020). The pruned network
is a new module with ``inner_widths`` (``models.resnet.ResNet``) and the kept channels'
weights (``prune_block``), not the old one with masks: its parameters, FLOPs and speed are
those of the smaller network.

Which channels a block keeps is a ranking:

* ``l1_ranking``: Li et al. 2017, the sum of the absolute weights of each of conv1's filters,
  s_j = Σ |F_j|; the largest are kept (``l1_selection`` for every block);
* DCP's and LCP's greedy choice by auxiliary losses: ``bagtricks.channel_selection``.
"""

from __future__ import annotations

import re
from typing import Dict, List, Sequence, Tuple

import numpy as np

BLOCK_NAME = re.compile(r"^stage(\d+)_block(\d+)$")


def block_names(trunk_params) -> Tuple[str, ...]:
  """The trunk's basic blocks, in network order (``stage{s}_block{b}``)."""
  found = [(tuple(int(g) for g in BLOCK_NAME.match(k).groups()), k) for k in trunk_params
           if BLOCK_NAME.match(k)]
  return tuple(name for _, name in sorted(found))


def blocks_of(stage_sizes: Sequence[int]) -> Tuple[str, ...]:
  """The basic blocks a ResNet with ``stage_sizes`` builds, in network order (known from its
  config alone, before anything is built)."""
  return tuple(f"stage{s}_block{b}" for s, count in enumerate(stage_sizes, start=1)
               for b in range(1, count + 1))


def stage_of(block: str) -> int:
  """The stage (1-based) of a ``stage{s}_block{b}`` name."""
  return int(BLOCK_NAME.match(block).group(1))


def block_problems(names: Sequence[str], known: Sequence[str], field: str = "layer") -> List[str]:
  """One line per name that is not one of the ``known`` prunable blocks."""
  return [f"{field} {name!r} is not a prunable block; the trunk's are {tuple(known)}."
          for name in names if name not in known]


def inner_widths(trunk_params) -> Tuple[int, ...]:
  """Every block's channels between its two convs, in network order."""
  return tuple(int(trunk_params[b]["conv1"]["kernel"].shape[-1])
               for b in block_names(trunk_params))


def kept_channels(width: int, fraction: float) -> int:
  """How many of ``width`` channels remain when ``fraction`` of them is pruned (at least 1)."""
  if not 0 < fraction < 1:
    raise ValueError(f"the pruned fraction {fraction!r} must be in (0, 1).")
  return max(1, int(round(width * (1.0 - fraction))))


def l1_ranking(trunk_params, block: str) -> np.ndarray:
  """``[C]`` s_j = Σ |conv1 kernel[..., j]| of each of the block's inner channels."""
  kernel = np.asarray(trunk_params[block]["conv1"]["kernel"])
  return np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)


def top_channels(scores: np.ndarray, count: int) -> np.ndarray:
  """The ``count`` highest-scoring channels, in increasing channel order."""
  return np.sort(np.argsort(-np.asarray(scores), kind="stable")[:count])


def prune_block(params, batch_stats, block: str, keep: np.ndarray) -> Tuple[Dict, Dict]:
  """The trunk's ``params`` and ``batch_stats`` with only the ``keep`` inner channels of
  ``block``: conv1's filters, norm1's scale, bias and statistics, conv2's input channels.

  Args:
    params, batch_stats: the trunk's collections (``variables[...]['trunk']``).
    block: a ``block_names`` entry.
    keep: the channel indices to keep, increasing.

  Returns:
    New ``(params, batch_stats)``; the inputs are not changed.
  """
  keep = np.asarray(keep)
  p = {k: dict(v) for k, v in params[block].items()}
  p["conv1"] = {**p["conv1"], "kernel": np.asarray(p["conv1"]["kernel"])[..., keep]}
  p["norm1"] = {k: np.asarray(v)[keep] for k, v in p["norm1"].items()}
  p["conv2"] = {**p["conv2"], "kernel": np.asarray(p["conv2"]["kernel"])[:, :, keep, :]}
  s = dict(batch_stats[block])
  s["norm1"] = {k: np.asarray(v)[keep] for k, v in s["norm1"].items()}
  return {**params, block: p}, {**batch_stats, block: s}


def l1_selection(trunk_params, fraction: float,
                 layers: Sequence[str] = ()) -> Dict[str, np.ndarray]:
  """``{block: kept indices}``: every block of ``layers`` (default all) keeps its
  ``kept_channels`` filters of largest L1 norm (``l1_ranking``)."""
  kept = {}
  for block in layers or block_names(trunk_params):
    scores = l1_ranking(trunk_params, block)
    kept[block] = top_channels(scores, kept_channels(len(scores), fraction))
  return kept


def prune_trunk(params, batch_stats,
                kept: Dict[str, np.ndarray]) -> Tuple[Dict, Dict, Tuple[int, ...]]:
  """``prune_block`` for every block of ``kept``.

  Returns:
    ``(params, batch_stats, inner_widths)``: the rebuilt trunk's collections and the widths
    its module needs (``ResNet.inner_widths``).
  """
  for block, keep in kept.items():
    params, batch_stats = prune_block(params, batch_stats, block, keep)
  return params, batch_stats, inner_widths(params)
