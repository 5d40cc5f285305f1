"""The procedural faces: deterministic, split by identity, expressions that can be told apart."""

import dataclasses

import numpy as np
import pytest

from bagtricks.data import faces


def test_faces_are_deterministic_balanced_and_split_by_identity():
  arrays = faces.face_arrays(identities=5, test_identities=2, per_expression=2, size=32)
  (train_x, train_y), (test_x, test_y) = arrays["train"], arrays["test"]
  assert train_x.shape == (3 * 7 * 2, 32, 32, 1) and train_x.dtype == np.uint8
  assert test_x.shape == (2 * 7 * 2, 32, 32, 1)
  np.testing.assert_array_equal(np.bincount(train_y), [6] * 7)
  np.testing.assert_array_equal(np.bincount(test_y), [4] * 7)
  again = faces.face_arrays(identities=5, test_identities=2, per_expression=2, size=32)
  np.testing.assert_array_equal(again["test"][0], test_x)
  # The test split's first image is person 3's first (neutral) face: people 0-2 train only.
  identity = faces.random_identity(np.random.default_rng([0, 3]))
  rng = np.random.default_rng([0, 3, 1])
  first = faces.draw_face(identity, faces.scaled_expression("neutral", rng.uniform(0.6, 1.2)),
                          rng, 32)
  np.testing.assert_array_equal(test_x[0, ..., 0], first)
  with pytest.raises(ValueError, match="test_identities=5"):
    faces.face_arrays(identities=5, test_identities=5)


def test_expression_intensity_scales_the_movements():
  neutral = faces.scaled_expression("surprise", 0.0)
  assert neutral == faces.PROTOTYPES["neutral"]
  half = faces.scaled_expression("surprise", 0.5)
  full = faces.PROTOTYPES["surprise"]
  for field in dataclasses.fields(faces.Expression):
    middle = (getattr(neutral, field.name) + getattr(full, field.name)) / 2
    assert getattr(half, field.name) == pytest.approx(middle)


def test_each_expression_changes_its_own_region():
  identity = faces.random_identity(np.random.default_rng(0))

  def frontal(name):
    return faces.draw_face(identity, faces.scaled_expression(name, 1.0),
                           np.random.default_rng(1), 96, pose=False).astype(float)

  neutral = frontal("neutral")
  rows = {"brows and eyes": slice(20, 46), "mouth": slice(58, 80)}
  changed = {name: {part: np.abs(frontal(name) - neutral)[r].mean() for part, r in rows.items()}
             for name in faces.EXPRESSIONS[1:]}
  for name in faces.EXPRESSIONS[1:]:
    assert max(changed[name].values()) > 1.0, (name, changed[name])
  # Surprise opens the mouth and raises the brows; a smile moves the mouth more than the brows.
  assert changed["surprise"]["mouth"] > changed["anger"]["mouth"]
  assert changed["surprise"]["brows and eyes"] > changed["happy"]["brows and eyes"]
  assert changed["happy"]["mouth"] > changed["happy"]["brows and eyes"]


@pytest.mark.slow
def test_expressions_are_learnable_on_unseen_people():
  from sklearn.linear_model import LogisticRegression
  arrays = faces.face_arrays(identities=50, test_identities=15, per_expression=2, size=32)
  (train_x, train_y), (test_x, test_y) = arrays["train"], arrays["test"]
  model = LogisticRegression(C=0.01, max_iter=2000)
  model.fit(train_x.reshape(len(train_x), -1) / 255.0, train_y)
  accuracy = model.score(test_x.reshape(len(test_x), -1) / 255.0, test_y)
  assert accuracy > 2 / 7  # Twice chance on people never seen in training.


def test_faces_are_a_local_tfds_dataset_with_named_classes(tmp_path, monkeypatch):
  import dataclasses as dc
  from bagtricks import data, validate
  from bagtricks.data import bundled
  from configs import default
  small = dc.replace(bundled.LOCAL_IMAGE_DATASETS["faces"], arrays=lambda: faces.face_arrays(
      identities=3, test_identities=1, per_expression=1))
  monkeypatch.setitem(bundled.LOCAL_IMAGE_DATASETS, "faces", small)
  config = default.get_config()
  config.dataset.name = "faces"
  config.dataset.data_dir = str(tmp_path)
  config.batch_size = config.eval_batch_size = 8
  info = data.get_source(validate.complete_config(config)).info()
  assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (7, 14, 7)
  assert info.class_names == faces.EXPRESSIONS
  assert info.element_spec["image"].shape == (48, 48, 1)
  with pytest.raises(data.DataError, match="must be one of \\('sklearn_digits', 'mnist_5k'\\)"):
    config.dataset.digits = "faces"
    data.digit_sets.chosen_digits(config)


def test_face_grid_picture(tmp_path):
  from bagtricks.tools import draw_faces
  grid = draw_faces.face_grid(people=2, size=24, seed=0)
  assert grid.shape == (2, 7, 24, 24) and grid.dtype == np.uint8
  draw_faces.plot(grid, str(tmp_path / "faces.png"))
  assert (tmp_path / "faces.png").stat().st_size > 1000
