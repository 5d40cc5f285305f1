"""Optimization tricks of "Bag of Tricks for Image Classification" (He et al. 2019) as optax.

Everything here is pure JAX/optax and can be used from any JAX code:

* learning-rate schedules: linear scaling (§3.1), linear warm-up (§3.1), cosine decay (§5.1)
  and step decay, each returning an ``optax.Schedule``; and the Transformer's inverse-square-root
  schedule (``noam_schedule``, Vaswani et al. 2017 §5.3);
* ``weight_decay_mask``: decay conv/dense kernels only, "no bias decay" (§3.1);
* ``build_optimizer``: the whole optax chain (SGD+Nesterov, Adam, AdamW, LARS or LAMB, optional
  gradient clipping) from an ``ml_collections`` config;
* ``schedule_multiplier`` / ``total_steps``: one factor that stretches a whole schedule
  (warm-up, decay boundaries, total steps), the longer schedules of "Rethinking ImageNet
  Pre-training" (He, Girshick & Dollár 2018);
* ``param_group_labels`` / ``with_param_groups``: parameter groups by path pattern, each with its
  learning-rate multiplier or frozen, as an ``optax.multi_transform`` (fine-tuning);
* ``ema_decay_schedule`` and ``update_ema``: an exponential moving average of the weights.
"""

from __future__ import annotations

import re
from typing import Any, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import optax

from bagtricks import config_fields

OPTIMIZERS = ("sgd", "adam", "adamw", "lars", "lamb")
SCHEDULES = ("cosine", "step", "constant", "noam")


def linear_scaled_lr(base_lr: float, global_batch_size: int, base_batch_size: int = 256) -> float:
  """Linear scaling rule (Goyal et al. 2017; Bag of Tricks §3.1).

  lr = base_lr · b / 256: "if we follow He et al. to choose 0.1 as the initial learning rate
  for batch size 256, then when changing to a larger batch size b, we will increase the
  initial learning rate to 0.1 × b/256".

  Args:
    base_lr: learning rate for ``base_batch_size`` examples.
    global_batch_size: examples per optimizer step, summed over all devices and hosts.
    base_batch_size: the batch size ``base_lr`` refers to.

  Returns:
    The scaled learning rate.
  """
  return base_lr * global_batch_size / base_batch_size


def linear_warmup_schedule(peak_lr: float, warmup_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 (Bag of Tricks §3.1): lr_i = i·η/m for the first m batches.

  Written as the paper's formula rather than ``optax.linear_schedule(0, η, m)``, which
  computes η − η·(1 − i/m): the same values in exact arithmetic, but float32 rounds the two
  differently at about half the warm-up steps, and keeping i·η/m keeps the results of runs
  made before these schedules were joined with optax bit-identical.

  Args:
    peak_lr: η, reached at step m.
    warmup_steps: m (0 for none).

  Returns:
    An ``optax.Schedule`` (meant for steps < m; it keeps rising beyond).
  """

  def schedule(step):
    return peak_lr * jnp.asarray(step, jnp.float32) / max(warmup_steps, 1)

  return schedule


def warmup_cosine_schedule(base_lr: float, warmup_steps: int, total_steps: int,
                           final_lr: float = 0.0) -> optax.Schedule:
  """Linear warm-up from 0, then cosine decay (Bag of Tricks §3.1 and §5.1).

  For step i < m (m = ``warmup_steps``): η_i = i·η/m.
  Afterwards, with t = i − m and T = total_steps − m:
  η_t = final_lr + ½(1 + cos(π·t/T))·(η − final_lr); η_t = final_lr for t ≥ T.
  ``linear_warmup_schedule`` and ``optax.cosine_decay_schedule`` joined at m with
  ``optax.join_schedules``.

  Args:
    base_lr: peak learning rate η (already linearly scaled to the batch size).
    warmup_steps: m, the number of warm-up steps (0 for none).
    total_steps: total optimizer steps of the run, warm-up included.
    final_lr: the value reached at the end (0 in the paper).

  Returns:
    An ``optax.Schedule`` mapping the step count to the learning rate.
  """
  if total_steps <= warmup_steps:
    raise ValueError(f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps}).")
  cosine = optax.cosine_decay_schedule(base_lr, total_steps - warmup_steps,
                                       alpha=final_lr / base_lr if base_lr else 0.0)
  return optax.join_schedules([linear_warmup_schedule(base_lr, warmup_steps), cosine],
                              [warmup_steps])


def warmup_step_schedule(base_lr: float, warmup_steps: int, boundaries: Sequence[int],
                         decay_factor: float = 0.1) -> optax.Schedule:
  """Linear warm-up from 0, then step decay (the paper's baseline schedule, §2.1).

  η_i = i·η/m for i < m; afterwards η·factor^k where k is the number of ``boundaries`` ≤ i
  (the paper divides by 10 at epochs 30, 60 and 90): ``linear_warmup_schedule`` joined with
  ``optax.piecewise_constant_schedule``.

  Args:
    base_lr: peak learning rate η.
    warmup_steps: m, the number of warm-up steps (0 for none).
    boundaries: steps at which the learning rate is multiplied by ``decay_factor``.
    decay_factor: the multiplier applied at each boundary.

  Returns:
    An ``optax.Schedule``.
  """
  # Boundaries are counted from the end of the warm-up; one repeated k times decays k times.
  scales = {}
  for boundary in boundaries:
    scales[int(boundary) - warmup_steps] = scales.get(int(boundary) - warmup_steps,
                                                      1.0) * decay_factor
  decayed = optax.piecewise_constant_schedule(base_lr, scales)
  return optax.join_schedules([linear_warmup_schedule(base_lr, warmup_steps), decayed],
                              [warmup_steps])


def warmup_constant_schedule(base_lr: float, warmup_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to ``base_lr``, then constant."""
  return optax.join_schedules([linear_warmup_schedule(base_lr, warmup_steps),
                               optax.constant_schedule(base_lr)], [warmup_steps])


def noam_schedule(model_dim: int, warmup_steps: int = 4000, scale: float = 1.0) -> optax.Schedule:
  """The Transformer's schedule (Vaswani et al. 2017, §5.3, eq. 3).

  lrate = scale · d_model^−0.5 · min(step_num^−0.5, step_num · warmup_steps^−1.5): linear
  warm-up for ``warmup_steps`` steps, then decay with the inverse square root of the step; the
  peak, at step_num = warmup_steps, is scale · (d_model · warmup_steps)^−0.5. The paper counts
  step_num from 1 and optax counts its updates from 0, so update i uses step_num = i + 1 (the
  first update is not wasted on a learning rate of 0).

  Args:
    model_dim: d_model (512 for the base model).
    warmup_steps: the paper's warmup_steps (4000).
    scale: a constant factor (1 in the paper).

  Returns:
    An ``optax.Schedule``.
  """
  if model_dim <= 0 or warmup_steps <= 0:
    raise ValueError(f"model_dim ({model_dim}) and warmup_steps ({warmup_steps}) must be > 0.")

  def schedule(count):
    step_num = jnp.asarray(count, jnp.float32) + 1.0
    return scale * model_dim**-0.5 * jnp.minimum(step_num**-0.5,
                                                 step_num * float(warmup_steps)**-1.5)

  return schedule


def _path_name(entry: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def weight_decay_mask(params: Any) -> Any:
  """Which parameters get weight decay: conv and dense kernels only.

  Bag of Tricks §3.1, "No bias decay": "apply the weight decay to the weights in
  convolution and fully-connected layers. Other parameters, including the biases and γ and
  β in BN layers, are left unregularized." A leaf is decayed iff its name is ``kernel``
  (how Flax names conv and dense weights) and it has at least two dimensions.

  Args:
    params: a pytree of parameters (e.g. a Flax ``params`` collection).

  Returns:
    A pytree of Python bools with the structure of ``params``, usable as the ``mask`` of
    ``optax.add_decayed_weights``, ``optax.adamw``, ``optax.lars`` or ``optax.lamb``.
  """

  def is_kernel(path, leaf):
    return bool(path) and _path_name(path[-1]) == "kernel" and jnp.ndim(leaf) >= 2

  return jax.tree_util.tree_map_with_path(is_kernel, params)


def schedule_multiplier(config) -> float:
  """``config.schedule_multiplier`` (1 by default).

  "Rethinking ImageNet Pre-training" (He, Girshick & Dollár 2018, §4–5) trains from scratch
  with the fine-tuning schedule stretched by k (their 2×, 3×, 6×): every epoch count of the
  schedule — warm-up, decay boundaries, the total — is multiplied by k, so a 3× cosine run is
  the 1× curve drawn three times as long.
  """
  return float(config.schedule_multiplier)


def total_steps(config, steps_per_epoch: int) -> int:
  """Optimizer steps of the whole run: round(num_epochs · schedule_multiplier · steps/epoch)."""
  return int(round(config.num_epochs * schedule_multiplier(config) * steps_per_epoch))


def build_schedule(config, steps_per_epoch: int, global_batch_size: int) -> optax.Schedule:
  """The learning-rate schedule described by ``config``.

  Reads ``config.optimizer.base_lr`` and ``base_batch_size`` (linear scaling), and
  ``config.schedule``: ``name`` (cosine | step | constant | noam), ``warmup_epochs``,
  ``decay_epochs`` (step decay boundaries), ``decay_factor``; ``config.num_epochs``. ``noam``
  (``noam_schedule``) sets its own scale instead: it reads ``schedule.model_dim``,
  ``schedule.warmup_steps`` and ``schedule.scale``, and not ``base_lr``. Every length (warm-up,
  boundaries, total, noam's warm-up steps) is multiplied by ``config.schedule_multiplier``
  (``schedule_multiplier``) before it is rounded to steps.

  Args:
    config: the run's ``ml_collections.ConfigDict``.
    steps_per_epoch: optimizer steps per epoch of training data.
    global_batch_size: examples per optimizer step across all devices.

  Returns:
    An ``optax.Schedule``.
  """
  lr = linear_scaled_lr(config.optimizer.base_lr, global_batch_size,
                        config.optimizer.base_batch_size)
  stretch = schedule_multiplier(config)
  warmup_steps = int(round(config.schedule.warmup_epochs * stretch * steps_per_epoch))
  name = config.schedule.name
  if name == "noam":
    return noam_schedule(config.schedule.model_dim,
                         int(round(config.schedule.warmup_steps * stretch)),
                         config.schedule.scale)
  if name == "cosine":
    return warmup_cosine_schedule(lr, warmup_steps, total_steps(config, steps_per_epoch),
                                  final_lr=config.schedule.final_lr)
  if name == "step":
    boundaries = [int(round(e * stretch * steps_per_epoch)) for e in config.schedule.decay_epochs]
    return warmup_step_schedule(lr, warmup_steps, boundaries, config.schedule.decay_factor)
  if name == "constant":
    return warmup_constant_schedule(lr, warmup_steps)
  raise ValueError(f"config.schedule.name={name!r} is unknown; use one of {SCHEDULES}.")


DEFAULT_GROUP = "default"


def path_name(path: Sequence[Any]) -> str:
  """A parameter's path as one string, e.g. ``'stage1_block1/conv1/kernel'``."""
  return "/".join(_path_name(entry) for entry in path)


def param_groups_from_config(config) -> List[Tuple[str, str, float]]:
  """``config.optimizer.param_groups`` as ``[(name, pattern, lr_multiplier)]`` (empty if none).

  Each entry is a ``(name, pattern, lr_multiplier)`` triple (from Python or the command line
  as a tuple of tuples): ``pattern`` a regular expression searched (``re.search``) in each
  parameter's path name (``path_name``); a parameter belongs to the first group whose pattern
  it matches, or else to the group ``'default'`` (multiplier 1). A multiplier of 0 freezes the
  group (``optax.set_to_zero``: no update, no weight decay, no optimizer state).
  """
  groups = config.optimizer.param_groups or ()
  return [(str(g[0]), str(g[1]), float(g[2])) for g in groups]


def param_group_problems(config) -> List[str]:
  """What is wrong with ``config.optimizer.param_groups`` (its syntax; empty when fine).

  Whether each pattern matches some parameter is known only with the model's parameters:
  ``unmatched_param_groups``.
  """
  groups = config.optimizer.param_groups or ()
  field = "config.optimizer.param_groups"
  example = "e.g. (('backbone', '^(stem|stage)', 0.1), ('head', '^head/', 1.0))"
  if not isinstance(groups, (tuple, list)):
    return [f"{field}={groups!r} must be a tuple of (name, pattern, lr_multiplier) triples, "
            f"{example}."]
  problems, seen = [], set()
  for entry in groups:
    if not (isinstance(entry, (tuple, list)) and len(entry) == 3):
      problems.append(f"{field} entry {entry!r} must be a (name, pattern, lr_multiplier) "
                      f"triple, {example}.")
      continue
    name, pattern, multiplier = entry
    if not isinstance(name, str) or not name or name == DEFAULT_GROUP or name in seen:
      problems.append(f"{field}: group name {name!r} must be a non-empty string, unique and not "
                      f"{DEFAULT_GROUP!r} (the group of every unmatched parameter).")
    seen.add(name)
    try:
      re.compile(pattern)
    except (re.error, TypeError) as e:
      problems.append(f"{field}: group {name!r} has pattern {pattern!r}, which is not a regular "
                      f"expression ({e}).")
    if (not isinstance(multiplier, (int, float)) or isinstance(multiplier, bool)
        or not multiplier >= 0 or multiplier == float("inf")):
      problems.append(f"{field}: group {name!r} has lr_multiplier {multiplier!r}; use a finite "
                      "number >= 0 (0 freezes the group, 1 keeps the learning rate).")
  return problems


def param_group_labels(params: Any, groups: Sequence[Tuple[str, str, float]]) -> Any:
  """The group name of every parameter: the first group whose pattern its path matches.

  Args:
    params: a pytree of parameters (arrays or ``jax.ShapeDtypeStruct``).
    groups: ``[(name, pattern, lr_multiplier)]`` (``param_groups_from_config``).

  Returns:
    A pytree of group names with the structure of ``params``, the ``param_labels`` of
    ``optax.multi_transform``; ``'default'`` where no pattern matches.
  """
  compiled = [(name, re.compile(pattern)) for name, pattern, _ in groups]

  def label(path, leaf):
    del leaf
    name = path_name(path)
    for group, pattern in compiled:
      if pattern.search(name):
        return group
    return DEFAULT_GROUP

  return jax.tree_util.tree_map_with_path(label, params)


def unmatched_param_groups(params: Any, groups: Sequence[Tuple[str, str, float]]) -> List[str]:
  """Problems: groups that no parameter falls into (a pattern that matches nothing)."""
  labels = set(jax.tree_util.tree_leaves(param_group_labels(params, groups)))
  names = [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  shown = ", ".join(names[:3] + names[-2:])
  return [f"config.optimizer.param_groups: group {name!r} (pattern {pattern!r}) matches no "
          f"parameter; parameter names look like {shown}." for name, pattern, _ in groups
          if name not in labels]


def with_param_groups(tx: optax.GradientTransformation, groups: Sequence[Tuple[str, str, float]]
                      ) -> optax.GradientTransformation:
  """``tx`` applied per parameter group, each group's update scaled by its multiplier.

  Every optimizer here ends with its learning rate as a factor of the update (SGD, momentum,
  Adam, LARS and LAMB are linear in it), so scaling group g's update by m_g trains g with
  learning rate m_g·η(t): the per-group multipliers of fine-tuning. m_g = 0 is
  ``optax.set_to_zero()`` (frozen, no state). Each group keeps its own optimizer state.

  Args:
    tx: the optimizer for the default group (learning rate η(t)).
    groups: ``[(name, pattern, lr_multiplier)]``.

  Returns:
    ``tx`` itself when there are no groups, else an ``optax.multi_transform``.
  """
  if not groups:
    return tx
  transforms = {DEFAULT_GROUP: tx}
  for name, _, multiplier in groups:
    if multiplier == 0:
      transforms[name] = optax.set_to_zero()
    elif multiplier == 1:
      transforms[name] = tx
    else:
      transforms[name] = optax.chain(tx, optax.scale(multiplier))
  return optax.multi_transform(transforms, lambda params: param_group_labels(params, groups))


def build_optimizer(config, learning_rate: optax.Schedule) -> optax.GradientTransformation:
  """The optimizer chain described by ``config.optimizer``.

  * ``sgd``: the paper's SGD with (Nesterov) momentum. Weight decay λ·w is added to the
    gradient before momentum, as in the paper's MXNet (and PyTorch) SGD, so λ = 1e-4 means what
    the paper means; ``decoupled_weight_decay=True`` instead adds it after momentum (SGDW,
    Loshchilov & Hutter 2019).
  * ``adam``: Adam (Kingma & Ba 2015) with β1, β2 and ε from the config (the Transformer's
    0.9, 0.98 and 1e-9), and L2 weight decay added to the gradient when it is positive.
  * ``adamw``: Adam with decoupled weight decay (Loshchilov & Hutter 2019).
  * ``lars`` / ``lamb``: layer-wise trust ratios (You et al. 2017 / 2020); the trust ratio is
    applied to the same leaves as weight decay.

  In every case weight decay is applied to ``weight_decay_mask(params)`` only, the chain is
  applied per group of ``optimizer.param_groups`` (``with_param_groups``: a learning-rate
  multiplier per group, or frozen), and gradients are clipped to global norm
  ``grad_clip_norm`` first, over all parameters, when it is positive.

  Args:
    config: the run's config; reads ``config.optimizer``.
    learning_rate: a schedule (or a float).

  Returns:
    An ``optax.GradientTransformation``.
  """
  opt = config.optimizer
  wd = opt.weight_decay
  name = opt.name
  if name == "sgd":
    decay = optax.add_decayed_weights(wd, mask=weight_decay_mask)
    momentum = (optax.trace(decay=opt.momentum, nesterov=opt.nesterov)
                if opt.momentum > 0 else optax.identity())
    parts = [momentum, decay] if opt.decoupled_weight_decay else [decay, momentum]
    tx = optax.chain(*parts, optax.scale_by_learning_rate(learning_rate))
  elif name == "adam":
    decay = (optax.add_decayed_weights(wd, mask=weight_decay_mask) if wd else optax.identity())
    tx = optax.chain(decay, optax.adam(learning_rate, b1=opt.b1, b2=opt.b2, eps=opt.eps))
  elif name == "adamw":
    tx = optax.adamw(learning_rate, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=wd,
                     mask=weight_decay_mask)
  elif name == "lars":
    tx = optax.lars(learning_rate, weight_decay=wd, weight_decay_mask=weight_decay_mask,
                    trust_coefficient=opt.trust_coefficient,
                    trust_ratio_mask=weight_decay_mask, momentum=opt.momentum,
                    nesterov=opt.nesterov)
  elif name == "lamb":
    tx = optax.lamb(learning_rate, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=wd,
                    mask=weight_decay_mask)
  else:
    raise ValueError(f"config.optimizer.name={name!r} is unknown; use one of {OPTIMIZERS}.")
  tx = with_param_groups(tx, param_groups_from_config(config))
  if opt.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx


def ema_decay_schedule(decay: float, warmup: bool = True) -> optax.Schedule:
  """The decay of the weight EMA at each step.

  With ``warmup`` it is min(decay, (1 + t)/(10 + t)) as in TensorFlow's
  ``ExponentialMovingAverage(num_updates=t)``, so the average forgets its random
  initialization quickly in short runs; otherwise the constant ``decay``.

  Args:
    decay: the final decay in [0, 1), e.g. 0.9999 for ImageNet-length runs.
    warmup: ramp the decay up over the first steps.

  Returns:
    ``step -> decay``.
  """

  def schedule(step):
    if not warmup:
      return jnp.asarray(decay, jnp.float32)
    t = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + t) / (10.0 + t))

  return schedule


def update_ema(ema: Any, values: Any, decay: jnp.ndarray) -> Any:
  """One EMA step: ema ← decay·ema + (1 − decay)·values, leaf by leaf (float32).

  Args:
    ema: the running average (a pytree).
    values: the new values (same structure).
    decay: the decay of this step.

  Returns:
    The updated average.
  """
  return jax.tree_util.tree_map(
      lambda e, v: (decay * e + (1.0 - decay) * v).astype(e.dtype), ema, values)


def _optimizer_problems(config) -> List[str]:
  problems = config_fields.choice(config, "optimizer.name", OPTIMIZERS)
  for field in ("optimizer.base_lr", "optimizer.base_batch_size"):
    problems += config_fields.positive(config, field)
  problems += config_fields.non_negative(config, "optimizer.weight_decay")
  problems += config_fields.non_negative(config, "optimizer.grad_clip_norm", " (0 = off)")
  return problems + param_group_problems(config)


def _schedule_problems(config) -> List[str]:
  schedule = config.schedule
  problems = config_fields.choice(config, "schedule.name", SCHEDULES)
  if schedule.warmup_epochs < 0 or (schedule.name == "cosine"
                                    and schedule.warmup_epochs >= config.num_epochs):
    problems.append(f"config.schedule.warmup_epochs={schedule.warmup_epochs} must be >= 0 "
                    f"and below config.num_epochs={config.num_epochs}.")
  if schedule.name == "noam":
    for field in ("schedule.model_dim", "schedule.warmup_steps"):
      if config_fields.has(config, field):
        problems += config_fields.positive(config, field, integer=True)
      else:
        problems.append(f"config.{field} is missing; schedule 'noam' needs it (the paper: "
                        "model_dim = d_model = 512, warmup_steps = 4000).")
  return problems + config_fields.positive(config, "schedule_multiplier")


# The fields `build_optimizer` reads, and their defaults (configs/default.py sets them all).
OPTIMIZER_FIELDS = config_fields.ConfigFields(
    "optimizer",
    defaults={"optimizer.name": "sgd", "optimizer.momentum": 0.9, "optimizer.nesterov": True,
              "optimizer.weight_decay": 0.0, "optimizer.decoupled_weight_decay": False,
              "optimizer.grad_clip_norm": 0.0, "optimizer.b1": 0.9, "optimizer.b2": 0.999,
              "optimizer.eps": 1e-8, "optimizer.trust_coefficient": 0.001,
              "optimizer.param_groups": ()},
    check=_optimizer_problems)

# The fields `build_schedule` and `total_steps` read.
SCHEDULE_FIELDS = config_fields.ConfigFields(
    "schedule",
    defaults={"schedule.name": "cosine", "schedule.warmup_epochs": 0.0,
              "schedule.decay_epochs": (30, 60, 90), "schedule.decay_factor": 0.1,
              "schedule.final_lr": 0.0, "schedule.scale": 1.0, "schedule_multiplier": 1.0},
    check=_schedule_problems)
