"""Graph neural networks: each layer against NumPy, equivariance, padding, data and tasks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from bagtricks import data, optim, state, train, validate
from bagtricks.data import babi, graphs
from bagtricks.tasks import GraphTask
from conftest import assert_trees_close, train_on_one_and_eight_devices
from configs import gcn_karate, ggnn_babi, gnn_atlas, gnn_digits
from models import graph as gnn


def _random_graphs(rng, batch=3, n=7, real=(7, 5, 4), features=5, edge_types=1):
  """Random directed graphs padded to ``n`` nodes, features zero at padding."""
  mask = np.zeros((batch, n), np.float32)
  for b, count in enumerate(real):
    mask[b, :count] = 1.0
  nodes = rng.normal(size=(batch, n, features)).astype(np.float32) * mask[..., None]
  adjacency = (rng.random((batch, edge_types, n, n)) < 0.35).astype(np.float32)
  adjacency *= (1 - np.eye(n, dtype=np.float32))
  adjacency *= mask[:, None, :, None] * mask[:, None, None, :]
  return nodes, adjacency, mask


def _undirected(adjacency):
  merged = adjacency.sum(1)
  return ((merged + np.swapaxes(merged, 1, 2)) > 0).astype(np.float64)


def test_gcn_adjacency_against_numpy():
  nodes, adjacency, mask = _random_graphs(np.random.default_rng(0), edge_types=2)
  got = np.asarray(gnn.gcn_adjacency(jnp.asarray(adjacency), jnp.asarray(mask)))
  for b in range(3):
    n = int(mask[b].sum())
    a = np.minimum(adjacency[b].sum(0)[:n, :n], 1.0) + np.eye(n)
    d = np.diag(a.sum(1) ** -0.5)
    np.testing.assert_allclose(got[b, :n, :n], d @ a @ d, rtol=1e-6)
    assert np.all(got[b, n:] == 0) and np.all(got[b, :, n:] == 0)


def test_gcn_against_numpy():
  nodes, adjacency, mask = _random_graphs(np.random.default_rng(1))
  model = gnn.GCN(num_classes=3, hidden=(4,), readout="node")
  variables = model.init(jax.random.PRNGKey(0), nodes, adjacency, mask)
  got = np.asarray(model.apply(variables, nodes, adjacency, mask))
  p = jax.tree_util.tree_map(np.asarray, variables["params"])
  for b in range(3):
    n = int(mask[b].sum())
    a = np.minimum(adjacency[b, 0, :n, :n], 1) + np.eye(n)
    a_hat = np.diag(a.sum(1) ** -0.5) @ a @ np.diag(a.sum(1) ** -0.5)
    h = np.maximum(a_hat @ nodes[b, :n] @ p["GCNLayer_0"]["Dense_0"]["kernel"]
                   + p["GCNLayer_0"]["bias"], 0)
    z = a_hat @ h @ p["GCNLayer_1"]["Dense_0"]["kernel"] + p["GCNLayer_1"]["bias"]
    np.testing.assert_allclose(got[b, :n], z, rtol=1e-4, atol=1e-5)
    assert np.all(got[b, n:] == 0)


def test_gat_layer_against_numpy():
  nodes, adjacency, mask = _random_graphs(np.random.default_rng(2))
  layer = gnn.GATLayer(features=3, num_heads=2)
  variables = layer.init(jax.random.PRNGKey(0), nodes, adjacency, mask)
  got = np.asarray(layer.apply(variables, nodes, adjacency, mask))
  p = jax.tree_util.tree_map(np.asarray, variables["params"])
  w = p["DenseGeneral_0"]["kernel"]  # [F, heads, features]
  neighbours = _undirected(adjacency)
  for b in range(3):
    n = int(mask[b].sum())
    for k in range(2):
      z = nodes[b, :n] @ w[:, k]
      for i in range(n):
        allowed = [j for j in range(n) if neighbours[b, i, j] or j == i]
        e = np.array([z[i] @ p["attention_source"][k] + z[j] @ p["attention_target"][k]
                      for j in allowed])
        e = np.where(e > 0, e, 0.2 * e)
        alpha = np.exp(e - e.max()) / np.exp(e - e.max()).sum()
        expected = alpha @ z[allowed] + p["bias"][k]
        np.testing.assert_allclose(got[b, i, 3 * k:3 * k + 3], expected, rtol=1e-4, atol=1e-5)


def test_sage_layer_against_numpy():
  nodes, adjacency, mask = _random_graphs(np.random.default_rng(3))
  layer = gnn.SAGELayer(features=4, normalize=True, activation=jax.nn.relu)
  variables = layer.init(jax.random.PRNGKey(0), nodes, adjacency, mask)
  got = np.asarray(layer.apply(variables, nodes, adjacency, mask))
  p = jax.tree_util.tree_map(np.asarray, variables["params"])["Dense_0"]
  neighbours = _undirected(adjacency)
  for b in range(3):
    for i in range(int(mask[b].sum())):
      around = np.flatnonzero(neighbours[b, i])
      mean = nodes[b, around].mean(0) if len(around) else np.zeros(5)
      out = np.maximum(np.concatenate([nodes[b, i], mean]) @ p["kernel"] + p["bias"], 0)
      np.testing.assert_allclose(got[b, i], out / max(np.linalg.norm(out), 1e-6),
                                 rtol=1e-4, atol=1e-5)


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def test_ggnn_propagation_against_numpy():
  nodes, adjacency, mask = _random_graphs(np.random.default_rng(4), features=3, edge_types=2)
  layer = gnn.GGNNPropagation(hidden=6, steps=3)
  variables = layer.init(jax.random.PRNGKey(0), nodes, adjacency, mask)
  got = np.asarray(layer.apply(variables, nodes, adjacency, mask))
  p = jax.tree_util.tree_map(np.asarray, variables["params"])
  w_in, w_out = p["message_in"]["kernel"], p["message_out"]["kernel"]  # [D, E, D]
  for b in range(3):
    n = int(mask[b].sum())
    h = np.concatenate([nodes[b, :n], np.zeros((n, 3))], 1)
    a_types = adjacency[b, :, :n, :n]
    for _ in range(3):
      a = np.zeros((n, 6)) + p["message_bias"]
      for e in range(2):
        for v in range(n):
          for u in range(n):
            a[v] += a_types[e, u, v] * (h[u] @ w_in[:, e]) + a_types[e, v, u] * (h[u] @ w_out[:, e])
      gates = a @ p["gates_from_messages"]["kernel"] + p["gates_from_messages"]["bias"]
      state = h @ p["gates_from_state"]["kernel"]
      z = _sigmoid(gates[:, :6] + state[:, :6])
      r = _sigmoid(gates[:, 6:12] + state[:, 6:])
      candidate = np.tanh(gates[:, 12:] + (r * h) @ p["candidate"]["kernel"])
      h = (1 - z) * h + z * candidate
    np.testing.assert_allclose(got[b, :n], h, rtol=1e-4, atol=1e-5)
    assert np.all(got[b, n:] == 0)


MODEL_CASES = [("gcn", "node"), ("gcn", "graph"), ("gat", "node"), ("gat", "graph"),
               ("graphsage", "node"), ("graphsage", "graph"), ("ggnn", "node"),
               ("ggnn", "graph"), ("ggnn", "select"), ("node_mlp", "node")]


@pytest.mark.parametrize("name,readout", MODEL_CASES)
def test_models_are_permutation_equivariant_and_blind_to_padding(name, readout):
  rng = np.random.default_rng(5)
  nodes, adjacency, mask = _random_graphs(rng, batch=2, n=6, real=(6, 6), edge_types=2)
  model = models.create_model(name, num_classes=3, readout=readout)
  variables = model.init(jax.random.PRNGKey(0), nodes, adjacency, mask)
  apply = jax.jit(lambda x, a, m: model.apply(variables, x, a, m))
  out = np.asarray(apply(nodes, adjacency, mask))
  perm = rng.permutation(6)
  permuted = np.asarray(apply(nodes[:, perm], adjacency[:, :, perm][..., perm], mask[:, perm]))
  expected = out if readout == "graph" else out[:, perm]
  np.testing.assert_allclose(permuted, expected, rtol=1e-5, atol=1e-5)
  # The same graphs padded with 3 nodes that carry features and edges: the real outputs stay.
  pad = 3
  padded_nodes = np.concatenate([nodes, rng.normal(size=(2, pad, 5)).astype(np.float32)], 1)
  padded_adj = (rng.random((2, 2, 6 + pad, 6 + pad)) < 0.5).astype(np.float32)
  padded_adj[:, :, :6, :6] = adjacency
  padded_mask = np.concatenate([mask, np.zeros((2, pad), np.float32)], 1)
  padded = np.asarray(apply(padded_nodes, padded_adj, padded_mask))
  real = padded if readout == "graph" else padded[:, :6]
  np.testing.assert_allclose(real, out, rtol=1e-5, atol=1e-5)
  if readout == "select":
    assert np.all(padded[:, 6:] == gnn.NEG_INF)
  elif readout == "node":
    assert np.all(padded[:, 6:] == 0)


def test_models_under_vmap_grad_and_jvp():
  nodes, adjacency, mask = _random_graphs(np.random.default_rng(6))
  model = models.create_model("gat", num_classes=2)
  # Each transformation jitted: op by op, every op of the network is a compile of its own.
  variables = state.init_variables(model, jax.random.PRNGKey(0), nodes, adjacency, mask)
  out = jax.jit(model.apply)(variables, nodes, adjacency, mask)
  one_by_one = jax.jit(jax.vmap(
      lambda x, a, m: model.apply(variables, x[None], a[None], m[None])[0]))(
          nodes, adjacency, mask)
  np.testing.assert_allclose(one_by_one, out, rtol=1e-5, atol=1e-6)
  grads = jax.jit(jax.grad(
      lambda p: jnp.sum(model.apply({"params": p}, nodes, adjacency, mask) ** 2)))(
          variables["params"])
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
  _, tangent = jax.jit(lambda d: jax.jvp(
      lambda x: model.apply(variables, x, adjacency, mask), (nodes,), (d,)))(nodes)
  assert np.all(np.asarray(tangent)[mask == 0] == 0)


def test_knn_graph_against_a_brute_force_search_and_rewiring():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(40, 3))
  adjacency = graphs.knn_adjacency(features, 4)
  distances = np.linalg.norm(features[:, None] - features[None], axis=-1)
  np.fill_diagonal(distances, np.inf)
  expected = np.zeros((40, 40))
  for i in range(40):
    expected[i, np.argsort(distances[i])[:4]] = 1
  np.testing.assert_array_equal(adjacency, np.maximum(expected, expected.T))
  labels = np.repeat(np.arange(4), 10)
  rewired = graphs.rewire_to_other_classes(adjacency, labels, 0.8, seed=0)
  np.testing.assert_array_equal(rewired, rewired.T)
  assert np.all(np.diag(rewired) == 0)
  assert graphs.edge_homophily(rewired, labels) < 0.5 * graphs.edge_homophily(adjacency, labels)
  # Only same-class edges move: every edge between classes is kept.
  across = adjacency * (labels[:, None] != labels[None, :])
  assert np.all(rewired[across > 0] == 1)


def test_transductive_splits_deal_out_the_labelled_nodes():
  labels = np.array([0, 1, 1, 0, 1])
  splits = graphs.transductive_splits(np.eye(5), np.zeros((1, 5, 5)), labels,
                                      np.array([0, 1, 3]), copies=2)
  np.testing.assert_array_equal(splits["train"]["node_labels"],
                                [[0, -1, -1, 0, -1], [-1, 1, -1, -1, -1]])
  np.testing.assert_array_equal(splits["test"]["node_labels"], [[-1, -1, 1, -1, 1]])
  assert splits["train"]["adjacency"].shape == (2, 1, 5, 5)


def test_karate_club_source():
  config = validate.complete_config(gcn_karate.get_config())
  source = data.get_source(config)
  train_split = source.splits["train"]
  assert train_split["nodes"].shape == (1, 34, 34)
  assert train_split["adjacency"].shape == (1, 1, 34, 34)
  # 78 friendships, both directions; the instructor and the administrator are the labels.
  assert train_split["adjacency"][0].sum() == 156
  labelled = train_split["node_labels"]
  assert sorted(labelled[labelled >= 0].tolist()) == [0, 1]
  assert (source.splits["test"]["node_labels"] >= 0).sum() == 32


def test_atlas_properties_of_hand_made_graphs():
  import networkx as nx
  triangle, square, path = nx.cycle_graph(3), nx.cycle_graph(4), nx.path_graph(4)
  assert [graphs.atlas_property(g, "has_cycle") for g in (triangle, square, path)] == [1, 1, 0]
  assert [graphs.atlas_property(g, "bipartite") for g in (triangle, square, path)] == [0, 1, 1]
  assert graphs.atlas_property(nx.complete_graph(4), "triangles") == 2
  assert graphs.atlas_property(nx.union(path, triangle, rename=("a", "b")), "connected") == 0
  config = validate.complete_config(gnn_atlas.get_config())
  source = data.get_source(config)
  counts = {s: len(source.splits[s]["label"]) for s in ("train", "test")}
  assert counts["train"] + counts["test"] == 1252


def _solve(task, nodes, adjacency, mask):
  """The answer of one generated bAbI graph, found by walking its edges."""
  n = int(mask.sum())
  edges = adjacency[:, :n, :n]
  if task == 4:  # The asked node's one edge of the asked direction, read forwards or back.
    asked = int(np.flatnonzero(nodes[:n, 0])[0])
    direction, form = int(np.argmax(nodes[asked, 1:5])), int(np.argmax(nodes[asked, 5:7]))
    return int(np.flatnonzero(edges[direction, :, asked] if form == 0
                              else edges[direction, asked])[0])
  if task == 15:  # is-a, then afraid-of.
    individual = int(np.flatnonzero(nodes[:n, 0])[0])
    kind = int(np.flatnonzero(edges[0, individual])[0])
    return int(np.flatnonzero(edges[1, kind])[0])
  if task == 16:  # Anyone else of the same kind with a stated colour.
    individual = int(np.flatnonzero(nodes[:n, 0])[0])
    kind = int(np.flatnonzero(edges[0, individual])[0])
    for other in np.flatnonzero(edges[0, :, kind]):
      colours = np.flatnonzero(edges[1, other])
      if len(colours):
        return int(colours[0])
  if task == 18:  # Is the second object reachable along "bigger than" edges?
    first, second = int(np.flatnonzero(nodes[:n, 0])[0]), int(np.flatnonzero(nodes[:n, 1])[0])
    reach = np.linalg.matrix_power(edges[0] + np.eye(n), n) > 0
    return int(reach[first, second])
  if task == 19:  # Breadth-first search over the rooms; an edge of type d from X to Y says
    # X is d of Y, so from Y one goes d to reach X, and from X the opposite way.
    start, goal = int(np.flatnonzero(nodes[:n, 0])[0]), int(np.flatnonzero(nodes[:n, 1])[0])
    moves = {}
    for d, x, y in zip(*np.nonzero(edges)):
      moves.setdefault(y, []).append((x, d))
      moves.setdefault(x, []).append((y, (d + 2) % 4))
    frontier = [(start, [])]
    while frontier:
      room, path = frontier.pop(0)
      if room == goal:
        return 4 * path[0] + path[1]
      frontier += [(x, path + [d]) for x, d in moves[room] if len(path) < 2]
  raise AssertionError(f"task {task} has no answer")


@pytest.mark.parametrize("task", sorted(babi.TASKS))
def test_babi_answers_agree_with_a_solver_that_walks_the_edges(task):
  _, target, _, _ = babi.TASKS[task]
  examples = babi.babi_examples(task, 300, seed=3)
  for i in range(300):
    assert _solve(task, examples["nodes"][i], examples["adjacency"][i],
                  examples["node_mask"][i]) == examples[target][i], i
  answers = np.bincount(examples[target])
  assert np.count_nonzero(answers) >= 2  # Not one constant answer.


def test_node_classification_on_eight_devices_equals_one():
  config = gcn_karate.get_config()
  config.batch_size = 8
  source = data.get_source(validate.complete_config(config))
  batch = source.splits["train"]
  task = GraphTask("node_labels", 2)
  model = models.create_model("gcn", num_classes=2, hidden=(8,), dropout_rate=0.0)
  tx = optim.build_optimizer(config, 0.01)
  _, (one, m1), (eight, m8) = train_on_one_and_eight_devices(model, task, tx, batch)
  # Six of the eight devices hold no labelled node; the loss is still the mean over two.
  assert m1["loss"] == pytest.approx(m8["loss"], rel=1e-5)
  assert_trees_close(one.params, eight.params)


def test_bad_graph_inputs_are_one_line_before_compiling(tmp_path):
  config = gnn_atlas.get_config()
  config.dataset.max_nodes = 5
  with pytest.raises(data.DataError, match=r"graph \d+ has 6 nodes, more than "
                     r"config.dataset.max_nodes=5 \(5\); raise it to the largest graph's 7"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  config = gnn_atlas.get_config()
  config.model.readout = "node"
  with pytest.raises(validate.ConfigError, match=r"config.model.readout='node' does not fit "
                     r"the 'label' targets.*set it to 'graph'"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  config.model.readout = "edges"
  with pytest.raises(validate.ConfigError, match="config.model.readout='edges' is unknown"):
    validate.validate_config(config, 1)
  assert not (tmp_path / "run").exists()
  with pytest.raises(data.DataError, match=r"adjacency \(1, 3, 3\) for 4 nodes"):
    graphs.pad_graphs([{"nodes": np.zeros((4, 2)), "adjacency": np.zeros((1, 3, 3))}], 5)
  spec = dict(data.get_source(validate.complete_config(gnn_atlas.get_config()))
              .info().element_spec)
  spec["adjacency"] = jax.ShapeDtypeStruct((1, 7, 6), jnp.float32)
  info = data.DatasetInfo(name="bad", num_classes=2, num_train_examples=1, num_eval_examples=1,
                          steps_per_epoch=1, input_key="nodes", element_spec=spec)
  problems = models.data_problems(gnn_atlas.get_config().model, info)
  assert problems and "must be [edge_types, 7, 7]" in problems[0]


def test_gcn_on_karate_club_and_ggnn_on_babi_task_4(tmp_path):
  summary = train.train_and_evaluate(gcn_karate.get_config(), str(tmp_path / "karate"))
  assert summary["test_accuracy"] >= 0.9 and summary["test_examples"] == 32
  config = ggnn_babi.get_config()
  config.num_epochs = 40
  summary = train.train_and_evaluate(config, str(tmp_path / "babi"))
  assert summary["test_accuracy"] >= 0.98


@pytest.mark.slow
def test_gcn_beats_the_mlp_on_the_digits_graph_and_not_on_the_rewired_one(tmp_path):
  results = {}
  for name in ("gcn", "node_mlp"):
    for rewire in (0.0, 0.7):
      config = gnn_digits.get_config()
      config.model.name = name
      config.dataset.rewire = rewire
      run = train.train_and_evaluate(config, str(tmp_path / f"{name}_{rewire}"))
      results[name, rewire] = run["test_accuracy"]
  assert results["gcn", 0.0] >= 0.94 and results["gcn", 0.0] >= results["node_mlp", 0.0] + 0.05
  assert results["gcn", 0.7] < results["node_mlp", 0.7]


def test_graph_study_tables():
  from bagtricks.studies import graph_study
  results = {"seeds": [0, 1],
             "node": [{"graph": "karate_club", "homophily": 0.87, "gcn": [0.9, 1.0],
                       "gat": [1.0, 1.0], "graphsage": [0.8, 0.9], "node_mlp": [0.5, 0.5]},
                      {"graph": "digits_knn", "homophily": 0.96, "gcn": [0.95, 0.97],
                       "gat": [None], "graphsage": [0.9, 0.9], "node_mlp": [0.9, 0.88]}],
             "babi": [{"task": 4, "ggnn": [1.0, 1.0], "node_mlp": [0.4, 0.3]}]}
  table = graph_study.markdown_tables(results)
  assert "| karate_club | 0.87 | 95.00 ± 5.00 | 100.00 ± 0.00 | 85.00 ± 5.00 | 50.00 ± 0.00 |" \
      in table
  assert "| digits_knn | 0.96 | 96.00 ± 1.00 | – |" in table
  assert "| 4 | 100.00 ± 0.00 | 35.00 ± 5.00 |" in table
  assert "atlas" not in table
