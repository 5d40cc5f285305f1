"""Test setup: 8 fake CPU devices, quiet TensorFlow, one compilation cache for the session,
and shared small fixtures."""

import os

# Must be set before JAX initializes its backend: data-parallel tests compare 8 devices
# with 1 on the same machine.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _share_compilation_cache() -> None:
  """One persistent compilation cache for the whole session: the controller makes it before
  the xdist workers start, and they and the commands the tests start inherit it through the
  environment. The tests compile the same small programs many times over (every tiny CLI run
  compiles one train step), so most compiles after the first are loads. A size limit turns on
  JAX's file lock, so that two processes never read an entry while it is written. Only
  compiles of a second or more are kept (JAX's default): keeping every eager op's made the
  op-by-op tests many times slower (each write scans the cache under the lock)."""
  if "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return
  try:
    import filelock  # noqa: F401  pylint: disable=unused-import
  except ImportError:  # No lock, no sharing: each compile is compiled.
    return
  import atexit
  import shutil
  import tempfile
  path = tempfile.mkdtemp(prefix="bagtricks-tests-jax-cache-")
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = path
  os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(4 << 30)


_share_compilation_cache()

import jax  # noqa: E402
import pytest  # noqa: E402

# In this process only (the commands the tests start keep JAX's default): the partitionable
# threefry, JAX's default, compiles each parameter shape's random init several times slower
# on CPU (README, the test section), and most tests init models. Their random bits differ,
# not their distribution, and no test compares one process's init with another's.
jax.config.update("jax_threefry_partitionable", False)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory):
  """A TFDS data dir holding the bundled digits, written once per test session."""
  from bagtricks import data
  path = str(tmp_path_factory.mktemp("tfds"))
  data.prepare_sklearn_digits(path)
  return path


@pytest.fixture(scope="session")
def mnist_data_dir(tmp_path_factory):
  """A TFDS data dir holding the 5,000 MNIST digits, written once per test session."""
  from bagtricks import data
  path = str(tmp_path_factory.mktemp("tfds_mnist"))
  data.prepare_local_dataset("mnist_5k", path)
  return path


def tiny_config(data_dir: str):
  """The default digits recipe shrunk to a few fast steps (ResNet-18-D at width 1/8)."""
  from configs import default
  config = default.get_config()
  config.dataset.data_dir = data_dir
  config.model.width_multiplier = 0.125
  config.batch_size = 64
  config.eval_batch_size = 64
  config.num_epochs = 1
  config.schedule.warmup_epochs = 0.5
  config.log_every_steps = 5
  config.eval_every_epochs = 0.0
  config.checkpoint_every_steps = 5
  return config


def run_data_parallel(state, step_fn, batch, num_devices: int, backend: str = "pmap",
                      num_steps: int = 2):
  """``num_steps`` train steps of ``batch`` split over the first ``num_devices`` devices.

  Returns:
    ``(host state, host metrics of the last step)``.
  """
  import jax
  from bagtricks.parallel import DataParallel
  dp = DataParallel(backend, jax.local_devices()[:num_devices])
  compiled = dp.compile(step_fn)
  p_state = dp.replicate(state)
  layout = {k: v.reshape((num_devices, -1) + v.shape[1:]) for k, v in batch.items()}
  for _ in range(num_steps):
    p_state, metrics = compiled(p_state, dp.shard_batch(layout))
  return dp.unreplicate(p_state), dp.metrics_to_host(metrics)


def train_on_one_and_eight_devices(model, task, tx, batch, seed: int = 0):
  """Two fp32 train steps of ``batch`` from one initial state, on 1 and on 8 devices.

  Returns:
    ``(initial state, (state, metrics) on 1 device, (state, metrics) on 8)``, on the host.
  """
  from bagtricks import precision, steps
  from bagtricks.state import init_train_state
  state = init_train_state(model, tx, task, {k: v[:1] for k, v in batch.items()}, seed=seed)
  step_fn = steps.make_train_step(model, task, tx, precision.get_policy("fp32"))
  return (state, run_data_parallel(state, step_fn, batch, 1),
          run_data_parallel(state, step_fn, batch, 8))


def first_batch_model_and_sgd(config, learning_rate: float):
  """``config``'s source, its first training batch on one device, its model (BatchNorm over
  the ``'batch'`` axis) and SGD at ``learning_rate``: the inputs of
  ``train_on_one_and_eight_devices``."""
  import models
  from bagtricks import data, optim
  source = data.get_source(config)
  batch = {k: v.reshape((-1,) + v.shape[2:])
           for k, v in next(source.train_batches(0, 1)).items()}
  model = models.create_model_from_config(config, source.info(), num_outputs=10,
                                          axis_name="batch")
  config.optimizer.name = "sgd"
  tx = optim.build_optimizer(config, optim.warmup_cosine_schedule(learning_rate, 0, 10))
  return source, batch, model, tx


def assert_field_named_before_training(config, field: str, value, message: str,
                                       workdir) -> None:
  """With ``config.<field> = value``, the run stops with a ValueError matching ``message``
  and writes nothing to ``workdir``."""
  import pytest
  from bagtricks import train
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def assert_trees_close(a, b, rtol: float = 1e-5, atol: float = 1e-6) -> None:
  """Every leaf of ``a`` is close to the same leaf of ``b``."""
  import jax
  import numpy as np
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def jaxpr_primitives(fn, *args) -> set:
  """Names of the primitives in the top level of ``fn``'s jaxpr for ``args``."""
  import jax
  return {eqn.primitive.name for eqn in jax.make_jaxpr(fn)(*args).eqns}


def lowered_text(fn, *args, platform: str = "cpu") -> str:
  """StableHLO of ``jax.jit(fn)`` for ``args``, lowered for ``platform`` (any platform: no
  device of it is needed to lower)."""
  import jax
  return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()
