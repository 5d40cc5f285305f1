"""The train, eval and refit steps, written once, for one device's share of the batch.

Every kind of problem runs through these steps: the model is a Flax module, the task
(``bagtricks.tasks``) turns its outputs into a loss, metrics and new task state, and a short
list of ``StepHook``s adds what a config switches on (batch augmentations, a distillation
teacher, scheduled model arguments, the weight EMA, reported schedules). Cross-device work is
expressed with ``axis_name`` collectives only, so ``parallel.py`` can run the same function
under ``jax.pmap`` or ``jax.jit(jax.shard_map(...))``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from bagtricks import precision
from bagtricks.parallel import AXIS_NAME
from bagtricks.state import TrainState
from bagtricks.tasks.base import model_inputs

Metrics = Dict[str, jnp.ndarray]
Batch = Dict[str, jnp.ndarray]


class StepHook:
  """Something the train step does besides forward, backward and update; all no-ops here.

  A hook may (in this order within a step): change the training batch before the forward
  pass (``prepare_batch``), pass keyword arguments to the model (``model_kwargs``), change the
  state after the update (``update_state``) and report scalars (``metrics``). Arrays it needs
  that are not part of the train state (a teacher's weights) are its ``variables()``: host
  arrays the loop places on the devices once and passes to every step.
  """

  def variables(self) -> Any:
    return ()

  def prepare_batch(self, batch: Batch, step: jnp.ndarray, rng: jax.Array,
                    variables: Any) -> Batch:
    del step, rng, variables
    return batch

  def model_kwargs(self, step: jnp.ndarray) -> Dict[str, Any]:
    del step
    return {}

  def update_state(self, state: TrainState) -> TrainState:
    return state

  def metrics(self, step: jnp.ndarray) -> Metrics:
    del step
    return {}


def model_variables(params, batch_stats) -> dict:
  """``{'params', 'batch_stats'}`` for ``model.apply``, without an empty ``batch_stats``
  (models without BatchNorm have no such collection to pass)."""
  variables = {"params": params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  return variables


def float32_outputs(outputs):
  """A model's outputs with every floating array in float32 (for losses and metrics)."""
  return jax.tree_util.tree_map(
      lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, outputs)


def step_rng(base_rng: jax.Array, step: jnp.ndarray, axis_name: str = AXIS_NAME) -> jax.Array:
  """The PRNG key of one device at one step: the step, then the device index, folded in.

  Every step and every device draw different augmentations and dropout masks, and a resumed
  run draws the same ones as an uninterrupted run.
  """
  return jax.random.fold_in(jax.random.fold_in(base_rng, step), lax.axis_index(axis_name))


def _keep_if_finite(finite, new, old):
  return jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)


def make_train_step(model: nn.Module, task, tx: optax.GradientTransformation,
                    policy: precision.Policy, hooks: Sequence[StepHook] = (),
                    axis_name: str = AXIS_NAME) -> Callable:
  """Builds ``train_step(state, batch, hook_variables=()) -> (state, metrics)`` for one device.

  The step: ``task.prepare_train_batch`` (e.g. label-smoothed targets) → every hook's
  ``prepare_batch`` (augmentations, a teacher's logits) → forward and backward in
  ``policy.compute_dtype`` on float32 master params (Flax casts them per layer; outputs and
  loss are float32), with the hooks' ``model_kwargs`` → ``task.loss`` (loss, new task state,
  metrics) → gradients averaged over ``axis_name`` → optimizer → hooks' ``update_state``
  (the weight EMA). The loss is multiplied by the dynamic loss scale when the optimizer has
  one; if the gradients are not finite the optimizer skips the update
  (``precision.dynamic_loss_scale``), the BatchNorm statistics of that step are discarded,
  and so is the new task state when the task asks for it
  (``task.revert_state_on_skipped_step``), so nothing in the state can turn NaN.

  Args:
    model: Flax module, called as ``model(*inputs, train=True, **hook_kwargs)`` with
      ``batch_stats`` mutable and a ``dropout`` PRNG stream.
    task: a ``tasks.Task``.
    tx: optimizer (wrapped by ``precision.wrap_optimizer``).
    policy: dtype policy.
    hooks: ``StepHook``s, run in order.
    axis_name: the device axis for collectives.

  Returns:
    The per-device train step. ``batch`` holds the dataset's entries shaped
    ``[per_device, ...]``; ``hook_variables`` is ``tuple(h.variables() for h in hooks)``;
    ``metrics`` are scalars identical on every device.
  """

  def train_step(state: TrainState, batch: dict, hook_variables=()):
    key = step_rng(state.rng, state.step, axis_name)
    augment_rng, dropout_rng = jax.random.split(key)
    task_rng = jax.random.fold_in(key, 1)
    scale = precision.loss_scale_of(state.opt_state)
    batch = task.prepare_train_batch(batch)
    variables = tuple(hook_variables) or ((),) * len(hooks)
    model_kwargs = {}
    for hook, hook_vars in zip(hooks, variables):
      batch = hook.prepare_batch(batch, state.step, augment_rng, hook_vars)
      model_kwargs.update(hook.model_kwargs(state.step))
    args, kwargs = model_inputs(task, batch, policy.compute_dtype)

    def loss_fn(params):
      outputs, new_vars = model.apply(
          model_variables(params, state.batch_stats), *args, train=True,
          mutable=["batch_stats"], rngs={"dropout": dropout_rng}, **kwargs, **model_kwargs)
      loss, task_state, metrics = task.loss(float32_outputs(outputs), batch,
                                            state.task_state, task_rng, axis_name)
      return loss * scale, (loss, task_state, metrics, new_vars)

    grads, (loss, task_state, metrics, new_vars) = jax.grad(loss_fn, has_aux=True)(
        state.params)
    grads = lax.pmean(grads, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    batch_stats = new_vars.get("batch_stats", state.batch_stats)
    if policy.loss_scaling:
      finite = precision.all_finite(grads)
      batch_stats = _keep_if_finite(finite, batch_stats, state.batch_stats)
      if task.revert_state_on_skipped_step:
        task_state = _keep_if_finite(finite, task_state, state.task_state)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state, task_state=task_state)
    for hook in hooks:
      new_state = hook.update_state(new_state)
    metrics = lax.pmean({"loss": loss, **metrics}, axis_name)
    metrics.update(
        grad_norm=optax.global_norm(grads) / scale,
        loss_scale=scale,
        skipped_steps=precision.skipped_steps_of(opt_state))
    for hook in hooks:
      metrics.update(hook.metrics(state.step))
    return new_state, metrics

  return train_step


def make_eval_step(model: nn.Module, task, policy: precision.Policy,
                   axis_name: str = AXIS_NAME,
                   use_ema: bool = False) -> Callable[[TrainState, dict], Tuple[Metrics, Batch]]:
  """Builds ``eval_step(state, batch) -> (sums, examples)`` for one device.

  The model runs through ``task.eval_outputs`` (a plain forward pass, or more: a sequence
  task also decodes). ``batch`` carries a ``mask`` (0 for padding); the task's masked sums are
  summed over devices, so the caller divides once at the end (``task.summary``). The task's
  per-example ``eval_examples`` (with the ``mask``) are gathered from every device, shaped
  ``[devices, per_device, ...]``, for ``task.examples_summary`` on the host. With ``use_ema``
  the model runs on the EMA weights (``state.ema``), and on the EMA of the task state when
  the EMA keeps one.
  """

  def eval_step(state: TrainState, batch: dict) -> Tuple[Metrics, Batch]:
    args, kwargs = model_inputs(task, batch, policy.compute_dtype)
    weights = state.ema if use_ema else {"params": state.params,
                                         "batch_stats": state.batch_stats}
    task_state = weights.get("task_state", state.task_state)
    outputs = task.eval_outputs(model, model_variables(weights["params"],
                                                       weights["batch_stats"]), args, kwargs)
    outputs = float32_outputs(outputs)
    sums = task.eval_sums(outputs, batch, task_state)
    examples = task.eval_examples(outputs, batch)
    if examples:
      examples = lax.all_gather({**examples, "mask": batch["mask"]}, axis_name)
    return lax.psum(sums, axis_name), examples

  return eval_step


def make_refit_step(model: nn.Module, task, policy: precision.Policy,
                    axis_name: str = AXIS_NAME) -> Callable[[TrainState, dict], TrainState]:
  """Builds ``refit_step(state, batch) -> state`` for a task that declares a ``refit``.

  Runs the model with ``train=False`` on ``batch`` (training examples, unaugmented, with a
  padding ``mask``) and replaces the task state by ``task.refit_state(outputs, batch, ...)``;
  the parameters and the optimizer state are not touched.
  """

  def refit_step(state: TrainState, batch: dict) -> TrainState:
    args, kwargs = model_inputs(task, batch, policy.compute_dtype)
    outputs = model.apply(model_variables(state.params, state.batch_stats), *args,
                          train=False, **kwargs)
    return state.replace(task_state=task.refit_state(float32_outputs(outputs), batch,
                                                     state.task_state, axis_name))

  return refit_step
