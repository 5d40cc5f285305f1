"""Labels from several annotators (IPA2LT): simulation, aggregation, the LTNet loss and model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from bagtricks import data, losses, optim, train, validate
from bagtricks.data import annotators
from bagtricks.tasks import LatentTruthTask
from conftest import assert_trees_close, train_on_one_and_eight_devices
from configs import ltnet_digits


def test_confusion_matrix_uniform_errors_and_swaps():
  matrix = annotators.confusion_matrix(4, 0.7, swaps=[(2, 1, 0.3)])
  np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
  np.testing.assert_allclose(np.diagonal(matrix), [0.7, 0.7, 0.4, 0.7])
  assert matrix[0, 3] == pytest.approx(0.1) and matrix[2, 1] == pytest.approx(0.4)
  with pytest.raises(ValueError, match="more than the diagonal"):
    annotators.confusion_matrix(4, 0.2, swaps=[(0, 1, 0.5)])
  with pytest.raises(ValueError, match="two different classes"):
    annotators.confusion_matrix(4, 0.7, swaps=[(1, 1, 0.1)])


def test_annotate_draws_each_row_of_the_confusion():
  truth = np.repeat(np.arange(3), 20000)
  confusions = np.stack([annotators.confusion_matrix(3, 0.6, [(0, 2, 0.3)]),
                         annotators.confusion_matrix(3, 0.9)])
  labels = annotators.annotate(truth, confusions, seed=0)
  assert labels.shape == (60000, 2) and labels.dtype == np.int32
  for k in range(2):
    empirical = np.stack([np.bincount(labels[truth == i, k], minlength=3) / 20000
                          for i in range(3)])
    np.testing.assert_allclose(empirical, confusions[k], atol=0.01)
  np.testing.assert_array_equal(labels, annotators.annotate(truth, confusions, seed=0))


def test_majority_vote_hand_cases_and_fair_ties():
  labels = np.array([[1, 1, 2], [-1, 3, -1], [-1, -1, -1], [0, 1, 2]])
  vote = annotators.majority_vote(labels, 4, seed=0)
  assert vote[:3].tolist() == [1, 3, -1] and vote[3] in (0, 1, 2)
  ties = annotators.majority_vote(np.tile([[0, 1, 2]], (3000, 1)), 4, seed=1)
  np.testing.assert_allclose(np.bincount(ties, minlength=4) / 3000, [1 / 3] * 3 + [0],
                             atol=0.03)


def test_dawid_skene_one_iteration_by_hand():
  # Two items, two annotators, two classes; smoothing s = 0.5. The vote fractions give
  # q = [[1, 0], [0.5, 0.5]]; then ρ = [0.75, 0.25] and, for annotator 0 (labels 0, 0):
  # T_0[0] ∝ 0.5 + [1.5, 0] → [0.8, 0.2], T_0[1] ∝ 0.5 + [0.5, 0] → [2/3, 1/3];
  # annotator 1 (labels 0, 1): T_1[0] ∝ 0.5 + [1, 0.5] → [0.6, 0.4], T_1[1] ∝ [0.5, 1] → [1/3, 2/3].
  labels = np.array([[0, 0], [0, 1]])
  result = annotators.dawid_skene(labels, 2, max_iterations=1, smoothing=0.5)
  np.testing.assert_allclose(result.prior, [0.75, 0.25])
  np.testing.assert_allclose(result.confusions[0], [[0.8, 0.2], [2 / 3, 1 / 3]])
  np.testing.assert_allclose(result.confusions[1], [[0.6, 0.4], [1 / 3, 2 / 3]])
  joint = np.array([[0.75 * 0.8 * 0.6, 0.25 * (2 / 3) * (1 / 3)],
                    [0.75 * 0.8 * 0.4, 0.25 * (2 / 3) * (2 / 3)]])
  np.testing.assert_allclose(result.posteriors, joint / joint.sum(1, keepdims=True))
  assert result.log_likelihood[0] == pytest.approx(np.log(joint.sum(1)).sum())


def test_dawid_skene_recovers_annotators_better_than_the_vote():
  rng = np.random.default_rng(0)
  truth = rng.integers(0, 10, 4000)
  confusions = np.stack([annotators.confusion_matrix(10, a) for a in (0.6, 0.7, 0.8)])
  labels = annotators.annotate(truth, confusions, seed=1)
  result = annotators.dawid_skene(labels, 10)
  assert np.all(np.diff(result.log_likelihood) > -1e-6)
  np.testing.assert_allclose(np.diagonal(result.confusions, axis1=1, axis2=2).mean(1),
                             [0.6, 0.7, 0.8], atol=0.02)
  vote = annotators.majority_vote(labels, 10)
  # The reference setting: the vote recovers about 85 % of the truth, EM weighs the better
  # annotators more.
  assert 0.82 < np.mean(vote == truth) < 0.87
  assert np.mean(result.labels == truth) > np.mean(vote == truth)


def _reference_nll(logits, transitions, labels, weights):
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  out = np.zeros(len(logits))
  for n in range(len(logits)):
    for k in range(labels.shape[1]):
      if labels[n, k] >= 0:
        out[n] -= weights[k] * np.log(sum(p[n, i] * transitions[k, i, labels[n, k]]
                                          for i in range(p.shape[1])))
  return out


def test_latent_truth_nll_and_union_against_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 4)).astype(np.float32)
  transitions = rng.dirichlet(np.ones(4), size=(3, 4)).astype(np.float32)
  labels = np.array([[0, 1, -1], [3, 3, 3], [-1, -1, -1], [2, -1, 0], [1, 2, 3]])
  weights = np.array([1.0, 0.5, 2.0], np.float32)
  got = losses.latent_truth_nll(jnp.asarray(logits), jnp.log(transitions), labels, weights)
  np.testing.assert_allclose(got, _reference_nll(logits, transitions, labels, weights),
                             rtol=1e-5)
  # With every T_k the identity the loss is the union's cross-entropy.
  eye = np.broadcast_to(np.eye(4, dtype=np.float32), (3, 4, 4))
  union = losses.annotators_cross_entropy(jnp.asarray(logits), labels, weights)
  np.testing.assert_allclose(union, _reference_nll(logits, eye, labels, weights), rtol=1e-5)
  assert float(got[2]) == 0.0 and float(union[2]) == 0.0
  np.testing.assert_allclose(losses.mean_transition_trace(jnp.log(transitions)),
                             np.trace(transitions, axis1=1, axis2=2).sum() / 4, rtol=1e-6)


def test_ltnet_model_transitions_and_transformations():
  backbone = models.create_model("mlp", num_classes=4, hidden=(8,))
  model = models.LatentTruthNet(backbone, num_annotators=2, num_classes=4, init_diagonal=0.7)
  x = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), x)
  out = model.apply(variables, x)
  transitions = np.exp(np.asarray(out["log_transitions"]))
  np.testing.assert_allclose(transitions.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(np.diagonal(transitions, axis1=1, axis2=2), 0.7, rtol=1e-6)
  np.testing.assert_allclose(transitions[0, 0, 1], 0.1, rtol=1e-5)
  # T_k's logits are not decayed (only kernels are).
  assert not optim.weight_decay_mask(variables["params"])["transition_logits"]
  labels = jnp.array([[0, 1], [2, -1], [3, 3]])

  def loss(params, x):
    o = model.apply({"params": params}, x)
    return jnp.mean(losses.latent_truth_nll(o["logits"], o["log_transitions"], labels))

  grads = jax.jit(jax.grad(loss))(variables["params"], x)
  assert np.abs(np.asarray(grads["transition_logits"])).sum() > 0
  per_example = jax.vmap(lambda xi: model.apply(variables, xi[None])["logits"][0])(x)
  np.testing.assert_allclose(per_example, out["logits"], rtol=1e-5, atol=1e-6)
  _, tangent = jax.jvp(lambda x: model.apply(variables, x)["logits"], (x,), (x,))
  assert tangent.shape == (3, 4)


@pytest.mark.slow
def test_ltnet_on_eight_devices_equals_one():
  task = LatentTruthTask(10, 3, method="ltnet", trace_weight=0.5)
  backbone = models.ResNet(stage_sizes=(1, 1), block="basic", num_classes=10,
                           width_multiplier=0.125, small_stem=True, axis_name="batch")
  model = models.LatentTruthNet(backbone, num_annotators=3, num_classes=10)
  config = ltnet_digits.get_config()
  tx = optim.build_optimizer(config, optim.warmup_cosine_schedule(0.1, 0, 10))
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(16, 8, 8, 1)).astype(np.float32),
           "annotations": rng.integers(-1, 10, (16, 3)).astype(np.int32),
           "majority_vote": rng.integers(0, 10, 16).astype(np.int32),
           "dawid_skene": rng.integers(0, 10, 16).astype(np.int32),
           "true_label": rng.integers(0, 10, 16).astype(np.int32)}
  state, (one, m1), (eight, m8) = train_on_one_and_eight_devices(model, task, tx, batch)
  assert m1["loss"] == pytest.approx(m8["loss"], rel=1e-5)
  assert_trees_close(one.params, eight.params, rtol=1e-5, atol=1e-5)
  assert not np.allclose(one.params["transition_logits"], state.params["transition_logits"])


def test_annotated_digits_source(digits_data_dir):
  config = ltnet_digits.get_config()
  config.dataset.digits = "sklearn_digits"
  config.dataset.data_dir = digits_data_dir
  source = data.get_source(validate.complete_config(config))
  train_split, test_split = source.splits["train"], source.splits["test"]
  truth = train_split["true_label"]
  assert train_split["annotations"].shape == (1437, 3)
  np.testing.assert_allclose((train_split["annotations"] == truth[:, None]).mean(0),
                             [0.6, 0.7, 0.8], atol=0.04)
  assert 0.8 < np.mean(train_split["majority_vote"] == truth) < 0.9
  assert np.all(test_split["annotations"] == -1) and np.all(test_split["majority_vote"] == -1)
  np.testing.assert_allclose(source.confusions[2].diagonal(), 0.8)


def test_bad_annotator_config_is_one_line_before_compiling(digits_data_dir, tmp_path):
  config = ltnet_digits.get_config()
  config.dataset.digits = "sklearn_digits"
  config.dataset.data_dir = digits_data_dir
  config.model.num_annotators = 4
  with pytest.raises(validate.ConfigError, match=r"config.model.num_annotators=4 does not "
                     r"match the 3 annotators.*set it to 3"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()
  config.model.num_annotators = 3
  config.latent_truth.annotator_weights = (1.0, 1.0)
  with pytest.raises(validate.ConfigError, match="annotator_weights has 2 weights"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  config.latent_truth.annotator_weights = ()
  config.model = config.model.backbone
  with pytest.raises(validate.ConfigError, match="method='ltnet' learns transition matrices"):
    validate.validate_config(config, 1)
  config.dataset.annotator_accuracies = (0.6, 1.5)
  with pytest.raises(data.DataError, match="annotator_accuracies"):
    data.get_source(validate.complete_config(config))


@pytest.mark.slow
def test_latent_truth_study_rows_and_table(digits_data_dir, tmp_path):
  from bagtricks.studies import latent_truth_study
  config = ltnet_digits.get_config()
  config.dataset.digits = "sklearn_digits"
  config.dataset.data_dir = digits_data_dir
  config.model.backbone = {"name": "mlp", "hidden": (32,)}
  config.num_epochs = 4
  config.schedule.warmup_epochs = 0.5
  rows = latent_truth_study.seed_rows(config, str(tmp_path), seed=0, ltnet_epochs=2)
  by_method = {r["method"]: r for r in rows}
  ltnet = by_method[latent_truth_study.LTNET_LABEL]
  # The union run is LTNet's starting point; its transition matrices moved from 0.9.
  init = (tmp_path / "ltnet_trace0.5_s0" / "init_from.json").read_text()
  assert "union_s0" in init
  assert ltnet["transitions"] is not None and ltnet["diagonal"] != pytest.approx([0.9] * 3)
  mv = by_method["majority vote (labels only)"]
  assert mv["test_accuracy"] is None and 80 < mv["recovered"] < 90
  assert all(r["test_accuracy"] > 50 for r in rows if r["test_accuracy"] is not None)
  table = latent_truth_study.markdown_table(rows, [0], 2, 4)
  assert "| LTNet (from the union run) |" in table and "True diagonals: 0.60, 0.70, 0.80" in table
