r"""Embedding losses on the digits: 2-D feature pictures and Circle-loss retrieval.

    python -m bagtricks.studies.compare_embeddings [--workdir=runs/embeddings] [--seed=0] \
        [--digits=sklearn_digits|mnist_5k]

Every run goes through ``train_and_evaluate`` with a config from ``configs/`` (a finished run
in the same workdir is reused) and the command writes, into ``--workdir``:

1. ``embeddings.png``: the test digits' 2-D features of a ResNet-18-D trained with softmax
   alone, with center loss (Wen et al. 2016) and with the Git loss (Calefati et al. 2018),
   side by side, the learnt centers marked, and beneath them the table of
   ``embeddings.md``: intra-class spread, inter-class center distance, their ratio and the
   accuracy of the nearest center, on the test split (``configs/center_loss_digits.py``:
   λ_c = 0.01 for both center and Git loss, λ_g = 0.1).
2. ``embeddings.md`` also holds the retrieval table: recall@1/@5 on the test split of 64-D
   embeddings trained on P×K batches (``configs/circle_loss_digits.py``) with softmax alone,
   the pair-wise Circle loss (γ = 256 and γ = 80) and its class-level form.

``--digits=mnist_5k`` makes both on the 5,000 MNIST digits (the papers' pictures are of
MNIST), with the budget of ``configs/mnist_5k.py``.
"""

from __future__ import annotations

import json
import time
from typing import Callable, Dict, List, Sequence

import ml_collections
import numpy as np
from absl import flags

from bagtricks import cli, paths, train
from bagtricks.studies import runner
from configs import center_loss_digits, circle_loss_digits, mnist_5k

# (label, λ_c, λ_g) of the three 2-D runs.
PICTURE_RUNS = (("softmax", 0.0, 0.0), ("center loss", 0.01, 0.0), ("Git loss", 0.01, 0.1))


def _softmax_pk(config) -> None:
  # Softmax alone on the same P×K batches and 64-D feature layer (its centers only tracked).
  config.task = "center_loss"
  config.center_loss = ml_collections.ConfigDict(
      {"center_weight": 0.0, "push_weight": 0.0, "center_alpha": 0.5})


def _circle(form: str, gamma: float) -> Callable:
  def change(config) -> None:
    config.circle.form = form
    config.circle.gamma = gamma
    config.model.cosine_head = form == "class"
  return change


# (label, change to configs/circle_loss_digits.py) of the retrieval runs.
RETRIEVAL_RUNS = (("softmax", _softmax_pk),
                  ("Circle, pair-wise, γ = 256", _circle("pair", 256.0)),
                  ("Circle, pair-wise, γ = 80", _circle("pair", 80.0)),
                  ("Circle, class-level, γ = 256", _circle("class", 256.0)))


def on_mnist(config) -> None:
  """A picture or retrieval run's config moved onto the 5,000 MNIST digits."""
  if config.dataset.name == "sklearn_digits":
    mnist_5k.on_mnist(config)
  else:  # The P×K batches of digit_sets, of the MNIST digits.
    config.dataset.digits = "mnist_5k"
    config.update_from_flattened_dict(mnist_5k.BUDGET)


def _slug(label: str) -> str:
  return "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_").replace("__", "_")


def test_features(config, workdir: str) -> Dict[str, np.ndarray]:
  """The test split's features, labels and the learnt centers of a finished run.

  The run's weights and task state are restored from its checkpoint (as a distillation
  teacher's are) and the model is applied to every test example.

  Returns:
    ``{'features': [n, D], 'label': [n], 'centers': [K, D]}``.
  """
  features, labels = [], []
  for outputs, batch, variables in runner.finished_run_outputs(config, workdir):
    real = batch["mask"] > 0
    features.append(outputs["features"][real])
    labels.append(batch["label"][real])
  return {"features": np.concatenate(features), "label": np.concatenate(labels),
          "centers": np.asarray(variables["task_state"]["centers"])}


def picture_rows(workdir: str, seed: int, change: Callable = lambda config: None,
                 runs: Sequence = PICTURE_RUNS) -> List[Dict]:
  """Trains the 2-D runs; each row has the test metrics and the test features."""
  rows = []
  for label, center_weight, push_weight in runs:
    config = center_loss_digits.get_config()
    config.seed = seed
    config.center_loss.center_weight = center_weight
    config.center_loss.push_weight = push_weight
    change(config)
    run_dir = paths.join(workdir, f"{_slug(label)}_2d_s{seed}")
    summary = train.train_and_evaluate(config, run_dir)
    rows.append({"loss": label, "center_weight": center_weight, "push_weight": push_weight,
                 **{k: summary[f"test_{k}"] for k in (
                     "accuracy", "nearest_center_accuracy", "intra_class_spread",
                     "inter_class_distance", "spread_ratio")},
                 "points": test_features(config, run_dir)})
  return rows


def retrieval_rows(workdir: str, seed: int, change: Callable = lambda config: None,
                   runs: Sequence = RETRIEVAL_RUNS) -> List[Dict]:
  """Trains the retrieval runs; each row has recall@1/@5 and the spread ratio."""
  rows = []
  for label, change_run in runs:
    config = circle_loss_digits.get_config()
    config.seed = seed
    change_run(config)
    change(config)
    summary = train.train_and_evaluate(config, paths.join(workdir, f"{_slug(label)}_s{seed}"))
    rows.append({"loss": label, "recall_at_1": summary["test_recall_at_1"],
                 "recall_at_5": summary["test_recall_at_5"],
                 "spread_ratio": summary["test_spread_ratio"]})
  return rows


def markdown_tables(pictures: List[Dict], retrieval: List[Dict], seed: int) -> str:
  """The 2-D feature table and the retrieval table, as markdown."""
  out = [f"2-D features of the test digits (seed {seed}; λ_c, λ_g as in the config)", "",
         "| loss | λ_c | λ_g | accuracy % | nearest-center accuracy % | intra-class spread | "
         "inter-class center distance | ratio |", "|---|---|---|---|---|---|---|---|"]
  for r in pictures:
    out.append(f"| {r['loss']} | {r['center_weight']:g} | {r['push_weight']:g} | "
               f"{100 * r['accuracy']:.2f} | {100 * r['nearest_center_accuracy']:.2f} | "
               f"{r['intra_class_spread']:.3f} | {r['inter_class_distance']:.3f} | "
               f"{r['spread_ratio']:.3f} |")
  out += ["", f"Retrieval on the test digits, 64-D embeddings, P×K = 8×8 batches (seed {seed})",
          "", "| loss | recall@1 % | recall@5 % | spread ratio |", "|---|---|---|---|"]
  for r in retrieval:
    out.append(f"| {r['loss']} | {100 * r['recall_at_1']:.2f} | {100 * r['recall_at_5']:.2f} "
               f"| {r['spread_ratio']:.3f} |")
  return "\n".join(out) + "\n"


def plot_features(rows: List[Dict], path: str) -> None:
  """One PNG: a scatter plot of the 2-D test features per run, side by side, and the table."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(rows), figsize=(5.2 * len(rows), 6.4))
  colors = plt.get_cmap("tab10")
  for ax, row in zip(axes, rows):
    points = row["points"]
    for digit in range(10):
      chosen = points["label"] == digit
      ax.scatter(points["features"][chosen, 0], points["features"][chosen, 1], s=7,
                 color=colors(digit), alpha=0.75, label=str(digit))
    ax.scatter(points["centers"][:, 0], points["centers"][:, 1], marker="x", s=60,
               color="black", linewidths=1.5, label="centers")
    ax.set_title(f"{row['loss']} (λ_c = {row['center_weight']:g}, λ_g = "
                 f"{row['push_weight']:g})", fontsize=11)
    ax.set_xlabel("feature 1")
    ax.set_ylabel("feature 2")
    ax.grid(alpha=0.3)
  axes[-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=2)
  header = ["", "accuracy", "nearest-center acc.", "intra-class spread",
            "inter-class distance", "ratio"]
  cells = [[r["loss"], f"{100 * r['accuracy']:.1f} %",
            f"{100 * r['nearest_center_accuracy']:.1f} %", f"{r['intra_class_spread']:.3f}",
            f"{r['inter_class_distance']:.3f}", f"{r['spread_ratio']:.3f}"] for r in rows]
  fig.subplots_adjust(left=0.05, right=0.93, top=0.86, bottom=0.3, wspace=0.25)
  table_ax = fig.add_axes([0.12, 0.02, 0.76, 0.16])
  table_ax.axis("off")
  table = table_ax.table(cellText=cells, colLabels=header, loc="center", cellLoc="center")
  table.auto_set_font_size(False)
  table.set_fontsize(10)
  table.scale(1.0, 1.5)
  fig.suptitle("The test digits' 2-D features; ×: the centers the task state learnt",
               fontsize=13, y=0.97)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def run(workdir: str, seed: int, change: Callable = lambda config: None,
        picture_runs: Sequence = PICTURE_RUNS, retrieval_runs: Sequence = RETRIEVAL_RUNS) -> str:
  """Trains the runs, writes ``embeddings.png``, ``.md`` and ``.json``; returns the tables.

  Args:
    workdir: where the runs and outputs go.
    seed: every run's training seed.
    change: applied to every run's config last (e.g. a shorter budget).
    picture_runs: ``(label, λ_c, λ_g)`` of the 2-D runs.
    retrieval_runs: ``(label, change of configs/circle_loss_digits.py)`` of the retrieval runs.

  Returns:
    The markdown tables.
  """
  pictures = picture_rows(workdir, seed, change, picture_runs)
  retrieval = retrieval_rows(workdir, seed, change, retrieval_runs)
  tables = markdown_tables(pictures, retrieval, seed)
  with paths.local_copy_for_writing(paths.join(workdir, "embeddings.png")) as local:
    plot_features(pictures, local)
  paths.write_text(paths.join(workdir, "embeddings.md"), tables)
  paths.write_text(paths.join(workdir, "embeddings.json"), json.dumps(
      {"pictures": [{k: v for k, v in r.items() if k != "points"} for r in pictures],
       "retrieval": retrieval}, indent=2))
  return tables


def main() -> None:
  workdir = flags.FLAGS.workdir
  start = time.time()
  change = on_mnist if flags.FLAGS.digits == "mnist_5k" else (lambda config: None)
  tables = cli.run_reporting_errors(run, workdir, flags.FLAGS.seed, change)
  print(tables)
  print(f"Wrote {workdir}/embeddings.png, embeddings.md and embeddings.json in "
        f"{time.time() - start:.0f} s.", flush=True)


def define_flags() -> None:
  flags.DEFINE_string("workdir", "runs/embeddings", "Where the runs, picture and tables go.")
  flags.DEFINE_integer("seed", 0, "Training seed of every run.")
  flags.DEFINE_enum("digits", "sklearn_digits", ["sklearn_digits", "mnist_5k"],
                    "The digits every run trains and tests on.")


if __name__ == "__main__":
  runner.run_command(main, define_flags)
