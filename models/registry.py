"""Models by name, each with what a training loop needs to know about it.

A model is a Flax module; beside it, a ``ModelSpec`` declares what the generic loop needs
from it, so the loop never asks which model it trains:

* how to build it from ``config.model`` (``build``);
* the task it is trained with unless the config names another (``default_task``), and the
  batch entry it reads when it needs a particular one (``input_key``);
* keyword arguments of its ``__call__`` that follow a schedule over training
  (``step_kwargs``: DropBlock's rate rising from 0 to its target);
* an optional report written at the end of a run (``report``: a DNDT's rules, a soft
  tree's picture);
* its own config checks, before and after the dataset is known (``check_config``,
  ``check_for_data``).

``register_model(name, spec_or_module_class)`` adds a model; ``config.model.name`` may also be
an import path ``'package.module:attribute'`` naming a ``ModelSpec`` or a Flax module class.
Nothing here imports the training code: models know nothing of training, data or devices.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import flax.linen as nn
import jax.numpy as jnp

Schedule = Callable[[Any], Any]


def _no_step_kwargs(model_config: Mapping[str, Any], total_steps: int) -> Dict[str, Schedule]:
  del model_config, total_steps
  return {}


def _no_problems(*args) -> List[str]:
  del args
  return []


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What the training loop needs to know about one model.

  Attributes:
    build: ``build(kwargs, num_outputs=, dtype=, axis_name=) -> nn.Module`` from the plain
      ``config.model`` fields (without ``name``): ``num_outputs`` is the head width the task
      needs (classes, or 1 for a scalar regression), ``dtype`` the compute dtype and
      ``axis_name`` the data-parallel axis (for cross-device BatchNorm).
    default_task: ``fn(kwargs) -> task name`` used when ``config.task`` is empty.
    input_key: the batch entry the model must read (e.g. ``'features'`` for a model of table
      columns); None: whatever the dataset's input is.
    step_kwargs: ``fn(kwargs, total_steps) -> {name: schedule}``: keyword arguments of the
      model's ``__call__`` given a new value at every training step (``schedule(step)``).
    report: ``fn(config, params, source, workdir) -> dict`` writing files about the trained
      model into ``workdir`` and returning entries for the run summary; None for none.
    check_config: ``fn(kwargs) -> [problem, ...]`` checks of ``config.model`` alone, each
      naming its field (``config.model.<field>``).
    check_for_data: ``fn(kwargs, dataset_info) -> [problem, ...]`` checks that need the
      dataset's shapes.
  """
  build: Callable[..., nn.Module]
  default_task: Callable[[Mapping[str, Any]], str] = lambda kwargs: "classification"
  input_key: Optional[str] = None
  step_kwargs: Callable[[Mapping[str, Any], int], Dict[str, Schedule]] = _no_step_kwargs
  report: Optional[Callable[..., Dict[str, Any]]] = None
  check_config: Callable[[Mapping[str, Any]], List[str]] = _no_problems
  check_for_data: Callable[[Mapping[str, Any], Any], List[str]] = _no_problems


def build_module(module_class: Callable[..., nn.Module], kwargs: Mapping[str, Any], *,
                 num_outputs: Optional[int], dtype: Any = jnp.float32,
                 axis_name: Optional[str] = None) -> nn.Module:
  """``module_class(num_classes=num_outputs, **kwargs)``, with ``dtype`` and ``axis_name``
  passed only to modules that declare those fields."""
  fields = getattr(module_class, "__dataclass_fields__", {})
  kwargs = dict(kwargs)
  if num_outputs is not None:
    kwargs["num_classes"] = num_outputs
  if "dtype" in fields:
    kwargs.setdefault("dtype", dtype)
  if "axis_name" in fields and axis_name is not None:
    kwargs.setdefault("axis_name", axis_name)
  return module_class(**kwargs)


def spec_of_module(module_class: Callable[..., nn.Module], **spec_fields) -> ModelSpec:
  """A ``ModelSpec`` that builds ``module_class`` with ``build_module``."""

  def build(kwargs, *, num_outputs=None, dtype=jnp.float32, axis_name=None):
    return build_module(module_class, kwargs, num_outputs=num_outputs, dtype=dtype,
                        axis_name=axis_name)

  return ModelSpec(build=build, **spec_fields)


_REGISTRY: Dict[str, ModelSpec] = {}


def register_model(name: str, spec: Union[ModelSpec, Callable[..., nn.Module]]) -> None:
  """Makes ``config.model.name=name`` build ``spec`` (a ``ModelSpec`` or a module class)."""
  _REGISTRY[name.lower()] = spec if isinstance(spec, ModelSpec) else spec_of_module(spec)


def model_names() -> tuple:
  """Every registered model name."""
  return tuple(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
  """The ``ModelSpec`` of a registered name or of an import path ``'module:attribute'``.

  Raises:
    ValueError: unknown name, or an import path that does not resolve; the message says
      which names exist.
  """
  if ":" in name:
    module_name, _, attribute = name.partition(":")
    try:
      target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as e:
      raise ValueError(f"config.model.name={name!r} does not import ({type(e).__name__}: "
                       f"{e}); give 'package.module:attribute' on the Python path.") from e
    return target if isinstance(target, ModelSpec) else spec_of_module(target)
  spec = _REGISTRY.get(name.lower())
  if spec is None:
    raise ValueError(f"config.model.name={name!r} is unknown; use one of {model_names()} or "
                     "an import path 'package.module:attribute'.")
  return spec


def plain(value: Any) -> Any:
  """Config values as plain Python: nested configs become dicts, lists tuples."""
  if isinstance(value, list):
    return tuple(value)
  if hasattr(value, "items"):
    return {k: plain(v) for k, v in value.items()}
  return value


def positive(kwargs: Mapping[str, Any], field: str, integer: bool = False,
             prefix: str = "config.model.") -> List[str]:
  """``['<prefix><field>=... must be ...']`` unless ``kwargs[field]`` is positive."""
  value = kwargs.get(field)
  if integer:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      return [f"{prefix}{field}={value!r} must be a positive integer."]
  elif not isinstance(value, (int, float)) or value <= 0:
    return [f"{prefix}{field}={value!r} must be > 0."]
  return []


def model_kwargs(model_config: Mapping[str, Any]) -> Dict[str, Any]:
  """``config.model`` minus its name, as plain Python values."""
  return {k: plain(v) for k, v in model_config.items() if k != "name"}


def create_model_from_config(config, dataset_info, *, num_outputs: Optional[int] = None,
                             dtype: Any = jnp.float32,
                             axis_name: Optional[str] = None) -> nn.Module:
  """The module ``config.model`` describes, sized for ``dataset_info``.

  Args:
    config: the run config (reads ``config.model``).
    dataset_info: the dataset's description (its ``num_classes`` is the default head width).
    num_outputs: head width; default ``dataset_info.num_classes``.
    dtype: compute dtype (parameters stay float32).
    axis_name: data-parallel axis for cross-device statistics.

  Returns:
    The Flax module.
  """
  if num_outputs is None:
    num_outputs = dataset_info.num_classes
  return get_spec(config.model.name).build(model_kwargs(config.model), num_outputs=num_outputs,
                                           dtype=dtype, axis_name=axis_name)


def config_problems(model_config) -> List[str]:
  """Problems of ``config.model`` found before the data is read (empty when all is well)."""
  try:
    spec = get_spec(model_config.name)
  except ValueError as e:
    return [str(e)]
  kwargs = model_kwargs(model_config)
  problems = list(spec.check_config(kwargs))
  if not problems:
    try:
      spec.build(kwargs, num_outputs=2)
    except (TypeError, ValueError) as e:
      problems.append(f"config.model: {e}")
  return problems


def data_problems(model_config, dataset_info) -> List[str]:
  """Problems of ``config.model`` that need the dataset's shapes."""
  spec = get_spec(model_config.name)
  if spec.input_key is not None and spec.input_key != dataset_info.input_key:
    return [f"config.model.name={model_config.name!r} reads {spec.input_key!r} inputs, and "
            f"config.dataset.name={dataset_info.name!r} gives {dataset_info.input_key!r}; "
            "choose a model for this data or a dataset for this model."]
  return list(spec.check_for_data(model_kwargs(model_config), dataset_info))
