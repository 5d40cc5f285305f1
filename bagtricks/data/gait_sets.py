"""The walkers' silhouette sequences as sets of frames (``config.dataset.name = 'gait_walkers'``).

The sequences of ``data.gait`` (every person in NM 1–6, BG 1–2 and CL 1–2 at each of
``views``) are drawn once per setting and cached as an ``.npz`` in the data dir. The last
``test_identities`` people are the test split, never trained on (CASIA-B's protocol: 74
training and 50 test people).

* Training batches are P×K, as GaitSet trains (Chao et al. 2019): P people
  (``classes_per_batch``) × K = batch / P sequences of each, every sequence a set of
  ``set_size`` of its frames drawn without replacement, all from
  ``np.random.default_rng([seed, step, process])``: a pure function of (config, step).
* The test split holds every test sequence once with ``eval_frames`` of its frames (0: all),
  the same frames in every run, and its ``person``, ``view``, ``condition`` and ``sequence``
  for the protocol (``gait_protocol.rank1_by_view``).

Batches are ``{'frames': float32 [..., frames, height, width] in {0, 1}, 'label': int32
(the person), ...}``; sets have a fixed size, so nothing recompiles.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Dict, Iterator, Sequence

import jax
import numpy as np

from bagtricks.data.arrays import ArraySource
from bagtricks.data.base import (Batch, checked_dataset_config, per_process_batch_size,
                                 to_device_layout)
from bagtricks.data.gait import CONDITIONS, META_KEYS, VIEWS, gait_sequences


def _cache_path(data_dir: str, settings: Dict) -> str:
  key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
  return os.path.join(data_dir, "gait_walkers", f"sequences_{key}.npz")


def walker_sequences(data_dir: str, identities: int, frames: int, height: int, width: int,
                     seed: int, views: Sequence[int]) -> Dict[str, np.ndarray]:
  """``gait_sequences(...)``, drawn once per setting and cached in ``data_dir``."""
  from bagtricks.data.bundled import _file_lock  # pylint: disable=import-outside-toplevel
  settings = {"identities": identities, "frames": frames, "height": height, "width": width,
              "seed": seed, "views": list(views), "version": 1}
  path = _cache_path(data_dir, settings)
  with _file_lock(path + ".lock"):
    if not os.path.exists(path):
      drawn = gait_sequences(identities, frames, height, width, seed, views)
      np.savez_compressed(path + ".tmp.npz", **drawn)
      os.replace(path + ".tmp.npz", path)
  with np.load(path) as stored:
    return {k: stored[k] for k in stored.files}


def chosen_frames(count: int, frames: int, set_size: int, rng: np.random.Generator
                  ) -> np.ndarray:
  """``[count, set_size]`` frame indices, each row ``set_size`` distinct frames of ``frames``."""
  return np.argsort(rng.random((count, frames)), axis=1)[:, :set_size]


def test_sets(frames: np.ndarray, count: int, seed: int) -> np.ndarray:
  """Test sequences ``[n, frames, H, W]`` cut to sets of ``count`` frames (0: all), the same
  frames in every run (drawn from ``np.random.default_rng([seed, 2])``)."""
  if not count:
    return frames
  picks = chosen_frames(len(frames), frames.shape[1], count, np.random.default_rng([seed, 2]))
  return np.take_along_axis(frames, picks[:, :, None, None], axis=1)


def _problems(dc, batch: int) -> list:
  problems = []
  for field in ("identities", "test_identities", "frames", "height", "width", "set_size",
                "classes_per_batch"):
    value = dc[field]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      problems.append(f"config.dataset.{field}={value!r} must be a positive integer.")
  if problems:
    return problems
  if dc.test_identities >= dc.identities - 1:
    problems.append(f"config.dataset.test_identities={dc.test_identities} must leave at least "
                    f"2 of the {dc.identities} identities for training.")
  if dc.set_size > dc.frames:
    problems.append(f"config.dataset.set_size={dc.set_size} asks more frames than the "
                    f"{dc.frames} of a sequence (config.dataset.frames); lower it.")
  if not isinstance(dc.eval_frames, int) or not 0 <= dc.eval_frames <= dc.frames:
    problems.append(f"config.dataset.eval_frames={dc.eval_frames!r} must be in 0..{dc.frames} "
                    "(config.dataset.frames; 0 = every frame).")
  views = tuple(dc.views)
  if (len(views) < 2 or len(set(views)) != len(views)
      or any(v not in VIEWS for v in views)):
    problems.append(f"config.dataset.views={views!r} must be at least 2 distinct views of "
                    f"{VIEWS} (degrees; the protocol leaves out the identical view).")
  train_people = dc.identities - dc.test_identities
  p = dc.classes_per_batch
  if batch % p or not 2 <= p <= train_people:
    problems.append(f"config.dataset.classes_per_batch={p} must be in 2..{train_people} (the "
                    f"training people) and divide the per-process batch of {batch} (P "
                    "people × K sequences); e.g. 8 for a batch of 64.")
  elif batch // p > sum(CONDITIONS.values()) * len(views):
    problems.append(f"config.batch_size / classes_per_batch = {batch // p} sequences of one "
                    f"person, and each walks {sum(CONDITIONS.values()) * len(views)}; "
                    "lower config.batch_size or raise classes_per_batch.")
  return problems


class GaitSource(ArraySource):
  """The walkers' sequences as P×K sets of frames (``gait_walkers``).

  Reads ``config.dataset`` fields ``identities``, ``test_identities``, ``frames`` (drawn per
  sequence), ``height``, ``width``, ``views``, ``generator_seed``, ``set_size`` (frames per
  training set), ``eval_frames`` (frames per test set, 0 = all) and ``classes_per_batch``
  (P); see ``config_defaults``.

  Raises:
    DataError: a field does not fit the data (checked before anything is drawn).
  """

  config_defaults = {"identities": 124, "test_identities": 50, "frames": 16, "height": 32,
                     "width": 22, "views": VIEWS, "generator_seed": 0, "set_size": 8,
                     "eval_frames": 0, "classes_per_batch": 8}

  def __init__(self, config):
    from bagtricks.data.tfds_images import resolve_data_dir  # pylint: disable=import-outside-toplevel
    config = checked_dataset_config(config, self.config_defaults, _problems)
    dc = config.dataset
    drawn = walker_sequences(resolve_data_dir(dc.data_dir), dc.identities, dc.frames,
                             dc.height, dc.width, dc.generator_seed, tuple(dc.views))
    test = drawn["person"] >= dc.identities - dc.test_identities
    self.set_size = dc.set_size
    self.classes_per_batch = dc.classes_per_batch
    splits = {}
    for split, rows in (("train", ~test), ("test", test)):
      frames = drawn["frames"][rows]
      if split == "test":
        frames = test_sets(frames, dc.eval_frames, dc.generator_seed)
      splits[split] = {"frames": (frames / 255.0).astype(np.float32),
                       "label": drawn["person"][rows].astype(np.int32),
                       **{k: drawn[k][rows].astype(np.int32) for k in META_KEYS}}
    train_people = dc.identities - dc.test_identities
    super().__init__(config, splits, input_key="frames", num_classes=train_people)
    labels = self.splits[config.dataset.train_split]["label"]
    self._by_person = [np.flatnonzero(labels == p) for p in range(train_people)]

  def info(self):
    """As ``ArraySource.info``, with training sets of ``set_size`` frames."""
    info = super().info()
    spec = dict(info.element_spec)
    frames = spec["frames"]
    spec["frames"] = jax.ShapeDtypeStruct((self.set_size,) + frames.shape[1:], frames.dtype)
    return dataclasses.replace(info, element_spec=spec)

  def train_batches(self, start_step: int, num_devices: int) -> Iterator[Batch]:
    """Endless P×K batches ``[num_devices, per_device, ...]`` starting at ``start_step``."""
    config = self.config
    arrays = self.splits[config.dataset.train_split]
    per_person = per_process_batch_size(config.batch_size) // self.classes_per_batch
    frames = arrays["frames"].shape[1]
    step = start_step
    while True:
      rng = np.random.default_rng([config.seed, step, jax.process_index()])
      people = rng.choice(len(self._by_person), self.classes_per_batch, replace=False)
      idx = np.concatenate([rng.choice(self._by_person[p], per_person, replace=False)
                            for p in people])
      picks = chosen_frames(len(idx), frames, self.set_size, rng)
      batch = {k: v[idx] for k, v in arrays.items()}
      batch["frames"] = np.take_along_axis(batch["frames"], picks[:, :, None, None], axis=1)
      yield to_device_layout(batch, num_devices)
      step += 1


GAIT_SOURCES = {"gait_walkers": GaitSource}
