r"""Learning from web data with a self-organizing memory against its baselines, on web digits.

  python -m bagtricks.studies.web_study [--config=configs/web_memory.py] [--seeds=0,1,2] \
      [--methods=whole_image,mean,max,memory,memory_d,memory_r] [--workdir=runs/web]

On the config's web digits (``data.web_digits``: label noise and background noise), every run
through ``train.train_and_evaluate`` with the same data, model and budget (a finished run in
the workdir is reused), for every seed:

* plain cross-entropy on whole images (``web_bags.pooling='whole_image'``, the whole scene
  at full resolution);
* multi-instance learning over the bags' regions with mean or max pooling, no memory;
* the memory method (Tu et al. 2020), and its ablations with one score only.

Each row reports the clean test accuracy; for the memory runs also, on every training image
in fixed bags, the share of a clean image's region weight on the crops that hold its digit
and the AUC of the image weights separating clean from noisy images (the ground truth that
only these metrics read). Writes ``web.md``, ``web.json`` and ``web.png`` (bags of the first
seed's memory run with their region weights).
"""

from __future__ import annotations

import os
import time
from typing import Dict, List, Sequence

import jax.numpy as jnp
import numpy as np
from absl import flags

from bagtricks import paths, som_memory, train
from bagtricks.studies import runner
from bagtricks.tasks.web_bags import noisy_image_auc, weight_on_digit

EXAMPLE_BAGS = 6  # Bags in the picture.
# (row label, run name, config.web_bags overrides).
METHODS = (
    ("plain cross-entropy on whole images", "whole_image", {"pooling": "whole_image"}),
    ("MIL, mean pooling", "mean", {"pooling": "mean"}),
    ("MIL, max pooling", "max", {"pooling": "max"}),
    ("memory: r-score · d-score", "memory", {"pooling": "memory", "scores": "both"}),
    ("memory: d-score only", "memory_d", {"pooling": "memory", "scores": "discriminative"}),
    ("memory: r-score only", "memory_r", {"pooling": "memory", "scores": "representative"}),
)
METHOD_NAMES = tuple(name for _, name, _ in METHODS)


def run_config(config, seed: int, overrides: Dict):
  config = config.copy_and_resolve_references()
  config.seed = seed
  for field, value in overrides.items():
    config.web_bags[field] = value
  if overrides["pooling"] == "whole_image":  # The whole scene at its own resolution.
    config.dataset.regions = "whole"
    config.dataset.region_side = config.dataset.canvas
  return config


def memory_weights(config, run_dir: str) -> Dict[str, np.ndarray]:
  """A finished memory run's region weights on every training image, in the fixed bags.

  Returns:
    ``{'alpha' [B, bag, R], 'holds_digit' [B, bag, R], 'noisy' [B, bag], 'label' [B]}``.
  """
  out: Dict[str, List[np.ndarray]] = {k: [] for k in ("alpha", "holds_digit", "noisy",
                                                      "label")}
  scores = config.web_bags.scores
  for outputs, batch, variables in runner.finished_run_outputs(config, run_dir,
                                                               split="train_bags"):
    real = batch["mask"] > 0
    memory = som_memory.Memory(**variables["task_state"]["memory"])
    features = outputs["features"][real]
    flat = features.reshape(len(features), -1, features.shape[-1])
    alpha = som_memory.roi_weights(jnp.asarray(flat), jnp.asarray(batch["label"][real]),
                                   memory, scores)
    out["alpha"].append(np.asarray(alpha).reshape(features.shape[:3]))
    for key in ("holds_digit", "noisy", "label"):
      out[key].append(batch[key][real])
  return {k: np.concatenate(v) for k, v in out.items()}


def example_bags(count: int) -> np.ndarray:
  """Which of ``count`` fixed bags the picture shows: ``EXAMPLE_BAGS`` spread evenly."""
  return np.arange(count)[:: max(1, count // EXAMPLE_BAGS)][:EXAMPLE_BAGS]


def seed_rows(config, workdir: str, seed: int, keep_examples: bool = False,
              methods: Sequence[str] = METHOD_NAMES) -> List[Dict]:
  """The row for ``seed`` of every method named in ``methods`` (run names); with
  ``keep_examples``, the memory run's row also holds the weights of the pictured bags
  (``examples``)."""
  rows = []
  for label, name, overrides in METHODS:
    if name not in methods:
      continue
    run = run_config(config, seed, overrides)
    run_dir = paths.join(workdir, f"{name}_s{seed}")
    summary = train.train_and_evaluate(run, run_dir)
    row = {"method": label, "seed": seed, "test_accuracy": summary["test_accuracy"],
           "weight_on_digit": None, "noisy_auc": None}
    if overrides["pooling"] == "memory":
      weights = memory_weights(run, run_dir)
      row["weight_on_digit"] = weight_on_digit(weights["alpha"], weights["holds_digit"],
                                               weights["noisy"])
      row["noisy_auc"] = noisy_image_auc(weights["alpha"].sum(-1).reshape(-1),
                                         weights["noisy"].reshape(-1))
      if keep_examples and name == "memory":
        picked = example_bags(len(weights["label"]))
        row["examples"] = {k: v[picked].tolist() for k, v in weights.items()}
    rows.append(row)
  return rows


def markdown_table(rows: List[Dict], seeds) -> str:
  lines = [f"Seeds {list(seeds)}; mean ± std.", "",
           "| method | clean test accuracy (%) | region weight on the digit's crop (%) | "
           "AUC, clean vs noisy images |", "|---|---|---|---|"]
  for label, _, _ in METHODS:
    mine = [r for r in rows if r["method"] == label]
    if not mine:
      continue
    lines.append(f"| {label} | {runner.mean_std([r['test_accuracy'] for r in mine], 100)} | "
                 f"{runner.mean_std([r['weight_on_digit'] for r in mine], 100)} | "
                 f"{runner.mean_std([r['noisy_auc'] for r in mine])} |")
  return "\n".join(lines) + "\n"


def plot(results: Dict, path: str) -> None:
  """Bags of the memory run: each scene with its regions' weights (the grid crops' weights
  drawn over the crops they cover; the whole image's in the title)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  examples = results.get("examples")
  if not examples:
    return
  scenes = np.asarray(examples["scenes"])  # [bags, bag, H, W]
  alpha = np.asarray(examples["alpha"])     # [bags, bag, R]
  noisy = np.asarray(examples["noisy"])
  bags, size = scenes.shape[:2]
  fig, axes = plt.subplots(bags, size, figsize=(2.2 * size, 2.3 * bags), squeeze=False)
  boxes = np.asarray(examples["boxes"])
  for b in range(bags):
    for i in range(size):
      ax = axes[b, i]
      ax.imshow(scenes[b, i], cmap="gray", vmin=0, vmax=255)
      for k, (row, col, side) in enumerate(boxes[:-1]):
        ax.add_patch(plt.Rectangle((col - 0.5, row - 0.5), side, side, fill=False,
                                   lw=4 * alpha[b, i, k] / max(alpha[b].max(), 1e-9),
                                   color="red"))
      ax.set_title(f"label {examples['label'][b]}{' (noisy)' if noisy[b, i] else ''}\n"
                   f"image {alpha[b, i].sum():.2f}, whole {alpha[b, i, -1]:.2f}", fontsize=7)
      ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main() -> None:
  args = flags.FLAGS
  from bagtricks import data, validate  # pylint: disable=g-import-not-at-top
  from bagtricks.data import web_digits  # pylint: disable=g-import-not-at-top
  config = validate.complete_config(args.config)
  seeds = runner.numbers("seeds")
  methods = runner.names("methods", METHOD_NAMES)
  start = time.time()
  rows = [row for seed in seeds
          for row in seed_rows(config, args.workdir, seed, keep_examples=seed == seeds[0],
                               methods=methods)]
  results = {"rows": [{k: v for k, v in r.items() if k != "examples"}
                      for r in rows], "seeds": seeds}
  example_row = next((r for r in rows if "examples" in r), None)
  if example_row is not None:
    source = data.get_source(config)
    bag_size = config.dataset.bag_size
    picked = example_bags(len(source.splits["train_bags"]["label"]))
    scenes = source.scenes[source.bag_members()[picked].reshape(-1)]
    results["examples"] = {
        **example_row["examples"],
        "scenes": scenes.reshape(len(picked), bag_size, *scenes.shape[1:]).tolist(),
        "boxes": web_digits.region_boxes(web_digits.REGION_SETS[config.dataset.regions],
                                         config.dataset.canvas).tolist()}
  runner.write_outputs(args.workdir, "web", markdown_table(rows, seeds), results, start,
                       plot=plot)


def define_flags() -> None:
  runner.define_config_flag("web_memory", "The memory method's config (the baselines' too).")
  flags.DEFINE_string("workdir", os.path.join("runs", "web"), "Output directory.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
  flags.DEFINE_list("methods", list(METHOD_NAMES),
                    "The runs to make and tabulate (a finished run is reused).")


if __name__ == "__main__":
  runner.run_command(main, define_flags, default_config="web_memory")
