"""In-memory datasets: splits of equally long NumPy arrays → device-shaped batches.

Any layout works, e.g. ``{'features': float32 [n, d], 'label': int32 [n]}``, ``{'tokens':
int32 [n, L], 'label': int32 [n]}`` or ``{'features': float32 [n, d], 'target': float32 [n]}``.

Determinism: epoch e of the train split is the permutation
``np.random.default_rng([seed, e]).permutation(n)``; process p takes the p-th of
``process_count`` equal slices of it (the remainder of n is dropped) and cuts it into batches
(the remainder of the slice is dropped). Hence the batch at step s is a pure function of
(config, s), and a run resumed at step s starts right there, without replaying the epoch.

Evaluation splits the rows over processes with ``np.array_split`` and reads each process's
share once, in order, padded and masked (``padded_eval.ArrayEvalBatches``).
"""

from __future__ import annotations

from typing import Dict, Iterator, Optional, Sequence

import jax
import numpy as np

from bagtricks.data.base import (Batch, DataError, DatasetInfo, element_spec_of,
                                 per_process_batch_size, steps_per_epoch, to_device_layout)
from bagtricks.data.padded_eval import ArrayEvalBatches


class ArraySource:
  """A ``Source`` over splits held in memory.

  Args:
    config: the run config (reads ``seed``, ``batch_size``, ``eval_batch_size``,
      ``dataset.name``, ``dataset.train_split`` and ``dataset.eval_split``).
    splits: ``{split name: {key: array [n, ...]}}``; within a split every array has the same
      length n, and every split has the same keys.
    input_key: the key the model reads, e.g. ``'features'`` or ``'tokens'``.
    num_classes: number of label classes; ``None`` for regression targets.
    class_names: one name per class, if known.

  Raises:
    DataError: the configured train or eval split is missing, or a split's arrays differ in
      length.
  """

  def __init__(self, config, splits: Dict[str, Dict[str, np.ndarray]], input_key: str,
               num_classes: Optional[int] = None, class_names: Optional[Sequence[str]] = None):
    self.config = config
    name = config.dataset.name
    self.splits = {s: {k: np.asarray(v) for k, v in arrays.items()}
                   for s, arrays in splits.items()}
    for split, arrays in self.splits.items():
      lengths = {k: len(v) for k, v in arrays.items()}
      if len(set(lengths.values())) != 1:
        raise DataError(f"split {split!r} of {name!r} has arrays of different lengths: "
                        f"{lengths}.")
    for split in (config.dataset.train_split, config.dataset.eval_split):
      if split not in self.splits:
        raise DataError(f"config.dataset split {split!r} does not exist in {name!r}; it has "
                        f"{sorted(self.splits)}.")
    train = self.splits[config.dataset.train_split]
    if input_key not in train:
      raise DataError(f"input_key {input_key!r} is not an entry of {name!r}; it has "
                      f"{sorted(train)}.")
    self.input_key = input_key
    self.num_classes = num_classes
    self.class_names = tuple(class_names) if class_names is not None else None

  def num_examples(self, split: str) -> int:
    return len(next(iter(self.splits[split].values())))

  def _per_process_train(self) -> int:
    return self.num_examples(self.config.dataset.train_split) // jax.process_count()

  def info(self) -> DatasetInfo:
    config = self.config
    return DatasetInfo(
        name=config.dataset.name,
        num_classes=self.num_classes,
        num_train_examples=self.num_examples(config.dataset.train_split),
        num_eval_examples=self.num_examples(config.dataset.eval_split),
        steps_per_epoch=steps_per_epoch(self._per_process_train(), config.batch_size),
        input_key=self.input_key,
        element_spec=element_spec_of(self.splits[config.dataset.train_split]),
        class_names=self.class_names,
    )

  def train_batches(self, start_step: int, num_devices: int) -> Iterator[Batch]:
    """Endless training batches starting at ``start_step``.

    Yields:
      Every key of the train split, shaped ``[num_devices, per_device, ...]`` with its dtype.
    """
    config = self.config
    arrays = self.splits[config.dataset.train_split]
    n = self.num_examples(config.dataset.train_split)
    per_process = self._per_process_train()
    batch = per_process_batch_size(config.batch_size)
    steps = steps_per_epoch(per_process, config.batch_size)
    epoch, offset = divmod(start_step, steps)
    first = jax.process_index() * per_process
    while True:
      order = np.random.default_rng([config.seed, epoch]).permutation(n)
      mine = order[first:first + per_process]
      for i in range(offset, steps):
        idx = mine[i * batch:(i + 1) * batch]
        yield to_device_layout({k: v[idx] for k, v in arrays.items()}, num_devices)
      epoch, offset = epoch + 1, 0

  def eval_batches(self, num_devices: int, split: Optional[str] = None) -> ArrayEvalBatches:
    """Every row of ``split`` (default ``config.dataset.eval_split``) once, padded and masked.

    Returns:
      ``ArrayEvalBatches`` yielding the split's keys plus ``mask``, shaped
      ``[num_devices, per_device, ...]``.
    """
    split = split or self.config.dataset.eval_split
    if split not in self.splits:
      raise DataError(f"split {split!r} does not exist in {self.config.dataset.name!r}; it "
                      f"has {sorted(self.splits)}.")
    return ArrayEvalBatches(self.splits[split],
                            per_process_batch_size(self.config.eval_batch_size), num_devices)
