r"""Khan (2018)'s landmark pipeline on the generated faces: detection rates and accuracies.

  python -m bagtricks.studies.face_landmarks_study [--config=configs/face_landmarks.py] \
      [--seeds=0,1,2] [--workdir=runs/face_landmarks]

Reports, for the config's faces (``data.face_landmarks``):

* the Haar cascade's detection rate on the generated faces (train and test people) and on
  scikit-image's ``lfw_subset`` (100 real faces found, 100 non-faces falsely found);
* the test accuracy on the unseen people of the MLP on the landmark features and of a linear
  model on the same features (``model.hidden=()``), both trained through
  ``train.train_and_evaluate`` for every seed, beside chance (1/7);
* ``face_landmarks.png``: faces of the test people with their 18 fiducial points, and the
  MLP's confusion matrix (first seed).

Finished runs in the workdir are reused.
"""

from __future__ import annotations

import os
import time
from typing import Dict, List, Sequence

import numpy as np
from absl import flags

from bagtricks import cli, data, paths, train
from bagtricks.data import face_landmarks
from bagtricks.data.faces import EXPRESSIONS
from bagtricks.studies import runner

MODELS = (("MLP on the landmark features", None), ("linear model on the same features", ()))


def _run_config(config, seed: int, hidden):
  config = config.copy_and_resolve_references()
  config.seed = seed
  if hidden is not None:
    config.model.hidden = hidden
  return config


def confusion(config, workdir: str) -> np.ndarray:
  """The finished run's ``[7, 7]`` counts, true expression (rows) × predicted (columns)."""
  counts = np.zeros((len(EXPRESSIONS),) * 2, np.int64)
  for outputs, batch, _ in runner.finished_run_outputs(config, workdir):
    real = batch["mask"] > 0
    predicted = np.argmax(outputs, axis=-1)[real]
    np.add.at(counts, (batch["label"][real], predicted), 1)
  return counts


def seed_rows(config, workdir: str, seed: int) -> List[Dict]:
  rows = []
  for label, hidden in MODELS:
    run = _run_config(config, seed, hidden)
    run_dir = paths.join(workdir, f"{'linear' if hidden == () else 'mlp'}_s{seed}")
    summary = train.train_and_evaluate(run, run_dir)
    rows.append({"model": label, "seed": seed, "test_accuracy": summary["test_accuracy"],
                 "confusion": confusion(run, run_dir).tolist() if hidden is None else None})
  return rows


def detection_rates(source) -> Dict[str, float]:
  rates = {f"generated faces, {split} people": float(np.mean(arrays["detected"]))
           for split, arrays in source.arrays.items()}
  lfw = face_landmarks.lfw_detection_rates()
  rates["lfw_subset, real faces found"] = lfw["faces_detected"]
  rates["lfw_subset, non-faces falsely found"] = lfw["false_detections"]
  return rates


def markdown_table(rows: List[Dict], rates: Dict[str, float], seeds: Sequence[int]) -> str:
  lines = ["| Haar cascade | rate (%) |", "|---|---|"]
  lines += [f"| {name} | {100 * rate:.1f} |" for name, rate in rates.items()]
  lines += ["", f"Seeds {list(seeds)}; test people never seen in training.", "",
            "| model | test accuracy (%) |", "|---|---|"]
  for label, _ in MODELS:
    lines.append(f"| {label} | "
                 + runner.mean_std([r["test_accuracy"] for r in rows if r["model"] == label],
                                   scale=100.0) + " |")
  lines.append(f"| chance (7 classes) | {100 / len(EXPRESSIONS):.1f} |")
  return "\n".join(lines) + "\n"


def plot(results: Dict, path: str) -> None:
  """Test faces with their fiducial points (one per expression), and the confusion matrix."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  examples = results["examples"]
  counts = np.array(next(r["confusion"] for r in results["rows"] if r["confusion"]))
  fig = plt.figure(figsize=(10, 4.2))
  grid = fig.add_gridspec(2, 8)  # Faces in columns 0-3, the matrix in 4-7.
  for k, example in enumerate(examples):
    ax = fig.add_subplot(grid[k // 4, k % 4])
    ax.imshow(example["crop"], cmap="gray", vmin=0, vmax=255)
    points = np.array(example["points"])
    ax.scatter(points[:, 0], points[:, 1], s=6, c="red")
    ax.set_title(EXPRESSIONS[example["label"]], fontsize=8)
    ax.axis("off")
  ax = fig.add_subplot(grid[:, 4:])
  rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
  ax.imshow(rates, vmin=0, vmax=1, cmap="viridis")
  for i in range(len(EXPRESSIONS)):
    for j in range(len(EXPRESSIONS)):
      ax.text(j, i, f"{100 * rates[i, j]:.0f}", ha="center", va="center", fontsize=7,
              color="white" if rates[i, j] < 0.5 else "black")
  ax.set_xticks(range(len(EXPRESSIONS)), EXPRESSIONS, rotation=45, fontsize=7)
  ax.set_yticks(range(len(EXPRESSIONS)), EXPRESSIONS, fontsize=7)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true expression")
  ax.set_title(f"MLP, seed {results['seeds'][0]}: test faces (%)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def examples(source) -> List[Dict]:
  """One test face per expression: its crop and fiducial points."""
  test = source.arrays["test"]
  cascade = face_landmarks.face_cascade()
  chosen = []
  for label in range(len(EXPRESSIONS)):
    index = int(np.flatnonzero(test["label"] == label)[0])
    gray = face_landmarks.preprocess(test["image"][index])
    crop = face_landmarks.face_crop(gray, face_landmarks.detect_face(gray, cascade))
    chosen.append({"label": label, "crop": crop.tolist(),
                   "points": test["points"][index].tolist()})
  return chosen


def main() -> None:
  config = flags.FLAGS.config
  seeds = runner.numbers("seeds")
  if not seeds:
    runner.usage_error("--seeds must name at least one seed.")
  start = time.time()
  source = cli.run_reporting_errors(data.get_source, config)
  rates = detection_rates(source)
  rows = []
  for seed in seeds:
    rows += cli.run_reporting_errors(seed_rows, config, flags.FLAGS.workdir, seed)
  results = {"seeds": seeds, "detection": rates, "rows": rows, "examples": examples(source)}
  runner.write_outputs(flags.FLAGS.workdir, "face_landmarks",
                       markdown_table(rows, rates, seeds), results, start, plot=plot)


def define_flags() -> None:
  runner.define_config_flag("face_landmarks", "The runs' config (faces, MLP, budget); "
                            "fields overridable as --config.field=value.")
  flags.DEFINE_string("workdir", os.path.join("runs", "face_landmarks"), "Output directory.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")


if __name__ == "__main__":
  runner.run_command(main, define_flags, default_config="face_landmarks")
