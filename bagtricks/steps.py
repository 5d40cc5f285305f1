"""The train and eval steps, written once, for one device's share of the batch.

Cross-device work is expressed with ``axis_name`` collectives only, so ``parallel.py`` can run
the same function under ``jax.pmap`` or ``jax.jit(jax.shard_map(...))``.
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from bagtricks import precision
from bagtricks.parallel import AXIS_NAME
from bagtricks.state import TrainState

Metrics = Dict[str, jnp.ndarray]


def _variables(state: TrainState, params) -> dict:
  variables = {"params": params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return variables


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, task,
                    policy: precision.Policy, learning_rate: optax.Schedule,
                    axis_name: str = AXIS_NAME) -> Callable[[TrainState, dict],
                                                            Tuple[TrainState, Metrics]]:
  """Builds ``train_step(state, batch) -> (state, metrics)`` for one device.

  Forward and backward run in ``policy.compute_dtype`` on float32 master params (Flax casts
  them per layer); logits and loss are float32. The loss is multiplied by the dynamic loss
  scale when the optimizer has one; gradients are averaged over ``axis_name`` before the
  optimizer, so every device applies the same update. If the gradients are not finite the
  optimizer skips the update (``precision.dynamic_loss_scale``) and the BatchNorm statistics of
  that step are discarded too, so nothing in the state can turn NaN.

  Args:
    model: Flax module, called as ``model(x, train=True)`` with BatchNorm stats mutable.
    tx: optimizer (wrapped by ``precision.wrap_optimizer``).
    task: ``tasks.ClassificationTask``-like object.
    policy: dtype policy.
    learning_rate: the schedule, only to report the learning rate of each step.
    axis_name: the device axis for collectives.

  Returns:
    The per-device train step. ``batch`` holds ``image`` ``[per_device, H, W, C]`` and
    ``label`` ``[per_device]``; ``metrics`` are scalars identical on every device.
  """

  def train_step(state: TrainState, batch: dict):
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step),
                             lax.axis_index(axis_name))
    scale = precision.loss_scale_of(state.opt_state)
    images = batch["image"].astype(policy.compute_dtype)

    def loss_fn(params):
      logits, new_vars = model.apply(
          _variables(state, params), images, train=True, mutable=["batch_stats"],
          rngs={"dropout": rng})
      logits = logits.astype(jnp.float32)
      loss = jnp.mean(task.train_loss(logits, batch))
      return loss * scale, (loss, logits, new_vars)

    grads, (loss, logits, new_vars) = jax.grad(loss_fn, has_aux=True)(state.params)
    grads = lax.pmean(grads, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    batch_stats = new_vars.get("batch_stats", state.batch_stats)
    if policy.loss_scaling:
      finite = precision.all_finite(grads)
      batch_stats = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old),
                                           batch_stats, state.batch_stats)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    metrics = {"loss": loss, **task.train_metrics(logits, batch)}
    metrics = lax.pmean(metrics, axis_name)
    metrics.update(
        learning_rate=jnp.asarray(learning_rate(state.step), jnp.float32),
        grad_norm=optax.global_norm(grads) / scale,
        loss_scale=scale,
        skipped_steps=precision.skipped_steps_of(opt_state))
    return new_state, metrics

  return train_step


def make_eval_step(model: nn.Module, task, policy: precision.Policy,
                   axis_name: str = AXIS_NAME) -> Callable[[TrainState, dict], Metrics]:
  """Builds ``eval_step(state, batch) -> sums`` for one device.

  ``batch`` carries a ``mask`` (0 for padding); the returned masked sums are summed over
  devices, so the caller divides by ``count`` once at the end.
  """

  def eval_step(state: TrainState, batch: dict) -> Metrics:
    images = batch["image"].astype(policy.compute_dtype)
    logits = model.apply(_variables(state, state.params), images, train=False)
    return lax.psum(task.eval_sums(logits.astype(jnp.float32), batch), axis_name)

  return eval_step
