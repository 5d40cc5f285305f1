"""Config fields owned by the components that read them: their defaults and their checks.

Every component of a run (the optimizer, the schedule, the precision policy, the batch
augmentations, the divergence guard, the weight EMA, the data source, the model, the task,
distillation, fine-tuning, the loop itself) declares the fields it reads as one
``ConfigFields``: the defaults of its optional fields, and a check that returns one line per
bad value, naming the field and the fix. ``bagtricks.validate`` gathers them: ``complete``
gives a config every default its components declare (so they read ``config.schedule.scale``,
never ``config.schedule.get("scale", 1.0)``), and the checks run together before anything is
compiled.

    SCHEDULE_FIELDS = ConfigFields(
        "schedule", defaults={"schedule.scale": 1.0, "schedule.final_lr": 0.0},
        check=schedule_problems)

The helpers below (``positive``, ``in_range``, ``choice``) word the common checks alike.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Iterable, List, Mapping, Sequence, Union

import ml_collections

Check = Callable[[Any], List[str]]


def _no_problems(config) -> List[str]:
  del config
  return []


@dataclasses.dataclass(frozen=True)
class ConfigFields:
  """The config fields of one component.

  Attributes:
    name: the component ('optimizer', 'schedule', ...).
    defaults: ``{dotted field: default}`` of the optional fields the component reads; a
      config without one gets the default (``complete``). A default that is a dict is a
      section of defaults. A component whose fields depend on a choice (the data source
      ``config.dataset.name`` names, the task) gives ``defaults(config) -> {field: default}``.
    check: ``check(config) -> [problem, ...]``, each problem one line naming the field
      (``config.schedule.name='x' is unknown; use one of ...``); run on a completed config.
  """
  name: str
  defaults: Union[Mapping[str, Any], Callable[[Any], Mapping[str, Any]]] = (
      dataclasses.field(default_factory=dict))
  check: Check = _no_problems

  def defaults_for(self, config) -> Mapping[str, Any]:
    """The defaults of this component for ``config``."""
    return self.defaults(config) if callable(self.defaults) else self.defaults


def get(config, field: str) -> Any:
  """The value of a dotted field such as ``'augment.gridmask.prob'``.

  Raises:
    KeyError: the config has no such field.
  """
  value = config
  for part in field.split("."):
    try:
      value = value[part]
    except (KeyError, AttributeError, TypeError) as e:
      raise KeyError(field) from e
  return value


def has(config, field: str) -> bool:
  """Whether the config has the dotted ``field``."""
  try:
    get(config, field)
  except KeyError:
    return False
  return True


def _set_default(config: ml_collections.ConfigDict, field: str, default: Any) -> None:
  *sections, leaf = field.split(".")
  node = config
  for section in sections:
    if section not in node or node[section] is None:
      node[section] = ml_collections.ConfigDict()
    node = node[section]
  if leaf not in node:
    node[leaf] = ml_collections.ConfigDict(default) if isinstance(default, dict) else default


def complete(config, components: Iterable[ConfigFields]) -> ml_collections.ConfigDict:
  """A copy of ``config`` with every missing field of ``components`` at its default.

  Fields the config has keep their values; the copy is unlocked, so later components may
  add theirs.
  """
  completed = copy.deepcopy(config)
  completed.unlock()
  for component in components:
    for field, default in component.defaults_for(completed).items():
      _set_default(completed, field, default)
  return completed


def problems(config, components: Iterable[ConfigFields]) -> List[str]:
  """Every component's problems with ``config``, in the components' order."""
  found: List[str] = []
  for component in components:
    found.extend(component.check(config))
  return found


# Shared wording of the common checks; each returns the problems of one field.

def positive(config, field: str, integer: bool = False) -> List[str]:
  """``config.<field>`` must be > 0 (a positive integer with ``integer``)."""
  value = get(config, field)
  if integer:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      return [f"config.{field}={value!r} must be a positive integer."]
  elif not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
    return [f"config.{field}={value!r} must be > 0."]
  return []


def non_negative(config, field: str, hint: str = "") -> List[str]:
  """``config.<field>`` must be a number >= 0; ``hint`` follows the message."""
  value = get(config, field)
  if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
    return [f"config.{field}={value!r} must be >= 0{hint}."]
  return []


def in_range(config, field: str, low: float, high: float,
             high_inclusive: bool = True) -> List[str]:
  """``config.<field>`` must be in [low, high] (or [low, high))."""
  value = get(config, field)
  ok = isinstance(value, (int, float)) and low <= value and (
      value <= high if high_inclusive else value < high)
  if ok:
    return []
  return [f"config.{field}={value!r} must be in [{low}, {high}"
          f"{']' if high_inclusive else ')'}."]


def choice(config, field: str, allowed: Sequence[Any]) -> List[str]:
  """``config.<field>`` must be one of ``allowed``."""
  value = get(config, field)
  if value in allowed:
    return []
  return [f"config.{field}={value!r} is unknown; use one of {tuple(allowed)}."]
