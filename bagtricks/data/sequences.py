"""Synthetic sequence-to-sequence tasks, generated offline from a seed.

Four tasks over random symbol sequences, each a registered source named ``seq_<task>``:

  ``seq_copy``     the target is the input.
  ``seq_reverse``  the target is the input reversed.
  ``seq_sort``     the target is the input's symbols in ascending order.
  ``seq_add``      the input is two decimal numbers joined by ``+``, most significant digit
                   first (``"123+45"``); the target is their sum's digits, most significant
                   first, without leading zeros (``"168"``).

Token ids: ``PAD_ID = 0``, ``BOS_ID = 1``, ``EOS_ID = 2`` (``tokenizers.py``), then the
symbols: symbol k is id ``3 + k``. For copy, reverse and sort there are ``num_symbols``
symbols, shown as ``0-9a-zA-Z`` (space-separated numbers beyond 62 symbols), so
``vocab_size = 3 + num_symbols``. Addition has the digits 0-9 (ids 3..12) and ``+`` (id 13):
``vocab_size = 14`` whatever ``num_symbols`` says.

Lengths: for copy, reverse and sort the length is the number of symbols; for addition it is
the number of digits of each operand, drawn independently per operand (a multi-digit operand
never starts with 0). Training lengths are uniform over ``[min_length, max_train_length]``,
except for a fraction ``long_fraction`` uniform over ``(max_train_length, max_length]``; test
lengths are uniform over ``[min_length, max_length]``, so the test set holds lengths longer
than most training ones.

Layout: every example is padded to one fixed shape, so all batches have one shape.
``inputs`` are the tokens, EOS, then PAD, int32 ``[input_length]``; ``targets`` likewise,
int32 ``[target_length]`` (no BOS: the model shifts the targets right itself).

  task             input_length           target_length
  copy/reverse/sort max_length + 1         max_length + 1
  add              2 * max_length + 2     max_length + 2   (the carry digit, EOS)

Held out: an input belongs to the test side when a 64-bit hash of its padded token row falls
in 1 of ``HELD_OUT_HASH_BUCKETS`` buckets, and to the training side otherwise. Each split
draws examples from its own length distribution and keeps only those of its side, so no test
input ever occurs in the training split, for any seed or split size. Short inputs have few
possible values, so the test split may repeat some of them (and a length whose every input
falls on the training side never appears in the test split).

Determinism: split s of task t is drawn from ``np.random.default_rng([data_seed, t, s])``
(``data_seed``: ``config.dataset.data_seed``, by default ``config.seed``); generating 20,000
examples takes a few tens of milliseconds.

Example::

  >>> task = SequenceTask("add", max_train_length=3, max_length=4)
  >>> inputs, targets = task.examples(np.random.default_rng(0), np.array([[3, 2]]))
  >>> task.tokenizer.decode(inputs[0]), task.tokenizer.decode(targets[0])
  ('268+83', '351')
  >>> inputs[0].tolist(), targets[0].tolist()
  ([5, 9, 11, 13, 11, 6, 2, 0, 0, 0], [6, 8, 4, 2, 0, 0])
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

from bagtricks.data.arrays import ArraySource
from bagtricks.data.base import DataError, DatasetInfo, with_dataset_defaults
from bagtricks.data.tokenizers import EOS_ID, NUM_SPECIAL_IDS, PAD_ID, strip_special_ids

TASKS = ("copy", "reverse", "sort", "add")
# The source name of each task, e.g. 'seq_reverse'.
SEQUENCE_SOURCE_PREFIX = "seq_"
SPLITS = ("train", "test")
# An input is held out for the test split when its hash falls in 1 of this many buckets.
HELD_OUT_HASH_BUCKETS = 16
# Single-character names of the first 62 symbols; more symbols are written as numbers.
_SYMBOL_CHARACTERS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_PLUS = "+"
# Rejection rounds before giving up on a split whose side of the hash holds too few inputs.
_MAX_ROUNDS = 100


class SymbolTokenizer:
  """Symbol k ↔ id ``3 + k``; text is the symbols' names joined by ``separator``.

  Args:
    symbols: one name per symbol, e.g. ``'0123456789+'`` or ``['12', '13']``.
    separator: between names in text; ``''`` when every name is one character.
  """

  def __init__(self, symbols: Sequence[str], separator: str = ""):
    self.symbols = tuple(symbols)
    self.separator = separator
    self._ids = {name: NUM_SPECIAL_IDS + k for k, name in enumerate(self.symbols)}
    self.vocab_size = NUM_SPECIAL_IDS + len(self.symbols)

  def encode(self, text: str) -> List[int]:
    """The ids of the symbols in ``text`` (no special ids).

    Raises:
      ValueError: ``text`` holds a name that is not a symbol.
    """
    names = text.split(self.separator) if self.separator else list(text)
    try:
      return [self._ids[name] for name in names if name]
    except KeyError as e:
      raise ValueError(f"{e.args[0]!r} is not one of the symbols {self.symbols}.") from None

  def decode(self, ids: Iterable[int]) -> str:
    """The symbols of ``ids`` up to the first EOS; ids beyond the vocabulary show as ``?``."""
    return self.separator.join(
        self.symbols[t - NUM_SPECIAL_IDS] if t < self.vocab_size else "?"
        for t in strip_special_ids(ids))

  def __repr__(self) -> str:
    return f"SymbolTokenizer({''.join(self.symbols)!r})" if not self.separator else (
        f"SymbolTokenizer({len(self.symbols)} symbols)")


def _row_hashes(rows: np.ndarray) -> np.ndarray:
  """A 64-bit hash per row of ``rows`` ``[n, width]`` (FNV-1a over tokens, then splitmix64)."""
  hashes = np.full(len(rows), 0xCBF29CE484222325, np.uint64)
  for column in rows.T.astype(np.uint64):
    hashes = (hashes ^ column) * np.uint64(0x100000001B3)
  # The final mix spreads every token over every bit, so the bucket (hash modulo) depends on
  # the whole row.
  hashes = (hashes ^ (hashes >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  hashes = (hashes ^ (hashes >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return hashes ^ (hashes >> np.uint64(31))


def is_held_out(inputs: np.ndarray) -> np.ndarray:
  """Whether each padded input row ``[n, input_length]`` belongs to the test side (bool [n])."""
  return _row_hashes(inputs) % np.uint64(HELD_OUT_HASH_BUCKETS) == 0


def _left_align(pieces: Sequence[Tuple[np.ndarray, np.ndarray]], width: int) -> np.ndarray:
  """Concatenates each row's valid prefix of every piece, left-aligned, zero-padded.

  Args:
    pieces: ``(tokens [n, w], lengths [n])`` pairs; row i contributes ``tokens[i, :lengths[i]]``.
    width: columns of the result (at least the longest concatenation).

  Returns:
    int32 ``[n, width]``.
  """
  n = len(pieces[0][0])
  out = np.zeros((n, width), np.int32)
  rows = np.broadcast_to(np.arange(n)[:, None], (n, width))
  offset = np.zeros(n, np.int64)
  for tokens, lengths in pieces:
    w = tokens.shape[1]
    valid = np.arange(w) < lengths[:, None]
    columns = offset[:, None] + np.arange(w)
    out[rows[:, :w][valid], columns[valid]] = tokens[valid]
    offset = offset + lengths
  return out


def _reverse_prefixes(tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """Row i's first ``lengths[i]`` entries reversed, the rest zero (``[n, w]``)."""
  w = tokens.shape[1]
  source = np.clip(lengths[:, None] - 1 - np.arange(w), 0, w - 1)
  reversed_tokens = np.take_along_axis(tokens, source, axis=1)
  return np.where(np.arange(w) < lengths[:, None], reversed_tokens, 0)


@dataclasses.dataclass(frozen=True)
class SequenceTask:
  """One synthetic task with its lengths and alphabet.

  Attributes:
    task: one of ``TASKS``.
    num_symbols: alphabet size of copy, reverse and sort (ignored by add: digits and '+').
    min_length: shortest length (symbols, or digits per operand for add).
    max_train_length: most training lengths are at most this.
    max_length: the longest length, of the test split and the long training examples.
    long_fraction: fraction of training examples longer than ``max_train_length``.
  """
  task: str
  num_symbols: int = 10
  min_length: int = 1
  max_train_length: int = 16
  max_length: int = 24
  long_fraction: float = 0.1

  def __post_init__(self):
    if self.task not in TASKS:
      raise DataError(f"unknown sequence task {self.task!r}; the tasks are {TASKS}.")
    if not 1 <= self.min_length <= self.max_train_length <= self.max_length:
      raise DataError(
          f"the sequence lengths need 1 <= config.dataset.min_length ({self.min_length}) <= "
          f"max_train_length ({self.max_train_length}) <= max_length ({self.max_length}).")
    if self.task != "add" and self.num_symbols < 2:
      raise DataError(f"config.dataset.num_symbols={self.num_symbols} must be at least 2.")
    if not 0.0 <= self.long_fraction <= 1.0:
      raise DataError(f"config.dataset.long_fraction={self.long_fraction} must be in [0, 1].")

  @classmethod
  def from_config(cls, config) -> "SequenceTask":
    """The task of ``config.dataset`` (``name`` ``'seq_<task>'`` and the length fields)."""
    dc = with_dataset_defaults(config, SequenceTaskSource.config_defaults).dataset
    name = dc.name
    task = name[len(SEQUENCE_SOURCE_PREFIX):] if name.startswith(SEQUENCE_SOURCE_PREFIX) else name
    if task not in TASKS:
      raise DataError(f"config.dataset.name={name!r} is not a sequence task; use one of "
                      f"{tuple(SEQUENCE_SOURCE_PREFIX + t for t in TASKS)}.")
    return cls(task=task, num_symbols=dc.num_symbols, min_length=dc.min_length,
               max_train_length=dc.max_train_length, max_length=dc.max_length,
               long_fraction=dc.long_fraction)

  @property
  def tokenizer(self) -> SymbolTokenizer:
    if self.task == "add":
      return SymbolTokenizer("0123456789" + _PLUS)
    if self.num_symbols <= len(_SYMBOL_CHARACTERS):
      return SymbolTokenizer(_SYMBOL_CHARACTERS[:self.num_symbols])
    return SymbolTokenizer([str(k) for k in range(self.num_symbols)], separator=" ")

  @property
  def vocab_size(self) -> int:
    """Ids ``0 .. vocab_size - 1``: PAD, BOS, EOS and the symbols."""
    return self.tokenizer.vocab_size

  @property
  def input_length(self) -> int:
    """Padded input length: the longest input and its EOS."""
    return 2 * self.max_length + 2 if self.task == "add" else self.max_length + 1

  @property
  def target_length(self) -> int:
    """Padded target length: the longest target and its EOS."""
    return self.max_length + 2 if self.task == "add" else self.max_length + 1

  def sample_lengths(self, rng: np.random.Generator, num_examples: int,
                     split: str) -> np.ndarray:
    """Lengths of ``num_examples`` examples of ``split`` (``[n]``, or ``[n, 2]`` for add)."""
    shape = (num_examples, 2) if self.task == "add" else (num_examples,)
    if split != "train":
      return rng.integers(self.min_length, self.max_length + 1, shape)
    lengths = rng.integers(self.min_length, self.max_train_length + 1, shape)
    if self.max_length > self.max_train_length and self.long_fraction > 0:
      long_lengths = rng.integers(self.max_train_length + 1, self.max_length + 1, shape)
      lengths = np.where(rng.random(shape) < self.long_fraction, long_lengths, lengths)
    return lengths

  def examples(self, rng: np.random.Generator,
               lengths: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Random examples of the given lengths.

    Args:
      rng: draws the symbols.
      lengths: ``[n]`` symbols per example, or ``[n, 2]`` digits per operand for add; each
        within ``[1, max_length]``.

    Returns:
      ``(inputs int32 [n, input_length], targets int32 [n, target_length])``, each the
      tokens, EOS, then PAD.
    """
    lengths = np.asarray(lengths, np.int64)
    n, width = len(lengths), self.max_length
    eos = (np.full((n, 1), EOS_ID, np.int32), np.ones(n, np.int64))
    if self.task == "add":
      return self._addition(rng, lengths, eos)
    symbols = rng.integers(0, self.num_symbols, (n, width)).astype(np.int32) + NUM_SPECIAL_IDS
    valid = np.arange(width) < lengths[:, None]
    symbols = np.where(valid, symbols, PAD_ID)
    if self.task == "copy":
      answer = symbols
    elif self.task == "reverse":
      answer = _reverse_prefixes(symbols, lengths)
    else:  # sort: the padding sorts last.
      answer = np.sort(np.where(valid, symbols, np.iinfo(np.int32).max), axis=1)
      answer = np.where(valid, answer, PAD_ID).astype(np.int32)
    inputs = _left_align([(symbols, lengths), eos], self.input_length)
    targets = _left_align([(answer, lengths), eos], self.target_length)
    return inputs, targets

  def _addition(self, rng, lengths, eos):
    n, width = len(lengths), self.max_length
    # Operand digits least significant first, zero beyond each operand's length; the most
    # significant digit of a multi-digit operand is 1-9.
    digits = rng.integers(0, 10, (n, 2, width))
    top = lengths - 1
    leading = rng.integers(1, 10, (n, 2))
    rows, operands = np.meshgrid(np.arange(n), np.arange(2), indexing="ij")
    digits[rows, operands, top] = np.where(lengths > 1, leading, digits[rows, operands, top])
    digits = np.where(np.arange(width) < lengths[..., None], digits, 0)
    # Schoolbook addition, column by column, for numbers beyond int64 (24 digits and more).
    total = np.zeros((n, width + 1), np.int64)
    carry = np.zeros(n, np.int64)
    for column in range(width):
      column_sum = digits[:, 0, column] + digits[:, 1, column] + carry
      total[:, column], carry = column_sum % 10, column_sum // 10
    total[:, width] = carry
    nonzero = total != 0
    total_length = np.where(nonzero.any(1), width + 1 - np.argmax(nonzero[:, ::-1], 1), 1)

    def to_ids(digit_rows):
      return (digit_rows + NUM_SPECIAL_IDS).astype(np.int32)

    first = to_ids(_reverse_prefixes(digits[:, 0], lengths[:, 0]))
    second = to_ids(_reverse_prefixes(digits[:, 1], lengths[:, 1]))
    plus = (np.full((n, 1), NUM_SPECIAL_IDS + 10, np.int32), np.ones(n, np.int64))
    inputs = _left_align([(first, lengths[:, 0]), plus, (second, lengths[:, 1]), eos],
                         self.input_length)
    answer = to_ids(_reverse_prefixes(total, total_length))
    targets = _left_align([(answer, total_length), eos], self.target_length)
    return inputs, targets

  def make_split(self, split: str, num_examples: int, seed: int) -> Dict[str, np.ndarray]:
    """``num_examples`` examples of ``split``, all on its side of the held-out hash.

    Args:
      split: ``'train'`` or ``'test'``.
      num_examples: examples to draw.
      seed: the data seed.

    Returns:
      ``{'inputs': int32 [n, input_length], 'targets': int32 [n, target_length]}``.

    Raises:
      DataError: the split's side of the hash holds too few inputs to draw from (tiny
        alphabets and lengths).
    """
    rng = np.random.default_rng([seed, TASKS.index(self.task), SPLITS.index(split)])
    held_out = split != "train"
    # The expected share of candidates on this split's side of the hash.
    acceptance = 1 / HELD_OUT_HASH_BUCKETS if held_out else 1 - 1 / HELD_OUT_HASH_BUCKETS
    kept_inputs, kept_targets, have = [], [], 0
    for _ in range(_MAX_ROUNDS):
      if have >= num_examples:
        break
      draws = math.ceil((num_examples - have) / acceptance * 1.1) + 16
      inputs, targets = self.examples(rng, self.sample_lengths(rng, draws, split))
      keep = is_held_out(inputs) == held_out
      kept_inputs.append(inputs[keep])
      kept_targets.append(targets[keep])
      have += int(keep.sum())
    if have < num_examples:
      raise DataError(
          f"the {split} split of seq_{self.task} found only {have} of {num_examples} examples "
          f"whose inputs are on its side of the held-out hash; raise config.dataset.max_length "
          f"or num_symbols.")
    return {"inputs": np.concatenate(kept_inputs)[:num_examples],
            "targets": np.concatenate(kept_targets)[:num_examples]}


class SequenceTaskSource(ArraySource):
  """A synthetic task (``config.dataset.name = 'seq_<task>'``) as an ``ArraySource``.

  Reads ``config.dataset``: ``name``, ``num_symbols`` (default 10), ``min_length`` (1),
  ``max_train_length`` (16), ``max_length`` (24), ``long_fraction`` (0.1),
  ``num_train_examples`` (20000), ``num_eval_examples`` (1000), ``data_seed`` (default
  ``config.seed``), ``train_split`` and ``eval_split`` (the splits are ``'train'`` and
  ``'test'``); and ``config.seed``, ``batch_size``, ``eval_batch_size`` as ``ArraySource``.

  Batches hold ``inputs`` int32 ``[..., input_length]`` and ``targets`` int32
  ``[..., target_length]`` (see the module docstring).

  Attributes:
    task: the ``SequenceTask``.

  Raises:
    DataError: unknown task, inconsistent lengths, or too few distinct inputs.
  """

  # data_seed None: the run's seed.
  config_defaults = {"num_symbols": 10, "min_length": 1, "max_train_length": 16,
                     "max_length": 24, "long_fraction": 0.1, "data_seed": None,
                     "num_train_examples": 20000, "num_eval_examples": 1000}

  def __init__(self, config):
    config = with_dataset_defaults(config, self.config_defaults)
    dc = config.dataset
    self.task = SequenceTask.from_config(config)
    seed = dc.data_seed
    seed = config.seed if seed is None else seed
    splits = {
        "train": self.task.make_split("train", dc.num_train_examples, seed),
        "test": self.task.make_split("test", dc.num_eval_examples, seed),
    }
    super().__init__(config, splits, input_key="inputs", num_classes=None)
    self.tokenizer = self.task.tokenizer

  def info(self) -> DatasetInfo:
    return dataclasses.replace(super().info(), vocab_size=self.task.vocab_size,
                               tokenizer=self.tokenizer)


# Every synthetic source: name → factory(config) -> Source.
SEQUENCE_SOURCES = {SEQUENCE_SOURCE_PREFIX + task: SequenceTaskSource for task in TASKS}

__all__ = ["HELD_OUT_HASH_BUCKETS", "SEQUENCE_SOURCES", "SequenceTask", "SequenceTaskSource",
           "SymbolTokenizer", "TASKS", "is_held_out"]
