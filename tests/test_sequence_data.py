"""The sequence-to-sequence data: synthetic tasks from a seed, tokenizers, and TFDS translation
datasets with length buckets, determinism for (seed, step) and exact evaluation."""

import itertools
import os
import sys
from unittest import mock

import jax
import numpy as np
import pytest

from bagtricks import data
from bagtricks.data import sequences, tokenizers, translation
from conftest import tiny_config


def _seq_config(name="seq_reverse", **fields):
  config = tiny_config("")
  config.dataset.name = name
  config.dataset.num_symbols = 10
  config.dataset.num_train_examples = 2000
  config.dataset.num_eval_examples = 300
  config.dataset.min_length = 1
  config.dataset.max_train_length = 8
  config.dataset.max_length = 12
  config.dataset.long_fraction = 0.1
  for field, value in fields.items():
    config.dataset[field] = value
  config.batch_size = 32
  config.eval_batch_size = 32
  return config


def _tokens_and_layout(rows):
  """Each row's tokens before EOS, after checking the layout: tokens, one EOS, then PAD."""
  out = []
  for row in np.asarray(rows):
    eos = np.flatnonzero(row == data.EOS_ID)
    assert len(eos) == 1, row
    tokens, rest = row[:eos[0]], row[eos[0] + 1:]
    assert np.all(tokens >= tokenizers.NUM_SPECIAL_IDS), row
    assert not np.any(rest), row
    out.append(tokens)
  return out


# ------------------------------------------------------------------------------------------
# Synthetic tasks.


@pytest.mark.parametrize("name", ["seq_copy", "seq_reverse", "seq_sort", "seq_add"])
def test_task_matches_its_reference_with_fixed_layout_and_lengths(name):
  config = _seq_config(name)
  task = sequences.SequenceTask.from_config(config)
  decode = task.tokenizer.decode
  for split in ("train", "test"):
    arrays = task.make_split(split, 3000, seed=0)
    assert arrays["inputs"].dtype == arrays["targets"].dtype == np.int32
    assert arrays["inputs"].shape == (3000, task.input_length)
    assert arrays["targets"].shape == (3000, task.target_length)
    inputs = _tokens_and_layout(arrays["inputs"])
    targets = _tokens_and_layout(arrays["targets"])
    if name == "seq_add":
      texts = [decode(row) for row in arrays["inputs"]]
      operands = [text.split("+") for text in texts]
      assert all(len(pair) == 2 for pair in operands)
      lengths = np.array([[len(a), len(b)] for a, b in operands])
      for (a, b), target in zip(operands, arrays["targets"]):
        total = decode(target)
        assert int(total) == int(a) + int(b) and str(int(total)) == total  # no leading zeros
        assert str(int(a)) == a and str(int(b)) == b
      assert np.all(np.concatenate(inputs) - 3 <= 10)  # digits and '+' only
    else:
      lengths = np.array([len(t) for t in inputs])
      for source, target in zip(inputs, targets):
        expected = {"seq_copy": source, "seq_reverse": source[::-1],
                    "seq_sort": np.sort(source)}[name]
        np.testing.assert_array_equal(target, expected)
      assert np.all(np.concatenate(inputs) < 3 + 10)
    assert lengths.min() >= 1 and lengths.max() <= 12
    if split == "train":
      # About a tenth longer than max_train_length (binomial sd < 0.006 for 3000 draws).
      assert abs(np.mean(lengths > 8) - 0.1) < 0.04
    else:
      assert lengths.max() == 12 and np.mean(lengths > 8) > 0.2  # uniform over 1..12


def test_vocab_sizes_and_symbol_names():
  assert sequences.SequenceTask("reverse").vocab_size == 13
  assert sequences.SequenceTask("sort", num_symbols=5).vocab_size == 8
  assert sequences.SequenceTask("add", num_symbols=50).vocab_size == 14
  tokenizer = sequences.SequenceTask("copy", num_symbols=12).tokenizer
  assert tokenizer.decode([3, 12, 13, 14, 2, 5]) == "09ab"
  assert tokenizer.encode("09ab") == [3, 12, 13, 14]
  many = sequences.SequenceTask("copy", num_symbols=100).tokenizer
  assert many.vocab_size == 103 and many.decode([1, 102, 3, 2]) == "99 0"
  assert many.encode("99 0") == [102, 3]
  with pytest.raises(ValueError, match="'x'"):
    tokenizer.encode("0x")


def test_test_inputs_never_occur_in_training():
  for name in ("seq_copy", "seq_add"):
    task = sequences.SequenceTask.from_config(_seq_config(name))
    train = task.make_split("train", 20000, seed=0)["inputs"]
    test = task.make_split("test", 1000, seed=0)["inputs"]
    assert not sequences.is_held_out(train).any() and sequences.is_held_out(test).all()
    train_rows = {row.tobytes() for row in train}
    assert not any(row.tobytes() in train_rows for row in test)
    # Short inputs occur in both splits' draws, so routing by hash matters: the test split
    # does repeat short inputs, and none of them is in train.
    assert len({row.tobytes() for row in test}) < len(test)


def test_generation_is_a_function_of_the_seed():
  config = _seq_config("seq_sort")
  first, again = data.get_source(config), data.get_source(config)
  for split in ("train", "test"):
    for key in ("inputs", "targets"):
      np.testing.assert_array_equal(first.splits[split][key], again.splits[split][key])
  config.seed = 1  # data_seed defaults to the run's seed
  other = data.get_source(config)
  assert not np.array_equal(other.splits["train"]["inputs"], first.splits["train"]["inputs"])
  config.dataset.data_seed = 0  # the run's seed 1, the data of seed 0
  pinned = data.get_source(config)
  np.testing.assert_array_equal(pinned.splits["test"]["inputs"], first.splits["test"]["inputs"])


def test_sequence_source_batches_resume_and_eval():
  config = _seq_config("seq_reverse")
  source = data.get_source(config)
  assert isinstance(source, data.SequenceTaskSource) and isinstance(source, data.Source)
  assert set(data.SEQUENCE_SOURCES) <= set(data.SOURCE_NAMES)
  info = source.info()
  assert (info.input_key, info.num_classes, info.vocab_size) == ("inputs", None, 13)
  assert info.element_spec == {"inputs": jax.ShapeDtypeStruct((13,), np.int32),
                               "targets": jax.ShapeDtypeStruct((13,), np.int32)}
  assert (info.num_train_examples, info.num_eval_examples) == (2000, 300)
  assert info.steps_per_epoch == 2000 // 32
  assert info.tokenizer.decode([5, 4, 3, 2, 0]) == "210"
  full = list(itertools.islice(source.train_batches(0, 8), 66))
  assert full[0]["inputs"].shape == full[0]["targets"].shape == (8, 4, 13)
  assert full[0]["inputs"].dtype == np.int32 and set(full[0]) == {"inputs", "targets"}
  for start in (1, 61, 62, 63):
    for offset, batch in enumerate(itertools.islice(source.train_batches(start, 8), 3)):
      for key in ("inputs", "targets"):
        np.testing.assert_array_equal(batch[key], full[start + offset][key])
  batches = list(source.eval_batches(8))
  assert len(batches) == 10 and batches[0]["mask"].shape == (8, 4)  # ceil(300 / 32)
  mask = np.concatenate([b["mask"].ravel() for b in batches])
  targets = np.concatenate([b["targets"].reshape(-1, 13) for b in batches])[mask > 0]
  assert mask.sum() == 300
  np.testing.assert_array_equal(targets, source.splits["test"]["targets"])


def test_invalid_lengths_are_clear_errors():
  with pytest.raises(data.DataError, match="max_train_length"):
    data.get_source(_seq_config("seq_copy", max_train_length=20))
  with pytest.raises(data.DataError, match="num_symbols"):
    data.get_source(_seq_config("seq_copy", num_symbols=1))
  # Two symbols of length 1 leave almost no inputs on the test side of the hash.
  with pytest.raises(data.DataError, match="held-out hash"):
    data.get_source(_seq_config("seq_copy", num_symbols=2, max_train_length=1, max_length=1))


# ------------------------------------------------------------------------------------------
# Tokenizers.


def test_byte_tokenizer_round_trips_any_text():
  tokenizer = data.ByteTokenizer()
  assert tokenizer.vocab_size == 259
  for text in ("", "Hello, world", "Grüße aus Köln — 東京 🙂"):
    ids = tokenizer.encode(text)
    assert all(3 <= i < 259 for i in ids) and len(ids) == len(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode([data.BOS_ID] + ids + [data.EOS_ID, 70, 0, 0]) == text
  assert tokenizer.encode("A") == [ord("A") + 3]
  assert tokenizer.decode([0xC3 + 3]) == "\ufffd"  # a cut multi-byte character
  ids, lengths = tokenizers.encode_ragged(tokenizer, ["ab", "", "ü"])
  np.testing.assert_array_equal(lengths, [2, 0, 2])
  np.testing.assert_array_equal(ids, tokenizer.encode("ab") + tokenizer.encode("ü"))


def _corpus(n=400, seed=0):
  rng = np.random.default_rng(seed)
  words = [("der", "the"), ("hund", "dog"), ("katze", "cat"), ("läuft", "runs"),
           ("schnell", "fast"), ("über", "over"), ("die", "the"), ("straße", "street"),
           ("grün", "green"), ("haus", "house"), ("ist", "is"), ("groß", "big")]
  pairs = []
  for _ in range(n):
    chosen = [words[i] for i in rng.integers(0, len(words), rng.integers(1, 12))]
    pairs.append((" ".join(w[0] for w in chosen), " ".join(w[1] for w in chosen)))
  return pairs


def test_sentencepiece_trains_round_trips_and_is_reused(tmp_path):
  pytest.importorskip("sentencepiece", reason="sentencepiece is not installed")
  texts = [t for pair in _corpus() for t in pair]
  tokenizer = data.SentencePieceTokenizer.train_or_load(
      texts, str(tmp_path), vocab_size=48, model_type="bpe", name="toy/de-en")
  assert tokenizer.vocab_size == 48
  pieces = tokenizer.processor
  assert (pieces.pad_id(), pieces.bos_id(), pieces.eos_id(), pieces.unk_id()) == (0, 1, 2, 3)
  for text in texts[:50]:
    ids = tokenizer.encode(text)
    assert all(4 <= i < 48 for i in ids)
    assert tokenizer.decode(ids + [data.EOS_ID, 9, 0]) == text
  ids, lengths = tokenizers.encode_ragged(tokenizer, texts[:3])
  np.testing.assert_array_equal(ids, sum((tokenizer.encode(t) for t in texts[:3]), []))
  assert os.listdir(tmp_path) == [os.path.basename(tokenizer.path)]
  # The same sentences and settings read the model back without training.
  import sentencepiece
  with mock.patch.object(sentencepiece.SentencePieceTrainer, "train",
                         side_effect=AssertionError("retrained")):
    again = data.SentencePieceTokenizer.train_or_load(
        texts, str(tmp_path), vocab_size=48, model_type="bpe", name="toy/de-en")
  assert again.path == tokenizer.path and again.encode(texts[0]) == tokenizer.encode(texts[0])
  import pickle
  assert pickle.loads(pickle.dumps(tokenizer)).encode(texts[1]) == tokenizer.encode(texts[1])
  # Other sentences train another model file.
  data.SentencePieceTokenizer.train_or_load(texts[::-1], str(tmp_path), vocab_size=48,
                                            model_type="bpe", name="toy/de-en")
  assert len(os.listdir(tmp_path)) == 2
  with pytest.raises(data.DataError, match="vocab_size=5000"):
    data.SentencePieceTokenizer.train_or_load(texts, str(tmp_path), vocab_size=5000)


def test_build_tokenizer_by_config(tmp_path, monkeypatch):
  config = tiny_config(str(tmp_path))
  assert isinstance(data.build_tokenizer(config, iter(())), data.ByteTokenizer)
  config.dataset.tokenizer = "wordpiece"
  with pytest.raises(data.DataError, match="'wordpiece'"):
    data.build_tokenizer(config, iter(()))
  config.dataset.tokenizer = "sentencepiece"
  monkeypatch.setitem(sys.modules, "sentencepiece", None)  # importing it now fails
  with pytest.raises(data.DataError, match=r"pip install 'bagtricks\[text\]'"):
    data.build_tokenizer(config, iter(()))


# ------------------------------------------------------------------------------------------
# TFDS translation datasets.

_TRAIN_PAIRS = _corpus(240, seed=1)
_TEST_PAIRS = _corpus(29, seed=2)


@pytest.fixture(scope="module")
def wmt_data_dir(tmp_path_factory):
  """``wmt14_translate/de-en`` prepared offline: the real builder writes known sentences."""
  import tensorflow_datasets as tfds
  from tensorflow_datasets.translate import wmt
  splits = {"train": _TRAIN_PAIRS, "test": _TEST_PAIRS}

  def split_generators(self, dl_manager):
    del self, dl_manager  # nothing is downloaded
    return {split: ((i, {"de": de, "en": en}) for i, (de, en) in enumerate(pairs))
            for split, pairs in splits.items()}

  path = str(tmp_path_factory.mktemp("wmt"))
  with mock.patch.object(wmt.WmtTranslate, "_split_generators", split_generators):
    tfds.builder("wmt14_translate/de-en", data_dir=path).download_and_prepare()
  return path


def _wmt_config(data_dir, **fields):
  config = tiny_config(data_dir)
  config.dataset.name = "wmt14_translate/de-en"
  config.dataset.max_length = 48
  for field, value in fields.items():
    config.dataset[field] = value
  config.batch_size = 8
  config.eval_batch_size = 8
  return config


def _rows(batch, key):
  return batch[key].reshape(-1, batch[key].shape[-1])


def test_translation_source_is_routed_and_describes_the_data(wmt_data_dir):
  source = data.get_source(_wmt_config(wmt_data_dir))
  assert isinstance(source, data.TranslationSource) and isinstance(source, data.Source)
  assert (source.source_language, source.target_language) == ("de", "en")
  assert source.bucket_boundaries == (8, 16, 32, 48)
  info = source.info()
  fits = [max(len(de.encode()), len(en.encode())) + 1 <= 48 for de, en in _TRAIN_PAIRS]
  assert 0 < sum(fits) < len(_TRAIN_PAIRS)  # some pairs are too long and dropped
  assert info.num_train_examples == sum(fits) and info.num_eval_examples == len(_TEST_PAIRS)
  assert (info.input_key, info.num_classes, info.vocab_size) == ("inputs", None, 259)
  assert isinstance(info.tokenizer, data.ByteTokenizer)
  assert info.element_spec == {"inputs": jax.ShapeDtypeStruct((48,), np.int32),
                               "targets": jax.ShapeDtypeStruct((48,), np.int32)}
  assert info.steps_per_epoch == sum(n // 8 for n in source.bucket_sizes())
  reverse = data.get_source(_wmt_config(wmt_data_dir, source_language="en",
                                        target_language="de"))
  assert (reverse.source_language, reverse.target_language) == ("en", "de")
  with pytest.raises(data.DataError, match="'fr' is not a language"):
    data.get_source(_wmt_config(wmt_data_dir, target_language="fr"))


def test_translation_batches_are_buckets_of_whole_pairs_and_resume(wmt_data_dir):
  source = data.get_source(_wmt_config(wmt_data_dir))
  steps = source.info().steps_per_epoch
  full = list(itertools.islice(source.train_batches(0, 4), 2 * steps + 2))
  pairs = set(_TRAIN_PAIRS)
  tokenizer = data.ByteTokenizer()
  seen = []
  for step, batch in enumerate(full):
    length = batch["inputs"].shape[-1]
    assert length in source.bucket_boundaries and batch["inputs"].shape == (4, 2, length)
    assert batch["targets"].shape == (4, 2, length) and batch["targets"].dtype == np.int32
    _tokens_and_layout(_rows(batch, "inputs"))
    _tokens_and_layout(_rows(batch, "targets"))
    decoded = [(tokenizer.decode(i), tokenizer.decode(t))
               for i, t in zip(_rows(batch, "inputs"), _rows(batch, "targets"))]
    assert set(decoded) <= pairs  # the original texts, source and target together
    # Each pair is in the smallest bucket that holds its longer side.
    longest = max(max(len(de.encode()), len(en.encode())) + 1 for de, en in decoded)
    smaller = [b for b in source.bucket_boundaries if b < length]
    assert longest <= length and (not smaller or longest > smaller[-1])
    if step < steps:
      seen.extend(decoded)
  assert len({b["inputs"].shape for b in full}) > 1
  # One epoch reads no pair more often than the data holds it.
  for pair in set(seen):
    assert seen.count(pair) <= _TRAIN_PAIRS.count(pair)
  # Resuming anywhere, inside an epoch or at its boundary, replays the same batches.
  for start in (1, steps - 1, steps, steps + 1):
    for offset, batch in enumerate(itertools.islice(source.train_batches(start, 4), 2)):
      for key in ("inputs", "targets"):
        np.testing.assert_array_equal(batch[key], full[start + offset][key])
  again = data.get_source(_wmt_config(wmt_data_dir))
  for a, b in zip(itertools.islice(again.train_batches(0, 4), 5), full):
    np.testing.assert_array_equal(a["targets"], b["targets"])
  assert not all(np.array_equal(a["targets"], b["targets"])
                 for a, b in zip(full[:steps], full[steps:]))  # epochs differ


def test_translation_eval_covers_every_pair_once_in_order(wmt_data_dir):
  source = data.get_source(_wmt_config(wmt_data_dir))
  eval_data = source.eval_batches(4)
  batches = list(eval_data)
  assert len(batches) == len(eval_data) == 4  # ceil(29 / 8)
  length = batches[0]["inputs"].shape[-1]
  longest = max(max(len(de.encode()), len(en.encode())) + 1 for de, en in _TEST_PAIRS)
  assert length % 8 == 0 and longest <= length < longest + 8
  for batch in batches:
    assert batch["inputs"].shape == batch["targets"].shape == (4, 2, length)
    assert batch["mask"].shape == (4, 2) and batch["mask"].dtype == np.float32
  mask = np.concatenate([b["mask"].ravel() for b in batches])
  assert mask.sum() == 29
  tokenizer = source.info().tokenizer
  inputs = np.concatenate([_rows(b, "inputs") for b in batches])[mask > 0]
  targets = np.concatenate([_rows(b, "targets") for b in batches])[mask > 0]
  sources, references = source.split_texts()
  assert [tokenizer.decode(t) for t in targets] == list(references)
  assert [tokenizer.decode(i) for i in inputs] == list(sources)
  assert sorted(zip(sources, references)) == sorted(_TEST_PAIRS)


def test_translation_with_sentencepiece(wmt_data_dir, tmp_path):
  pytest.importorskip("sentencepiece", reason="sentencepiece is not installed")
  config = _wmt_config(wmt_data_dir, tokenizer="sentencepiece", vocab_size=40,
                       tokenizer_dir=str(tmp_path), max_length=16)
  source = data.get_source(config)
  info = source.info()
  assert info.vocab_size == 40 and isinstance(info.tokenizer, data.SentencePieceTokenizer)
  assert os.path.dirname(info.tokenizer.path) == str(tmp_path)
  batch = next(source.train_batches(0, 2))
  assert batch["inputs"].shape[-1] in (8, 16) and _rows(batch, "inputs").max() < 40
  decoded = {(info.tokenizer.decode(i), info.tokenizer.decode(t))
             for i, t in zip(_rows(batch, "inputs"), _rows(batch, "targets"))}
  assert decoded <= set(_TRAIN_PAIRS)


def test_translation_errors_are_clear_and_nothing_is_downloaded(wmt_data_dir, tmp_path):
  import tensorflow_datasets as tfds
  with mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare",
                         side_effect=AssertionError("download attempted")):
    with pytest.raises(data.DataError, match=r"not prepared.*tfds build wmt14_translate/de-en"):
      data.get_source(_wmt_config(str(tmp_path)))
  config = _wmt_config(wmt_data_dir)
  config.batch_size = 512
  with pytest.raises(data.DataError, match="batch_size=512 exceeds"):
    data.get_source(config).info()
  config = _wmt_config(wmt_data_dir)
  config.dataset.eval_split = "validation"
  with pytest.raises(data.DataError, match="'validation' does not exist"):
    data.get_source(config)
  assert not translation.is_translation_dataset(tiny_config(str(tmp_path)))  # the digits
  assert translation.default_bucket_boundaries(256) == (8, 16, 32, 64, 128, 256)
  assert translation.default_bucket_boundaries(100) == (8, 16, 32, 64, 100)
