"""One data-parallel step on 8 devices equals one step on 1 device with the same global batch."""

import jax
import numpy as np
import pytest

import models
from bagtricks import optim, precision, steps
from bagtricks.parallel import DataParallel
from bagtricks.state import init_train_state
from bagtricks.tasks import ClassificationTask
from conftest import run_data_parallel
from configs import default

GLOBAL_BATCH = 16


@pytest.fixture(scope="module")
def setup():
  assert jax.local_device_count() == 8, "conftest sets 8 fake CPU devices"
  config = default.get_config()
  policy = precision.get_policy("fp32")
  model = models.create_model("resnet18d", num_classes=10, width_multiplier=0.125,
                              small_stem=True, axis_name="batch")
  schedule = optim.warmup_cosine_schedule(0.1, 0, 10)
  tx = optim.build_optimizer(config, schedule)
  task = ClassificationTask(10, label_smoothing=0.1)
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(GLOBAL_BATCH, 8, 8, 1)).astype(np.float32),
           "label": rng.integers(0, 10, size=(GLOBAL_BATCH,)).astype(np.int32)}
  state = init_train_state(model, tx, task, {k: v[:1] for k, v in batch.items()}, seed=0)
  return state, steps.make_train_step(model, task, tx, policy), batch


@pytest.mark.parametrize("backend", ["pmap", "shard_map"])
@pytest.mark.slow
def test_eight_devices_equal_one(setup, backend):
  state, step_fn, batch = setup
  one, m1 = run_data_parallel(state, step_fn, batch, 1, backend)
  eight, m8 = run_data_parallel(state, step_fn, batch, 8, backend)
  # Gradients were averaged and BatchNorm statistics reduced across the 8 devices, so the
  # result equals the single-device step on the same 16 examples.
  for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(eight)):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               atol=1e-5, rtol=0)
  assert m1["loss"] == pytest.approx(m8["loss"], abs=1e-5)
  assert m1["accuracy"] == pytest.approx(m8["accuracy"])
  # And the step changed the parameters (the comparison is not vacuous).
  assert not np.allclose(np.asarray(jax.tree_util.tree_leaves(one.params)[0]),
                         np.asarray(jax.tree_util.tree_leaves(state.params)[0]))


@pytest.mark.slow
def test_backends_agree(setup):
  state, step_fn, batch = setup
  pmap_state, _ = run_data_parallel(state, step_fn, batch, 8, "pmap")
  shard_state, _ = run_data_parallel(state, step_fn, batch, 8, "shard_map")
  for a, b in zip(jax.tree_util.tree_leaves(pmap_state), jax.tree_util.tree_leaves(shard_state)):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), atol=1e-5)


def test_unknown_backend():
  with pytest.raises(ValueError, match="config.parallel"):
    DataParallel("pjit")
