"""The train and eval steps, written once, for one device's share of the batch.

Cross-device work is expressed with ``axis_name`` collectives only, so ``parallel.py`` can run
the same function under ``jax.pmap`` or ``jax.jit(jax.shard_map(...))``.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from bagtricks import optim, precision
from bagtricks.parallel import AXIS_NAME
from bagtricks.state import TrainState
from bagtricks.tasks import logits_of
from models.forest import fixed_point_leaf_update

Metrics = Dict[str, jnp.ndarray]


def _variables(params, batch_stats) -> dict:
  # Models without BatchNorm have no 'batch_stats' collection to pass.
  variables = {"params": params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  return variables


def _float32(outputs):
  # Logits (or every floating array of a dict output) in float32 for the loss.
  return jax.tree_util.tree_map(
      lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, outputs)


def step_rng(base_rng: jax.Array, step: jnp.ndarray, axis_name: str = AXIS_NAME) -> jax.Array:
  """The PRNG key of one device at one step: the step, then the device index, folded in.

  Every step and every device draw different augmentations and DropBlock masks, and a resumed
  run draws the same ones as an uninterrupted run.
  """
  return jax.random.fold_in(jax.random.fold_in(base_rng, step), lax.axis_index(axis_name))


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, task,
                    policy: precision.Policy, learning_rate: optax.Schedule,
                    axis_name: str = AXIS_NAME, *,
                    augment: Optional[Callable] = None,
                    teacher: Optional[nn.Module] = None,
                    drop_block_rate: Optional[optax.Schedule] = None,
                    ema_decay: Optional[optax.Schedule] = None,
                    input_key: str = "image") -> Callable:
  """Builds ``train_step(state, batch[, teacher_variables]) -> (state, metrics)`` for one device.

  The step: targets from the task (label smoothing) → batch augmentations of images and targets
  (``augment``) → the teacher's logits on the augmented images, without gradients (when
  distilling) → forward and backward in ``policy.compute_dtype`` on float32 master params (Flax
  casts them per layer; logits and loss are float32) → gradients averaged over ``axis_name`` →
  optimizer → EMA of the weights. The loss is multiplied by the dynamic loss scale when the
  optimizer has one; if the gradients are not finite the optimizer skips the update
  (``precision.dynamic_loss_scale``) and the BatchNorm statistics of that step are discarded
  too, so nothing in the state can turn NaN.

  Args:
    model: Flax module, called as ``model(x, train=True)`` with BatchNorm stats mutable.
    tx: optimizer (wrapped by ``precision.wrap_optimizer``).
    task: ``tasks.ClassificationTask``-like object.
    policy: dtype policy.
    learning_rate: the schedule, only to report the learning rate of each step.
    axis_name: the device axis for collectives.
    augment: ``fn(rng, step, images, targets) -> (images, targets)``, e.g.
      ``augment.BatchAugment``; None for none.
    teacher: a Flax module whose logits the task distills from; the step then takes the
      teacher's variables as a third argument and runs it with ``train=False``.
    drop_block_rate: schedule of the model's DropBlock rate (passed as ``drop_block_rate=``);
      None when the model has no DropBlock.
    ema_decay: schedule of the weight-EMA decay; None when the state keeps no EMA.
    input_key: the batch entry the model reads (``'image'``, or ``'features'`` for tables).

  Returns:
    The per-device train step. ``batch`` holds ``image`` ``[per_device, H, W, C]`` (or
    ``features`` ``[per_device, num_features]``) and ``label`` ``[per_device]``; ``metrics``
    are scalars identical on every device. The model may return logits or a dict of outputs
    (``tasks.logits_of``); either goes to the task's loss as it is.
  """

  def train_step(state: TrainState, batch: dict, teacher_variables=None):
    augment_rng, dropout_rng = jax.random.split(step_rng(state.rng, state.step, axis_name))
    scale = precision.loss_scale_of(state.opt_state)
    images = batch[input_key]
    targets = task.train_targets(batch)
    if augment is not None:
      images, targets = augment(augment_rng, state.step, images, targets)
    images = images.astype(policy.compute_dtype)
    teacher_logits = None
    if teacher is not None:
      teacher_logits = lax.stop_gradient(logits_of(
          teacher.apply(teacher_variables, images, train=False)).astype(jnp.float32))
    model_kwargs = {}
    if drop_block_rate is not None:
      model_kwargs["drop_block_rate"] = drop_block_rate(state.step)

    def loss_fn(params):
      logits, new_vars = model.apply(
          _variables(params, state.batch_stats), images, train=True, mutable=["batch_stats"],
          rngs={"dropout": dropout_rng}, **model_kwargs)
      logits = _float32(logits)
      loss = jnp.mean(task.train_loss(logits, targets, teacher_logits))
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
    ema = state.ema
    if ema_decay is not None:
      ema = optim.update_ema(ema, {"params": params, "batch_stats": batch_stats},
                             ema_decay(state.step))
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state, ema=ema)
    metrics = {"loss": loss, **task.train_metrics(logits, targets)}
    metrics = lax.pmean(metrics, axis_name)
    metrics.update(
        learning_rate=jnp.asarray(learning_rate(state.step), jnp.float32),
        grad_norm=optax.global_norm(grads) / scale,
        loss_scale=scale,
        skipped_steps=precision.skipped_steps_of(opt_state))
    if drop_block_rate is not None:
      metrics["drop_block_rate"] = jnp.asarray(model_kwargs["drop_block_rate"], jnp.float32)
    return new_state, metrics

  return train_step


def make_eval_step(model: nn.Module, task, policy: precision.Policy,
                   axis_name: str = AXIS_NAME, use_ema: bool = False,
                   input_key: str = "image") -> Callable[[TrainState, dict], Metrics]:
  """Builds ``eval_step(state, batch) -> sums`` for one device.

  ``batch`` carries a ``mask`` (0 for padding); the returned masked sums are summed over
  devices, so the caller divides by ``count`` once at the end. With ``use_ema`` the model runs
  on the EMA weights (``state.ema``) instead of the raw ones.
  """

  def eval_step(state: TrainState, batch: dict) -> Metrics:
    images = batch[input_key].astype(policy.compute_dtype)
    weights = state.ema if use_ema else {"params": state.params,
                                         "batch_stats": state.batch_stats}
    outputs = model.apply(_variables(weights["params"], weights["batch_stats"]), images,
                          train=False)
    return lax.psum(task.eval_sums(_float32(outputs), batch), axis_name)

  return eval_step


def make_leaf_update_step(model: nn.Module, policy: precision.Policy, num_iterations: int,
                          axis_name: str = AXIS_NAME,
                          input_key: str = "image") -> Callable[[TrainState, dict], TrainState]:
  """Builds ``leaf_update_step(state, batch) -> state`` for a fixed-point neural decision forest.

  Routes ``batch`` (training examples, unaugmented, with a padding ``mask``) through the
  current network, then replaces the leaf distributions π in ``state.batch_stats`` by
  ``num_iterations`` of the paper's fixed-point update started from uniform
  (``models.fixed_point_leaf_update``), summed over every device's examples. The parameters
  and the optimizer state are not touched.
  """

  def leaf_update_step(state: TrainState, batch: dict) -> TrainState:
    inputs = batch[input_key].astype(policy.compute_dtype)
    routing = model.apply(_variables(state.params, state.batch_stats), inputs, train=False,
                          method="routing").astype(jnp.float32)
    leaves = state.batch_stats["leaf_distributions"]
    uniform = jnp.full_like(leaves, 1.0 / leaves.shape[-1])
    new_leaves = fixed_point_leaf_update(uniform, routing, batch["label"], batch["mask"],
                                         num_iterations, axis_name)
    return state.replace(batch_stats={**state.batch_stats, "leaf_distributions": new_leaves})

  return leaf_update_step
