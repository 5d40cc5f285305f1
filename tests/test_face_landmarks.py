"""Khan (2018)'s landmark pipeline: features, fiducial points, detection, the source."""

import sys

import numpy as np
import pytest

from bagtricks import data, train, validate
from bagtricks.data import annotated_faces as af
from bagtricks.data import face_landmarks as fl

pytest.importorskip("cv2")


def _eye_frame_points():
  """18 points whose eye centres are (−1, 0) and (1, 0): inter-ocular distance 2."""
  points = np.zeros((18, 2))
  points[0:4] = [(-1.5, 0), (-0.5, 0), (-1, -0.25), (-1, 0.25)]   # Left eye.
  points[4:6] = [(-1.6, -1), (-0.4, -1)]                           # Left brow.
  points[6:10] = [(0.5, 0), (1.5, 0), (1, -0.25), (1, 0.25)]       # Right eye.
  points[10:12] = [(0.4, -1), (1.6, -1)]                           # Right brow.
  points[12:14] = [(-0.3, 1.2), (0.3, 1.2)]                        # Nostrils.
  points[14:18] = [(-0.8, 2), (0.8, 2), (0, 1.8), (0, 2.4)]        # Mouth.
  return points


def test_features_are_distances_and_angles_in_the_eyes_frame():
  points = _eye_frame_points()
  features = fl.landmark_features(points)
  assert features.shape == (fl.NUM_FEATURES,) == (189,)
  i, j = np.triu_indices(18, 1)
  pair = {(a, b): k for k, (a, b) in enumerate(zip(i, j))}
  # By hand, in units of the inter-ocular distance 2: mouth width 1.6 / 2, mouth height
  # 0.6 / 2, brow inner ends 0.8 / 2 apart, left brow's inner end to left eye's inner corner.
  assert features[pair[(14, 15)]] == pytest.approx(0.8)
  assert features[pair[(16, 17)]] == pytest.approx(0.3)
  assert features[pair[(5, 10)]] == pytest.approx(0.4)
  assert features[pair[(1, 5)]] == pytest.approx(np.hypot(0.1, 1.0) / 2)
  cos, sin = features[153:171], features[171:]
  # Right mouth corner (0.4, 1) and left brow's outer end (−0.8, −0.5); y points down.
  assert (cos[15], sin[15]) == pytest.approx((0.4 / np.hypot(0.4, 1), 1 / np.hypot(0.4, 1)))
  assert (cos[4], sin[4]) == pytest.approx((-0.8 / np.hypot(0.8, 0.5), -0.5 / np.hypot(0.8, 0.5)))
  # A similarity transform of the face (scale, rotation, shift) leaves the features as they are.
  angle, scale, shift = 0.3, 7.5, np.array([31.0, 17.0])
  rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  moved = points @ rotation.T * scale + shift
  np.testing.assert_allclose(fl.landmark_features(moved), features, atol=1e-5)


def _drawn_crop():
  """A hand-drawn 64×64 face crop: brows, eyes with irises, nostrils and lips at known places."""
  crop = np.full((fl.CROP, fl.CROP), 180, np.uint8)
  y, x = np.mgrid[:fl.CROP, :fl.CROP]
  for cx in (19, 45):
    crop[17:20, cx - 7:cx + 8] = 40                                 # Brow, rows 17-19.
    crop[((x - cx) / 5.5) ** 2 + ((y - 27) / 2.5) ** 2 <= 1] = 240  # Eye, x cx±5.5, y 27±2.5.
    crop[(x - cx) ** 2 + (y - 27) ** 2 <= 2.25] = 20                # Iris.
  crop[38:40, 27:38] = 60                                           # Nostrils, x 27-37.
  crop[48:53, 22:43] = 50                                           # Lips, x 22-42, y 48-52.
  return crop


def test_fiducial_points_land_on_a_hand_drawn_face():
  points = fl.fiducial_points(_drawn_crop())
  assert points.shape == (18, 2)
  for side, cx in ((0, 19), (6, 45)):
    eye = points[side:side + 4]
    np.testing.assert_allclose(eye[:2, 0], [cx - 5.5, cx + 5.5], atol=2)  # Corners.
    np.testing.assert_allclose(eye[:2, 1], [27, 27], atol=1.5)
    assert 23 <= eye[2, 1] <= 26 and 28 <= eye[3, 1] <= 31              # Lids.
    brow = points[side + 4:side + 6]
    np.testing.assert_allclose(brow[:, 0], [cx - 7, cx + 7], atol=2)    # Brow's ends.
    np.testing.assert_allclose(brow[:, 1], [16.5, 16.5], atol=1.5)      # Its upper edge.
  np.testing.assert_allclose(points[12:14, 0], [27, 37], atol=2)        # Nostrils.
  mouth = points[14:18]
  np.testing.assert_allclose(mouth[:2, 0], [22, 42], atol=2)            # Mouth corners.
  assert 46.5 <= mouth[2, 1] <= 48.5 and 51.5 <= mouth[3, 1] <= 53.5   # Lip top, bottom.


def test_the_cascade_finds_generated_faces_and_real_ones_but_not_non_faces():
  splits = fl.render_faces(identities=3, test_identities=1, per_expression=1, size=96, seed=0)
  images = np.concatenate([s["image"] for s in splits.values()])
  found = fl.extract(images)
  assert found["features"].shape == (21, 189) and np.isfinite(found["features"]).all()
  assert found["detected"].mean() >= 0.9
  lfw = fl.lfw_detection_rates()
  assert lfw["faces_detected"] >= 0.5 and lfw["false_detections"] <= 0.1, lfw


@pytest.fixture(scope="module")
def landmark_dir(tmp_path_factory):
  """A data dir where the tiny face set's features get cached (8 people, 2 of them test)."""
  return str(tmp_path_factory.mktemp("landmarks"))


def _config(data_dir, name="face_landmarks"):
  from configs import face_landmarks, ltnet_faces
  config = (face_landmarks if name == "face_landmarks" else ltnet_faces).get_config()
  config.dataset.data_dir = str(data_dir)
  config.dataset.identities = 8
  config.dataset.test_identities = 2
  config.dataset.per_expression = 2
  config.num_epochs = 2
  config.batch_size = 8
  config.eval_batch_size = 16
  config.eval_every_epochs = 0.0
  return config


def test_source_splits_by_person_standardizes_with_train_statistics_and_trains(
    landmark_dir, tmp_path):
  config = _config(landmark_dir)
  source = data.get_source(config)
  train_people = set(source.arrays["train"]["person"])
  assert train_people == set(range(6)) and set(source.arrays["test"]["person"]) == {6, 7}
  features = source.splits["train"]["features"]
  np.testing.assert_allclose(features.mean(axis=0), 0.0, atol=1e-4)
  # Cached: a second source reads the same features without drawing the faces again.
  again = data.get_source(config)
  np.testing.assert_array_equal(again.splits["test"]["features"],
                                source.splits["test"]["features"])
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["test_examples"] == 28 and np.isfinite(summary["train_loss"])


def test_empirical_confusion_by_hand():
  truth = np.array([0, 0, 0, 0, 1, 1, 2])
  given = np.array([0, 0, 0, 1, 1, 2, 2])
  np.testing.assert_allclose(af.empirical_confusion(truth, given, 3),
                             [[0.75, 0.25, 0], [0, 0.5, 0.5], [0, 0, 1]])


def test_annotated_faces_two_datasets_two_models_and_a_pool(landmark_dir, tmp_path):
  config = _config(landmark_dir, "ltnet_faces")
  config.dataset.dataset_people = (2, 2)
  source = data.get_source(config)
  train_split = source.splits["train"]
  labels, truth = train_split["annotations"], train_split["true_label"]
  member = source.membership
  np.testing.assert_array_equal(np.bincount(member), [28, 28, 28])  # A, B, pool.
  # A's human labels only on A, B's only on B; M_A and M_B label every training image.
  np.testing.assert_array_equal(labels[:, 0] >= 0, member == 0)
  np.testing.assert_array_equal(labels[:, 1] >= 0, member == 1)
  assert np.all(labels[:, 2:] >= 0)
  # The humans' matrices are the simulated ones; the models' are measured against the truth.
  np.testing.assert_allclose(source.confusions[0][4, 3], 0.3 + 0.1 / 6)
  np.testing.assert_allclose(source.confusions[1][5, 6], 0.3 + 0.1 / 6)
  for k in (2, 3):
    expected = np.zeros((7, 7))
    for t, g in zip(truth, labels[:, k]):
      expected[t, g] += 1 / np.sum(truth == t)
    np.testing.assert_allclose(source.confusions[k], expected)
  assert np.all(source.splits["test"]["annotations"] == -1)
  summary = train.train_and_evaluate(config, str(tmp_path / "ltnet"))
  assert summary["test_examples"] == 28 and np.isfinite(summary["train_loss"])


def test_bad_faces_annotation_config_is_one_line(landmark_dir, tmp_path):
  config = _config(landmark_dir, "ltnet_faces")
  config.dataset.dataset_people = (4, 4)
  with pytest.raises(data.DataError, match=r"dataset_people=\(4, 4\) must be two counts"):
    data.get_source(config)
  config.dataset.dataset_people = (2, 2)
  config.model.num_annotators = 3
  with pytest.raises(validate.ConfigError, match=r"config.model.num_annotators=3 does not "
                     r"match the 4 annotators.*set it to 4"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_opencv_is_named_in_one_line(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` raises ImportError.
  with pytest.raises(data.DataError, match=r"pip install 'bagtricks\[opencv\]'") as error:
    data.get_source(_config(tmp_path))
  assert "\n" not in str(error.value)


@pytest.mark.slow
def test_latent_truth_study_on_faces_reports_the_biased_classes(landmark_dir, tmp_path):
  from bagtricks.studies import latent_truth_study
  config = _config(landmark_dir, "ltnet_faces")
  config.dataset.dataset_people = (2, 2)
  rows = latent_truth_study.seed_rows(config, str(tmp_path), seed=0, ltnet_epochs=1)
  trained = [r for r in rows if r["test_accuracy"] is not None]
  assert len(trained) == 4
  assert all(0 <= r["biased_classes"] <= 100 for r in trained)
  ltnet = next(r for r in rows if r["method"] == latent_truth_study.LTNET_LABEL)
  assert len(ltnet["diagonal"]) == 4
  table = latent_truth_study.markdown_table(rows, [0], 1, 2)
  assert "test accuracy on the biased classes (%)" in table and "T_4 MAE" in table
