"""What every data source shares: the error type, ``DatasetInfo``, the ``Source`` protocol and
the batch arithmetic.

A batch is a dict of NumPy arrays that all share their leading dimensions. Training batches are
shaped ``[num_devices, per_device, ...]`` per key (for example ``image`` float32
``[num_devices, per_device, H, W, C]`` and ``label`` int32 ``[num_devices, per_device]``);
evaluation batches have the same layout plus ``mask`` float32 ``[num_devices, per_device]``.
"""

from __future__ import annotations

import dataclasses
from typing import (Any, Callable, Dict, Iterable, Iterator, Optional, Protocol,
                    runtime_checkable)

import jax
import numpy as np

from bagtricks import config_fields

Batch = Dict[str, np.ndarray]


class DataError(ValueError):
  """The configured dataset cannot be read (unknown, not prepared, or too small)."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the rest of the run needs to know about a dataset (identical on every process).

  Attributes:
    name: the dataset's name (``config.dataset.name``).
    num_classes: number of label classes; ``None`` for regression targets.
    num_train_examples: examples in the whole train split (all processes).
    num_eval_examples: examples in the whole eval split.
    steps_per_epoch: optimizer steps per epoch (the remainder of an epoch is dropped).
    input_key: the batch entry the model reads, e.g. ``'image'``, ``'features'`` or
      ``'tokens'``.
    element_spec: one training example per batch key, e.g. ``{'image': ShapeDtypeStruct((8,
      8, 1), float32), 'label': ShapeDtypeStruct((), int32)}``; never holds ``'mask'``.
    class_names: one name per class, when the dataset has them.
    vocab_size: for token datasets, the number of token ids (``0 .. vocab_size - 1``, the
      special ids PAD 0, BOS 1 and EOS 2 included); ``None`` otherwise.
    tokenizer: for token datasets, an object with ``encode(text) -> list[int]`` (no special
      ids) and ``decode(ids) -> str`` (stops at EOS, skips PAD and BOS), e.g. to detokenize
      outputs for BLEU; ``None`` otherwise. Not part of equality.
  """
  name: str
  num_classes: Optional[int]
  num_train_examples: int
  num_eval_examples: int
  steps_per_epoch: int
  input_key: str
  element_spec: Dict[str, jax.ShapeDtypeStruct]
  class_names: Optional[tuple] = None
  vocab_size: Optional[int] = None
  tokenizer: Optional[Any] = dataclasses.field(default=None, compare=False)

  @property
  def input_shape(self) -> tuple:
    """One example's model input, e.g. ``(height, width, channels)`` or ``(num_features,)``."""
    return tuple(self.element_spec[self.input_key].shape)

  def example_batch(self, batch_size: int = 1) -> Batch:
    """Zeros shaped like a batch of ``batch_size`` examples, ``[batch_size, ...]`` per key.

    For initializing models and task state; it has the training batch's keys and dtypes but no
    device axis.
    """
    return {k: np.zeros((batch_size,) + tuple(s.shape), s.dtype)
            for k, s in self.element_spec.items()}


@runtime_checkable
class Source(Protocol):
  """A dataset as the training loop reads it. Sources take the run config in their constructor.

  Any batch layout flows through the same loop: images and labels, table features and labels,
  int32 tokens, float regression targets; ``info().input_key`` names the model input.
  """

  def info(self) -> DatasetInfo:
    """Sizes, steps and element spec of the run's data.

    Raises:
      DataError: ``config.batch_size`` exceeds what each process reads per epoch.
    """
    ...

  def train_batches(self, start_step: int, num_devices: int) -> Iterator[Batch]:
    """Endless training batches starting at ``start_step``.

    The batch at step s is a pure function of (config, s), so a run resumed at step s sees
    exactly the batches an uninterrupted run would have seen.

    Args:
      start_step: the first step to produce (the restored step when resuming).
      num_devices: local devices; every batch is split between them.

    Yields:
      One entry per ``info().element_spec`` key, shaped ``[num_devices, per_device, ...]``.
    """
    ...

  def eval_batches(self, num_devices: int, split: Optional[str] = None) -> Iterable[Batch]:
    """Every example of ``split`` (default ``config.dataset.eval_split``) exactly once.

    Args:
      num_devices: local devices.
      split: the split to read.

    Returns:
      A re-iterable with ``__len__`` (the same on every process) whose batches are shaped
      ``[num_devices, per_device, ...]`` and hold ``mask`` float32, 1.0 for real examples and
      0.0 for padding.
    """
    ...


# The ``config.dataset`` fields every source reads, and their defaults.
DATASET_DEFAULTS = {"data_dir": None, "train_split": "train", "eval_split": "test"}


def with_dataset_defaults(config, defaults: Optional[Dict[str, Any]] = None):
  """A copy of ``config`` whose ``dataset`` has ``DATASET_DEFAULTS`` and a source's own
  ``defaults`` (``{field: default}``) where it lacks them.

  Each source declares its optional fields once (``config_defaults``) and reads them as
  attributes; ``DATASET_FIELDS`` gives the run config the same defaults.
  """
  fields = {f"dataset.{k}": v for k, v in {**DATASET_DEFAULTS, **(defaults or {})}.items()}
  return config_fields.complete(config, [config_fields.ConfigFields("dataset", fields)])


def checked_dataset_config(config, defaults: Dict[str, Any], problems: Callable):
  """``with_dataset_defaults(config, defaults)``, checked before any data is read or drawn.

  Args:
    config: the run config.
    defaults: the source's ``config_defaults``.
    problems: ``fn(config.dataset, per-process batch size) -> [problem, ...]``, each naming
      its field.

  Raises:
    DataError: the first problem, if any.
  """
  config = with_dataset_defaults(config, defaults)
  found = problems(config.dataset, per_process_batch_size(config.batch_size))
  if found:
    raise DataError(found[0])
  return config


def per_process_batch_size(global_batch_size: int) -> int:
  """This process's share of a global batch."""
  return global_batch_size // jax.process_count()


def steps_per_epoch(per_process_train: int, global_batch_size: int) -> int:
  """Optimizer steps per epoch when every process reads ``per_process_train`` examples.

  An epoch's remainder is dropped.

  Raises:
    DataError: the per-process batch exceeds the examples each process reads.
  """
  steps = per_process_train // per_process_batch_size(global_batch_size)
  if steps < 1:
    raise DataError(
        f"config.batch_size={global_batch_size} exceeds the {per_process_train} train examples "
        f"each of the {jax.process_count()} processes reads; lower config.batch_size.")
  return steps


def to_device_layout(batch: Batch, num_devices: int) -> Batch:
  """``[n, ...]`` → ``[num_devices, n // num_devices, ...]`` for every key."""
  return {k: v.reshape((num_devices, -1) + v.shape[1:]) for k, v in batch.items()}


def element_spec_of(arrays: Dict[str, np.ndarray]) -> Dict[str, jax.ShapeDtypeStruct]:
  """One example's shape and dtype per key of equally long arrays ``[n, ...]``."""
  return {k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in arrays.items()}
