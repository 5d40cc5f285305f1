"""The Task protocol: what a batch is and how a model's output becomes a loss and metrics.

The train and eval steps (``bagtricks/steps.py``) are written once for every kind of problem;
they ask the task, never "which model is this?":

    class Task(Protocol):
      input_keys            # batch entries fed to the model
      num_outputs           # head width the model needs (classes; 1 for a scalar target)
      augment_keys          # (images, target distributions) batch augmentations may mix, or None
      init_state(rng, example_batch) -> task_state
      prepare_train_batch(batch) -> batch
      loss(outputs, batch, task_state, rng, axis_name) -> (loss, new_task_state, metrics)
      eval_outputs(model, variables, args, kwargs) -> outputs   (e.g. adds decoded sequences)
      eval_sums(outputs, batch, task_state) -> {name: masked sum}
      eval_examples(outputs, batch) -> {name: per-example array}  (kept for host-side metrics)
      summary(sums) -> {name: float}
      examples_summary(examples) -> {name: float}                (e.g. BLEU from decoded text)
      check_config(config) -> [problem, ...]      (a classmethod: runs before anything is built)
      config_defaults       # {dotted field: default} of the optional config fields it reads

A task is built by ``from_config(config, dataset_info)``. ``TaskBase`` holds the defaults, so
a new task only writes what differs. See ``README.md`` ("Adding a task") for a worked example.
"""

from __future__ import annotations

import dataclasses
from typing import (Any, ClassVar, Dict, List, Mapping, Optional, Protocol, Tuple,
                    runtime_checkable)

import jax
import jax.numpy as jnp

Batch = Dict[str, jnp.ndarray]
PyTree = Any


def model_inputs(task, batch: Batch, dtype: Any) -> Tuple[tuple, dict]:
  """The model's ``(args, kwargs)`` from ``batch``: one input key positionally, several by name.

  Floating inputs are cast to the compute ``dtype``; integer token ids, masks and indices
  pass through unchanged.
  """
  values = [batch[k].astype(dtype) if jnp.issubdtype(batch[k].dtype, jnp.floating)
            else batch[k] for k in task.input_keys]
  if len(values) == 1:
    return (values[0],), {}
  return (), dict(zip(task.input_keys, values))


@dataclasses.dataclass(frozen=True)
class Refit:
  """A task-state update the loop runs between training steps, on unaugmented data.

  The loop routes the examples of the train split (eval preprocessing, padded, ``mask`` 0 for
  padding) through the current model with ``train=False`` and hands the outputs to
  ``task.refit_state``: before the first step and after every ``every_epochs`` epochs (before
  that step's checkpoint, so a resumed run refits the same way).

  Attributes:
    every_epochs: refit after every this many epochs.
    max_batches: eval-sized batches of the train split to use (0 = the whole split).
  """
  every_epochs: int = 1
  max_batches: int = 0


@dataclasses.dataclass(frozen=True)
class Throughput:
  """What a task's progress line counts per second.

  Attributes:
    unit: shown after the rate (``'img'`` → ``1411 img/s``).
    key: the rate's name in ``metrics.jsonl`` and ``summary.json``.
    metric: a training metric holding the units of one global batch (a sequence task's
      real target tokens); None counts the batch's examples.
  """
  unit: str
  key: str
  metric: Optional[str] = None


IMAGES = Throughput("img", "images_per_second")
EXAMPLES = Throughput("examples", "examples_per_second")
TOKENS = Throughput("tokens", "tokens_per_second", metric="target_tokens")


@runtime_checkable
class Task(Protocol):
  """One kind of problem on the shared train loop (see the module docstring).

  Attributes:
    input_keys: batch entries fed to the model, in order: one is passed positionally, several
      as keyword arguments named by their keys. Floating inputs are cast to the compute dtype;
      integer token ids, masks and indices pass through unchanged.
    num_outputs: the width of the model's head this task needs; None when the model's own
      config decides.
    augment_keys: ``(images, targets)`` entries of the training batch that image batch
      augmentations (mixup, CutMix, Cutout, GridMask) may change, ``images`` ``[batch, H, W,
      C]`` and ``targets`` class distributions ``[batch, K]``; None: they do not apply.
    ema_task_state: average the task state in the weight EMA too (and evaluate the EMA
      weights with it); False keeps it out of the EMA.
    revert_state_on_skipped_step: under dynamic loss scaling, a step whose gradients are not
      finite is skipped; True also keeps the task state of before that step.
    refit: a between-steps update of the task state (``Refit``), or None.
    progress_metrics: ``{metric: label}``: training metrics shown on the progress line.
    throughput: what the progress line's rate counts (``IMAGES``, ``EXAMPLES``, ``TOKENS``).
  """
  input_keys: Tuple[str, ...]
  num_outputs: Optional[int]
  augment_keys: Optional[Tuple[str, str]]
  ema_task_state: bool
  revert_state_on_skipped_step: bool
  refit: Optional[Refit]
  progress_metrics: Dict[str, str]
  throughput: Throughput

  @classmethod
  def check_config(cls, config) -> List[str]:
    """Problems of the config fields this task reads, each naming its field and the fix."""

  def init_state(self, rng: jax.Array, example_batch: Batch) -> PyTree:
    """The task state at step 0: non-trainable, checkpointed, restored with the run."""

  def prepare_train_batch(self, batch: Batch) -> Batch:
    """The training batch before augmentations (e.g. adds label-smoothed ``targets``)."""

  def check_batch(self, batch: Batch, where: str) -> None:
    """Raises ``data.DataError`` if the host batch holds values the task cannot take (token
    ids outside the vocabulary), naming ``where`` it came from; called by the loop on every
    batch before it reaches the devices."""

  def loss(self, outputs: Any, batch: Batch, task_state: PyTree, rng: jax.Array,
           axis_name: Optional[str]) -> Tuple[jnp.ndarray, PyTree, Dict[str, jnp.ndarray]]:
    """``(loss, new_task_state, metrics)`` on one device's share of the batch.

    The step averages the loss's gradient over devices (``lax.pmean``), so the loss is one
    device's mean (scale it when normalizing by a global count, e.g. tokens summed with
    ``lax.psum`` over ``axis_name``). ``metrics`` are scalars the step averages over
    devices. ``new_task_state`` must be identical on every device (reduce across
    ``axis_name``). ``outputs`` are the model's outputs, floating leaves in float32.
    """

  def eval_sums(self, outputs: Any, batch: Batch, task_state: PyTree) -> Dict[str, jnp.ndarray]:
    """Sums over the real examples (``batch['mask']`` is 0 for padding), summed over devices
    by the step; must include ``count``, the number of real examples."""

  def eval_outputs(self, model: Any, variables: Dict[str, Any], args: tuple,
                   kwargs: Dict[str, Any]) -> Any:
    """The model's outputs on an eval batch: ``model.apply(variables, *args, train=False,
    **kwargs)``, plus whatever else the task evaluates (a sequence task's decoded outputs)."""

  def summary(self, sums: Dict[str, float]) -> Dict[str, float]:
    """Named results from the split's total sums (the loop reports them as ``test_<name>``)."""

  def eval_examples(self, outputs: Any, batch: Batch) -> Dict[str, jnp.ndarray]:
    """Per-example arrays ``[per_device, ...]`` the loop gathers from every device and hands,
    real examples only and in split order, to ``examples_summary``; ``{}`` for none."""

  def examples_summary(self, examples: Dict[str, Any]) -> Dict[str, float]:
    """Named results computed on the host from the whole split's ``eval_examples`` (metrics
    that are not sums, such as corpus BLEU)."""

  def refit_state(self, outputs: Any, batch: Batch, task_state: PyTree,
                  axis_name: Optional[str]) -> PyTree:
    """The task state refit on ``batch`` (only called when ``refit`` is set)."""


class TaskBase:
  """Defaults of the protocol: no task state, no augmentations, nothing to refit."""

  input_keys: Tuple[str, ...] = ()
  num_outputs: Optional[int] = None
  augment_keys: Optional[Tuple[str, str]] = None
  ema_task_state = False
  revert_state_on_skipped_step = True
  refit: Optional[Refit] = None
  progress_metrics: Dict[str, str] = {}
  # The defaults of the optional config fields the task reads (``tasks.TASK_FIELDS``).
  config_defaults: ClassVar[Mapping[str, Any]] = {}

  @property
  def throughput(self) -> Throughput:
    """Images for a model that reads ``image``, else examples."""
    return IMAGES if self.input_keys == ("image",) else EXAMPLES

  @classmethod
  def from_config(cls, config, dataset_info) -> "TaskBase":
    """The task for a run (override to read config fields)."""
    del config, dataset_info
    return cls()

  @classmethod
  def check_config(cls, config) -> List[str]:
    del config
    return []

  def init_state(self, rng: jax.Array, example_batch: Batch) -> PyTree:
    del rng, example_batch
    return {}

  def prepare_train_batch(self, batch: Batch) -> Batch:
    return batch

  def check_batch(self, batch: Batch, where: str) -> None:
    del batch, where

  def eval_outputs(self, model, variables, args, kwargs):
    return model.apply(variables, *args, train=False, **kwargs)

  def eval_examples(self, outputs, batch) -> Dict[str, jnp.ndarray]:
    del outputs, batch
    return {}

  def examples_summary(self, examples) -> Dict[str, float]:
    del examples
    return {}

  def summary(self, sums: Dict[str, float]) -> Dict[str, float]:
    """Every sum divided by ``count``; ``count`` itself as ``examples``."""
    count = max(sums["count"], 1.0)
    results = {k: v / count for k, v in sums.items() if k != "count"}
    results["examples"] = int(sums["count"])
    return results

  def refit_state(self, outputs, batch, task_state, axis_name):
    raise NotImplementedError(f"{type(self).__name__} declares no refit.")
