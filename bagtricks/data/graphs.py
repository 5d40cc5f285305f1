"""Graphs as dense padded arrays, from data that ship offline (``models.graph`` reads them).

Every example is one graph: ``nodes`` float32 ``[N, F]``, ``adjacency`` float32 ``[E, N, N]``
(``adjacency[e, i, j] = 1`` for an edge of type e from i to j) and ``node_mask`` float32
``[N]``, padded to the dataset's largest graph, so batches have one shape. The target is one
of

* ``node_labels`` int32 ``[N]`` (−1: not a target) — semi-supervised node classification;
* ``label`` int32 — a class per graph;
* ``answer`` int32 — the index of the node that answers (GGNN's node selection).

Node classification is transductive: the whole graph is every example. Its train split is
``config.batch_size`` copies of the graph, the labelled nodes dealt out among them (copy r
holds the labels of the labelled nodes r, r + copies, …), so one step is one full-batch
gradient step however many devices share it; the test split is the graph once, with the
labels of every unlabelled node.

Sources (``GRAPH_SOURCES``):

* ``karate_club``: Zachary's karate club (``networkx``), 34 members, features one-hot of the
  node (Kipf & Welling's featureless setting), the two factions as classes, one labelled
  member per faction (the instructor, node 0, and the administrator, node 33).
* ``digits_knn``: a symmetric k-nearest-neighbour graph over the bundled 8×8 digits (or the
  5,000 MNIST digits, ``dataset.digits``), pixels as features, ``labels_per_class`` labelled
  nodes per class; ``dataset.rewire`` > 0 moves that fraction of the edges that join two
  digits of one class to a random digit of another class, so that neighbours mostly
  disagree.
* ``graph_atlas``: the 1,252 non-empty graphs of 1 to 7 nodes of ``networkx``'s atlas,
  labelled by a structural property (``dataset.property``: ``'has_cycle'``, ``'bipartite'``,
  ``'connected'`` or ``'triangles'``: none, one, more), degree one-hot as features.
* ``babi``: GGNN's bAbI-style reasoning graphs (``data.babi``).
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

from bagtricks.data.arrays import ArraySource
from bagtricks.data.base import DataError, with_dataset_defaults
from bagtricks.data.digit_sets import chosen_digits

GRAPH_KEYS = ("nodes", "adjacency", "node_mask")
UNLABELLED = -1


def _networkx():
  try:
    import networkx  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DataError("the graph datasets read networkx's bundled graphs; install the graphs "
                    "extra: pip install -e '.[graphs]'.") from e
  return networkx


def pad_graphs(graphs: Sequence[Dict[str, np.ndarray]], num_nodes: int,
               size_field: str = "the padded size") -> Dict[str, np.ndarray]:
  """Stacks graphs ``{'nodes' [n, F], 'adjacency' [E, n, n]}`` padded to ``num_nodes``.

  Args:
    graphs: the graphs, with one feature width F and one number of edge types E.
    num_nodes: the padded size N.
    size_field: what sets N, named in the error (e.g. ``'config.dataset.max_nodes=5'``).

  Returns:
    ``{'nodes' [G, num_nodes, F], 'adjacency' [G, E, num_nodes, num_nodes], 'node_mask'
    [G, num_nodes]}``, float32.

  Raises:
    DataError: a graph has more than ``num_nodes`` nodes.
  """
  g = len(graphs)
  features = graphs[0]["nodes"].shape[1]
  types = graphs[0]["adjacency"].shape[0]
  nodes = np.zeros((g, num_nodes, features), np.float32)
  adjacency = np.zeros((g, types, num_nodes, num_nodes), np.float32)
  mask = np.zeros((g, num_nodes), np.float32)
  for i, graph in enumerate(graphs):
    n = graph["nodes"].shape[0]
    if n > num_nodes:
      raise DataError(f"graph {i} has {n} nodes, more than {size_field} ({num_nodes}); "
                      f"raise it to the largest graph's {max(len(g['nodes']) for g in graphs)}.")
    if graph["adjacency"].shape != (types, n, n):
      raise DataError(f"graph {i} has adjacency {graph['adjacency'].shape} for {n} nodes; it "
                      f"must be [edge_types={types}, {n}, {n}].")
    nodes[i, :n] = graph["nodes"]
    adjacency[i, :, :n, :n] = graph["adjacency"]
    mask[i, :n] = 1.0
  return {"nodes": nodes, "adjacency": adjacency, "node_mask": mask}


def transductive_splits(nodes: np.ndarray, adjacency: np.ndarray, labels: np.ndarray,
                        labelled: np.ndarray, copies: int) -> Dict[str, Dict[str, np.ndarray]]:
  """The train and test splits of semi-supervised node classification on one graph.

  Args:
    nodes: ``[N, F]``.
    adjacency: ``[E, N, N]``.
    labels: ``[N]`` every node's class.
    labelled: indices of the nodes whose labels training sees.
    copies: train examples: the labelled nodes are dealt out among ``copies`` copies.

  Returns:
    ``{'train': ..., 'test': ...}`` with ``nodes``, ``adjacency``, ``node_mask`` and
    ``node_labels`` (−1 where not a target); test targets every unlabelled node.
  """
  n = nodes.shape[0]
  graph = {"nodes": nodes.astype(np.float32), "adjacency": adjacency.astype(np.float32),
           "node_mask": np.ones(n, np.float32)}
  train_labels = np.full((copies, n), UNLABELLED, np.int32)
  for r in range(copies):
    share = np.asarray(labelled)[r::copies]
    train_labels[r, share] = labels[share]
  test_labels = labels.astype(np.int32).copy()
  test_labels[np.asarray(labelled)] = UNLABELLED
  train = {k: np.repeat(v[None], copies, axis=0) for k, v in graph.items()}
  test = {k: v[None] for k, v in graph.items()}
  return {"train": {**train, "node_labels": train_labels},
          "test": {**test, "node_labels": test_labels[None]}}


class KarateClubSource(ArraySource):
  """Zachary's karate club (``dataset.name = 'karate_club'``); see the module docstring.

  Attributes:
    homophily: the fraction of the friendships within a faction.
    labelled: the labelled nodes (0 and 33).
  """

  labelled = np.array([0, 33])

  def __init__(self, config):
    config = with_dataset_defaults(config)
    nx = _networkx()
    graph = nx.karate_club_graph()
    n = graph.number_of_nodes()
    factions = ("Mr. Hi", "Officer")
    labels = np.array([factions.index(graph.nodes[v]["club"]) for v in range(n)], np.int32)
    adjacency = nx.to_numpy_array(graph, nodelist=range(n), weight=None)[None]
    self.homophily = edge_homophily(adjacency[0], labels)
    splits = transductive_splits(np.eye(n), adjacency, labels, self.labelled,
                                 config.batch_size)
    super().__init__(config, splits, input_key="nodes", num_classes=2,
                     class_names=factions)


def knn_adjacency(features: np.ndarray, k: int) -> np.ndarray:
  """``[N, N]`` 0/1: i and j joined when either is among the other's k nearest (Euclidean)."""
  squared = np.sum(features ** 2, axis=1)
  distances = squared[:, None] + squared[None, :] - 2.0 * features @ features.T
  np.fill_diagonal(distances, np.inf)
  nearest = np.argpartition(distances, k, axis=1)[:, :k]
  adjacency = np.zeros(distances.shape, np.float32)
  adjacency[np.repeat(np.arange(len(features)), k), nearest.ravel()] = 1.0
  return np.maximum(adjacency, adjacency.T)


def rewire_to_other_classes(adjacency: np.ndarray, labels: np.ndarray, fraction: float,
                            seed: int) -> np.ndarray:
  """Moves ``fraction`` of the undirected edges that join two nodes of one class: edge
  (i, j) becomes (i, m) for a random m of another class than i's. Degrees of the i side are
  kept; the graph stays symmetric."""
  rng = np.random.default_rng(seed)
  upper = np.triu(adjacency, 1)
  i, j = np.nonzero(upper)
  same = labels[i] == labels[j]
  move = same & (rng.random(len(i)) < fraction)
  rewired = upper.copy()
  rewired[i[move], j[move]] = 0.0
  for a in np.flatnonzero(move):
    others = np.flatnonzero(labels != labels[i[a]])
    rewired[i[a], rng.choice(others)] = 1.0
  rewired = np.maximum(rewired, rewired.T)
  np.fill_diagonal(rewired, 0.0)
  return rewired


def edge_homophily(adjacency: np.ndarray, labels: np.ndarray) -> float:
  """The fraction of edges whose two ends share a class."""
  i, j = np.nonzero(np.triu(adjacency, 1))
  return float(np.mean(labels[i] == labels[j]))


def labelled_per_class(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
  """``per_class`` random node indices of every class, sorted."""
  rng = np.random.default_rng(seed)
  chosen = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
            for c in np.unique(labels)]
  return np.sort(np.concatenate(chosen))


class DigitsKnnSource(ArraySource):
  """A k-nearest-neighbour graph over digits (``dataset.name = 'digits_knn'``).

  Reads ``dataset.digits`` (``'sklearn_digits'``: all 1,797; ``'mnist_5k'``: all 5,000),
  ``neighbours`` (k), ``labels_per_class``, ``label_seed``, ``rewire`` (the fraction of
  same-class edges moved to other classes; 0 keeps the graph) and ``rewire_seed``.
  Features are the pixels scaled to [0, 1].

  Attributes:
    homophily: the fraction of the graph's edges that join two digits of one class.
    labelled: the labelled nodes.
  """

  config_defaults = {"digits": "sklearn_digits", "neighbours": 10, "labels_per_class": 10,
                     "label_seed": 0, "rewire": 0.0, "rewire_seed": 0}

  def __init__(self, config):
    config = with_dataset_defaults(config, self.config_defaults)
    d = config.dataset
    if not 0.0 <= d.rewire <= 1.0:
      raise DataError(f"config.dataset.rewire={d.rewire!r} must be in [0, 1] (the fraction "
                      "of same-class edges moved).")
    features, labels = _all_digits(config)
    adjacency = knn_adjacency(features, d.neighbours)
    if d.rewire:
      adjacency = rewire_to_other_classes(adjacency, labels, d.rewire, d.rewire_seed)
    self.homophily = edge_homophily(adjacency, labels)
    self.labelled = labelled_per_class(labels, d.labels_per_class, d.label_seed)
    splits = transductive_splits(features, adjacency[None], labels, self.labelled,
                                 config.batch_size)
    super().__init__(config, splits, input_key="nodes", num_classes=10,
                     class_names=tuple(str(c) for c in range(10)))


def _all_digits(config):
  """Every image of ``config.dataset.digits`` (train and test), flattened to [0, 1]
  features, and their labels."""
  arrays = chosen_digits(config)
  images = np.concatenate([arrays["train"][0], arrays["test"][0]])
  labels = np.concatenate([arrays["train"][1], arrays["test"][1]]).astype(np.int32)
  return images.reshape(len(images), -1).astype(np.float32) / 255.0, labels


ATLAS_PROPERTIES = ("has_cycle", "bipartite", "connected", "triangles")
ATLAS_MAX_NODES = 7


def atlas_property(graph, name: str) -> int:
  """The class of a networkx graph under ``name`` (one of ``ATLAS_PROPERTIES``)."""
  nx = _networkx()
  if name == "has_cycle":
    return int(not nx.is_forest(graph))
  if name == "bipartite":
    return int(nx.is_bipartite(graph))
  if name == "connected":
    return int(nx.is_connected(graph))
  return min(sum(nx.triangles(graph).values()) // 3, 2)


class GraphAtlasSource(ArraySource):
  """Graph classification on networkx's atlas (``dataset.name = 'graph_atlas'``).

  Reads ``dataset.property`` (one of ``ATLAS_PROPERTIES``), ``test_fraction`` and
  ``split_seed`` (a random split of the graphs, stratified by class) and ``max_nodes`` (the
  padded size; 0: the largest graph's 7). Node features are the degree one-hot (0–6).
  """

  config_defaults = {"property": "has_cycle", "test_fraction": 0.3, "split_seed": 0,
                     "max_nodes": 0}

  def __init__(self, config):
    config = with_dataset_defaults(config, self.config_defaults)
    d = config.dataset
    if d.property not in ATLAS_PROPERTIES:
      raise DataError(f"config.dataset.property={d.property!r} is unknown; use one of "
                      f"{ATLAS_PROPERTIES}.")
    nx = _networkx()
    atlas = [g for g in nx.graph_atlas_g() if g.number_of_nodes() > 0]
    graphs, labels = [], []
    for graph in atlas:
      n = graph.number_of_nodes()
      degrees = np.array([graph.degree(v) for v in range(n)])
      graphs.append({"nodes": np.eye(ATLAS_MAX_NODES)[degrees],
                     "adjacency": nx.to_numpy_array(graph, nodelist=range(n), weight=None)[None]})
      labels.append(atlas_property(graph, d.property))
    arrays = pad_graphs(graphs, d.max_nodes or ATLAS_MAX_NODES,
                        f"config.dataset.max_nodes={d.max_nodes}")
    arrays["label"] = np.asarray(labels, np.int32)
    num_classes = 3 if d.property == "triangles" else 2
    super().__init__(config, stratified_split(arrays, d.test_fraction, d.split_seed),
                     input_key="nodes", num_classes=num_classes)


def stratified_split(arrays: Dict[str, np.ndarray], test_fraction: float,
                     seed: int) -> Dict[str, Dict[str, np.ndarray]]:
  """``{'train', 'test'}`` rows of ``arrays``, ``test_fraction`` of each ``label`` held out."""
  rng = np.random.default_rng(seed)
  test = []
  for c in np.unique(arrays["label"]):
    members = rng.permutation(np.flatnonzero(arrays["label"] == c))
    test.extend(members[:int(round(test_fraction * len(members)))])
  is_test = np.zeros(len(arrays["label"]), bool)
  is_test[test] = True
  return {"train": {k: v[~is_test] for k, v in arrays.items()},
          "test": {k: v[is_test] for k, v in arrays.items()}}


GRAPH_SOURCES = {"karate_club": KarateClubSource, "digits_knn": DigitsKnnSource,
                 "graph_atlas": GraphAtlasSource}
