r"""The Latent Truth Net (IPA2LT) against training on the labels as given, or aggregated.

  python -m bagtricks.studies.latent_truth_study [--config=configs/ltnet_digits.py] \
      [--seeds=0,1,2] [--ltnet_epochs=5] [--workdir=runs/latent_truth]

Zeng, Shan & Chen (ECCV 2018) learn the latent truth of images that several annotators
labelled inconsistently, with one transition matrix per annotator. On the config's data
(by default the 5,000 MNIST digits, each labelled by three annotators 60 %, 70 % and 80 %
accurate), for every seed (the training seed and the annotations' draw), every run through
``train.train_and_evaluate``:

* the labels alone: majority vote and Dawid–Skene EM (``data.annotators``);
* the backbone trained on the union of the labels, on the majority vote, and on the
  Dawid–Skene labels, each for the config's budget;
* LTNet, as the paper trains it: from the union run (``init_from``) for ``--ltnet_epochs``
  more epochs with the transition matrices learned.

With ``--config=configs/ltnet_faces.py`` the data are IPA2LT's own setting: two face datasets
whose annotators have different systematic biases, and the models trained on each labelling
everything (``data.annotated_faces``).

Each row reports the test accuracy against the true classes (and, where the annotators have
systematic biases, on the test images of the classes they confuse), the share of training
images whose true class is recovered (the argmax of the model, or the aggregated label), and,
where T_k is estimated, its diagonal and the mean absolute error of its entries against the
annotator's true matrix. It writes ``latent_truth.md``, ``latent_truth.json`` and
``latent_truth.png`` (the true matrices beside LTNet's and Dawid–Skene's, seed 0) into the
workdir; finished runs are reused.
"""

from __future__ import annotations

import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
from absl import flags

from bagtricks import cli, data, paths, train
from bagtricks.studies import runner

# (row label, config.latent_truth.method) of the runs trained for the config's whole budget.
BASELINE_RUNS = (("union of the labels", "union"), ("majority vote", "majority_vote"),
                 ("Dawid–Skene labels", "dawid_skene"))
LTNET_LABEL = "LTNet (from the union run)"


def _seeded(config, seed: int):
  config = config.copy_and_resolve_references()
  config.seed = seed
  config.dataset.annotation_seed = seed
  return config


def run_config(config, method: str, seed: int, init_from: str = "",
               epochs: Optional[float] = None):
  """The config of one run: ``method`` on the data of ``seed``, optionally from ``init_from``."""
  config = _seeded(config, seed)
  config.latent_truth.method = method
  if method != "ltnet":  # The trace penalty is LTNet's; the baselines' runs do not vary with it.
    config.latent_truth.trace_weight = 0.0
  if init_from:
    config.init_from = init_from
  if epochs is not None:
    with config.ignore_type():
      config.num_epochs = epochs
    config.schedule.warmup_epochs = min(config.schedule.warmup_epochs, 0.2 * epochs)
    config.eval_every_epochs = epochs
  return config


def train_predictions(config, workdir: str) -> Dict[str, np.ndarray]:
  """The finished run's truth predictions on the train split and its learned T_k.

  Returns:
    ``{'predicted': int [n], 'true_label': int [n], 'transitions': [K, C, C] or None}``.
  """
  predicted, true_labels = [], []
  transitions = None
  for outputs, batch, _ in runner.finished_run_outputs(config, workdir,
                                                        config.dataset.train_split):
    real = batch["mask"] > 0
    predicted.append(np.argmax(outputs["logits"], -1)[real])
    true_labels.append(batch["true_label"][real])
    transitions = np.exp(outputs["log_transitions"])
  return {"predicted": np.concatenate(predicted), "true_label": np.concatenate(true_labels),
          "transitions": transitions}


def biased_class_accuracy(config, workdir: str, classes: Sequence[int]) -> float:
  """The finished run's test accuracy (%) over the test images of ``classes`` only."""
  correct = total = 0
  for outputs, batch, _ in runner.finished_run_outputs(config, workdir):
    chosen = (batch["mask"] > 0) & np.isin(batch["true_label"], classes)
    correct += np.sum((np.argmax(outputs["logits"], -1) == batch["true_label"]) & chosen)
    total += np.sum(chosen)
  return 100.0 * correct / max(total, 1)


def _matrix_row(label: str, seed: int, test: Optional[float], recovered: float,
                estimated: Optional[np.ndarray], simulated: np.ndarray) -> Dict:
  row = {"method": label, "seed": seed, "test_accuracy": test, "recovered": 100 * recovered,
         "diagonal": None, "mae": None, "transitions": None, "biased_classes": None}
  if estimated is not None:
    row["diagonal"] = np.diagonal(estimated, axis1=1, axis2=2).mean(axis=1).tolist()
    row["mae"] = np.abs(estimated - simulated).mean(axis=(1, 2)).tolist()
    row["transitions"] = estimated.tolist()
  return row


def seed_rows(config, workdir: str, seed: int, ltnet_epochs: float) -> List[Dict]:
  """Every row of one seed: the label-only aggregations, the baselines and LTNet."""
  seeded = _seeded(config, seed)
  source = data.get_source(seeded)
  train_split = source.splits[seeded.dataset.train_split]
  truth = train_split["true_label"]
  simulated = source.confusions
  em = source.label_model
  rows = [
      _matrix_row("majority vote (labels only)", seed, None,
                  np.mean(train_split["majority_vote"] == truth), None, simulated),
      _matrix_row("Dawid–Skene EM (labels only)", seed, None, np.mean(em.labels == truth),
                  em.confusions, simulated),
  ]
  run_dirs = {}
  for label, method in BASELINE_RUNS + ((LTNET_LABEL, "ltnet"),):
    if method == "ltnet":
      run = run_config(config, method, seed, init_from=run_dirs["union"], epochs=ltnet_epochs)
    else:
      run = run_config(config, method, seed)
    name = method if method != "ltnet" else f"ltnet_trace{run.latent_truth.trace_weight:g}"
    run_dirs[method] = paths.join(workdir, f"{name}_s{seed}")
    summary = train.train_and_evaluate(run, run_dirs[method])
    predictions = train_predictions(run, run_dirs[method])
    rows.append(_matrix_row(
        label, seed, 100 * summary["test_accuracy"],
        np.mean(predictions["predicted"] == predictions["true_label"]),
        predictions["transitions"] if method == "ltnet" else None, simulated))
    if getattr(source, "biased_classes", ()):
      rows[-1]["biased_classes"] = biased_class_accuracy(run, run_dirs[method],
                                                         source.biased_classes)
  for row in rows:
    row["simulated"] = simulated.tolist()
  return rows


def markdown_table(rows: List[Dict], seeds: Sequence[int], ltnet_epochs: float,
                   budget: float) -> str:
  """Mean ± std over seeds of each method's results (%, and T_k's diagonal and MAE)."""
  methods = list(dict.fromkeys(r["method"] for r in rows))
  num_annotators = len(rows[0]["simulated"])
  simulated = np.array(rows[0]["simulated"])
  true_diagonal = ", ".join(f"{d:.2f}" for d in np.diagonal(simulated, axis1=1, axis2=2)
                            .mean(axis=1))
  biased = any(r.get("biased_classes") is not None for r in rows)
  lines = [f"Seeds {list(seeds)}; the baselines train {budget:g} epochs, LTNet "
           f"{ltnet_epochs:g} more from the union run. True diagonals: {true_diagonal}.",
           "",
           "| method | test accuracy (%) | "
           + ("test accuracy on the biased classes (%) | " if biased else "")
           + "training labels recovered (%) | "
           + " | ".join(f"T_{k + 1} diagonal" for k in range(num_annotators)) + " | "
           + " | ".join(f"T_{k + 1} MAE" for k in range(num_annotators)) + " |",
           "|---" * (3 + biased + 2 * num_annotators) + "|"]
  for method in methods:
    mine = [r for r in rows if r["method"] == method]
    cells = [runner.mean_std([r["test_accuracy"] for r in mine])]
    if biased:
      cells.append(runner.mean_std([r.get("biased_classes") for r in mine]))
    cells.append(runner.mean_std([r["recovered"] for r in mine]))
    for key in ("diagonal", "mae"):
      for k in range(num_annotators):
        values = [r[key][k] if r[key] is not None else None for r in mine]
        cells.append(runner.mean_std(values))
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(results: Dict, path: str) -> None:
  """The first seed's true T_k (simulated, or measured for a model) beside LTNet's and
  Dawid–Skene's estimates."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = [r for r in results["rows"] if r["seed"] == results["seeds"][0]]
  estimated = [r for r in rows if r["transitions"] is not None]
  panels = [("true", np.array(rows[0]["simulated"]))] + [
      (r["method"], np.array(r["transitions"])) for r in estimated]
  num_annotators = len(panels[0][1])
  fig, axes = plt.subplots(len(panels), num_annotators,
                           figsize=(3.2 * num_annotators, 3.2 * len(panels)), squeeze=False)
  for i, (label, matrices) in enumerate(panels):
    for k in range(num_annotators):
      ax = axes[i][k]
      ax.imshow(matrices[k], vmin=0.0, vmax=1.0, cmap="viridis")
      ax.set_title(f"{label}\nT_{k + 1}, diagonal {np.mean(np.diagonal(matrices[k])):.3f}",
                   fontsize=8)
      ax.set_xlabel("label given", fontsize=7)
      ax.set_ylabel("true class", fontsize=7)
      ax.tick_params(labelsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main() -> None:
  config = flags.FLAGS.config
  seeds = runner.numbers("seeds")
  ltnet_epochs = flags.FLAGS.ltnet_epochs
  if not seeds or ltnet_epochs <= 0:
    runner.usage_error(f"--seeds={seeds} must be non-empty and --ltnet_epochs={ltnet_epochs} "
                       "> 0.")
  start = time.time()
  rows = []
  for seed in seeds:
    rows += cli.run_reporting_errors(seed_rows, config, flags.FLAGS.workdir, seed,
                                     ltnet_epochs)
  results = {"seeds": seeds, "ltnet_epochs": ltnet_epochs, "rows": rows}
  runner.write_outputs(flags.FLAGS.workdir, "latent_truth",
                       markdown_table(rows, seeds, ltnet_epochs, config.num_epochs), results,
                       start, plot=plot)


def define_flags() -> None:
  runner.define_config_flag("ltnet_digits", "The runs' config (data, backbone, budget); "
                            "fields overridable as --config.field=value.")
  flags.DEFINE_string("workdir", os.path.join("runs", "latent_truth"), "Output directory.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the runs and of the annotations.")
  flags.DEFINE_float("ltnet_epochs", 5.0, "Epochs of LTNet after the union run.")


if __name__ == "__main__":
  runner.run_command(main, define_flags, default_config="ltnet_digits")
