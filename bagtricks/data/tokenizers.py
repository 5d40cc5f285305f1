"""Text ↔ token ids for the sequence-to-sequence sources, with the ids every model shares.

Every vocabulary starts with the same three special ids: ``PAD_ID = 0`` (padding, never a
real token), ``BOS_ID = 1`` (the decoder's start token) and ``EOS_ID = 2`` (end of sequence);
real tokens are ``NUM_SPECIAL_IDS = 3`` and up. A tokenizer has

  ``vocab_size``        ids ``0 .. vocab_size - 1``, the special ids included;
  ``encode(text)``      ``list[int]`` of real tokens, without any special id;
  ``decode(ids)``       the text of ``ids`` up to the first EOS, skipping PAD and BOS.

``ByteTokenizer`` (UTF-8 bytes, needs nothing) and ``SentencePieceTokenizer`` (a subword model
trained from the training split, needs the ``sentencepiece`` package) implement it;
``build_tokenizer`` picks one by ``config.dataset.tokenizer``.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import re
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from bagtricks.data.base import DataError, with_dataset_defaults

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
# The first id of a real token.
NUM_SPECIAL_IDS = 3

TOKENIZER_NAMES = ("bytes", "sentencepiece")


def check_token_ids(ids: np.ndarray, vocab_size: int, where: str, error: type = None) -> None:
  """Raises ``error`` (``DataError`` by default) naming ``where`` if an id of ``ids`` is
  outside the vocabulary ``[0, vocab_size)``.

  An embedding lookup cannot refuse such ids under jit: one past the end reads NaN and a
  negative one wraps to the end of the table, so they are refused on the host.
  """
  ids = np.asarray(ids)
  if ids.size == 0:
    return
  low, high = int(ids.min()), int(ids.max())
  if low < 0 or high >= vocab_size:
    bad = low if low < 0 else high
    raise (error or DataError)(
        f"{where} holds token id {bad}, outside the vocabulary [0, {vocab_size}) (ids range "
        f"{low}..{high}); fix the data or give the model a vocabulary that covers them.")


def strip_special_ids(ids: Iterable[int]) -> List[int]:
  """The real tokens of ``ids``: everything before the first EOS, without PAD and BOS.

  Args:
    ids: token ids, e.g. one row of a batch ``[length]`` or a list.

  Returns:
    The ids ``>= NUM_SPECIAL_IDS`` that precede the first ``EOS_ID``, in order.
  """
  real = []
  for token in np.asarray(ids).reshape(-1).tolist():
    if token == EOS_ID:
      break
    if token >= NUM_SPECIAL_IDS:
      real.append(token)
  return real


def encode_ragged(tokenizer, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
  """Encodes many texts at once into one flat id array and the length of each text.

  Uses the tokenizer's own ``encode_ragged`` when it has one (the built-in tokenizers encode
  in bulk), and otherwise calls ``encode`` once per text.

  Args:
    tokenizer: any tokenizer (``encode(text) -> list[int]``).
    texts: the texts.

  Returns:
    ``(ids int32 [total], lengths int64 [len(texts)])``: text i's ids are
    ``ids[sum(lengths[:i]):sum(lengths[:i + 1])]``.
  """
  if hasattr(tokenizer, "encode_ragged"):
    return tokenizer.encode_ragged(texts)
  encoded = [tokenizer.encode(text) for text in texts]
  lengths = np.fromiter((len(e) for e in encoded), np.int64, len(encoded))
  ids = np.fromiter(itertools.chain.from_iterable(encoded), np.int32, int(lengths.sum()))
  return ids, lengths


class ByteTokenizer:
  """UTF-8 bytes as tokens: byte b is id ``b + 3``, so ``vocab_size == 259``.

  Needs no training and no download, and ``decode(encode(text)) == text`` for any text.
  """

  vocab_size = NUM_SPECIAL_IDS + 256

  def encode(self, text: str) -> List[int]:
    """The ids of ``text``'s UTF-8 bytes (no special ids)."""
    return [b + NUM_SPECIAL_IDS for b in text.encode("utf-8")]

  def encode_ragged(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    """``encode`` of every text as one flat id array and per-text lengths."""
    encoded = [t.encode("utf-8") for t in texts]
    lengths = np.fromiter((len(e) for e in encoded), np.int64, len(encoded))
    ids = np.frombuffer(b"".join(encoded), np.uint8).astype(np.int32) + NUM_SPECIAL_IDS
    return ids, lengths

  def decode(self, ids: Iterable[int]) -> str:
    """The text of ``ids`` up to the first EOS; invalid UTF-8 becomes U+FFFD."""
    data = bytes(t - NUM_SPECIAL_IDS for t in strip_special_ids(ids) if t < self.vocab_size)
    return data.decode("utf-8", errors="replace")

  def __repr__(self) -> str:
    return "ByteTokenizer()"


def _import_sentencepiece():
  try:
    import sentencepiece  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError(
        "config.dataset.tokenizer='sentencepiece' needs the sentencepiece package; install it "
        "with `pip install 'bagtricks[text]'` or set --config.dataset.tokenizer=bytes.") from e
  return sentencepiece


class SentencePieceTokenizer:
  """A SentencePiece subword model whose ids 0, 1, 2 are PAD, BOS and EOS (3 is UNK).

  Build one with ``train_or_load``; the constructor wraps an already trained model.

  Args:
    model_proto: the serialized SentencePiece model (the content of a ``.model`` file).
    path: where the model was read from or written to, for messages; optional.

  Raises:
    DataError: sentencepiece is not installed, or the model's special ids are not PAD 0,
      BOS 1, EOS 2.
  """

  def __init__(self, model_proto: bytes, path: Optional[str] = None):
    spm = _import_sentencepiece()
    self.model_proto = model_proto
    self.path = path
    self.processor = spm.SentencePieceProcessor(model_proto=model_proto)
    special = (self.processor.pad_id(), self.processor.bos_id(), self.processor.eos_id())
    if special != (PAD_ID, BOS_ID, EOS_ID):
      raise DataError(f"the SentencePiece model {path or ''} has (pad, bos, eos) ids "
                      f"{special}; this project needs {(PAD_ID, BOS_ID, EOS_ID)}.")

  @classmethod
  def train_or_load(cls, texts: Iterable[str], model_dir: str, vocab_size: int,
                    model_type: str = "unigram", max_sentences: int = 1_000_000,
                    character_coverage: float = 1.0,
                    name: str = "sentencepiece") -> "SentencePieceTokenizer":
    """Trains a model on the first ``max_sentences`` of ``texts``, or reuses a trained one.

    The model file is named after a hash of the settings and of the training sentences
    themselves, so a model trained earlier on the same sentences with the same settings is
    read back instead of retrained, and anything else trains a new file. The file is written
    under a temporary name and renamed, so readers never see a partial model.

    Args:
      texts: training sentences (both languages), e.g. the train split's in read order.
      model_dir: the directory of the model files (created if missing; any path that
        ``etils.epath`` reads, also ``gs://``).
      vocab_size: ids in the vocabulary, PAD/BOS/EOS/UNK included.
      model_type: ``'unigram'`` or ``'bpe'`` (or SentencePiece's ``'char'``, ``'word'``).
      max_sentences: at most this many sentences of ``texts`` are read.
      character_coverage: the fraction of characters the model covers (rarer ones map to
        UNK); 1.0 suits alphabetic scripts, SentencePiece suggests 0.9995 for CJK.
      name: the file name's prefix, e.g. the dataset's name.

    Returns:
      The tokenizer.

    Raises:
      DataError: sentencepiece is missing, or the sentences cannot give ``vocab_size``
        pieces.
    """
    spm = _import_sentencepiece()
    from etils import epath  # pylint: disable=g-import-not-at-top
    sentences = [s for s in itertools.islice(texts, max_sentences) if s]
    settings = {"vocab_size": vocab_size, "model_type": model_type,
                "max_sentences": max_sentences, "character_coverage": character_coverage,
                "special_ids": [PAD_ID, BOS_ID, EOS_ID, NUM_SPECIAL_IDS]}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for sentence in sentences:
      digest.update(sentence.encode("utf-8"))
      digest.update(b"\n")
    prefix = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    path = epath.Path(model_dir) / (
        f"{prefix}.{model_type}{vocab_size}.{digest.hexdigest()[:16]}.model")
    if path.exists():
      return cls(path.read_bytes(), str(path))
    if not sentences:
      raise DataError(f"no training sentences to train the SentencePiece model {path}.")
    model = io.BytesIO()
    try:
      spm.SentencePieceTrainer.train(
          sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
          model_type=model_type, character_coverage=character_coverage,
          pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=NUM_SPECIAL_IDS,
          num_threads=os.cpu_count() or 1, minloglevel=2)
    except RuntimeError as e:
      raise DataError(f"config.dataset.vocab_size={vocab_size}: SentencePiece cannot train "
                      f"on {len(sentences)} sentences ({e}); lower the vocabulary size or "
                      f"raise config.dataset.tokenizer_sentences.") from e
    path.parent.mkdir(parents=True, exist_ok=True)
    # Concurrent trainers of the same file write identical bytes; the rename makes each
    # write atomic.
    partial = path.parent / f".{path.name}.{os.getpid()}.tmp"
    partial.write_bytes(model.getvalue())
    partial.rename(path)
    return cls(model.getvalue(), str(path))

  @property
  def vocab_size(self) -> int:
    return self.processor.get_piece_size()

  def encode(self, text: str) -> List[int]:
    """The subword ids of ``text`` (no special ids)."""
    return self.processor.encode(text, out_type=int)

  def encode_ragged(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    """``encode`` of every text (on all cores) as one flat id array and per-text lengths."""
    encoded = self.processor.encode(list(texts), out_type=int, num_threads=os.cpu_count() or 1)
    lengths = np.fromiter((len(e) for e in encoded), np.int64, len(encoded))
    ids = np.fromiter(itertools.chain.from_iterable(encoded), np.int32, int(lengths.sum()))
    return ids, lengths

  def decode(self, ids: Iterable[int]) -> str:
    """The text of ``ids`` up to the first EOS (SentencePiece's detokenization)."""
    return self.processor.decode(
        [t for t in strip_special_ids(ids) if t < self.vocab_size])

  def __reduce__(self):
    # The processor itself does not pickle; the model bytes rebuild it.
    return (SentencePieceTokenizer, (self.model_proto, self.path))

  def __repr__(self) -> str:
    return f"SentencePieceTokenizer(vocab_size={self.vocab_size}, path={self.path!r})"


# The ``config.dataset`` fields of ``build_tokenizer``: bytes unless the config asks for a
# SentencePiece vocabulary (kept under data_dir/tokenizers by default).
TOKENIZER_DEFAULTS = {"tokenizer": "bytes", "tokenizer_dir": None, "vocab_size": 32000,
                      "sentencepiece_model_type": "unigram", "tokenizer_sentences": 1_000_000,
                      "character_coverage": 1.0}


def build_tokenizer(config, train_texts: Iterable[str], name: Optional[str] = None):
  """The tokenizer that ``config.dataset`` asks for.

  Reads ``config.dataset``:

    ``tokenizer``                 ``'bytes'`` (default) or ``'sentencepiece'``.
    ``vocab_size``                SentencePiece only: ids in the vocabulary (default 32000).
    ``sentencepiece_model_type``  ``'unigram'`` (default) or ``'bpe'``.
    ``tokenizer_sentences``       sentences of ``train_texts`` to train on (default 1e6).
    ``character_coverage``        SentencePiece's character coverage (default 1.0).
    ``tokenizer_dir``             where trained models are kept (default
      ``<data_dir>/tokenizers``, ``data_dir`` resolved as for TFDS).

  Args:
    config: the run config.
    train_texts: training sentences of both languages, read lazily and only when a model is
      trained (not at all for bytes).
    name: the model file's prefix (default ``config.dataset.name``).

  Returns:
    A tokenizer with ``vocab_size``, ``encode`` and ``decode``.

  Raises:
    DataError: an unknown tokenizer name, or SentencePiece is missing or cannot train.
  """
  dc = with_dataset_defaults(config, TOKENIZER_DEFAULTS).dataset
  kind = dc.tokenizer or "bytes"
  if kind == "bytes":
    return ByteTokenizer()
  if kind == "sentencepiece":
    from bagtricks.data.tfds_images import resolve_data_dir  # pylint: disable=g-import-not-at-top
    model_dir = dc.tokenizer_dir or os.path.join(resolve_data_dir(dc.data_dir), "tokenizers")
    return SentencePieceTokenizer.train_or_load(
        train_texts, model_dir, vocab_size=dc.vocab_size,
        model_type=dc.sentencepiece_model_type, max_sentences=dc.tokenizer_sentences,
        character_coverage=dc.character_coverage,
        name=name or dc.name)
  raise DataError(f"config.dataset.tokenizer={kind!r} is not one of {TOKENIZER_NAMES}.")
