"""IPA2LT's setting on the generated faces: two datasets whose annotators are biased differently.

Zeng, Shan & Chen (ECCV 2018) combine facial-expression datasets A and B labelled by different
people with different systematic biases. They train a model M_A on A and M_B on B, let both
label every image (A, B and an unlabelled pool), and learn the latent truth from the labels
that result. Simulated here on the landmark features of the generated faces
(``data.face_landmarks``), whose true expressions are known:

* the training people are split into dataset A (the first ``dataset_people[0]``), dataset B
  (the next ``dataset_people[1]``) and an unlabelled pool (the rest);
* A's and B's human labels are drawn through ``confusion_matrix(C, human_accuracy, [bias])``:
  uniform errors plus one systematic swap each (by default A reads fear as surprise 30 % of
  the time, B disgust as anger);
* M_A and M_B are multinomial logistic regressions on the landmark features of A and of B
  with their human labels (fitted here, on the host: they only label);
* every training image then has up to three labels, in K = 4 columns: A's human label (−1
  outside A), B's human label (−1 outside B), M_A's and M_B's predictions. The two humans
  keep separate columns, since their biases differ.

``confusions`` holds the matrix each column's labels were drawn through: the simulated ones for
the humans, and M_A's and M_B's measured confusion against the truth on the training images.
The test split is the unseen people with their true expressions.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from bagtricks.data.annotators import (MISSING, annotate, confusion_matrix, dawid_skene,
                                       majority_vote)
from bagtricks.data.arrays import ArraySource
from bagtricks.data.base import DataError, with_dataset_defaults
from bagtricks.data.face_landmarks import FaceLandmarkSource
from bagtricks.data.faces import EXPRESSIONS

ANNOTATORS = ("human A", "human B", "M_A", "M_B")


def empirical_confusion(true_labels: np.ndarray, given: np.ndarray,
                        num_classes: int) -> np.ndarray:
  """``[C, C]``: the share of each true class's items given each label (rows sum to 1)."""
  counts = np.zeros((num_classes, num_classes))
  np.add.at(counts, (true_labels, given), 1.0)
  return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)


def fit_annotator_model(features: np.ndarray, labels: np.ndarray, num_classes: int):
  """M_A or M_B: a multinomial logistic regression on one dataset's images and labels."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  if len(np.unique(labels)) < num_classes:
    raise DataError(f"a dataset of {len(labels)} images lacks some of the {num_classes} "
                    "classes among its labels; give config.dataset.dataset_people more people.")
  return LogisticRegression(max_iter=2000).fit(features, labels)


def _check(people: Tuple[int, int], train_people: int, biases) -> None:
  if len(people) != 2 or min(people) < 1 or sum(people) > train_people:
    raise DataError(f"config.dataset.dataset_people={people!r} must be two counts >= 1 (A, "
                    f"B) whose sum is at most the {train_people} training people.")
  for name, bias in zip(("bias_a", "bias_b"), biases):
    if len(bias) != 3:
      raise DataError(f"config.dataset.{name}={bias!r} must be (true class, class given "
                      "instead, rate), e.g. (4, 3, 0.3).")


class AnnotatedFacesSource(ArraySource):
  """The landmark features of the faces with IPA2LT's labels (``faces_annotated``).

  Reads ``face_landmarks``'s fields and ``dataset_people`` (people in A and in B),
  ``human_accuracy``, ``bias_a``, ``bias_b`` (``(true, given, rate)``) and
  ``annotation_seed``. Batches are ``{'features': float32 [..., 189], 'annotations': int32
  [..., 4], 'majority_vote', 'dawid_skene', 'true_label': int32}``; in the test split the
  three label entries are −1.

  Attributes:
    confusions: ``[4, C, C]``: each annotator column's confusion (see the module docstring).
    label_model: the ``DawidSkene`` fit on the training labels.
    membership: ``[n_train]`` int: 0 for A, 1 for B, 2 for the pool.
    biased_classes: the true classes of A's and B's swaps (fear and disgust by default).
  """

  config_defaults = {**FaceLandmarkSource.config_defaults, "dataset_people": (40, 40),
                     "human_accuracy": 0.9, "bias_a": (4, 3, 0.3), "bias_b": (5, 6, 0.3),
                     "annotation_seed": 0}

  def __init__(self, config):
    config = with_dataset_defaults(config, self.config_defaults)
    dc = config.dataset
    people = tuple(dc.dataset_people)
    biases = (tuple(dc.bias_a), tuple(dc.bias_b))
    _check(people, dc.identities - dc.test_identities, biases)
    self.biased_classes = tuple(int(bias[0]) for bias in biases)
    num_classes = len(EXPRESSIONS)
    try:
      humans = [confusion_matrix(num_classes, dc.human_accuracy, [bias]) for bias in biases]
    except ValueError as e:
      raise DataError(f"config.dataset human_accuracy / bias_a / bias_b: {e}") from None
    tables = FaceLandmarkSource(config)
    train = tables.splits[dc.train_split]
    truth = train["label"].astype(np.int32)
    person = tables.arrays[dc.train_split]["person"]
    self.membership = np.digitize(person, np.cumsum(people))  # 0: A, 1: B, 2: pool.
    annotations = np.full((len(truth), len(ANNOTATORS)), MISSING, np.int32)
    for k, matrix in enumerate(humans):
      mine = self.membership == k
      annotations[mine, k] = annotate(truth[mine], matrix[None], dc.annotation_seed + k)[:, 0]
    model_confusions = []
    for k in range(2):
      mine = self.membership == k
      model = fit_annotator_model(train["features"][mine], annotations[mine, k], num_classes)
      annotations[:, 2 + k] = model.predict(train["features"])
      model_confusions.append(empirical_confusion(truth, annotations[:, 2 + k], num_classes))
    self.confusions = np.stack(humans + model_confusions)
    self.label_model = dawid_skene(annotations, num_classes)
    splits = {dc.train_split: {
        "features": train["features"], "annotations": annotations,
        "majority_vote": majority_vote(annotations, num_classes, dc.annotation_seed),
        "dawid_skene": self.label_model.labels, "true_label": truth}}
    test = tables.splits[dc.eval_split]
    missing = np.full(len(test["label"]), MISSING, np.int32)
    splits[dc.eval_split] = {
        "features": test["features"],
        "annotations": np.full((len(missing), len(ANNOTATORS)), MISSING, np.int32),
        "majority_vote": missing, "dawid_skene": missing,
        "true_label": test["label"].astype(np.int32)}
    super().__init__(config, splits, input_key="features", num_classes=num_classes,
                     class_names=EXPRESSIONS)


def label_accuracies(source: AnnotatedFacesSource, split: str = "train") -> Sequence[float]:
  """Each annotator column's accuracy against the truth over the images it labelled."""
  arrays = source.splits[split]
  return [float(np.mean(arrays["annotations"][given, k] == arrays["true_label"][given]))
          for k in range(arrays["annotations"].shape[1])
          for given in [arrays["annotations"][:, k] >= 0]]
