"""Config checks that run before anything is compiled or read.

Every component declares its own fields, their defaults and their checks
(``config_fields.ConfigFields``): the optimizer and the schedule (``optim``), the precision
policy (``precision``), the batch augmentations (``augment``), the divergence guard
(``divergence``), the weight EMA (``hooks``), the data source (``data``), the model
(``models``), the task (``tasks``), distillation (``distill``), fine-tuning (``finetune``),
checkpoints (``checkpoint``), devices (``parallel``) and the loop's own (``LOOP_FIELDS``
below). This module only gathers them: ``complete_config`` gives a config every default, and
``validate_config`` reports every problem at once, each naming the config field and the fix,
so a bad command line fails in a second instead of after a compile or an epoch.
"""

from __future__ import annotations

import math
from typing import List

import jax

import models
from models.xla_cpu import host_memory
from bagtricks import augment, checkpoint, config_fields, data, distill, divergence, finetune
from bagtricks import hooks, optim, parallel, precision, tasks


class ConfigError(ValueError):
  """One or more config fields are invalid."""


def _raise_if_any(problems: List[str]) -> None:
  # One problem reads as one line; several as a list, all at once.
  if len(problems) == 1:
    raise ConfigError(f"Invalid config: {problems[0]}")
  if problems:
    raise ConfigError("Invalid config:\n  - " + "\n  - ".join(problems))


def _required(config, fields, integer: bool) -> List[str]:
  problems = []
  for field in fields:
    if not config_fields.has(config, field):
      problems.append(f"config.{field} is missing; set it (configs/default.py has an example).")
    else:
      problems += config_fields.positive(config, field, integer=integer)
  return problems


def _loop_problems(config) -> List[str]:
  problems = _required(config, ("num_epochs",), integer=False)
  problems += _required(config, ("batch_size", "eval_batch_size"), integer=True)
  problems += _required(config, ("log_every_steps",), integer=True)
  if not isinstance(config.eval_every_epochs, (int, float)) or config.eval_every_epochs < 0:
    problems.append(f"config.eval_every_epochs={config.eval_every_epochs!r} must be >= 0 "
                    "(0 = only at the end).")
  return problems + config_fields.choice(config, "host_memory", host_memory.HOST_MEMORY_MODES)


# The loop's own fields: the run's length, its batches, what it logs, and XLA:CPU's host memory.
LOOP_FIELDS = config_fields.ConfigFields(
    "loop",
    defaults={"seed": 0, "log_every_steps": 20, "eval_every_epochs": 0.0,
              "host_memory": "system"},
    check=_loop_problems)

MODEL_FIELDS = config_fields.ConfigFields(
    "model", check=lambda config: models.config_problems(config.model))

# Every component of a run, in the order their problems are reported. The task's defaults
# follow the model's (its default task) and the data source's its name.
COMPONENTS = (LOOP_FIELDS, optim.OPTIMIZER_FIELDS, optim.SCHEDULE_FIELDS,
              finetune.FINETUNE_FIELDS, precision.PRECISION_FIELDS, parallel.PARALLEL_FIELDS,
              checkpoint.CHECKPOINT_FIELDS, augment.AUGMENT_FIELDS,
              divergence.DIVERGENCE_FIELDS, hooks.EMA_FIELDS, distill.DISTILL_FIELDS,
              MODEL_FIELDS, tasks.TASK_FIELDS, data.DATASET_FIELDS)


def complete_config(config):
  """A copy of ``config`` with every component's optional fields at their defaults."""
  return config_fields.complete(config, COMPONENTS)


def _device_problems(config, num_local_devices: int) -> List[str]:
  problems = []
  if config.num_devices < 0 or config.num_devices > len(jax.local_devices()):
    problems.append(f"config.num_devices={config.num_devices} must be 0 (all) or between 1 and "
                    f"the {len(jax.local_devices())} local devices.")
  if config.num_devices and jax.process_count() > 1:
    problems.append(f"config.num_devices={config.num_devices}: a multi-process run uses every "
                    "local device; set it to 0.")
  devices = num_local_devices * jax.process_count()
  for field in ("batch_size", "eval_batch_size"):
    value = config.get(field)
    if isinstance(value, int) and value > 0 and value % devices:
      problems.append(
          f"config.{field}={value} does not divide evenly over {devices} devices "
          f"({jax.process_count()} processes x {num_local_devices}); use a multiple of "
          f"{devices}, e.g. {max(devices, value // devices * devices)}.")
  return problems


def _nonfinite_problems(config, prefix: str = "config") -> List[str]:
  # No field of any component means anything at NaN or infinity (an unbounded value is
  # written as 0 or left out where a field allows it); config.json stays strict JSON.
  problems = []
  for key, value in config.items():
    name = f"{prefix}.{key}"
    if hasattr(value, "items"):
      problems += _nonfinite_problems(value, name)
    elif isinstance(value, float) and not math.isfinite(value):
      problems.append(f"{name}={value} is not a finite number; give a finite value.")
    elif isinstance(value, (list, tuple)) and any(
        isinstance(v, float) and not math.isfinite(v) for v in value):
      problems.append(f"{name}={value!r} holds a number that is not finite; give finite "
                      "values.")
  return problems


def validate_config(config, num_local_devices: int) -> None:
  """Raises ``ConfigError`` listing every invalid field of ``config``.

  Args:
    config: the run config (completed here with ``complete_config`` first).
    num_local_devices: devices this process will use.
  """
  config = complete_config(config)
  _raise_if_any(_nonfinite_problems(config) or (
      config_fields.problems(config, COMPONENTS) + _device_problems(config, num_local_devices)))


def validate_for_data(config, info, task) -> None:
  """Checks that need the dataset's shape: raises ``ConfigError`` before anything compiles.

  Batch augmentations need a task that declares image inputs and class targets; the model and
  the task check the dataset against their own needs (``ModelSpec.check_for_data``, a task's
  ``check_for_data``: sizes that depend on the number of features, class labels).
  """
  problems: List[str] = []
  active = [f for f in augment.ACTIVE_FIELDS if config_fields.get(config, f)]
  keys = task.augment_keys
  if active and (keys is None or keys[0] not in info.element_spec):
    problems.append(f"config.dataset.name={info.name!r} gives no images to the task "
                    f"{tasks.task_name(config)!r} (its input is {info.input_key!r}); image "
                    f"augmentations {['config.' + f for f in active]} must be 0.")
  problems += models.data_problems(config.model, info)
  problems += tasks.data_problems(config, info)
  _raise_if_any(problems)
