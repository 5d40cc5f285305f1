r"""Cross-view gait recognition on the generated walkers: the protocol's tables and pictures.

  python -m bagtricks.studies.gait_study [--identities=74] [--test_identities=50] \
      [--frames=16] [--height=32] [--width=22] [--workdir=runs/gait]

Draws the walkers of ``data.gait`` (every person in NM 1–6, BG 1–2 and CL 1–2 at the 11
views) and scores the test people (the last ``--test_identities``, never used for training)
by CASIA-B's protocol: gallery NM 1–4, probes NM 5–6, BG 1–2 and CL 1–2, rank-1 per probe
view averaged over the gallery views other than its own. The method here is the classical
baseline, the gait energy image (the mean silhouette, Han & Bhanu 2006) matched by nearest
neighbour. Writes ``gait.md`` (mean rank-1 and the per-view table), ``gait.json`` and
``gait.png`` (a walker in each condition at each view, and rank-1 per probe view).
"""

from __future__ import annotations

import os
import time
from typing import Dict

import numpy as np
from absl import flags

from bagtricks.data import gait
from bagtricks.studies import runner


def gei_results(data: Dict[str, np.ndarray], test: np.ndarray) -> Dict[str, Dict]:
  """The GEI baseline's rank-1 tables on the sequences ``test`` selects."""
  meta = {k: v[test] for k, v in data.items() if k != "frames"}
  tables = gait.rank1_by_view(gait.gait_energy_images(data["frames"][test]), meta)
  return {probe: {"per_view": gait.excluding_identical_view(t).tolist(),
                  "table": t.tolist()} for probe, t in tables.items()}


def markdown_table(results: Dict[str, Dict], test_people: int) -> str:
  lines = [f"Rank-1 (%) of {test_people} test people, identical view excluded; gallery NM "
           "1-4.", "",
           "| method | probe | mean | " + " | ".join(f"{v}°" for v in gait.VIEWS) + " |",
           "|---" * (3 + len(gait.VIEWS)) + "|"]
  for method, by_probe in results.items():
    for probe, r in by_probe.items():
      lines.append(f"| {method} | {probe} | {100 * np.mean(r['per_view']):.1f} | "
                   + " | ".join(f"{100 * v:.1f}" for v in r["per_view"]) + " |")
  return "\n".join(lines) + "\n"


def plot(results: Dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  examples = np.array(results["examples"])  # [conditions, views, H, W]
  rows, cols = examples.shape[:2]
  fig = plt.figure(figsize=(12, 1.4 * rows + 3))
  grid = fig.add_gridspec(rows + 2, cols)
  for r in range(rows):
    for c in range(cols):
      ax = fig.add_subplot(grid[r, c])
      ax.imshow(examples[r, c], cmap="gray", vmin=0, vmax=255)
      ax.axis("off")
      if r == 0:
        ax.set_title(f"{gait.VIEWS[c]}°", fontsize=8)
  ax = fig.add_subplot(grid[rows:, :])
  for method, by_probe in results["methods"].items():
    for probe, r in by_probe.items():
      ax.plot(gait.VIEWS, 100 * np.array(r["per_view"]), marker="o", label=f"{method} {probe}")
  ax.set_xticks(gait.VIEWS)
  ax.set_xlabel("probe view (°)")
  ax.set_ylabel("rank-1 (%), identical view excluded")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main() -> None:
  args = flags.FLAGS
  if not 0 < args.test_identities < args.identities or args.frames < 1:
    runner.usage_error(f"--test_identities={args.test_identities} must be in (0, "
                       f"--identities={args.identities}) and --frames={args.frames} >= 1.")
  start = time.time()
  data = gait.gait_sequences(args.identities, args.frames, args.height, args.width, args.seed)
  test = data["person"] >= args.identities - args.test_identities
  methods = {"GEI + nearest neighbour": gei_results(data, test)}
  first = data["person"] == 0
  examples = [[data["frames"][np.flatnonzero(first & (data["condition"] == c)
                                               & (data["sequence"] == 1)
                                               & (data["view"] == v))[0], 0]
               for v in gait.VIEWS] for c in range(len(gait.CONDITIONS))]
  results = {"methods": methods, "examples": np.asarray(examples).tolist(),
             "settings": {k: getattr(args, k) for k in ("identities", "test_identities",
                                                        "frames", "height", "width", "seed")}}
  runner.write_outputs(args.workdir, "gait", markdown_table(methods, args.test_identities),
                       results, start, plot=plot)


def define_flags() -> None:
  flags.DEFINE_string("workdir", os.path.join("runs", "gait"), "Output directory.")
  flags.DEFINE_integer("identities", 74 + 50, "People in all (CASIA-B: 124).")
  flags.DEFINE_integer("test_identities", 50, "The last people, the test split (CASIA-B: 50).")
  flags.DEFINE_integer("frames", 16, "Frames per sequence.")
  flags.DEFINE_integer("height", 32, "Silhouette height (the paper: 64).")
  flags.DEFINE_integer("width", 22, "Silhouette width (the paper: 44).")
  flags.DEFINE_integer("seed", 0, "The walkers' seed.")


if __name__ == "__main__":
  runner.run_command(main, define_flags)
