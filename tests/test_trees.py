"""DNDT, the soft decision tree and the neural decision forest against NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from bagtricks import data, losses, tasks, validate
from models import explain, forest, trees
from configs import dndt_breast_cancer, dndt_iris

# ------------------------------------------------------------------------------------------
# DNDT.


def _np_soft_binning(x, cuts, tau):
  # Yang et al. Eq. 1 written out: bin i (0-based) has logit ((i + 1)·x − Σ_{j<i} β_(j)) / τ.
  cuts = np.sort(cuts)
  logits = np.array([((i + 1) * x - cuts[:i].sum()) / tau for i in range(len(cuts) + 1)])
  e = np.exp(logits - logits.max())
  return e / e.sum()


def test_soft_binning_matches_numpy_and_sorts_cut_points():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 3)).astype(np.float32)
  cuts = rng.normal(size=(3, 4)).astype(np.float32)
  got = np.asarray(trees.soft_binning(jnp.asarray(x), jnp.asarray(cuts), 0.7))
  want = np.array([[_np_soft_binning(x[b, d], cuts[d], 0.7) for d in range(3)]
                   for b in range(5)])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # The cut points are used sorted: shuffling the raw parameters changes nothing.
  shuffled = cuts[:, ::-1].copy()
  np.testing.assert_allclose(trees.soft_binning(jnp.asarray(x), jnp.asarray(shuffled), 0.7),
                             got, rtol=1e-6)
  # As τ → 0 each value falls in the interval (β_(i−1), β_(i)] that holds it.
  hard = np.asarray(trees.soft_binning(jnp.asarray(x), jnp.asarray(cuts), 1e-4))
  bins = np.array([[np.searchsorted(np.sort(cuts[d]), x[b, d]) for d in range(3)]
                   for b in range(5)])
  np.testing.assert_array_equal(hard.argmax(-1), bins)
  np.testing.assert_array_equal(bins, explain.hard_bins(x, cuts))


def test_kronecker_leaves_match_numpy_kron():
  rng = np.random.default_rng(1)
  bins = rng.dirichlet(np.ones(3), size=(4, 3)).astype(np.float32)  # [batch, features, 3]
  got = np.asarray(trees.kronecker_leaves(jnp.asarray(bins)))
  for b in range(4):
    np.testing.assert_allclose(got[b], np.kron(np.kron(bins[b, 0], bins[b, 1]), bins[b, 2]),
                               rtol=1e-6)
  np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)
  # The model's form: one matmul of the log bins with the leaf-bin incidence matrix.
  log_form = np.exp(trees.log_kronecker_leaves(jnp.log(jnp.asarray(bins))))
  np.testing.assert_allclose(log_form, got, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("ensemble", ["average", "vote"])
def test_dndt_forest_matches_numpy(ensemble):
  model = models.DNDT(num_classes=3, num_cut=2, temperature=0.3, num_trees=4,
                      features_per_tree=3, ensemble=ensemble, feature_seed=7)
  x = np.random.default_rng(2).normal(size=(6, 5)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), jnp.asarray(x))
  p = jax.tree_util.tree_map(np.asarray, variables["params"])
  subsets = trees.tree_feature_subsets(5, 4, 3, 7)
  assert subsets.shape == (4, 3) and all(len(set(s)) == 3 for s in subsets)
  probs = np.zeros((6, 4, 3))
  for b in range(6):
    for t in range(4):
      leaf = np.ones(1)
      for d, f in enumerate(subsets[t]):
        leaf = np.kron(leaf, _np_soft_binning(x[b, f], p["cut_points"][t, d], 0.3))
      z = leaf @ p["leaf_scores"][t]
      probs[b, t] = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
  mean = probs.mean(1)
  train_out = model.apply(variables, jnp.asarray(x), train=True)
  np.testing.assert_allclose(train_out, np.log(mean), rtol=1e-4, atol=1e-5)
  eval_out = np.asarray(model.apply(variables, jnp.asarray(x), train=False))
  if ensemble == "vote":
    votes = np.stack([np.bincount(probs[b].argmax(-1), minlength=3) for b in range(6)])
    np.testing.assert_allclose(np.exp(eval_out), (votes + mean) / 5, rtol=1e-4)
    np.testing.assert_array_equal(eval_out.argmax(-1), (votes + mean / 2).argmax(-1))
  else:
    np.testing.assert_allclose(eval_out, np.log(mean), rtol=1e-4, atol=1e-5)


def test_leaf_limit_is_a_clear_error_before_compiling():
  # Breast cancer's 30 features in one tree: 2^30 leaves.
  config = dndt_breast_cancer.get_config()
  config.model.num_trees = 1
  config.model.features_per_tree = 0
  info = data.get_source(config).info()
  task = tasks.create_task(config, info)
  with pytest.raises(validate.ConfigError) as error:
    validate.validate_for_data(config, info, task)
  message = str(error.value)
  assert "1,073,741,824 leaves" in message and "max_leaves=16,384" in message
  assert "num_trees=10, features_per_tree=10" in message
  # The paper's forest setting is accepted.
  validate.validate_for_data(dndt_breast_cancer.get_config(), info, task)


def _hand_table():
  # Two features in their own units: x0 = 10 + 2·z0, x1 = −1 + 0.5·z1.
  return data.TabularData(name="hand", feature_names=("width", "depth"),
                          class_names=("small", "large", "odd"), splits={},
                          mean=np.array([10.0, -1.0]), std=np.array([2.0, 0.5]))


def test_rule_export_on_a_hand_set_tree():
  table = _hand_table()
  cuts = np.array([[0.5], [-1.0]])  # width 11.00, depth −1.50; stored unsorted per feature.
  # Leaves (width bin, depth bin): (0,0) small, (0,1) small, (1,0) odd, (1,1) large.
  scores = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0]], np.float32)
  rows = np.array([[0.0, 0.0], [-1.0, 2.0], [0.4, -3.0], [1.0, -2.0], [2.0, 0.0], [3.0, 1.0]])
  text = explain.export_dndt_rules(cuts, scores, [0, 1], table, rows)
  assert text == ("|--- width <= 11.00\n"
                  "|   |--- class: small  [3 rows]\n"
                  "|--- width >  11.00\n"
                  "|   |--- depth <= -1.50\n"
                  "|   |   |--- class: odd  [1 rows]\n"
                  "|   |--- depth >  -1.50\n"
                  "|   |   |--- class: large  [2 rows]\n")
  # The hard rules and the model at a tiny τ agree on every row.
  params = {"cut_points": cuts[None], "leaf_scores": scores[None] * 50}
  model = models.DNDT(num_classes=3, temperature=1e-3)
  soft = model.apply({"params": jax.tree_util.tree_map(jnp.asarray, params)},
                     jnp.asarray(rows, jnp.float32))
  hard = explain.dndt_hard_predict(params, np.array([[0, 1]]), rows)
  np.testing.assert_array_equal(np.argmax(soft, -1), hard.argmax(-1))
  np.testing.assert_array_equal(hard.argmax(-1), [0, 0, 0, 2, 1, 1])


def test_self_pruning_reports_features_whose_cuts_miss_the_data():
  table = _hand_table()
  rows = np.array([[0.0, 0.0], [1.0, 2.0], [-1.0, 1.0]])
  cuts = np.array([[0.5, 5.0], [3.0, -7.0]])  # depth's cuts are both outside [0, 2].
  report = explain.dndt_pruning(cuts, [0, 1], table, rows)
  assert [r["pruned"] for r in report] == [False, True]
  assert report[0]["active_cuts"] == 1 and report[1]["active_cuts"] == 0
  assert report[0]["cut_points"] == [11.0, 20.0] and report[0]["data_range"] == [8.0, 12.0]
  assert report[1]["cut_points"] == [-4.5, 0.5]
  text = explain.export_dndt_rules(cuts, np.eye(9, 3), [0, 1], table, rows)
  assert "depth" not in text


# ------------------------------------------------------------------------------------------
# Routing and the soft decision tree.


def test_path_probabilities_by_hand_and_sum_to_one():
  p = np.array([[0.2, 0.7, 0.4]])
  want = [(0.8 * 0.3), (0.8 * 0.7), (0.2 * 0.6), (0.2 * 0.4)]
  np.testing.assert_allclose(trees.path_probabilities(jnp.asarray(p))[0], want, rtol=1e-6)
  np.testing.assert_allclose(trees.node_reach_probabilities(jnp.asarray(p))[0],
                             [1.0, 0.8, 0.2], rtol=1e-6)
  deep = jax.nn.sigmoid(jax.random.normal(jax.random.PRNGKey(0), (5, 3, 2**6 - 1)))
  np.testing.assert_allclose(trees.path_probabilities(deep).sum(-1), 1.0, rtol=1e-5)


def _sigmoid(z):
  return 1 / (1 + np.exp(-z))


@pytest.mark.slow
def test_soft_tree_loss_and_penalty_on_a_hand_computed_depth_2_tree():
  # Two examples with two pixels; three inner nodes; four leaves over two classes.
  w = np.array([[1.0, -1.0, 0.5], [0.0, 2.0, -1.0]], np.float32)
  b = np.array([0.0, 0.5, -0.5], np.float32)
  phi = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 1.0]], np.float32)
  x = np.array([[1.0, 0.0], [-1.0, 1.0]], np.float32)
  beta, lam = 2.0, 0.3
  model = models.SoftDecisionTree(num_classes=2, depth=2, inverse_temperature=beta)
  variables = {"params": {"inner": {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)},
                          "leaf_logits": jnp.asarray(phi)}}
  out = model.apply(variables, jnp.asarray(x), train=True)
  # By hand: p_i = σ(β(x·w_i + b_i)); leaves LL, LR, RL, RR.
  p = _sigmoid(beta * (x @ w + b))
  np.testing.assert_allclose(out["right_probs"], p, rtol=1e-5)
  leaf_paths = np.stack([(1 - p[:, 0]) * (1 - p[:, 1]), (1 - p[:, 0]) * p[:, 1],
                         p[:, 0] * (1 - p[:, 2]), p[:, 0] * p[:, 2]], 1)
  np.testing.assert_allclose(out["path_probs"], leaf_paths, rtol=1e-5)
  log_q = phi - np.log(np.exp(phi).sum(-1, keepdims=True))
  targets = np.array([[1.0, 0.0], [0.3, 0.7]], np.float32)
  want_loss = [-sum(leaf_paths[n, l] * (targets[n] * log_q[l]).sum() for l in range(4))
               for n in range(2)]
  reach = np.stack([np.ones(2), 1 - p[:, 0], p[:, 0]], 1)
  alpha = (reach * p).sum(0) / reach.sum(0)
  want_penalty = -lam * sum(2.0**-d * (0.5 * np.log(alpha[i]) + 0.5 * np.log(1 - alpha[i]))
                            for i, d in enumerate([0, 1, 1]))
  # The task: the batch's α (window 0), the penalty, and α as its new state.
  task = tasks.SoftTreeTask(num_classes=2, depth=2, penalty_strength=lam, penalty_window=0.0)
  state = task.init_state(None, None)
  batch = {"targets": jnp.asarray(targets)}
  loss, new_state, metrics = task.loss(out, batch, state, None, None)
  np.testing.assert_allclose(loss, np.mean(want_loss) + want_penalty, rtol=1e-5)
  np.testing.assert_allclose(new_state["alpha"], alpha, rtol=1e-5)
  assert 0.0 <= float(metrics["accuracy"]) <= 1.0
  np.testing.assert_allclose(
      losses.soft_tree_loss(out["path_probs"], out["leaf_log_probs"], jnp.asarray(targets)),
      want_loss, rtol=1e-5)
  # The two predictions: the mixture Σ_ℓ P^ℓ Q^ℓ and the most probable leaf's Q.
  np.testing.assert_allclose(np.exp(out["logits"]), leaf_paths @ np.exp(log_q), rtol=1e-5)
  np.testing.assert_allclose(out["max_path_logits"], log_q[leaf_paths.argmax(1)], rtol=1e-5)
  # Distilled: the targets are the teacher's softmax at temperature T (w = 1).
  teacher = np.array([[3.0, 1.0], [0.0, 2.0]], np.float32)
  soft = np.exp(teacher / 2) / np.exp(teacher / 2).sum(-1, keepdims=True)
  distilled = tasks.SoftTreeTask(2, depth=2, penalty_strength=lam, distill_temperature=2.0,
                                 distill_soft_weight=1.0)
  want = [-sum(leaf_paths[n, l] * (soft[n] * log_q[l]).sum() for l in range(4))
          for n in range(2)]
  loss, _, _ = distilled.loss(out, {**batch, "teacher_logits": jnp.asarray(teacher)}, state,
                              None, None)
  np.testing.assert_allclose(loss, np.mean(want) + want_penalty, rtol=1e-5)


def test_soft_tree_running_alpha_follows_the_depth_windows():
  model = models.SoftDecisionTree(num_classes=3, depth=2)
  task = tasks.SoftTreeTask(num_classes=3, depth=2, penalty_window=2.0)
  x = np.random.default_rng(3).normal(size=(2, 8, 4)).astype(np.float32)  # two batches
  variables = model.init(jax.random.PRNGKey(1), jnp.asarray(x[0]))
  params = jax.tree_util.tree_map(np.asarray, variables["params"])
  running = np.full(3, 0.5)
  decay = 1 - 1 / np.array([2.0, 4.0, 4.0])  # windows 2·2^d batches
  state = task.init_state(None, None)
  labels = np.zeros((8, 3), np.float32)
  for batch in x:
    p = _sigmoid(batch @ params["inner"]["kernel"] + params["inner"]["bias"])
    reach = np.stack([np.ones(8), 1 - p[:, 0], p[:, 0]], 1)
    running = decay * running + (1 - decay) * (reach * p).sum(0) / reach.sum(0)
    out = model.apply(variables, jnp.asarray(batch), train=True)
    _, state, _ = task.loss(out, {"targets": jnp.asarray(labels)}, state, None, None)
    np.testing.assert_allclose(state["alpha"], running, rtol=1e-5)


@pytest.mark.slow
def test_soft_tree_alpha_is_the_global_batch_alpha_on_eight_devices():
  # α sums over the device axis: 8 devices holding 2 examples each give the α of all 16.
  model = models.SoftDecisionTree(num_classes=3, depth=2)
  task = tasks.SoftTreeTask(num_classes=3, depth=2, penalty_window=0.0)
  x = np.random.default_rng(7).normal(size=(16, 4)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(1), jnp.asarray(x[:1]))
  targets = np.zeros((16, 3), np.float32)
  state = task.init_state(None, None)

  def per_device(xs, ts):
    out = model.apply(variables, xs, train=True)
    return task.loss(out, {"targets": ts}, state, None, "i")[1]["alpha"]

  n = jax.local_device_count()
  got = jax.pmap(per_device, axis_name="i")(x.reshape(n, -1, 4), targets.reshape(n, -1, 3))
  _, whole, _ = task.loss(model.apply(variables, jnp.asarray(x), train=True),
                          {"targets": jnp.asarray(targets)}, state, None, None)
  for d in range(n):
    np.testing.assert_allclose(got[d], whole["alpha"], rtol=1e-5)


# ------------------------------------------------------------------------------------------
# Neural decision forest.


def _np_fixed_point(pi, mu, labels, mask, iterations):
  # Kontschieder et al. Eq. 11, one loop per term.
  pi = pi.copy()
  trees_, leaves, k = pi.shape
  for _ in range(iterations):
    new = np.zeros_like(pi)
    for t in range(trees_):
      for n in range(len(labels)):
        if not mask[n]:
          continue
        y = labels[n]
        p_y = sum(pi[t, l, y] * mu[n, t, l] for l in range(leaves))
        for l in range(leaves):
          new[t, l, y] += pi[t, l, y] * mu[n, t, l] / p_y
    z = new.sum(-1, keepdims=True)
    pi = np.where(z > 0, new / np.where(z > 0, z, 1), pi)
  return pi


def test_fixed_point_leaf_update_matches_numpy_and_sums_over_devices():
  rng = np.random.default_rng(4)
  right = rng.uniform(0.05, 0.95, size=(16, 2, 3))
  mu = np.asarray(trees.path_probabilities(jnp.asarray(right)), np.float64)  # [16, 2, 4]
  labels = rng.integers(0, 3, size=16)
  mask = np.ones(16)
  mask[-3:] = 0
  pi0 = np.full((2, 4, 3), 1 / 3)
  want = _np_fixed_point(pi0, mu, labels, mask, 5)
  got = models.fixed_point_leaf_update(jnp.asarray(pi0, jnp.float32),
                                       jnp.asarray(mu, jnp.float32), jnp.asarray(labels),
                                       jnp.asarray(mask, jnp.float32), 5)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(got).sum(-1), 1.0, rtol=1e-5)
  # Split over 8 devices, the psum gives every device the same, full-data update.
  n = jax.local_device_count()
  per_device = jax.pmap(
      lambda m, y, k: models.fixed_point_leaf_update(jnp.asarray(pi0, jnp.float32), m, y, k, 5,
                                                     axis_name="i"), axis_name="i")
  out = per_device(jnp.asarray(mu, jnp.float32).reshape(n, -1, 2, 4),
                   jnp.asarray(labels).reshape(n, -1),
                   jnp.asarray(mask, jnp.float32).reshape(n, -1))
  for d in range(n):
    np.testing.assert_allclose(out[d], want, rtol=1e-4, atol=1e-6)


def test_forest_prediction_averages_its_trees():
  model = models.create_model("ndf", num_classes=3, num_decision_units=10, num_trees=3,
                              depth=2, trunk={"name": "mlp", "hidden": (6,)})
  x = np.random.default_rng(5).normal(size=(4, 5)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(2), jnp.asarray(x))
  pi = np.random.default_rng(6).dirichlet(np.ones(3), size=(3, 4)).astype(np.float32)
  mu = np.asarray(model.apply(variables, jnp.asarray(x))["routing"])
  assert mu.shape == (4, 3, 4)
  np.testing.assert_allclose(mu.sum(-1), 1.0, rtol=1e-5)
  # μ from the trunk's outputs by hand: each tree reads its own 3 of the 10 units.
  f = np.asarray(model.trunk.apply({"params": variables["params"]["trunk"]}, jnp.asarray(x)))
  units = models.decision_unit_subsets(10, 3, 2, 0)
  d = _sigmoid(f[:, units])
  by_hand = np.stack([(1 - d[..., 0]) * (1 - d[..., 1]), (1 - d[..., 0]) * d[..., 1],
                      d[..., 0] * (1 - d[..., 2]), d[..., 0] * d[..., 2]], -1)
  np.testing.assert_allclose(mu, by_hand, rtol=1e-5)
  want = np.einsum("btl,tlk->bk", by_hand, pi) / 3
  np.testing.assert_allclose(np.exp(forest.forest_log_probs(jnp.asarray(mu), jnp.asarray(pi))),
                             want, rtol=1e-5)
  # The forest task predicts with the π of its state.
  task = tasks.ForestTask(3, num_trees=3, depth=2)
  np.testing.assert_allclose(
      np.exp(task.class_logits({"routing": jnp.asarray(mu)},
                               {"leaf_distributions": jnp.asarray(pi)})), want, rtol=1e-5)
  # Learned leaves: π = softmax(φ) is a parameter and the module returns log P itself.
  learned = models.create_model("ndf", num_classes=3, num_decision_units=10, num_trees=3,
                                depth=2, leaf_learning="gradient",
                                trunk={"name": "mlp", "hidden": (6,)})
  v = learned.init(jax.random.PRNGKey(2), jnp.asarray(x))
  phi = np.random.default_rng(8).normal(size=(3, 4, 3)).astype(np.float32)
  v = {"params": {**v["params"], "leaf_logits": jnp.asarray(phi)}}
  mu = np.asarray(learned.apply(v, jnp.asarray(x), method="routing"))
  soft = np.exp(phi) / np.exp(phi).sum(-1, keepdims=True)
  np.testing.assert_allclose(np.exp(learned.apply(v, jnp.asarray(x))),
                             np.einsum("btl,tlk->bk", mu, soft) / 3, rtol=1e-5)


# ------------------------------------------------------------------------------------------
# Tabular data.


def test_tabular_split_is_stratified_seeded_and_scaled_on_train_only():
  table = data.load_tabular("sklearn_wine", 0.2, split_seed=3)
  x_train, y_train = table.splits["train"]
  x_test, y_test = table.splits["test"]
  assert len(y_train) + len(y_test) == 178 and len(y_test) == 36
  np.testing.assert_allclose(x_train.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(x_train.std(0), 1.0, atol=1e-4)
  assert np.abs(x_test.mean(0)).max() > 0.05  # test rows use the train statistics
  # Stratified: every class's test share is within one row of 20 %.
  counts = np.bincount(np.concatenate([y_train, y_test]))
  assert np.all(np.abs(np.bincount(y_test) - 0.2 * counts) <= 1)
  # The same seed gives the same split; another seed another.
  again = data.load_tabular("sklearn_wine", 0.2, split_seed=3)
  np.testing.assert_array_equal(again.splits["test"][0], x_test)
  assert not np.array_equal(data.load_tabular("sklearn_wine", 0.2, 4).splits["test"][1], y_test)
  raw_test = table.to_original_units(x_test[:, 0], 0)
  from sklearn.datasets import load_wine
  assert np.all(np.isin(np.round(raw_test, 4), np.round(load_wine().data[:, 0], 4)))


def test_tabular_batches_have_device_layout_and_eval_counts_every_row_once():
  config = dndt_iris.get_config()
  source = data.get_source(config)
  info = source.info()
  assert info.input_key == "features" and info.input_shape == (4,)
  assert info.num_classes == 3 and info.class_names == source.table.class_names
  assert info.steps_per_epoch == 120 // 32
  stream = source.train_batches(0, 8)
  first = [next(stream) for _ in range(info.steps_per_epoch)]
  assert first[0]["features"].shape == (8, 4, 4) and first[0]["label"].shape == (8, 4)
  seen = np.concatenate([b["features"].reshape(-1, 4) for b in first])
  assert len(np.unique(seen, axis=0)) == len(seen)  # no row twice within an epoch
  # Resuming at step 5 gives exactly the batch an uninterrupted stream gives there.
  for _ in range(3):  # steps 3, 4, 5
    later = next(stream)
  resumed = next(source.train_batches(5, 8))
  np.testing.assert_array_equal(resumed["features"], later["features"])
  batches = list(source.eval_batches(8))
  mask = np.concatenate([b["mask"].ravel() for b in batches])
  labels = np.concatenate([b["label"].ravel() for b in batches])
  assert mask.sum() == 30
  np.testing.assert_array_equal(labels[mask > 0], source.table.splits["test"][1])


def test_bad_tree_configs_name_the_field():
  from configs import ndf_tabular, sdt_digits
  config = dndt_iris.get_config()
  config.task = "soft_tree"
  with pytest.raises(validate.ConfigError,
                     match="config.task='soft_tree' trains a soft decision tree and needs"):
    validate.validate_config(config, num_local_devices=8)
  config = ndf_tabular.get_config()
  config.model.leaf_learning = "magic"
  config.model.trunk.name = "resnet7"
  with pytest.raises(validate.ConfigError) as error:
    validate.validate_config(config, num_local_devices=8)
  assert "config.model.leaf_learning='magic'" in str(error.value)
  assert "config.model.trunk.name='resnet7'" in str(error.value)
  config = sdt_digits.get_config()
  config.model.depth = 0
  with pytest.raises(validate.ConfigError, match="config.model.depth=0"):
    validate.validate_config(config, num_local_devices=8)
  # Checks that need the data: too few decision units, image augmentations on a table.
  config = ndf_tabular.get_config()
  config.model.num_decision_units = 10
  config.augment.mixup_alpha = 0.2
  info = data.get_source(config).info()
  with pytest.raises(validate.ConfigError) as error:
    validate.validate_for_data(config, info, tasks.create_task(config, info))
  assert "num_decision_units=10 is below the 15 decision nodes" in str(error.value)
  assert "['config.augment.mixup_alpha'] must be 0" in str(error.value)


def test_a_model_of_table_columns_refuses_image_data():
  info = data.DatasetInfo(
      name="sklearn_digits", num_classes=10, num_train_examples=8, num_eval_examples=8,
      steps_per_epoch=1, input_key="image",
      element_spec={"image": jax.ShapeDtypeStruct((8, 8, 1), jnp.float32),
                    "label": jax.ShapeDtypeStruct((), jnp.int32)})
  problems = models.data_problems(dndt_iris.get_config().model, info)
  assert len(problems) == 1
  assert "config.model.name='dndt' reads 'features' inputs" in problems[0]
  assert "gives 'image'" in problems[0]
