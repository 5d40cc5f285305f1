"""Any prepared TFDS translation dataset → length-bucketed token batches; never downloads.

A TFDS translation dataset (features ``tfds.features.Translation``, e.g.
``wmt14_translate/de-en``) has one text per language. The source language and the target
language come from ``config.dataset.source_language``/``target_language``, else from the
builder config's ``language_pair``, else from ``info.supervised_keys``.

Reading: the whole train split is read once (in the prepared files' fixed order), tokenized
(``tokenizers.build_tokenizer``; a SentencePiece model is trained from the split's first
sentences the first time) and kept in memory as ragged id arrays. A pair is dropped when its
source or its target, with EOS, is longer than ``config.dataset.max_length`` tokens (as
Vaswani et al. filter; nothing is truncated). Evaluation examples are never dropped.

Batches: ``inputs`` int32 ``[num_devices, per_device, L]`` and ``targets`` int32
``[num_devices, per_device, L]``, tokens then EOS then PAD, where a training batch's L is
its length bucket: a pair's bucket is the smallest boundary at least as long as its longer
side with EOS. The boundaries (``config.dataset.bucket_boundaries``) default to the powers
of two from 8 below ``max_length``, then ``max_length`` itself (8, 16, ..., 128, 256 for
256), so training compiles a handful of shapes. A batch holds ``config.batch_size`` pairs
of one bucket.

Determinism: epoch e permutes each bucket with ``np.random.default_rng([seed, e])``, cuts it
into whole batches (each bucket's remainder is dropped for that epoch) and shuffles the
batches of all buckets with the same generator, so the batch at step s is a pure function
of (config, s) and a resumed run sees exactly the batches of an uninterrupted one. Every
process plans the same global batches and takes its own rows of each, so all processes step
through the same shapes.

Evaluation: every pair of the split once, in order, padded and masked
(``padded_eval.ArrayEvalBatches``); inputs and targets are both padded to one length per
split: its longest side with EOS, rounded up to a multiple of 8 (also beyond
``max_length``, so decoding has at least the longest reference's length). References for BLEU
are the detokenized targets (``tokenizer.decode`` of the ``targets`` rows);
``TranslationSource.split_texts`` gives the raw texts in the same order.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import jax
import numpy as np
import tensorflow_datasets as tfds

from bagtricks.data.base import (Batch, DataError, DatasetInfo, per_process_batch_size,
                                 to_device_layout, with_dataset_defaults)
from bagtricks.data.padded_eval import ArrayEvalBatches
from bagtricks.data.tfds_images import prepared_builder, resolve_data_dir
from bagtricks.data.tokenizers import EOS_ID, TOKENIZER_DEFAULTS, build_tokenizer, encode_ragged

# Texts read from TFDS and tokenized per chunk, which bounds the memory of the Python strings.
_READ_CHUNK = 16384
# Evaluation pads to a multiple of this.
_EVAL_LENGTH_MULTIPLE = 8


def default_bucket_boundaries(max_length: int, smallest: int = 8) -> Tuple[int, ...]:
  """Powers of two from ``smallest`` below ``max_length``, then ``max_length``.

  For example ``(8, 16, 32, 64, 128, 256)`` for 256 and ``(8, 16, 32, 64, 100)`` for 100.
  """
  boundaries = []
  boundary = smallest
  while boundary < max_length:
    boundaries.append(boundary)
    boundary *= 2
  return tuple(boundaries) + (max_length,)


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class RaggedTokens:
  """Variable-length token sequences in one flat array.

  Attributes:
    ids: every sequence's ids back to back, ``[total]`` (uint16 when the vocabulary fits).
    offsets: sequence i is ``ids[offsets[i]:offsets[i + 1]]``, int64 ``[n + 1]``.
  """
  ids: np.ndarray
  offsets: np.ndarray

  @property
  def lengths(self) -> np.ndarray:
    """Tokens per sequence, without EOS, ``[n]``."""
    return np.diff(self.offsets)

  def __len__(self) -> int:
    return len(self.offsets) - 1

  def select(self, keep: np.ndarray) -> "RaggedTokens":
    """The sequences where ``keep`` (bool ``[n]``) holds, in order."""
    lengths = self.lengths[keep]
    ids = self.ids[np.repeat(keep, self.lengths)]
    return RaggedTokens(ids, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))

  def padded(self, rows: np.ndarray, length: int) -> np.ndarray:
    """Sequences ``rows`` as int32 ``[len(rows), length]``: tokens, EOS, then PAD (0).

    Every selected sequence must be shorter than ``length``.
    """
    lengths = self.lengths[rows]
    out = np.zeros((len(rows), length), np.int32)
    row_of_token = np.repeat(np.arange(len(rows)), lengths)
    column = np.arange(len(row_of_token)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[row_of_token, column] = self.ids[_flat_positions(self.offsets[rows], lengths)]
    out[np.arange(len(rows)), lengths] = EOS_ID
    return out


def _flat_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """``concatenate([arange(s, s + l) for s, l in zip(starts, lengths)])``, vectorized."""
  within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
  return np.repeat(starts, lengths) + within


def _concatenate(parts: List[Tuple[np.ndarray, np.ndarray]], dtype) -> RaggedTokens:
  ids = np.concatenate([p[0] for p in parts]).astype(dtype) if parts else np.zeros(0, dtype)
  lengths = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
  return RaggedTokens(ids, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


@dataclasses.dataclass(frozen=True)
class TokenizedPairs:
  """Sentence pairs of one split as token ids (and, when kept, their texts).

  Attributes:
    sources: the source-language sequences.
    targets: the target-language sequences.
    texts: ``(source texts, target texts)`` in the same order, or ``None``.
  """
  sources: RaggedTokens
  targets: RaggedTokens
  texts: Optional[Tuple[Tuple[str, ...], Tuple[str, ...]]] = None

  def __len__(self) -> int:
    return len(self.sources)

  def longest(self) -> np.ndarray:
    """Per pair, the longer side's length with EOS, ``[n]``."""
    return np.maximum(self.sources.lengths, self.targets.lengths) + 1


def is_translation_dataset(config) -> bool:
  """Whether ``config.dataset.name`` is a TFDS dataset of ``Translation`` features.

  Builds the dataset's builder (no data is read); a name TFDS does not know is not one.
  """
  dc = with_dataset_defaults(config).dataset
  try:
    builder = tfds.builder(dc.name, data_dir=resolve_data_dir(dc.data_dir))
    return isinstance(builder.info.features, tfds.features.Translation)
  except Exception:  # pylint: disable=broad-except  # TFDS raises several types.
    return False


class TranslationSource:
  """A ``Source`` over a prepared TFDS translation dataset.

  Args:
    config: the run config. Reads ``seed``, ``batch_size``, ``eval_batch_size`` and
      ``config.dataset``: ``name``, ``data_dir`` (default TFDS's), ``train_split``,
      ``eval_split``, ``source_language``/``target_language`` (default the dataset's pair),
      ``max_length`` (default 256), ``bucket_boundaries`` (default
      ``default_bucket_boundaries(max_length)``), and the tokenizer's fields
      (``tokenizers.build_tokenizer``: ``tokenizer``, ``vocab_size``, ...).
    known_names: the registered dataset names, for the unknown-dataset message.

  Attributes:
    builder: the prepared ``tfds.core.DatasetBuilder``.
    source_language: the language of ``inputs``.
    target_language: the language of ``targets``.
    bucket_boundaries: the training batch lengths, increasing, the last ``max_length``.

  Raises:
    DataError: the dataset is unknown, not prepared or not a translation dataset, a split or
      language does not exist, or the bucket boundaries are invalid.
  """

  # The languages: the dataset's pair; buckets: default_bucket_boundaries(max_length); the
  # tokenizer's fields as `tokenizers.build_tokenizer` reads them.
  config_defaults = {"max_length": 256, "bucket_boundaries": None, "source_language": None,
                     "target_language": None, **TOKENIZER_DEFAULTS}

  def __init__(self, config, known_names: Sequence[str] = ()):
    config = with_dataset_defaults(config, self.config_defaults)
    self.config = config
    dc = config.dataset
    name = dc.name
    builder = prepared_builder(config, known_names)
    features = builder.info.features
    if not isinstance(features, tfds.features.Translation):
      raise DataError(f"config.dataset.name={name!r} is not a translation dataset: its "
                      f"features are {type(features).__name__}, not Translation.")
    self.builder = builder
    self.source_language, self.target_language = self._language_pair(features)
    self.max_length = dc.max_length
    boundaries = tuple(dc.bucket_boundaries or default_bucket_boundaries(self.max_length))
    if boundaries[-1] < self.max_length:
      boundaries += (self.max_length,)
    if any(b <= a for a, b in zip(boundaries, boundaries[1:])) or boundaries[0] < 2 or (
        boundaries[-1] > self.max_length):
      raise DataError(f"config.dataset.bucket_boundaries={boundaries} must increase from at "
                      f"least 2 up to max_length={self.max_length}.")
    self.bucket_boundaries = boundaries
    self._tokenizer = None
    self._train: Optional[TokenizedPairs] = None
    self._buckets: Optional[List[np.ndarray]] = None
    self._eval: Dict[str, Tuple[TokenizedPairs, Dict[str, np.ndarray]]] = {}

  def _language_pair(self, features) -> Tuple[str, str]:
    dc = self.config.dataset
    builder_config = self.builder.builder_config
    pair = getattr(builder_config, "language_pair", None) if builder_config else None
    pair = pair or self.builder.info.supervised_keys or tuple(features.languages)
    source = dc.source_language or pair[0]
    target = dc.target_language or pair[1]
    languages = tuple(features.languages)
    for field, language in (("source_language", source), ("target_language", target)):
      if language not in languages:
        raise DataError(f"config.dataset.{field}={language!r} is not a language of "
                        f"{dc.name!r}; it has {languages}.")
    if source == target:
      raise DataError(f"config.dataset.source_language and target_language are both "
                      f"{source!r}; choose two of {languages}.")
    return source, target

  # ----------------------------------------------------------------------------------------
  # Reading and tokenizing.

  def _read_texts(self, split: str) -> Iterator[Tuple[List[str], List[str]]]:
    """The split's (source texts, target texts) in chunks, in the prepared files' order."""
    ds = self.builder.as_dataset(split=split, shuffle_files=False,
                                 read_config=tfds.ReadConfig(try_autocache=False))
    source, target = self.source_language, self.target_language
    ds = ds.map(lambda ex: (ex[source], ex[target])).batch(_READ_CHUNK).prefetch(2)
    for sources, targets in tfds.as_numpy(ds):
      yield ([t.decode("utf-8") for t in sources], [t.decode("utf-8") for t in targets])

  def _training_sentences(self) -> Iterator[str]:
    # Both languages alternately, for a vocabulary shared by source and target.
    for sources, targets in self._read_texts(self.config.dataset.train_split):
      for source, target in zip(sources, targets):
        yield source
        yield target

  @property
  def tokenizer(self):
    """The tokenizer (a SentencePiece model is trained or read back on first use)."""
    if self._tokenizer is None:
      self._tokenizer = build_tokenizer(self.config, self._training_sentences())
    return self._tokenizer

  def _tokenize(self, split: str, keep_texts: bool) -> TokenizedPairs:
    tokenizer = self.tokenizer
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
    sources, targets, source_texts, target_texts = [], [], [], []
    for source_chunk, target_chunk in self._read_texts(split):
      sources.append(encode_ragged(tokenizer, source_chunk))
      targets.append(encode_ragged(tokenizer, target_chunk))
      if keep_texts:
        source_texts.extend(source_chunk)
        target_texts.extend(target_chunk)
    texts = (tuple(source_texts), tuple(target_texts)) if keep_texts else None
    return TokenizedPairs(_concatenate(sources, dtype), _concatenate(targets, dtype), texts)

  def train_pairs(self) -> TokenizedPairs:
    """The train split's pairs that fit ``max_length``, tokenized (read once, then kept)."""
    if self._train is None:
      pairs = self._tokenize(self.config.dataset.train_split, keep_texts=False)
      keep = pairs.longest() <= self.max_length
      self._train = TokenizedPairs(pairs.sources.select(keep), pairs.targets.select(keep))
      bucket_of = np.searchsorted(np.asarray(self.bucket_boundaries), self._train.longest())
      self._buckets = [np.flatnonzero(bucket_of == b) for b in range(len(self.bucket_boundaries))]
    return self._train

  def bucket_sizes(self) -> Tuple[int, ...]:
    """Training pairs per bucket, one per ``bucket_boundaries`` entry."""
    self.train_pairs()
    return tuple(len(members) for members in self._buckets)

  # ----------------------------------------------------------------------------------------
  # The Source protocol.

  def _steps_per_epoch(self) -> int:
    batch = self.config.batch_size
    steps = sum(size // batch for size in self.bucket_sizes())
    if steps < 1:
      raise DataError(
          f"config.batch_size={batch} exceeds the training pairs of every length bucket of "
          f"{self.config.dataset.name!r} (bucket boundaries {self.bucket_boundaries}, sizes "
          f"{self.bucket_sizes()}); lower config.batch_size.")
    return steps

  def element_spec(self) -> Dict[str, jax.ShapeDtypeStruct]:
    """One example at the longest bucket: ``inputs`` and ``targets`` int32 ``[max_length]``."""
    return {key: jax.ShapeDtypeStruct((self.max_length,), np.int32)
            for key in ("inputs", "targets")}

  def info(self) -> DatasetInfo:
    """The run's ``DatasetInfo``; ``num_train_examples`` counts the pairs kept for training."""
    dc = self.config.dataset
    return DatasetInfo(
        name=dc.name,
        num_classes=None,
        num_train_examples=len(self.train_pairs()),
        num_eval_examples=self.builder.info.splits[dc.eval_split].num_examples,
        steps_per_epoch=self._steps_per_epoch(),
        input_key="inputs",
        element_spec=self.element_spec(),
        vocab_size=self.tokenizer.vocab_size,
        tokenizer=self.tokenizer,
    )

  def epoch_plan(self, epoch: int) -> List[Tuple[int, np.ndarray]]:
    """Epoch ``epoch``'s global batches in order: ``(bucket, pair indices [batch_size])``."""
    config = self.config
    self.train_pairs()
    rng = np.random.default_rng([config.seed, epoch])
    batches = []
    for bucket, members in enumerate(self._buckets):
      order = rng.permutation(members)
      for start in range(0, len(order) - config.batch_size + 1, config.batch_size):
        batches.append((bucket, order[start:start + config.batch_size]))
    return [batches[i] for i in rng.permutation(len(batches))]

  def train_batches(self, start_step: int, num_devices: int) -> Iterator[Batch]:
    """Endless training batches starting at ``start_step``.

    Yields:
      ``{'inputs', 'targets'}`` int32 ``[num_devices, per_device, L]``, L the batch's bucket
      boundary.
    """
    pairs = self.train_pairs()
    batch = per_process_batch_size(self.config.batch_size)
    first = jax.process_index() * batch
    epoch, offset = divmod(start_step, self._steps_per_epoch())
    while True:
      for bucket, indices in self.epoch_plan(epoch)[offset:]:
        mine = indices[first:first + batch]
        length = self.bucket_boundaries[bucket]
        yield to_device_layout({"inputs": pairs.sources.padded(mine, length),
                                "targets": pairs.targets.padded(mine, length)}, num_devices)
      epoch, offset = epoch + 1, 0

  def _eval_split(self, split: str) -> Tuple[TokenizedPairs, Dict[str, np.ndarray]]:
    if split not in self._eval:
      if split not in self.builder.info.splits:
        raise DataError(f"split {split!r} does not exist in {self.config.dataset.name!r}; it "
                        f"has {sorted(self.builder.info.splits.keys())}.")
      pairs = self._tokenize(split, keep_texts=True)
      rows = np.arange(len(pairs))
      length = _round_up(int(pairs.longest().max(initial=1)), _EVAL_LENGTH_MULTIPLE)
      arrays = {"inputs": pairs.sources.padded(rows, length),
                "targets": pairs.targets.padded(rows, length)}
      self._eval[split] = (pairs, arrays)
    return self._eval[split]

  def eval_batches(self, num_devices: int, split: Optional[str] = None) -> ArrayEvalBatches:
    """Every pair of ``split`` (default ``config.dataset.eval_split``) once, padded, masked.

    Returns:
      ``ArrayEvalBatches`` of ``{'inputs', 'targets'}`` int32 ``[num_devices, per_device,
      L]`` (L: the split's longest side with EOS, rounded up to a multiple of 8) and
      ``mask`` float32 ``[num_devices, per_device]``.
    """
    split = split or self.config.dataset.eval_split
    _, arrays = self._eval_split(split)
    return ArrayEvalBatches(arrays, per_process_batch_size(self.config.eval_batch_size),
                            num_devices)

  def split_texts(self, split: Optional[str] = None) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """``(source texts, target texts)`` of ``split`` in evaluation order (on one process).

    The raw dataset texts; BLEU against the detokenized ``targets`` rows differs from BLEU
    against these only where the tokenizer does not round-trip (SentencePiece's
    normalization and unknown characters; bytes round-trip exactly).
    """
    pairs, _ = self._eval_split(split or self.config.dataset.eval_split)
    return pairs.texts
