"""GaitSet's set pooling, HPM, network and batch-all triplet loss."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bagtricks import losses
from models import gaitset


def _triplet_reference(embeddings, labels, margin):
  """NumPy, loop by loop: each strip's mean over non-zero triplets, then the strips' mean."""
  per_strip, counts = [], []
  for strip in embeddings:
    terms = []
    for a, p, n in itertools.product(range(len(labels)), repeat=3):
      if a != p and labels[a] == labels[p] and labels[a] != labels[n]:
        d_ap = np.linalg.norm(strip[a] - strip[p])
        d_an = np.linalg.norm(strip[a] - strip[n])
        terms.append(max(0.0, margin + d_ap - d_an))
    terms = np.array(terms)
    counts.append(np.sum(terms > 0))
    per_strip.append(terms.sum() / max(counts[-1], 1))
  return np.mean(per_strip), np.array(counts)


def test_batch_all_triplet_loss_against_numpy():
  rng = np.random.default_rng(0)
  embeddings = rng.normal(size=(3, 8, 4)).astype(np.float32) * 0.3
  labels = np.array([0, 0, 1, 1, 2, 2, 2, 3])
  expected, counts = _triplet_reference(embeddings, labels, 0.2)
  got = losses.batch_all_triplet_loss(jnp.asarray(embeddings), jnp.asarray(labels), 0.2)
  assert float(got) == pytest.approx(expected, rel=1e-5)
  _, nonzero, sums, pairs = losses.batch_all_triplet_sums(
      jnp.asarray(embeddings), jnp.asarray(labels), jnp.arange(8), jnp.asarray(embeddings),
      jnp.asarray(labels))
  np.testing.assert_array_equal(nonzero, counts)
  # Positive pairs: 2·1 + 2·1 + 3·2 + 1·0 = 10 (no self-pairs); negative: 64 − (4 + 4 + 9 + 1).
  assert int(pairs["positive"]) == 10 and int(pairs["negative"]) == 46
  # Anchors on one device against the gathered batch give the same sums as the whole batch.
  half = losses.batch_all_triplet_sums(jnp.asarray(embeddings[:, :4]), jnp.asarray(labels[:4]),
                                       jnp.arange(4), jnp.asarray(embeddings),
                                       jnp.asarray(labels))
  rest = losses.batch_all_triplet_sums(jnp.asarray(embeddings[:, 4:]), jnp.asarray(labels[4:]),
                                       jnp.arange(4, 8), jnp.asarray(embeddings),
                                       jnp.asarray(labels))
  total = (half[0] + rest[0]) / jnp.maximum(half[1] + rest[1], 1)
  assert float(jnp.mean(total)) == pytest.approx(expected, rel=1e-5)
  grads = jax.grad(lambda e: losses.batch_all_triplet_loss(e, jnp.asarray(labels)))(
      jnp.asarray(embeddings))
  assert np.isfinite(grads).all()


def test_horizontal_pyramid_by_hand():
  x = np.arange(2 * 4 * 3 * 2, dtype=np.float32).reshape(2, 4, 3, 2)
  out = np.asarray(gaitset.horizontal_pyramid(jnp.asarray(x), (1, 2, 4)))
  assert out.shape == (2, 1 + 2 + 4, 2)
  # Scale 2, strip 1 (rows 2-3) of example 1, channel 0: mean + max of those 6 pixels.
  pixels = x[1, 2:4, :, 0]
  assert out[1, 2, 0] == pytest.approx(pixels.mean() + pixels.max())
  row = x[0, 3, :, 1]  # Scale 4, last strip: one row.
  assert out[0, 6, 1] == pytest.approx(row.mean() + row.max())
  with pytest.raises(ValueError, match="4 rows cannot be cut into 8 strips"):
    gaitset.horizontal_pyramid(jnp.asarray(x), (8,))


@pytest.mark.parametrize("kind", gaitset.SET_POOLINGS)
def test_embedding_is_unchanged_when_frames_are_shuffled(kind):
  model = gaitset.GaitSet(embedding_dim=8, channels=(4, 8, 8), scales=(1, 2, 4),
                          set_pooling=kind)
  frames = (np.random.default_rng(1).random((2, 5, 16, 12)) > 0.5).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), frames)
  out = model.apply(variables, frames)
  assert out.shape == (2, 2 * (1 + 2 + 4), 8)
  shuffled = model.apply(variables, frames[:, [3, 0, 4, 2, 1]])
  np.testing.assert_allclose(shuffled, out, atol=1e-5)
  # Different sets give different embeddings.
  assert not np.allclose(model.apply(variables, frames[::-1]), out)
