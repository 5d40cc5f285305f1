"""A task and a model written outside the package train through the unchanged loop.

``RunningMeanRegression`` is a task written only here, the way README tells a user to add one:
mean-squared error on a scalar target, predicting the residual from a running mean of every
target seen so far. That mean is the task's state, summed over the global batch with
``axis_name`` so every device holds the same. The CLI trains it on scikit-learn's diabetes
table from a config file that names the task by import path, under pmap and shard_map on 8
devices and on 1 device; a killed run resumes to the same bits; the weight EMA leaves the task
state alone. ``EmbeddingBag`` is a model written only here that reads int32 token ids.
"""

import json
import os
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import models
from bagtricks import checkpoint, data, train
from bagtricks.tasks import TaskBase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = "test_task_protocol:RunningMeanRegression"
EPOCHS = 12


class RunningMeanRegression(TaskBase):
  """Predicts y as m + f(x): f the model's single output, m the mean of every target seen.

  The state m is updated before the loss from the global batch: with S and n the batch's
  target sum and size summed over devices, seen ← seen + n and m ← m + (S − n·m) / seen.
  """

  input_keys = ("features",)
  num_outputs = 1
  progress_metrics = {"mse": "mse"}

  def init_state(self, rng, example_batch):
    return {"mean": jnp.zeros([]), "seen": jnp.zeros([])}

  def loss(self, outputs, batch, task_state, rng, axis_name):
    y = batch["target"]
    total, count = lax.psum((jnp.sum(y), jnp.float32(y.shape[0])), axis_name)
    seen = task_state["seen"] + count
    mean = task_state["mean"] + (total - count * task_state["mean"]) / seen
    mse = jnp.mean((outputs[:, 0] + mean - y) ** 2)
    return mse, {"mean": mean, "seen": seen}, {"mse": mse}

  def eval_sums(self, outputs, batch, task_state):
    error = (outputs[:, 0] + task_state["mean"] - batch["target"]) ** 2
    return {"mse": jnp.sum(error * batch["mask"]), "count": jnp.sum(batch["mask"])}


CONFIG_FILE = f'''
from configs import dndt_iris

def get_config():
  config = dndt_iris.tabular_config("sklearn_diabetes")
  config.task = "{TASK}"
  config.model.name = "mlp"
  config.model.hidden = (32,)
  config.optimizer.base_lr = 0.02
  config.num_epochs = {EPOCHS}
  config.log_every_steps = 20
  config.checkpoint_every_steps = 11
  config.keep_checkpoints = 30
  config.ema.decay = 0.9
  return config
'''


def _cli(tmp_path, workdir, *flags):
  config_file = tmp_path / "regression_config.py"
  config_file.write_text(CONFIG_FILE)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(REPO, "tests"), REPO]),
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  return subprocess.Popen(
      [sys.executable, os.path.join(REPO, "train.py"), f"--config={config_file}",
       f"--workdir={workdir}", *flags], cwd=str(tmp_path), env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)


def _finish(proc):
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  return json.loads(out.strip().splitlines()[-1]), err


def _final_state(workdir):
  # Read (and checked against its checksums) as a run reads it, without the checksums.
  reader = checkpoint.Checkpointer(os.path.join(str(workdir), "checkpoints"), read_only=True)
  _, state = reader.read()
  reader.close()
  return state


def _saved_steps(workdir):
  path = os.path.join(str(workdir), "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The CLI run on 8 devices with pmap, with shard_map, and on 1 device."""
  root = tmp_path_factory.mktemp("regression")
  procs = {
      "pmap": _cli(root, root / "pmap"),
      "shard_map": _cli(root, root / "shard_map", "--config.parallel=shard_map"),
      "one": _cli(root, root / "one", "--config.num_devices=1"),
  }
  results = {name: _finish(proc) for name, proc in procs.items()}
  return root, {name: (summary, err, _final_state(root / name))
                for name, (summary, err) in results.items()}


def _expected_running_mean(config_file_dir):
  # Independent of the task: the mean of the targets of every training batch the source
  # yields, read straight from the data pipeline.
  sys.path.insert(0, str(config_file_dir))
  try:
    import regression_config  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.pop(0)
  config = regression_config.get_config()
  source = data.get_source(config)
  total_steps = EPOCHS * source.info().steps_per_epoch
  batches = source.train_batches(0, 1)
  targets = np.concatenate([next(batches)["target"].ravel() for _ in range(total_steps)])
  return targets.astype(np.float64).mean(), len(targets)


@pytest.mark.slow
def test_regression_task_trains_through_the_cli_on_1_and_8_devices(runs):
  root, results = runs
  summary, err, state = results["pmap"]
  assert summary["devices"] == 8 and summary["steps"] == EPOCHS * 11
  assert "mse" in err  # the task's progress metric is on the progress line
  # The model learned something beyond the running mean: the diabetes targets vary by about
  # 77 around their mean (variance about 6,000).
  test_targets = data.load_tabular("sklearn_diabetes", 0.2, 0).splits["test"][1]
  assert summary["test_mse"] < 0.8 * np.var(test_targets)
  assert summary["test_examples"] == len(test_targets)
  # The task state is the exact running mean of every training target seen.
  mean, count = _expected_running_mean(root)
  assert float(state["task_state"]["seen"]) == count
  np.testing.assert_allclose(float(state["task_state"]["mean"]), mean, rtol=1e-5)
  # The EMA averages the weights only: the task state is not in it.
  assert set(state["ema"]) == {"params", "batch_stats"}
  # The same run under shard_map and on one device.
  for other in ("shard_map", "one"):
    other_summary, _, other_state = results[other]
    assert other_summary["devices"] == (8 if other == "shard_map" else 1)
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(other_state)):
      np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                 rtol=1e-4, atol=1e-4)
    assert other_summary["test_mse"] == pytest.approx(summary["test_mse"], rel=1e-4)


@pytest.mark.slow
def test_regression_task_state_survives_a_kill_bit_exactly(runs, tmp_path):
  root, results = runs
  workdir = tmp_path / "killed"
  proc = _cli(root, workdir)
  deadline = time.time() + 300
  while not [s for s in _saved_steps(workdir) if s >= 22]:
    assert proc.poll() is None and time.time() < deadline, "run ended before it was killed"
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  killed_at = _saved_steps(workdir)[-1]
  assert killed_at < EPOCHS * 11
  summary, _ = _finish(_cli(root, workdir))
  assert summary["resumed_from_step"] >= killed_at
  resumed, uninterrupted = _final_state(workdir), results["pmap"][2]
  leaves_a, tree_a = jax.tree_util.tree_flatten(resumed)
  leaves_b, tree_b = jax.tree_util.tree_flatten(uninterrupted)
  assert tree_a == tree_b
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------------------------------------
# Integer inputs.

SEEN_DTYPES = []


class EmbeddingBag(nn.Module):
  """Mean of learned token embeddings → linear classifier; refuses non-integer inputs."""
  num_classes: int
  vocab_size: int = 16
  width: int = 8

  @nn.compact
  def __call__(self, tokens, train: bool = False):
    del train
    SEEN_DTYPES.append(tokens.dtype)
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise TypeError(f"token ids must be integers, got {tokens.dtype}")
    bag = nn.Embed(self.vocab_size, self.width)(tokens).mean(axis=1)
    return nn.Dense(self.num_classes)(bag)


def _toy_tokens(config):
  # Sequences of 12 token ids; the label says whether token 3 occurs.
  rng = np.random.default_rng(0)
  splits = {}
  for split, n in (("train", 512), ("test", 128)):
    tokens = rng.integers(4, 16, size=(n, 12)).astype(np.int32)
    label = rng.integers(0, 2, size=n).astype(np.int32)
    where = rng.integers(0, 12, size=n)
    tokens[np.arange(n)[label == 1], where[label == 1]] = 3
    splits[split] = {"tokens": tokens, "label": label}
  return data.ArraySource(config, splits, input_key="tokens", num_classes=2)


def test_integer_token_model_trains_through_the_loop(tmp_path):
  from configs import dndt_iris
  data.register_source("toy_tokens", _toy_tokens)
  models.register_model("embedding_bag", EmbeddingBag)
  config = dndt_iris.tabular_config("toy_tokens")
  config.model.name = "embedding_bag"
  config.model.vocab_size = 16
  config.batch_size = 64
  config.num_epochs = 15
  SEEN_DTYPES.clear()
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert SEEN_DTYPES and all(jnp.issubdtype(d, jnp.integer) for d in SEEN_DTYPES)
  assert summary["test_examples"] == 128
  assert summary["test_accuracy"] >= 0.9  # chance is 0.5
