"""The parametric walker, its silhouettes and the CASIA-B test protocol."""

import numpy as np
import pytest

from bagtricks.data import gait


def _walker(seed=0):
  return gait.random_walker(np.random.default_rng(seed))


@pytest.mark.parametrize("condition", ["nm", "bg", "cl"])
def test_limbs_keep_their_lengths_through_the_cycle(condition):
  w = _walker()
  for phase in np.linspace(0, 2 * np.pi, 7):
    segments = gait.body_segments(w, phase, condition)
    lengths = [np.linalg.norm(a - b) for a, b, _ in segments]
    # Torso, head, then per side: thigh, shin, foot, upper arm, forearm.
    for side in (0, 5):
      assert lengths[2 + side] == pytest.approx(w.thigh)
      assert lengths[3 + side] == pytest.approx(w.shin)
      assert lengths[5 + side] == pytest.approx(w.upper_arm)
      assert lengths[6 + side] == pytest.approx(w.forearm)
    # Opposite legs: at phase 0 the hips' swing angles are equal and opposite (asymmetry aside).
  left_knee, right_knee = gait.body_segments(w, np.pi / 2)[2][1], gait.body_segments(
      w, np.pi / 2)[7][1]
  assert left_knee[0] > 0 > right_knee[0]  # Left leg forward at φ = π/2, right leg back.


def test_pinhole_projection_by_hand():
  # The point at hip height on the body's axis is straight ahead of the camera, 4 heights away.
  uv, scale = gait.project(np.array([[0.0, 0.5, 0.0], [0.0, 1.5, 0.0]]), view=36)
  np.testing.assert_allclose(uv[0], [0.0, 0.0], atol=1e-12)
  np.testing.assert_allclose(scale, [0.25, 0.25])
  np.testing.assert_allclose(uv[1], [0.0, 0.25], atol=1e-12)
  # Seen from the side (90°), a point 1 ahead is 1/4 to the left; one 1 nearer looks larger.
  uv, scale = gait.project(np.array([[1.0, 0.5, 0.0], [0.0, 0.5, 1.0]]), view=90)
  np.testing.assert_allclose(uv[0], [-0.25, 0.0], atol=1e-12)
  assert scale[1] == pytest.approx(1 / 3)


def test_silhouettes_fill_the_frame_and_opposite_views_differ():
  w = _walker(3)
  segments = gait.body_segments(w, 1.0, "bg")
  front = gait.render(segments, 18, 64, 44)
  rows = np.flatnonzero(front.any(axis=1))
  assert rows.min() <= 3 and rows.max() >= 60  # The person's height fills the frame.
  # θ and 180° − θ are not mirror images: the bag, the arm and the perspective differ.
  back = gait.render(segments, 162, 64, 44)[:, ::-1]
  overlap = np.sum(front & back) / np.sum(front | back)
  assert 0.5 < overlap < 0.97


def test_sequences_are_deterministic_and_laid_out_as_casia_b():
  data = gait.gait_sequences(identities=2, frames=3, height=16, width=11, views=(0, 90))
  n = 2 * sum(gait.CONDITIONS.values()) * 2
  assert data["frames"].shape == (n, 3, 16, 11) and data["frames"].dtype == np.uint8
  assert set(np.unique(data["frames"])) <= {0, 255}
  np.testing.assert_array_equal(np.bincount(data["condition"]), [2 * 6 * 2, 2 * 2 * 2,
                                                                 2 * 2 * 2])
  again = gait.gait_sequences(identities=2, frames=3, height=16, width=11, views=(0, 90))
  np.testing.assert_array_equal(again["frames"], data["frames"])
  geis = gait.gait_energy_images(data["frames"])
  np.testing.assert_allclose(geis[5], data["frames"][5].mean(axis=0) / 255.0)


def _protocol_meta(people=2, views=(0, 90)):
  rows = [(p, v, c, s) for p in range(people) for c, (name, count) in
          enumerate(gait.CONDITIONS.items()) for s in range(1, count + 1) for v in views]
  return {k: np.array(col) for k, col in zip(("person", "view", "condition", "sequence"),
                                             zip(*rows))}


def test_rank1_protocol_by_hand():
  meta = _protocol_meta()
  # Every sequence sits at its person's point, except: person 1's CL probes at view 90 sit at
  # person 0's point (wrong at every gallery view); person 0's gallery at view 0 is far off.
  embeddings = meta["person"][:, None] * np.array([[10.0]])
  wrong = (meta["person"] == 1) & (meta["condition"] == 2) & (meta["view"] == 90)
  embeddings[wrong] = 0.0
  far = (meta["person"] == 0) & (meta["condition"] == 0) & (meta["sequence"] <= 4) & (
      meta["view"] == 0)
  embeddings[far] = 100.0
  tables = gait.rank1_by_view(embeddings, meta, views=(0, 90))
  # Gallery view 0: person 0 is far off, so every probe there is matched to person 1 (right
  # for person 1's probes, wrong for person 0's). Gallery view 90: person 1's CL probes at
  # view 90 sit on person 0.
  np.testing.assert_allclose(tables["NM"], [[0.5, 1.0], [0.5, 1.0]])
  np.testing.assert_allclose(tables["CL"], [[0.5, 1.0], [0.5, 0.5]])
  np.testing.assert_allclose(gait.excluding_identical_view(tables["CL"]), [1.0, 0.5])
