"""Exact evaluation: every example once, in fixed-size device batches, padding masked.

Evaluation reads each process's share of the split once, in order, pads the last batch and
marks padding with ``mask == 0``, so every example is counted exactly once. Every process
yields the same number of batches (fully masked padding batches where its share is smaller),
because each batch is consumed by a collective step.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, Iterator, Sequence

import jax
import numpy as np

from bagtricks.data.base import Batch, element_spec_of, to_device_layout


def pad_batch(batch: Batch, size: int) -> Batch:
  """Pads every entry of ``batch`` with zeros to ``size`` rows and adds ``mask``.

  Args:
    batch: equally long arrays ``[n, ...]``, ``n <= size``, under any keys.
    size: rows of the padded batch.

  Returns:
    The entries shaped ``[size, ...]`` (same dtypes) and ``mask`` float32 ``[size]``: 1.0 for
    the ``n`` real rows, 0.0 for padding.
  """
  lengths = {k: v.shape[0] for k, v in batch.items()}
  if len(set(lengths.values())) != 1:
    raise ValueError(f"pad_batch needs equally long entries; got {lengths}.")
  n = next(iter(lengths.values()))
  if n > size:
    raise ValueError(f"pad_batch: {n} rows do not fit in {size}.")
  out = {k: np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)])
         for k, v in batch.items()}
  out["mask"] = (np.arange(size) < n).astype(np.float32)
  return out


def empty_batch(element_spec: Dict[str, jax.ShapeDtypeStruct]) -> Batch:
  """A batch of zero examples with the keys, shapes and dtypes of ``element_spec``."""
  return {k: np.zeros((0,) + tuple(s.shape), s.dtype) for k, s in element_spec.items()}


def num_eval_batches(shard_sizes: Sequence[int], batch_size: int) -> int:
  """Batches every process yields: enough for the largest process's share."""
  return math.ceil(max(shard_sizes) / batch_size)


class PaddedEvalBatches:
  """A process's raw eval batches, padded to a fixed size and count, in device layout.

  Args:
    read: called once per iteration; returns this process's examples in order as batches of
      at most ``batch_size`` rows (only the last one shorter), at most ``num_batches`` of them.
    num_batches: batches to yield on every process; missing ones are fully masked padding.
    batch_size: rows per process and batch (``per_process_batch_size(eval_batch_size)``).
    num_devices: local devices.
    element_spec: one example per key, to build the padding batches.

  Iterating yields the ``read`` batches' keys plus ``mask``, shaped
  ``[num_devices, batch_size // num_devices, ...]``.
  """

  def __init__(self, read: Callable[[], Iterable[Batch]], num_batches: int, batch_size: int,
               num_devices: int, element_spec: Dict[str, jax.ShapeDtypeStruct]):
    self._read = read
    self.num_batches = num_batches
    self.batch_size = batch_size
    self.num_devices = num_devices
    self.element_spec = element_spec

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[Batch]:
    produced = 0
    for batch in self._read():
      produced += 1
      yield to_device_layout(pad_batch(batch, self.batch_size), self.num_devices)
    empty = empty_batch(self.element_spec)
    for _ in range(self.num_batches - produced):
      yield to_device_layout(pad_batch(empty, self.batch_size), self.num_devices)


class ArrayEvalBatches(PaddedEvalBatches):
  """This process's share of in-memory arrays, every row once, padded and masked.

  The rows are split over processes with ``np.array_split`` (contiguous, in order).

  Args:
    arrays: the split, equally long arrays ``[n, ...]`` under any keys.
    batch_size: rows per process and batch.
    num_devices: local devices.

  Iterating yields ``arrays``' keys plus ``mask``, shaped ``[num_devices, per_device, ...]``.
  """

  def __init__(self, arrays: Dict[str, np.ndarray], batch_size: int, num_devices: int):
    n = len(next(iter(arrays.values())))
    shards = np.array_split(np.arange(n), jax.process_count())
    mine = shards[jax.process_index()]
    num_batches = num_eval_batches([len(s) for s in shards], batch_size)

    def read() -> Iterator[Batch]:
      for start in range(0, len(mine), batch_size):
        idx = mine[start:start + batch_size]
        yield {k: v[idx] for k, v in arrays.items()}

    super().__init__(read, num_batches, batch_size, num_devices, element_spec_of(arrays))
