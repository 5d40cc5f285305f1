"""CASIA-B's protocol for cross-view gait recognition (Yu et al. 2006), as GaitSet reports it.

Pure NumPy, shared by the walkers' data (``data.gait``), the gait task and its study: the 11
views, the three conditions and their sequence counts, the gallery and probe sets, and rank-1
accuracy per probe view × gallery view, reported with the identical view excluded.
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

# The per-sequence metadata a split carries for the protocol.
META_KEYS = ("person", "view", "condition", "sequence")
VIEWS = tuple(range(0, 181, 18))  # CASIA-B's 11 views, degrees.
# Condition → how many sequences each person walks in it, in CASIA-B (nm-01 … nm-06, …).
CONDITIONS = {"nm": 6, "bg": 2, "cl": 2}
# The paper's protocol: gallery NM 1–4; probes NM 5–6, BG 1–2, CL 1–2.
GALLERY = ("nm", (1, 2, 3, 4))
PROBES = {"NM": ("nm", (5, 6)), "BG": ("bg", (1, 2)), "CL": ("cl", (1, 2))}


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """``[n, m]`` squared Euclidean distances of rows ``a [n, d]`` to rows ``b [m, d]``."""
  return (np.sum(a * a, -1)[:, None] + np.sum(b * b, -1)[None, :] - 2.0 * a @ b.T)


def rank1(probes: np.ndarray, probe_people: np.ndarray, gallery: np.ndarray,
          gallery_people: np.ndarray) -> float:
  """The share of probes ``[n, d]`` whose nearest gallery row ``[m, d]`` (Euclidean) is of
  the same person."""
  nearest = np.argmin(squared_distances(probes, gallery), axis=1)
  return float(np.mean(gallery_people[nearest] == probe_people))


def rank1_by_view(embeddings: np.ndarray, meta: Dict[str, np.ndarray],
                  views: Sequence[int] = VIEWS) -> Dict[str, np.ndarray]:
  """The paper's protocol: rank-1 of each probe set, per probe view × gallery view.

  For probe view p and gallery view g, each probe sequence (``PROBES``) is matched to its
  nearest gallery sequence (``GALLERY``) of view g by Euclidean distance; rank-1 is the share
  whose nearest sequence is the same person.

  Args:
    embeddings: ``[n, d]``, one per sequence of ``meta`` (flattened as needed).
    meta: ``person``, ``view``, ``condition``, ``sequence`` arrays ``[n]``.
    views: the views, in table order.

  Returns:
    ``{probe: [len(views), len(views)]}`` rank-1 in [0, 1], rows the probe view, columns the
    gallery view.
  """
  embeddings = np.asarray(embeddings, np.float64).reshape(len(embeddings), -1)
  names = list(CONDITIONS)

  def chosen(condition: str, sequences, view):
    return np.flatnonzero((meta["condition"] == names.index(condition))
                          & np.isin(meta["sequence"], sequences) & (meta["view"] == view))

  tables = {}
  for probe, (condition, sequences) in PROBES.items():
    table = np.zeros((len(views), len(views)))
    for i, probe_view in enumerate(views):
      probes = chosen(condition, sequences, probe_view)
      for j, gallery_view in enumerate(views):
        gallery = chosen(GALLERY[0], GALLERY[1], gallery_view)
        table[i, j] = rank1(embeddings[probes], meta["person"][probes],
                            embeddings[gallery], meta["person"][gallery])
    tables[probe] = table
  return tables


def excluding_identical_view(table: np.ndarray) -> np.ndarray:
  """Each probe view's rank-1 averaged over the gallery views other than its own."""
  off = ~np.eye(len(table), dtype=bool)
  return np.array([table[i][off[i]].mean() for i in range(len(table))])
