"""Mixed precision: a dtype policy and dynamic loss scaling as an optax transform.

Bag of Tricks §3.2 ("Low-precision training") and Micikevicius et al. 2018, "Mixed Precision
Training": keep a float32 master copy of the weights (and the optimizer state), run forward
and backward passes in a 16-bit type, and for float16 multiply the loss by a scale S so that
small gradients do not flush to zero; gradients are divided by S before the update. The scale is
dynamic: a step whose gradients are not finite is skipped and S is multiplied by ``backoff``;
after ``growth_interval`` finite steps in a row S is multiplied by ``growth_factor``, never
beyond ``max_scale`` (an unbounded scale would eventually overflow to inf).

bfloat16 has float32's exponent range and needs no loss scaling.
"""

from __future__ import annotations

import dataclasses
from typing import Any, List, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bagtricks import config_fields

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclasses.dataclass(frozen=True)
class Policy:
  """Which dtype does what.

  Attributes:
    param_dtype: dtype of the stored (master) parameters and optimizer state.
    compute_dtype: dtype of activations, forward and backward.
    output_dtype: dtype of logits, losses and normalization statistics.
    loss_scaling: whether the loss needs dynamic scaling (float16 only).
  """
  param_dtype: Any = jnp.float32
  compute_dtype: Any = jnp.float32
  output_dtype: Any = jnp.float32
  loss_scaling: bool = False


def get_policy(name: str) -> Policy:
  """The policy for ``config.precision`` (``fp32`` | ``bf16`` | ``fp16``)."""
  if name == "fp32":
    return Policy()
  if name == "bf16":
    return Policy(compute_dtype=jnp.bfloat16)
  if name == "fp16":
    return Policy(compute_dtype=jnp.float16, loss_scaling=True)
  raise ValueError(f"config.precision={name!r} is unknown; use one of {PRECISIONS}.")


def all_finite(tree: Any) -> jnp.ndarray:
  """A scalar bool: True iff every element of every leaf of ``tree`` is finite."""
  leaves = jax.tree_util.tree_leaves(tree)
  if not leaves:
    return jnp.array(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


class DynamicLossScaleState(NamedTuple):
  """State of ``dynamic_loss_scale``.

  Attributes:
    loss_scale: the current scale S (float32 scalar) to multiply the loss by.
    good_steps: finite steps since the scale last changed (int32 scalar).
    skipped_steps: total updates skipped because of non-finite gradients (int32 scalar).
    inner_state: the wrapped optimizer's state, untouched by skipped steps.
  """
  loss_scale: jnp.ndarray
  good_steps: jnp.ndarray
  skipped_steps: jnp.ndarray
  inner_state: Any


def dynamic_loss_scale(inner: optax.GradientTransformation,
                       init_scale: float = 2.0**15,
                       growth_interval: int = 2000,
                       growth_factor: float = 2.0,
                       backoff: float = 0.5,
                       max_scale: float = 2.0**24,
                       min_scale: float = 1.0) -> optax.GradientTransformation:
  """Wraps ``inner`` with dynamic loss scaling (Micikevicius et al. 2018, §3.2).

  The caller computes gradients of ``loss · S`` with S = ``state.loss_scale`` (see
  ``loss_scale_of``) and passes them here. ``update`` divides them by S and then:

  * all finite: runs ``inner``; after ``growth_interval`` finite steps in a row,
    S ← min(S · growth_factor, max_scale);
  * any inf/NaN: returns zero updates, leaves ``inner``'s state untouched (the step is
    skipped), counts it in ``skipped_steps`` and sets S ← max(S · backoff, min_scale).

  Args:
    inner: the optimizer to protect.
    init_scale: initial S.
    growth_interval: finite steps in a row before S grows.
    growth_factor: multiplier for growth.
    backoff: multiplier after a non-finite step (0.5 halves S).
    max_scale: cap on S.
    min_scale: floor on S.

  Returns:
    An ``optax.GradientTransformation`` with ``DynamicLossScaleState``.
  """

  def init_fn(params):
    return DynamicLossScaleState(
        loss_scale=jnp.asarray(init_scale, jnp.float32),
        good_steps=jnp.zeros([], jnp.int32),
        skipped_steps=jnp.zeros([], jnp.int32),
        inner_state=inner.init(params))

  def update_fn(scaled_grads, state, params=None):
    grads = jax.tree_util.tree_map(lambda g: g / state.loss_scale.astype(g.dtype), scaled_grads)
    finite = all_finite(grads)

    def apply(_):
      return inner.update(grads, state.inner_state, params)

    def skip(_):
      return jax.tree_util.tree_map(jnp.zeros_like, grads), state.inner_state

    updates, inner_state = jax.lax.cond(finite, apply, skip, None)
    good_steps = jnp.where(finite, state.good_steps + 1, 0)
    grow = good_steps >= growth_interval
    scale = jnp.where(
        finite,
        jnp.where(grow, jnp.minimum(state.loss_scale * growth_factor, max_scale),
                  state.loss_scale),
        jnp.maximum(state.loss_scale * backoff, min_scale))
    return updates, DynamicLossScaleState(
        loss_scale=scale.astype(jnp.float32),
        good_steps=jnp.where(grow, 0, good_steps).astype(jnp.int32),
        skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32),
        inner_state=inner_state)

  return optax.GradientTransformation(init_fn, update_fn)


def loss_scale_of(opt_state: Any) -> jnp.ndarray:
  """S to multiply the loss by: the dynamic scale if ``opt_state`` has one, else 1."""
  if isinstance(opt_state, DynamicLossScaleState):
    return opt_state.loss_scale
  return jnp.ones([], jnp.float32)


def skipped_steps_of(opt_state: Any) -> jnp.ndarray:
  """Updates skipped for non-finite gradients so far (0 without loss scaling)."""
  if isinstance(opt_state, DynamicLossScaleState):
    return opt_state.skipped_steps
  return jnp.zeros([], jnp.int32)


def wrap_optimizer(tx: optax.GradientTransformation, policy: Policy,
                   loss_scale_config=None) -> optax.GradientTransformation:
  """Adds dynamic loss scaling to ``tx`` when the policy needs it.

  Args:
    tx: the optimizer.
    policy: the run's precision policy.
    loss_scale_config: optional mapping with ``init_scale``, ``growth_interval``, ``backoff``
      and ``max_scale`` (``config.loss_scale``).

  Returns:
    ``tx`` itself, or ``dynamic_loss_scale(tx, ...)`` for float16.
  """
  if not policy.loss_scaling:
    return tx
  kwargs = dict(loss_scale_config or {})
  return dynamic_loss_scale(tx, **kwargs)


def _precision_problems(config) -> List[str]:
  problems = config_fields.choice(config, "precision", PRECISIONS)
  if config.precision == "fp16":
    for field in ("loss_scale.init_scale", "loss_scale.growth_interval",
                  "loss_scale.max_scale", "loss_scale.min_scale"):
      problems += config_fields.positive(config, field)
    if not 0.0 < config.loss_scale.backoff < 1.0:
      problems.append(f"config.loss_scale.backoff={config.loss_scale.backoff} must be in (0, 1).")
  return problems


# The precision policy and fp16's dynamic loss scale (the arguments of `dynamic_loss_scale`).
PRECISION_FIELDS = config_fields.ConfigFields(
    "precision",
    defaults={"precision": "fp32", "loss_scale.init_scale": 2.0**15,
              "loss_scale.growth_interval": 2000, "loss_scale.backoff": 0.5,
              "loss_scale.max_scale": 2.0**24, "loss_scale.min_scale": 1.0},
    check=_precision_problems)
