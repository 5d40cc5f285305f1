"""The train state: everything a run needs to continue exactly where it stopped."""

from __future__ import annotations

import functools
from typing import Any, Dict

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bagtricks.tasks.base import model_inputs


@flax.struct.dataclass
class TrainState:
  """A pytree holding the whole mutable state of training.

  Attributes:
    step: optimizer steps taken (int32 scalar).
    params: float32 master parameters.
    batch_stats: BatchNorm running statistics (empty for GroupNorm models).
    task_state: the task's own non-trainable state (``Task.init_state``: running statistics,
      centers, fitted distributions, ...), ``{}`` for tasks without one.
    opt_state: optimizer state (including the dynamic loss scale under fp16).
    rng: base PRNG key; per-step, per-device keys are folded from it.
    ema: exponential moving average of the weights, ``{'params', 'batch_stats'}`` (and
      ``'task_state'`` when the task asks for it), or ``{}`` when the run keeps none.
  """
  step: jnp.ndarray
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jnp.ndarray
  ema: Any = flax.struct.field(default_factory=dict)
  task_state: Any = flax.struct.field(default_factory=dict)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, task,
                       rng: jnp.ndarray, example_batch: Dict[str, Any],
                       ema: bool = False) -> TrainState:
  """Initializes parameters, BatchNorm statistics, task state and optimizer state.

  Args:
    model: a Flax module called as ``model(*inputs, train=...)``.
    tx: the full optimizer (already wrapped for loss scaling if any).
    task: the run's task (its ``input_keys`` pick the model inputs from ``example_batch``;
      its ``init_state`` gives the task state).
    rng: PRNG key.
    example_batch: one batch of zeros with the dataset's entries, shapes and dtypes
      (``DatasetInfo.example_batch()``).
    ema: keep an exponential moving average of the weights (it starts equal to them).

  Returns:
    A ``TrainState`` at step 0.
  """
  init_rng, state_rng = jax.random.split(rng)
  args, kwargs = model_inputs(task, example_batch, jnp.float32)
  variables = model.init(init_rng, *args, train=False, **kwargs)
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  task_state = task.init_state(jax.random.fold_in(rng, 1), example_batch)
  ema_state = {}
  if ema:
    ema_state = {"params": params, "batch_stats": batch_stats}
    if task.ema_task_state:
      ema_state["task_state"] = task_state
  return TrainState(
      step=jnp.zeros([], jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state=tx.init(params),
      rng=state_rng,
      ema=ema_state,
      task_state=task_state)


def variable_shapes(model: nn.Module, task, example_batch: Dict[str, Any]) -> Dict[str, Any]:
  """The model's ``params`` and ``batch_stats`` as ``jax.ShapeDtypeStruct`` trees.

  Traced with ``jax.eval_shape``, nothing is compiled or computed: for checks of parameter
  names and shapes that must run before compiling (``config.init_from``, parameter groups).

  Args:
    model: the Flax module.
    task: the run's task (its ``input_keys``).
    example_batch: one batch of zeros with the dataset's entries.

  Returns:
    ``{'params': ..., 'batch_stats': ...}`` (``batch_stats`` ``{}`` for models without
    BatchNorm).
  """
  args, kwargs = model_inputs(task, example_batch, jnp.float32)
  variables = jax.eval_shape(
      lambda key: model.init(key, *args, train=False, **kwargs), jax.random.PRNGKey(0))
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def init_train_state(model: nn.Module, tx: optax.GradientTransformation, task,
                     example_batch: Dict[str, Any], seed: int,
                     ema: bool = False) -> TrainState:
  """``create_train_state`` compiled once and fetched to the host (NumPy leaves).

  Initialization runs once per run, so it is compiled without XLA's backend optimizations:
  on CPU that cuts its compile time several-fold (about 15 s to 3 s for the default model)
  while drawing the same random bits. Run op by op instead, a deep network's initializers
  cost each a separate compile and the whole init takes longer still.

  Args:
    model: the Flax module.
    tx: the full optimizer.
    task: the run's task.
    example_batch: one batch of zeros with the dataset's entries.
    seed: PRNG seed.
    ema: keep an exponential moving average of the weights.

  Returns:
    A ``TrainState`` of host arrays.
  """
  init = functools.partial(create_train_state, model, tx, task, example_batch=example_batch,
                           ema=ema)
  return jax.device_get(run_once(init, jax.random.PRNGKey(seed)))


def run_once(fn, *args):
  """``fn(*args)`` compiled whole, without XLA's backend optimizations, for a program that
  runs once (an initialization): it draws the same random bits as ``jax.jit(fn)`` and as
  ``fn`` op by op (floats made from them may differ in the last place), and on CPU compiles
  several times faster than either (the partitionable threefry of every parameter shape is
  slow to optimize; op by op, every op is a compile of its own)."""
  lowered = jax.jit(fn).lower(*args)
  return lowered.compile(compiler_options={"xla_backend_optimization_level": 0})(*args)


def init_variables(model: nn.Module, rng: jnp.ndarray, *args, **kwargs) -> Dict[str, Any]:
  """``model.init(rng, *args, **kwargs)``, compiled whole once (``run_once``); keyword
  arguments are static (``train=False``)."""
  return run_once(lambda key, *inputs: model.init(key, *inputs, **kwargs), rng, *args)
