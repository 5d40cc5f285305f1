"""Labels from several annotators who disagree, and what can be recovered from them alone.

The setting of IPA2LT (Zeng, Shan & Chen, "Facial Expression Recognition with Inconsistently
Annotated Datasets", ECCV 2018): every image carries up to K labels ỹ_1..ỹ_K, one per
annotator (a human annotation, or a model trained on another dataset), each drawn through that
annotator's confusion matrix from the unknown true class,

    P(ỹ_k = j | y = i) = T_k[i, j],   every row of T_k summing to 1,

and −1 where annotator k gave no label. Here they are simulated:

* ``confusion_matrix``: a matrix with a given accuracy, its errors spread uniformly, plus
  systematic swaps (an annotator who reads fear as surprise 30 % of the time);
* ``annotate``: labels drawn through those matrices from the true classes.

And the two classical ways to recover the truth from the labels alone, without the images:

* ``majority_vote``: the most frequent label, ties broken at random;
* ``dawid_skene``: the EM algorithm of Dawid & Skene (1979), which estimates every
  annotator's confusion matrix and the class prior together with each item's posterior.

``AnnotatedDigitsSource`` (``config.dataset.name = 'digits_annotated'``) puts them together on
either digits: the reference repository's simpler setting of three annotators 60 %, 70 % and
80 % accurate with uniform errors.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Tuple

import numpy as np

from bagtricks.data.arrays import ArraySource
from bagtricks.data.base import DataError, with_dataset_defaults
from bagtricks.data.digit_sets import NUM_DIGIT_CLASSES, chosen_digits, standardize

MISSING = -1  # An annotator's label where it gave none.


def confusion_matrix(num_classes: int, accuracy: float,
                     swaps: Sequence[Tuple[int, int, float]] = ()) -> np.ndarray:
  """An annotator's row-stochastic confusion matrix ``T[true, given]``.

  Every class is labelled correctly with probability ``accuracy`` and as each other class
  with (1 − accuracy)/(C − 1); then each swap ``(true, given, rate)`` moves ``rate`` of row
  ``true``'s mass from its diagonal to column ``given`` (a systematic bias).

  Args:
    num_classes: C ≥ 2.
    accuracy: the diagonal before the swaps, in [0, 1].
    swaps: ``(true class, class given instead, rate)`` triples.

  Returns:
    float64 ``[C, C]``, rows summing to 1.

  Raises:
    ValueError: an accuracy outside [0, 1], a class outside 0..C−1, or a swap that takes more
      than the diagonal holds.
  """
  if not 0.0 <= accuracy <= 1.0:
    raise ValueError(f"accuracy={accuracy!r} must be in [0, 1].")
  matrix = np.full((num_classes, num_classes), (1.0 - accuracy) / (num_classes - 1))
  np.fill_diagonal(matrix, accuracy)
  for true, given, rate in swaps:
    if not (0 <= true < num_classes and 0 <= given < num_classes) or true == given:
      raise ValueError(f"swap {(true, given, rate)} must name two different classes in "
                       f"0..{num_classes - 1}.")
    if not 0.0 <= rate <= matrix[true, true] + 1e-12:
      raise ValueError(f"swap {(true, given, rate)} moves more than the diagonal "
                       f"{matrix[true, true]:.3f} of class {true}.")
    matrix[true, true] -= rate
    matrix[true, given] += rate
  return matrix


def annotate(true_labels: np.ndarray, confusions: np.ndarray, seed: int) -> np.ndarray:
  """Every annotator's label of every item, drawn from its confusion matrix's row.

  Args:
    true_labels: ``[n]`` classes in 0..C−1.
    confusions: ``[K, C, C]`` row-stochastic matrices ``T_k[true, given]``.
    seed: the random state (the same seed gives the same labels).

  Returns:
    int32 ``[n, K]``: ỹ_k of each item.
  """
  rng = np.random.default_rng(seed)
  true_labels = np.asarray(true_labels)
  labels = np.empty((len(true_labels), len(confusions)), np.int32)
  for k, matrix in enumerate(np.asarray(confusions)):
    cumulative = np.cumsum(matrix, axis=1)[true_labels]  # [n, C]
    draws = rng.random(len(true_labels))[:, None]
    labels[:, k] = np.minimum((draws >= cumulative).sum(axis=1), matrix.shape[1] - 1)
  return labels


def vote_counts(annotations: np.ndarray, num_classes: int) -> np.ndarray:
  """``[n, C]`` float64: how many annotators gave each class to each item (−1 ignored)."""
  annotations = np.asarray(annotations)
  counts = np.zeros((len(annotations), num_classes))
  for k in range(annotations.shape[1]):
    given = annotations[:, k] >= 0
    np.add.at(counts, (np.flatnonzero(given), annotations[given, k]), 1.0)
  return counts


def majority_vote(annotations: np.ndarray, num_classes: int, seed: int = 0) -> np.ndarray:
  """The most frequent label of each item; ties broken uniformly at random.

  Args:
    annotations: ``[n, K]`` int labels, −1 where missing.
    num_classes: C.
    seed: the random state of the tie-breaks.

  Returns:
    int32 ``[n]``; −1 for an item nobody labelled.
  """
  counts = vote_counts(annotations, num_classes)
  rng = np.random.default_rng(seed)
  # A uniform draw in [0, 0.5) never lifts a class over one with more votes.
  votes = np.argmax(counts + 0.5 * rng.random(counts.shape), axis=1).astype(np.int32)
  return np.where(counts.sum(axis=1) > 0, votes, MISSING).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class DawidSkene:
  """What the Dawid–Skene EM recovers from the labels alone.

  Attributes:
    posteriors: ``[n, C]``: P(y_n = i | every label of item n).
    confusions: ``[K, C, C]``: the estimated ``T_k[true, given]``.
    prior: ``[C]``: the estimated class frequencies.
    iterations: EM iterations run.
    log_likelihood: the labels' log-likelihood after each iteration (non-decreasing).
  """
  posteriors: np.ndarray
  confusions: np.ndarray
  prior: np.ndarray
  iterations: int
  log_likelihood: Tuple[float, ...]

  @property
  def labels(self) -> np.ndarray:
    """int32 ``[n]``: each item's most probable class."""
    return np.argmax(self.posteriors, axis=1).astype(np.int32)


def dawid_skene(annotations: np.ndarray, num_classes: int, max_iterations: int = 100,
                tolerance: float = 1e-7, smoothing: float = 0.01) -> DawidSkene:
  """Dawid & Skene (1979): EM over the unknown true classes, on the labels alone.

  Starting from the vote fractions as posteriors q_ni, it alternates

  * M-step: ρ_i = (1/n) Σ_n q_ni and T_k[i, j] ∝ s + Σ_n q_ni [ỹ_kn = j] over the items k
    labelled (s = ``smoothing``, a Dirichlet pseudo-count that keeps every entry positive);
  * E-step: q_ni ∝ ρ_i Π_{k: ỹ_kn ≠ −1} T_k[i, ỹ_kn],

  until the log-likelihood Σ_n log Σ_i ρ_i Π_k T_k[i, ỹ_kn] gains less than ``tolerance``
  per item.

  Args:
    annotations: ``[n, K]`` int labels, −1 where missing.
    num_classes: C.
    max_iterations: the most EM iterations.
    tolerance: stop when the log-likelihood per item gains less than this.
    smoothing: the pseudo-count s added to every confusion count.

  Returns:
    ``DawidSkene``.
  """
  annotations = np.asarray(annotations)
  n, num_annotators = annotations.shape
  counts = vote_counts(annotations, num_classes)
  posteriors = np.where(counts.sum(1, keepdims=True) > 0, counts, 1.0)
  posteriors /= posteriors.sum(axis=1, keepdims=True)
  # given[k]: [n, C] one-hot of annotator k's labels (zero rows where missing).
  given = np.zeros((num_annotators, n, num_classes))
  for k in range(num_annotators):
    labelled = annotations[:, k] >= 0
    given[k, np.flatnonzero(labelled), annotations[labelled, k]] = 1.0
  history = []
  for iteration in range(1, max_iterations + 1):
    prior = posteriors.mean(axis=0)
    confusions = smoothing + np.einsum("ni,knj->kij", posteriors, given)
    confusions /= confusions.sum(axis=2, keepdims=True)
    log_joint = np.log(prior)[None] + np.einsum("knj,kij->ni", given, np.log(confusions))
    top = log_joint.max(axis=1, keepdims=True)
    log_evidence = top[:, 0] + np.log(np.exp(log_joint - top).sum(axis=1))
    posteriors = np.exp(log_joint - log_evidence[:, None])
    history.append(float(log_evidence.sum()))
    if len(history) > 1 and history[-1] - history[-2] < tolerance * n:
      break
  return DawidSkene(posteriors, confusions, prior, iteration, tuple(history))


class AnnotatedDigitsSource(ArraySource):
  """Either digits labelled by simulated annotators (``dataset.name = 'digits_annotated'``).

  Reads ``config.dataset.digits`` (``'sklearn_digits'`` or ``'mnist_5k'``),
  ``annotator_accuracies`` (one accuracy per annotator, errors uniform over the other
  classes; default the reference repository's (0.6, 0.7, 0.8)) and ``annotation_seed``. Every
  training image gets one label per annotator (``annotate``); the labels alone give
  ``majority_vote`` and ``dawid_skene`` (each item's Dawid–Skene class), the baselines'
  targets. ``true_label`` is the digit itself: for evaluation and for measuring what was
  recovered, never a training target. Batches are ``{'image': float32 [..., side, side, 1],
  'annotations': int32 [..., K], 'majority_vote': int32, 'dawid_skene': int32, 'true_label':
  int32}``; in the test split the three label entries are −1.

  Attributes:
    confusions: ``[K, C, C]``: the simulated annotators' confusion matrices.
    label_model: the ``DawidSkene`` fit on the train split's labels (its confusions and
      posteriors, beside the ``dawid_skene`` labels it gave).

  Raises:
    DataError: no annotator, or an accuracy outside [0, 1].
  """

  config_defaults = {"digits": "sklearn_digits", "annotator_accuracies": (0.6, 0.7, 0.8),
                     "annotation_seed": 0}

  def __init__(self, config):
    config = with_dataset_defaults(config, self.config_defaults)
    accuracies = tuple(config.dataset.annotator_accuracies)
    if not accuracies or any(not isinstance(a, (int, float)) or not 0.0 <= a <= 1.0
                             for a in accuracies):
      raise DataError(f"config.dataset.annotator_accuracies={accuracies!r} must hold one "
                      "accuracy in [0, 1] per annotator, e.g. (0.6, 0.7, 0.8).")
    self.confusions = np.stack([confusion_matrix(NUM_DIGIT_CLASSES, a) for a in accuracies])
    arrays = chosen_digits(config)
    images = standardize({k: v[0] for k, v in arrays.items()})
    splits = {}
    for split, (_, true_labels) in arrays.items():
      true_labels = true_labels.astype(np.int32)
      if split == "train":
        labels = annotate(true_labels, self.confusions, config.dataset.annotation_seed)
        vote = majority_vote(labels, NUM_DIGIT_CLASSES, config.dataset.annotation_seed)
        self.label_model = dawid_skene(labels, NUM_DIGIT_CLASSES)
        recovered = self.label_model.labels
      else:
        labels = np.full((len(true_labels), len(accuracies)), MISSING, np.int32)
        vote = recovered = np.full(len(true_labels), MISSING, np.int32)
      splits[split] = {"image": images[split], "annotations": labels, "majority_vote": vote,
                       "dawid_skene": recovered, "true_label": true_labels}
    super().__init__(config, splits, input_key="image", num_classes=NUM_DIGIT_CLASSES,
                     class_names=tuple(str(d) for d in range(NUM_DIGIT_CLASSES)))


ANNOTATED_SOURCES = {"digits_annotated": AnnotatedDigitsSource}
