r"""A picture of the generated faces: people (rows) × expressions (columns).

  python -m bagtricks.tools.draw_faces [--out=docs/faces.png] [--people=6] [--size=48]

Draws the first ``--people`` identities of ``data.faces`` (seed ``--seed``) in each of the 7
expressions at full intensity, with their pose, lighting and noise, as the ``faces`` dataset
draws them.
"""

from __future__ import annotations

import numpy as np
from absl import flags

from bagtricks import paths
from bagtricks.data import faces
from bagtricks.studies import runner


def face_grid(people: int, size: int, seed: int) -> np.ndarray:
  """``[people, 7, size, size]`` uint8: each person in each expression."""
  rows = []
  for person in range(people):
    identity = faces.random_identity(np.random.default_rng([seed, person]))
    rng = np.random.default_rng([seed, person, 1])
    rows.append([faces.draw_face(identity, faces.scaled_expression(name, 1.0), rng, size)
                 for name in faces.EXPRESSIONS])
  return np.asarray(rows)


def plot(grid: np.ndarray, path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  people, expressions = grid.shape[:2]
  fig, axes = plt.subplots(people, expressions, figsize=(1.1 * expressions, 1.15 * people),
                           squeeze=False)
  for r in range(people):
    for c in range(expressions):
      axes[r][c].imshow(grid[r, c], cmap="gray", vmin=0, vmax=255)
      axes[r][c].axis("off")
      if r == 0:
        axes[r][c].set_title(faces.EXPRESSIONS[c], fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main() -> None:
  args = flags.FLAGS
  if args.people < 1 or args.size < 16:
    runner.usage_error(f"--people={args.people} must be >= 1 and --size={args.size} >= 16.")
  grid = face_grid(args.people, args.size, args.seed)
  with paths.local_copy_for_writing(args.out) as local:
    plot(grid, local)
  print(f"Wrote {args.out}.")


def define_flags() -> None:
  flags.DEFINE_string("out", "faces.png", "The picture's path (local or gs://).")
  flags.DEFINE_integer("people", 6, "Identities, one per row.")
  flags.DEFINE_integer("size", 48, "Image side in pixels.")
  flags.DEFINE_integer("seed", 0, "The generator's seed (the faces dataset uses 0).")


if __name__ == "__main__":
  runner.run_command(main, define_flags)
