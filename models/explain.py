"""What a trained tree learned: DNDT rules and self-pruning, a soft decision tree's picture.

The DNDT and soft tree entries of the model registry name ``dndt_report`` and
``soft_tree_report`` as their reports; the trainer calls a model's report at the end of a run,
and it writes, next to ``summary.json``:

* for a DNDT on a table: ``rules.txt``, the hard tree (τ → 0) as nested rules in the
  data's own units, in the style of scikit-learn's ``export_text``, and returns the test
  accuracy of those hard rules and the features each tree never splits on (the paper's
  "self-pruning": every cut point of the feature lies outside the training data's range);
* for a soft decision tree: ``tree.png``, each inner node's filter w_i drawn as an image and
  each leaf's class distribution Q^ℓ as a bar chart, like Frosst & Hinton's figures.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from absl import logging
from etils import epath

from models.trees import tree_feature_subsets

# ------------------------------------------------------------------------------------------
# DNDT: hard bins, rules, pruning.


def hard_bins(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
  """Bin index of each value under sorted cut points: #{β < x}, the τ → 0 limit of the binning."""
  return np.sum(np.asarray(values)[..., None] > np.sort(cuts), axis=-1)


def hard_leaf_index(features: np.ndarray, cut_points: np.ndarray) -> np.ndarray:
  """Leaf index of each row in one hard DNDT tree (feature 1 varies slowest, as in ``np.kron``).

  Args:
    features: ``[rows, tree_features]`` standardized values of the tree's features.
    cut_points: ``[tree_features, n]``.

  Returns:
    ``[rows]`` int.
  """
  num_bins = cut_points.shape[-1] + 1
  index = np.zeros(features.shape[0], np.int64)
  for d in range(features.shape[1]):
    index = index * num_bins + hard_bins(features[:, d], cut_points[d])
  return index


def dndt_hard_predict(params: Dict[str, np.ndarray], subsets: np.ndarray,
                      features: np.ndarray) -> np.ndarray:
  """Class probabilities ``[rows, K]`` of the hard trees, averaged over trees."""
  probs = []
  for t, subset in enumerate(subsets):
    leaf = hard_leaf_index(features[:, subset], np.asarray(params["cut_points"][t]))
    scores = np.asarray(params["leaf_scores"][t])[leaf]
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    probs.append(scores / scores.sum(-1, keepdims=True))
  return np.mean(probs, axis=0)


def dndt_pruning(cut_points: np.ndarray, subset: Sequence[int], table,
                 train_features: np.ndarray) -> List[Dict[str, Any]]:
  """Per feature of one tree: its cut points in the data's units and whether they split data.

  A cut point splits the data only if it lies strictly inside the training range of its
  feature; a feature none of whose cut points does is pruned (the tree never splits on it).

  Returns:
    One dict per feature: ``feature``, ``cut_points`` (original units, sorted),
    ``data_range``, ``active_cuts``, ``pruned``.
  """
  report = []
  for d, f in enumerate(subset):
    cuts = np.sort(np.asarray(cut_points[d]))
    lo, hi = train_features[:, f].min(), train_features[:, f].max()
    active = int(np.sum((cuts > lo) & (cuts < hi)))
    report.append({
        "feature": table.feature_names[f],
        "cut_points": [round(float(c), 4) for c in table.to_original_units(cuts, f)],
        "data_range": [round(float(v), 4) for v in table.to_original_units([lo, hi], f)],
        "active_cuts": active,
        "pruned": active == 0,
    })
  return report


def _interval(name: str, low: Optional[float], high: Optional[float], decimals: int) -> str:
  if low is None:
    return f"{name} <= {high:.{decimals}f}"
  if high is None:
    return f"{name} >  {low:.{decimals}f}"
  return f"{low:.{decimals}f} < {name} <= {high:.{decimals}f}"


def export_dndt_rules(cut_points: np.ndarray, leaf_scores: np.ndarray, subset: Sequence[int],
                      table, train_features: np.ndarray, decimals: int = 2) -> str:
  """One hard DNDT tree as nested rules, like scikit-learn's ``export_text``.

  Features are split in the tree's order; only bins that hold training data are shown, so a
  pruned feature never appears, and a subtree whose every populated leaf predicts the same
  class is written as that one class. Each leaf line gives its class (argmax of the leaf
  scores) and the number of training rows that reach it.

  Args:
    cut_points: ``[tree_features, n]`` standardized cut points of the tree.
    leaf_scores: ``[leaves, K]``.
    subset: the tree's features (indices into ``table.feature_names``).
    table: ``data.TabularData`` (names and units).
    train_features: standardized ``[rows, all_features]`` (the rows counted at each leaf).
    decimals: digits of the thresholds.

  Returns:
    The rules, one line per node.
  """
  cut_points = np.sort(np.asarray(cut_points), axis=-1)
  num_bins = cut_points.shape[-1] + 1
  rows = np.asarray(train_features)[:, list(subset)]
  row_bins = np.stack([hard_bins(rows[:, d], cut_points[d]) for d in range(len(subset))], 1)
  leaf_class = np.argmax(np.asarray(leaf_scores), axis=-1)

  def build(depth: int, prefix: tuple, members: np.ndarray):
    """(class or None, lines) of the subtree below the bins chosen in ``prefix``."""
    if depth == len(subset):
      leaf = 0
      for b in prefix:
        leaf = leaf * num_bins + b
      cls = table.class_names[leaf_class[leaf]]
      return cls, [f"class: {cls}  [{int(members.sum())} rows]"]
    bins = np.unique(row_bins[members, depth])  # Only bins that hold training rows.
    children = []
    for b in bins:
      child = members & (row_bins[:, depth] == b)
      children.append((b, *build(depth + 1, prefix + (b,), child)))
    if len(children) == 1:  # The data never splits on this feature here.
      return children[0][1], children[0][2]
    classes = {c for _, c, _ in children}
    if classes != {None} and len(classes) == 1:  # Every populated leaf below agrees.
      cls = classes.pop()
      return cls, [f"class: {cls}  [{int(members.sum())} rows]"]
    f = subset[depth]
    cuts = table.to_original_units(cut_points[depth], f)
    lines = []
    for i, (b, _, sub) in enumerate(children):
      low = None if i == 0 else float(cuts[b - 1])
      high = None if i == len(children) - 1 else float(cuts[b])
      lines.append(_interval(table.feature_names[f], low, high, decimals))
      lines.extend("|   " + line for line in sub)
    return None, lines

  _, lines = build(0, (), np.ones(len(rows), bool))
  return "\n".join(_indent(line) for line in lines) + "\n"


def _indent(line: str) -> str:
  # Nested lines arrive as "|   " * depth + text; each gets export_text's "|--- " marker.
  depth = 0
  while line.startswith("|   "):
    line, depth = line[4:], depth + 1
  return "|   " * depth + "|--- " + line


# ------------------------------------------------------------------------------------------
# Soft decision tree picture.


def plot_soft_tree(kernel: np.ndarray, leaf_logits: np.ndarray, input_shape: Sequence[int],
                   class_names: Sequence[str], path: str, max_levels: int = 5) -> None:
  """Draws a soft decision tree: inner filters as images, leaf distributions as bars.

  Args:
    kernel: ``[inputs, inner_nodes]`` of the inner nodes' dense layer (w_i in column i).
    leaf_logits: ``[leaves, K]`` φ; Q^ℓ = softmax(φ^ℓ).
    input_shape: shape of one input, e.g. ``(8, 8, 1)``; filters are drawn at ``[H, W]``.
    class_names: bar labels.
    path: the PNG to write.
    max_levels: levels of inner nodes drawn; in a deeper tree the bottom row shows, for each
      drawn subtree, the mean of its leaves' distributions.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  leaf_logits = np.asarray(leaf_logits, np.float64)
  q = np.exp(leaf_logits - leaf_logits.max(-1, keepdims=True))
  q /= q.sum(-1, keepdims=True)
  depth = int(round(np.log2(q.shape[0])))
  levels = min(depth, max_levels)
  columns = 2**levels
  if levels < depth:  # Mean distribution of each drawn subtree.
    q = q.reshape(columns, -1, q.shape[-1]).mean(axis=1)
  height, width = int(input_shape[0]), int(np.prod(input_shape[1:2]) or 1)
  fig = plt.figure(figsize=(max(6.0, 0.75 * columns), 1.3 * (levels + 1)))
  grid = fig.add_gridspec(levels + 1, columns * 2)
  for level in range(levels):
    span = columns * 2 // 2**level
    for j in range(2**level):
      node = 2**level - 1 + j
      centre = j * span + span // 2
      ax = fig.add_subplot(grid[level, centre - 1:centre + 1])
      w = np.asarray(kernel)[:, node]
      image = w[:height * width].reshape(height, width) if w.size >= height * width else w[None]
      limit = np.abs(image).max() or 1.0
      ax.imshow(image, cmap="RdBu_r", vmin=-limit, vmax=limit)
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_title(f"node {node}", fontsize=6)
  for leaf in range(columns):
    ax = fig.add_subplot(grid[levels, 2 * leaf:2 * leaf + 2])
    ax.bar(np.arange(q.shape[-1]), q[leaf], color="tab:blue")
    ax.set_ylim(0, 1)
    ax.set_xticks(np.arange(q.shape[-1]))
    ax.set_xticklabels([str(c) for c in class_names], fontsize=5)
    ax.set_yticks([])
    ax.set_title(f"argmax {class_names[int(np.argmax(q[leaf]))]}", fontsize=6)
  fig.suptitle("Soft decision tree: inner-node filters (red +, blue −) and leaf distributions"
               + ("" if levels == depth else f" (top {levels} of {depth} levels; bottom row: "
                  "mean of each subtree's leaves)"), fontsize=8)
  fig.tight_layout()
  with epath.Path(path).open("wb") as f:  # Local or remote (gs://) workdirs.
    fig.savefig(f, format="png", dpi=110)
  plt.close(fig)


# ------------------------------------------------------------------------------------------
# Reports the model registry declares.


def soft_tree_report(config, params: Dict[str, Any], source, workdir: str) -> Dict[str, Any]:
  """Draws ``tree.png`` (``plot_soft_tree``) into ``workdir``; returns its path for the summary.

  Args:
    config: the run config (unused beyond the data's description).
    params: the trained parameters (host arrays).
    source: the run's data source (its ``info()`` gives the input shape and class names).
    workdir: the run directory.
  """
  del config
  info = source.info()
  path = os.fspath(epath.Path(workdir) / "tree.png")
  try:
    plot_soft_tree(params["inner"]["kernel"], params["leaf_logits"], info.input_shape,
                   _class_names(info), path)
  except ImportError:
    logging.warning("matplotlib is not installed; no tree.png.")
    return {}
  return {"tree_picture": path}


def _class_names(info) -> List[str]:
  names = getattr(info, "class_names", None)
  return list(names) if names else [str(k) for k in range(info.num_classes)]


def dndt_report(config, params: Dict[str, Any], source, workdir: str) -> Dict[str, Any]:
  """Writes ``rules.txt`` for a DNDT trained on a table; returns the hard rules' test accuracy
  and each tree's pruned features. Nothing for data that is not a table (no ``source.table``).

  Args:
    config: the run config (reads ``model.*`` and the dataset's split names).
    params: the trained parameters (host arrays).
    source: the run's data source; a table source carries ``table`` (names, units, splits).
    workdir: the run directory.
  """
  table = getattr(source, "table", None)
  if table is None:
    return {}
  m = config.model
  train_x, _ = table.splits[config.dataset.train_split]
  test_x, test_y = table.splits[config.dataset.eval_split]
  subsets = tree_feature_subsets(table.num_features, m.num_trees, m.features_per_tree,
                                 m.feature_seed)
  sections, pruned = [], []
  for t, subset in enumerate(subsets):
    cuts = np.asarray(params["cut_points"][t])
    pruning = dndt_pruning(cuts, subset, table, train_x)
    pruned.append([p["feature"] for p in pruning if p["pruned"]])
    header = [f"tree {t}: features {[table.feature_names[f] for f in subset]}",
              f"  never split on (every cut point outside the training range): "
              f"{pruned[-1] or 'none'}"]
    header += [f"  {p['feature']}: cut points {p['cut_points']}, training range "
               f"{p['data_range']}" for p in pruning]
    rules = export_dndt_rules(cuts, np.asarray(params["leaf_scores"][t]), subset, table,
                              train_x)
    sections.append("\n".join(header) + "\n" + rules)
  path = os.fspath(epath.Path(workdir) / "rules.txt")
  epath.Path(path).write_text("\n".join(sections))
  hard = dndt_hard_predict(params, subsets, test_x)
  return {"rules_file": path,
          "rules_test_accuracy": float(np.mean(np.argmax(hard, -1) == test_y)),
          "pruned_features": pruned}
