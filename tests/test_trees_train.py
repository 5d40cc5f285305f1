"""The trees and forests through the one trainer: tabular runs, rules, pictures, π refits."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from bagtricks import checkpoint, data, train
from bagtricks.studies import compare_trees
from conftest import REPO
from configs import dndt_iris, ndf_tabular, sdt_digits
from test_trees import _np_fixed_point


def test_dndt_iris_run_writes_rules_and_learns(tmp_path):
  config = dndt_iris.get_config()  # 150 epochs of 3 steps: about 2 s of training.
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["devices"] == 8 and summary["test_examples"] == 30
  assert summary["test_accuracy"] >= 0.85
  assert summary["rules_test_accuracy"] >= 0.8
  assert len(summary["pruned_features"]) == 1
  rules = open(tmp_path / "rules.txt").read()
  assert "class: setosa" in rules and "(cm) <=" in rules


def test_fixed_point_forest_refits_leaves_after_the_last_epoch(tmp_path):
  config = ndf_tabular.get_config()
  config.num_epochs = 6
  config.forest.leaf_iterations = 7
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["test_accuracy"] >= 0.6
  # The checkpointed π (the task's state, not a model variable) is the fixed point (from
  # uniform) of the final network's routing of every training row, computed here in NumPy.
  source = data.get_source(config)
  model = models.create_model_from_config(config, source.info())
  x, y = source.table.splits["train"]
  template = jax.eval_shape(lambda: {
      **model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4))),
      "task_state": {"leaf_distributions": jnp.zeros((10, 16, 3))},
      "ema": {}})
  restored = checkpoint.Checkpointer(str(tmp_path / "checkpoints"),
                                     read_only=True).restore_variables(template)
  assert restored["ema"] == {}
  pi = np.asarray(restored["task_state"]["leaf_distributions"])
  variables = {"params": restored["params"]}
  mu = np.asarray(model.apply(variables, jnp.asarray(x))["routing"], np.float64)
  want = _np_fixed_point(np.full(pi.shape, 1 / 3), mu, y, np.ones(len(y)), 7)
  np.testing.assert_allclose(pi, want, rtol=2e-3, atol=1e-5)
  assert np.abs(pi - 1 / 3).max() > 0.3


def test_gradient_leaves_learn_through_the_optimizer(tmp_path):
  config = ndf_tabular.get_config()
  config.model.leaf_learning = "gradient"
  config.num_epochs = 4
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(summary["train_loss"]) and summary["test_accuracy"] >= 0.5


@pytest.mark.slow
def test_soft_tree_direct_and_distilled_runs(digits_data_dir, tmp_path):
  # A quick MLP teacher, then a depth-3 soft tree on its soft targets.
  teacher = sdt_digits.get_config()
  teacher.task = "classification"
  teacher.model = teacher.model.__class__({"name": "mlp", "hidden": (32,)})
  teacher.dataset.data_dir = digits_data_dir
  teacher.num_epochs = 2
  train.train_and_evaluate(teacher, str(tmp_path / "teacher"))

  config = sdt_digits.get_config()
  config.dataset.data_dir = digits_data_dir
  config.model.depth = 3
  config.num_epochs = 2
  config.distill.enabled = True
  config.distill.teacher_workdir = str(tmp_path / "teacher")
  config.distill.temperature = 2.0
  config.distill.soft_weight = 1.0
  summary = train.train_and_evaluate(config, str(tmp_path / "sdt"))
  assert 0.0 < summary["test_accuracy_max_path"] <= 1.0
  assert summary["test_accuracy"] > 0.3  # ten classes: chance is 0.1
  assert os.path.getsize(tmp_path / "sdt" / "tree.png") > 10_000


@pytest.mark.slow
def test_cli_refuses_a_tree_over_the_leaf_limit(tmp_path):
  proc = subprocess.run(
      [sys.executable, "train.py", "--config=configs/dndt_breast_cancer.py",
       "--config.model.num_trees=1", "--config.model.features_per_tree=0",
       f"--workdir={tmp_path / 'run'}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert "1,073,741,824 leaves" in proc.stderr and "num_trees=10" in proc.stderr
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_comparison_tables_format_and_sklearn_baselines():
  baselines = compare_trees.sklearn_baselines("sklearn_iris", 0)
  assert baselines["decision_tree"] >= 80 and baselines["mlp"] >= 80
  dndt = [{"dataset": "sklearn_iris", "paper_dndt": 100.0, "dndt": [100.0, 96.0],
           "dndt_rules": [100.0, 90.0], "sndf": [97.0, 97.0], "decision_tree": [90.0, 94.0],
           "mlp": [100.0, 100.0]}]
  sdt = [{"training": "direct", "paper_mnist": 94.45, "max_path": [97.0], "mixture": [97.5],
          "teacher": 98.3}]
  ndf = [{"model": "softmax head", "accuracy": [98.0, 98.5]}]
  text = compare_trees.markdown_tables(dndt, sdt, ndf, [0, 1], [0, 1])
  assert "| iris | 100.0 | 98.00 ± 2.00 | 95.00 ± 5.00 | 97.00 ± 0.00 | 92.00 ± 2.00 |" in text
  assert "| direct | 94.45 | 97.00 | 97.50 | – |" in text
  assert "| softmax head | 98.25 ± 0.25 |" in text
  mnist = compare_trees.markdown_tables([], sdt, [], [0], [0], "mnist_5k")
  assert "DNDT" not in mnist and "ResNet-18-D trunk" not in mnist
  assert mnist.startswith("Soft decision tree (depth 8) on MNIST 5k (4,000 train, 1,000 test)")
  json.dumps({"dndt": dndt})
