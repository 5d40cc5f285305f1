"""The per-step hooks a config switches on, for the one train step (``steps.StepHook``).

* ``AugmentHook``: batch augmentations (mixup, CutMix, Cutout, GridMask) of the images and
  target distributions a task declares (``task.augment_keys``);
* ``distill.TeacherHook``: a trained teacher's logits on the augmented batch;
* ``ScheduledModelKwargs``: model call arguments that follow a schedule the model declares
  (``ModelSpec.step_kwargs``);
* ``WeightEMA``: an exponential moving average of the weights in the train state;
* ``ReportSchedule``: the value of a schedule (the learning rate) among the step's metrics.

``build_step_hooks`` picks them from the config, in the order the step runs them.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import jax.numpy as jnp

from bagtricks import augment as augment_lib
from bagtricks import config_fields
from bagtricks import optim
from bagtricks.steps import StepHook

Schedule = Callable[[Any], Any]


class AugmentHook(StepHook):
  """Applies ``augment(rng, step, images, targets)`` to two entries of the training batch.

  Args:
    augment: e.g. ``augment.BatchAugment``.
    keys: ``(images, targets)``: the task's ``augment_keys``.
  """

  def __init__(self, augment: Callable, keys: Tuple[str, str]):
    self.augment = augment
    self.keys = keys

  def prepare_batch(self, batch, step, rng, variables):
    del variables
    images_key, targets_key = self.keys
    images, targets = self.augment(rng, step, batch[images_key], batch[targets_key])
    return {**batch, images_key: images, targets_key: targets}


class ScheduledModelKwargs(StepHook):
  """Passes ``{name: schedule(step)}`` to the model and reports each value as a metric."""

  def __init__(self, schedules: Dict[str, Schedule]):
    self.schedules = dict(schedules)

  def model_kwargs(self, step):
    return {name: schedule(step) for name, schedule in self.schedules.items()}

  def metrics(self, step):
    return {name: jnp.asarray(schedule(step), jnp.float32)
            for name, schedule in self.schedules.items()}


class WeightEMA(StepHook):
  """ema ← d·ema + (1 − d)·weights after every update (``optim.update_ema``), d from
  ``decay(step)`` of the step just taken; the task state joins when the EMA holds it."""

  def __init__(self, decay: Schedule):
    self.decay = decay

  def update_state(self, state):
    values = {"params": state.params, "batch_stats": state.batch_stats}
    if "task_state" in state.ema:
      values["task_state"] = state.task_state
    return state.replace(ema=optim.update_ema(state.ema, values, self.decay(state.step - 1)))


class ReportSchedule(StepHook):
  """Adds ``{name: schedule(step)}`` to the step's metrics (e.g. the learning rate)."""

  def __init__(self, name: str, schedule: Schedule):
    self.name = name
    self.schedule = schedule

  def metrics(self, step):
    return {self.name: jnp.asarray(self.schedule(step), jnp.float32)}


def _ema_problems(config) -> List[str]:
  if isinstance(config.ema.decay, (int, float)) and 0.0 <= config.ema.decay < 1.0:
    return []
  return [f"config.ema.decay={config.ema.decay!r} must be in [0, 1) (0 = no EMA; e.g. 0.9999 "
          "for runs of 100+ epochs)."]


# The weight EMA of `WeightEMA`, evaluated beside the weights: off by default.
EMA_FIELDS = config_fields.ConfigFields(
    "ema", defaults={"ema.decay": 0.0, "ema.warmup": True}, check=_ema_problems)


def build_step_hooks(config, task, model_step_kwargs: Dict[str, Schedule],
                     learning_rate: Schedule, steps_per_epoch: int, total_steps: int,
                     teacher: Optional[StepHook] = None) -> List[StepHook]:
  """The hooks ``config`` switches on, in the order the train step runs them.

  Args:
    config: the run config (reads ``augment`` and ``ema``).
    task: the run's task (``augment_keys`` says where augmentations apply).
    model_step_kwargs: the model's scheduled call arguments (``ModelSpec.step_kwargs``).
    learning_rate: the schedule, reported as ``learning_rate``.
    steps_per_epoch: optimizer steps per epoch.
    total_steps: steps of the whole run.
    teacher: a distillation teacher's hook, or None.

  Returns:
    Augmentations, teacher, model arguments, weight EMA, learning-rate report.
  """
  hooks: List[StepHook] = []
  # Epoch counts of the augmentations (mixup off for the last epochs, GridMask's ramp)
  # stretch with the schedule.
  augment = augment_lib.batch_augment_from_config(
      config.augment, steps_per_epoch * optim.schedule_multiplier(config), total_steps)
  if augment.active:
    hooks.append(AugmentHook(augment, task.augment_keys))
  if teacher is not None:
    hooks.append(teacher)
  if model_step_kwargs:
    hooks.append(ScheduledModelKwargs(model_step_kwargs))
  if config.ema.decay > 0:
    hooks.append(WeightEMA(optim.ema_decay_schedule(config.ema.decay, config.ema.warmup)))
  hooks.append(ReportSchedule("learning_rate", learning_rate))
  return hooks
