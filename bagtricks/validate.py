"""Config checks that run before anything is compiled or read.

Every problem is reported at once, each naming the config field and the fix, so a bad command
line fails in a second instead of after a compile or an epoch. The checks of the shared loop
(optimizer, schedule, precision, devices, augmentations, EMA, distillation) live here; the
model and the task bring their own (``models.config_problems``, ``tasks.config_problems``).
"""

from __future__ import annotations

from typing import List

import jax

import models
from bagtricks import distill, finetune, host_memory, optim, precision, preprocess, tasks
from bagtricks.parallel import BACKENDS


class ConfigError(ValueError):
  """One or more config fields are invalid."""


def _raise_if_any(problems: List[str]) -> None:
  # One problem reads as one line; several as a list, all at once.
  if len(problems) == 1:
    raise ConfigError(f"Invalid config: {problems[0]}")
  if problems:
    raise ConfigError("Invalid config:\n  - " + "\n  - ".join(problems))


def _field(config, field: str):
  """The value of a dotted config field such as ``'augment.gridmask.prob'``."""
  value = config
  for part in field.split("."):
    value = value[part]
  return value


def _has(config, field: str) -> bool:
  try:
    _field(config, field)
  except (KeyError, AttributeError):
    return False
  return True


def _positive(config, field: str, problems: List[str], integer: bool = False) -> None:
  value = _field(config, field)
  if integer:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      problems.append(f"config.{field}={value!r} must be a positive integer.")
  elif not isinstance(value, (int, float)) or value <= 0:
    problems.append(f"config.{field}={value!r} must be > 0.")


def _in_range(config, field: str, low: float, high: float, problems: List[str],
              high_inclusive: bool = True) -> None:
  value = _field(config, field)
  ok = isinstance(value, (int, float)) and low <= value and (
      value <= high if high_inclusive else value < high)
  if not ok:
    problems.append(f"config.{field}={value!r} must be in [{low}, {high}"
                    f"{']' if high_inclusive else ')'}.")


def _check_augment(config, problems: List[str]) -> None:
  """``config.augment``: mixup/CutMix, Cutout and GridMask settings."""
  for field in ("augment.mixup_alpha", "augment.cutmix_alpha", "augment.mix_off_epochs",
                "augment.gridmask.ramp_epochs"):
    value = _field(config, field)
    if not isinstance(value, (int, float)) or value < 0:
      problems.append(f"config.{field}={value!r} must be >= 0 (0 = off).")
  for field in ("augment.cutmix_prob", "augment.gridmask.prob"):
    _in_range(config, field, 0.0, 1.0, problems)
  augment = config.augment
  if augment.mix_off_epochs and augment.mix_off_epochs >= config.num_epochs:
    problems.append(f"config.augment.mix_off_epochs={augment.mix_off_epochs} must be below "
                    f"config.num_epochs={config.num_epochs}.")
  cutout = augment.cutout
  if not isinstance(cutout.num_holes, int) or cutout.num_holes < 0:
    problems.append(f"config.augment.cutout.num_holes={cutout.num_holes!r} must be an integer "
                    ">= 0 (0 = off).")
  if cutout.num_holes:
    _positive(config, "augment.cutout.size", problems, integer=True)
  grid = augment.gridmask
  if grid.prob > 0:
    if not (isinstance(grid.d_min, int) and isinstance(grid.d_max, int)
            and 1 <= grid.d_min < grid.d_max):
      problems.append(f"config.augment.gridmask.d_min={grid.d_min!r} and d_max={grid.d_max!r} "
                      "must be integers with 1 <= d_min < d_max (d is drawn from "
                      "[d_min, d_max)).")
    _in_range(config, "augment.gridmask.ratio", 0.0, 1.0, problems, high_inclusive=False)
    if not isinstance(grid.max_rotation, int) or grid.max_rotation < 0:
      problems.append(f"config.augment.gridmask.max_rotation={grid.max_rotation!r} must be an "
                      "integer >= 0 (degrees).")


def validate_for_data(config, info, task) -> None:
  """Checks that need the dataset's shape: raises ``ConfigError`` before anything compiles.

  Batch augmentations need a task that declares image inputs and class targets; the model and
  the task check the dataset against their own needs (``ModelSpec.check_for_data``, a task's
  ``check_for_data``: sizes that depend on the number of features, class labels).
  """
  problems: List[str] = []
  active = [f for f in ("augment.mixup_alpha", "augment.cutmix_alpha",
                        "augment.cutout.num_holes", "augment.gridmask.prob")
            if _field(config, f)]
  keys = task.augment_keys
  if active and (keys is None or keys[0] not in info.element_spec):
    problems.append(f"config.dataset.name={info.name!r} gives no images to the task "
                    f"{tasks.task_name(config)!r} (its input is {info.input_key!r}); image "
                    f"augmentations {['config.' + f for f in active]} must be 0.")
  problems += models.data_problems(config.model, info)
  problems += tasks.data_problems(config, info)
  _raise_if_any(problems)


def validate_config(config, num_local_devices: int) -> None:
  """Raises ``ConfigError`` listing every invalid field of ``config``.

  Args:
    config: the run config.
    num_local_devices: devices this process will use.
  """
  problems: List[str] = []

  def check_choice(field, value, choices):
    if value not in choices:
      problems.append(f"config.{field}={value!r} is unknown; use one of {tuple(choices)}.")

  check_choice("optimizer.name", config.optimizer.name, optim.OPTIMIZERS)
  check_choice("schedule.name", config.schedule.name, optim.SCHEDULES)
  check_choice("precision", config.precision, precision.PRECISIONS)
  check_choice("parallel", config.parallel, BACKENDS)
  if _has(config, "host_memory"):
    check_choice("host_memory", config.host_memory, host_memory.HOST_MEMORY_MODES)

  for field in ("optimizer.base_lr", "optimizer.base_batch_size", "num_epochs"):
    _positive(config, field, problems)
  for field in ("batch_size", "eval_batch_size", "log_every_steps", "checkpoint_every_steps",
                "keep_checkpoints"):
    _positive(config, field, problems, integer=True)
  # Image fields, where the dataset config has them (a table or token config need not).
  for field in ("dataset.image_size", "dataset.channels", "dataset.shuffle_buffer"):
    if _has(config, field):
      _positive(config, field, problems, integer=True)
  if config.optimizer.weight_decay < 0:
    problems.append(f"config.optimizer.weight_decay={config.optimizer.weight_decay} must be "
                    ">= 0.")
  if config.schedule.warmup_epochs < 0 or (
      config.schedule.name == "cosine" and config.schedule.warmup_epochs >= config.num_epochs):
    problems.append(f"config.schedule.warmup_epochs={config.schedule.warmup_epochs} must be >= 0 "
                    f"and below config.num_epochs={config.num_epochs}.")
  if config.schedule.name == "noam":
    for field in ("schedule.model_dim", "schedule.warmup_steps"):
      if _has(config, field):
        _positive(config, field, problems, integer=True)
      else:
        problems.append(f"config.{field} is missing; schedule 'noam' needs it (the paper: "
                        "model_dim = d_model = 512, warmup_steps = 4000).")
  if "schedule_multiplier" in config:
    _positive(config, "schedule_multiplier", problems)
  problems.extend(optim.param_group_problems(config))
  problems.extend(finetune.config_problems(config))
  if config.precision == "fp16":
    for field in ("loss_scale.init_scale", "loss_scale.growth_interval",
                  "loss_scale.max_scale"):
      _positive(config, field, problems)
    if not 0.0 < config.loss_scale.backoff < 1.0:
      problems.append(f"config.loss_scale.backoff={config.loss_scale.backoff} must be in (0, 1).")

  if config.num_devices < 0 or config.num_devices > len(jax.local_devices()):
    problems.append(f"config.num_devices={config.num_devices} must be 0 (all) or between 1 and "
                    f"the {len(jax.local_devices())} local devices.")
  if config.num_devices and jax.process_count() > 1:
    problems.append(f"config.num_devices={config.num_devices}: a multi-process run uses every "
                    "local device; set it to 0.")
  devices = num_local_devices * jax.process_count()
  for field in ("batch_size", "eval_batch_size"):
    value = config[field]
    if isinstance(value, int) and value > 0 and value % devices:
      problems.append(
          f"config.{field}={value} does not divide evenly over {devices} devices "
          f"({jax.process_count()} processes x {num_local_devices}); use a multiple of "
          f"{devices}, e.g. {max(devices, value // devices * devices)}.")

  if not isinstance(config.eval_every_epochs, (int, float)) or config.eval_every_epochs < 0:
    problems.append(f"config.eval_every_epochs={config.eval_every_epochs!r} must be >= 0 "
                    "(0 = only at the end).")
  _check_augment(config, problems)
  if "divergence" in config:
    _positive(config, "divergence.window_steps", problems, integer=True)
    _in_range(config, "divergence.max_skipped_fraction", 0.0, 1.0, problems)
  if not 0.0 <= config.ema.decay < 1.0:
    problems.append(f"config.ema.decay={config.ema.decay} must be in [0, 1) (0 = no EMA; "
                    "e.g. 0.9999 for runs of 100+ epochs).")
  problems.extend(distill.config_problems(config))
  problems.extend(models.config_problems(config.model))
  problems.extend(tasks.config_problems(config))

  test_fraction = config.dataset.get("test_fraction", 0.2)
  if not 0.0 < test_fraction < 1.0:
    problems.append(f"config.dataset.test_fraction={test_fraction} must be in (0, 1).")
  for field in ("train_pp", "eval_pp"):
    if field not in config.dataset:
      continue
    try:
      preprocess.get_preprocess_fn(config.dataset[field])
    except ValueError as e:
      problems.append(f"config.dataset.{field}: {e}")

  _raise_if_any(problems)
