r"""Ablation runner: the Bag of Tricks refinements stacked one by one through the train loop.

  python -m bagtricks.studies.ablate --steps=baseline,resnet_d,cosine,label_smoothing,distill,mixup

Each step adds one refinement to the settings before it (Table 6 of the paper stacks them in
this order). Every setting is trained by ``train.train_and_evaluate`` from the same config, seed
and epoch budget, in ``<workdir>/<NN>_<step>[_s<seed>]``; a setting whose run already finished
with the same config is reused, and an interrupted one resumes from its checkpoint. ``distill``
first trains (or reuses) its teacher in ``<workdir>/teacher`` with the settings so far and a
bigger model (``--teacher_model``). The runner writes ``ablation.md`` (the table),
``ablation.png`` (training loss and test accuracy per epoch) and ``ablation.json``.
"""

from __future__ import annotations

import os
import re
import time
from typing import Dict, List, Sequence

import numpy as np
from absl import flags

from bagtricks import cli, data, paths, records, train
from bagtricks.studies import runner

# ImageNet top-1 (%) of the paper's ResNet-50 for the steps it reports: the efficient-training
# baseline (Table 3), then the refinements stacked on ResNet-50-D (Table 6; mixup there is
# "+ distill w/ mixup").
PAPER_TOP1 = {"baseline": 76.21, "resnet_d": 77.16, "cosine": 77.91, "label_smoothing": 78.31,
              "distill": 78.67, "mixup": 79.29}


def _base_model_name(name: str) -> str:
  match = re.fullmatch(r"(resnet\d+)[bcd]?", name.lower())
  if not match:
    raise ValueError(f"config.model.name={name!r}: the ablation needs a ResNet name such as "
                     "'resnet18d'.")
  return match.group(1)


def _baseline(config) -> None:
  # The paper's baseline after its efficient-training changes (§3: linear-scaled lr, warm-up,
  # zero-γ, no bias decay): the original ResNet, step decay at 1/4, 1/2, 3/4 of training
  # (epochs 30, 60, 90 of 120), no other refinement.
  config.model.name = _base_model_name(config.model.name)
  config.schedule.name = "step"
  config.schedule.decay_epochs = tuple(config.num_epochs * f for f in (0.25, 0.5, 0.75))
  config.schedule.decay_factor = 0.1
  config.label_smoothing = 0.0
  config.augment.mixup_alpha = 0.0
  config.augment.cutmix_alpha = 0.0
  config.augment.cutout.num_holes = 0
  config.augment.gridmask.prob = 0.0
  config.model.drop_block_rate = 0.0
  config.ema.decay = 0.0
  config.distill.enabled = False


def _resnet_d(config) -> None:
  config.model.name = _base_model_name(config.model.name) + "d"


def _cosine(config) -> None:
  config.schedule.name = "cosine"


def _label_smoothing(config) -> None:
  config.label_smoothing = 0.1


def _distill(config) -> None:
  config.distill.enabled = True  # The teacher is filled in by the runner.


def _mixup(config) -> None:
  config.augment.mixup_alpha = 0.2


def _cutmix(config) -> None:
  config.augment.cutmix_alpha = 1.0


def _cutout(config) -> None:
  # CIFAR-10: one 16 px hole in 32 px images, i.e. half the side.
  config.augment.cutout.num_holes = 1
  config.augment.cutout.size = max(1, data.image_size(config) // 2)


def _gridmask(config) -> None:
  # Official ImageNet setting, d ∈ [96, 224) of 224 px, scaled to the image size.
  size = data.image_size(config)
  config.augment.gridmask.prob = 0.8
  config.augment.gridmask.ramp_epochs = config.num_epochs
  config.augment.gridmask.d_min = max(2, round(size * 96 / 224))
  config.augment.gridmask.d_max = size
  config.augment.gridmask.ratio = 0.6


def _drop_block(config) -> None:
  config.model.drop_block_rate = 0.1


def _ema(config) -> None:
  config.ema.decay = 0.99


# step name → (table label, change to the config).
STEPS: Dict[str, tuple] = {
    "baseline": ("ResNet (v1), step decay", _baseline),
    "resnet_d": ("+ ResNet-D", _resnet_d),
    "cosine": ("+ cosine decay", _cosine),
    "label_smoothing": ("+ label smoothing ε = 0.1", _label_smoothing),
    "distill": ("+ distillation", _distill),
    "mixup": ("+ mixup α = 0.2", _mixup),
    "cutmix": ("+ CutMix α = 1", _cutmix),
    "cutout": ("+ Cutout", _cutout),
    "gridmask": ("+ GridMask", _gridmask),
    "dropblock": ("+ DropBlock 0.1", _drop_block),
    "ema": ("+ weight EMA 0.99", _ema),
}


class AblationError(ValueError):
  """A bad step list."""


def read_curves(workdir: str, steps_per_epoch: float) -> Dict[str, List]:
  """Training accuracy, test loss and test accuracy against epochs, from ``metrics.jsonl``."""
  curves = {"train_epoch": [], "train_accuracy": [], "test_epoch": [], "test_loss": [],
            "test_accuracy": []}
  for record in records.read_metrics(workdir):
    if "accuracy" in record:
      curves["train_epoch"].append(record["step"] / steps_per_epoch)
      curves["train_accuracy"].append(100 * record["accuracy"])
    if "test_accuracy" in record:
      curves["test_epoch"].append(record["step"] / steps_per_epoch)
      curves["test_loss"].append(record["test_loss"])
      curves["test_accuracy"].append(100 * record["test_accuracy"])
  return curves


def run_ablation(config, step_names: Sequence[str], workdir: str, seeds: Sequence[int],
                 teacher_model: str, teacher_width: float = 0.0) -> List[Dict]:
  """Trains every cumulative setting for every seed; returns one result row per step.

  Args:
    config: the starting config (``baseline`` strips its refinements).
    step_names: keys of ``STEPS``, applied cumulatively in this order.
    workdir: where the runs, table and plot go.
    seeds: training seeds (the table shows mean ± std when there are several).
    teacher_model: model name of the distillation teacher.
    teacher_width: its width multiplier (0: the student's).

  Returns:
    Rows with the step, label, accuracies, throughput and curves.
  """
  unknown = [s for s in step_names if s not in STEPS]
  if unknown or not step_names:
    raise AblationError(f"--steps has unknown names {unknown}; use names from {list(STEPS)}.")
  config = config.copy_and_resolve_references()
  rows = []
  teacher_summaries = {}
  for index, name in enumerate(step_names):
    label, change = STEPS[name]
    change(config)
    runs = []
    for seed in seeds:
      run_config = config.copy_and_resolve_references()
      run_config.seed = seed
      if run_config.distill.enabled:
        teacher_dir = paths.join(workdir, "teacher" + (f"_s{seed}" if len(seeds) > 1 else ""))
        if teacher_dir not in teacher_summaries:
          teacher_summaries[teacher_dir] = train.train_and_evaluate(
              _teacher_config(run_config, teacher_model, teacher_width), teacher_dir)
        run_config.distill.teacher_workdir = teacher_dir
        run_config.distill.teacher_config = ""
      run_dir = paths.join(workdir, f"{index:02d}_{name}" + (f"_s{seed}" if len(seeds) > 1
                                                                 else ""))
      summary = train.train_and_evaluate(run_config, run_dir)
      steps_per_epoch = summary["steps"] / run_config.num_epochs
      runs.append({"summary": summary, "curves": read_curves(run_dir, steps_per_epoch)})
    accuracies = [100 * r["summary"]["test_accuracy"] for r in runs]
    ema = [100 * r["summary"]["ema_test_accuracy"] for r in runs
           if "ema_test_accuracy" in r["summary"]]
    rows.append({
        "step": name, "label": label, "accuracies": accuracies,
        "accuracy": float(np.mean(accuracies)), "std": float(np.std(accuracies)),
        "ema_accuracy": float(np.mean(ema)) if ema else None,
        "images_per_second": float(np.mean([r["summary"]["images_per_second"] or 0.0
                                            for r in runs])),
        "train_seconds": float(np.mean([r["summary"]["train_seconds"] for r in runs])),
        "curves": runs[0]["curves"],
    })
  if teacher_summaries:
    rows[0]["teacher"] = {
        "model": teacher_model,
        "accuracies": [100 * s["test_accuracy"] for s in teacher_summaries.values()]}
  return rows


def _teacher_config(config, model: str, width: float):
  # The paper's teacher is trained with the refinements so far, only bigger (ResNet-152-D
  # for a ResNet-50-D student); it is never distilled itself. It is trained once, when
  # distillation is switched on, and serves the later steps too.
  teacher = config.copy_and_resolve_references()
  teacher.model.name = model
  if width:
    teacher.model.width_multiplier = width
  teacher.distill.enabled = False
  teacher.distill.teacher_workdir = ""
  return teacher


def markdown_table(rows: List[Dict]) -> str:
  """The ablation table: accuracy, Δ vs previous and baseline, throughput, the paper's value."""
  several = len(rows[0]["accuracies"]) > 1
  with_ema = any(r["ema_accuracy"] is not None for r in rows)
  header = ["#", "setting", "test acc. (%)", "Δ prev.", "Δ baseline", "img/s", "train s"]
  if with_ema:
    header.insert(3, "EMA acc. (%)")
  header.append("paper, ImageNet (%)")
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for i, row in enumerate(rows):
    acc = f"{row['accuracy']:.2f}" + (f" ± {row['std']:.2f}" if several else "")
    prev = "" if i == 0 else f"{row['accuracy'] - rows[i - 1]['accuracy']:+.2f}"
    base = "" if i == 0 else f"{row['accuracy'] - rows[0]['accuracy']:+.2f}"
    cells = [str(i), row["label"], acc, prev, base, f"{row['images_per_second']:.0f}",
             f"{row['train_seconds']:.1f}"]
    if with_ema:
      cells.insert(3, "" if row["ema_accuracy"] is None else f"{row['ema_accuracy']:.2f}")
    paper = PAPER_TOP1.get(row["step"])
    cells.append("" if paper is None else f"{paper:.2f}")
    lines.append("| " + " | ".join(cells) + " |")
  teacher = rows[0].get("teacher")
  if teacher:
    accs = teacher["accuracies"]
    lines.append("")
    lines.append(f"Teacher for distillation: {teacher['model']}, test accuracy "
                 f"{np.mean(accs):.2f} %" + (f" ± {np.std(accs):.2f}" if len(accs) > 1 else "")
                 + ".")
  return "\n".join(lines) + "\n"


def plot_curves(rows: List[Dict], path: str) -> None:
  """Training accuracy, test loss and test accuracy per epoch for every setting (first seed).

  The training losses are not plotted: label smoothing, mixup and distillation each change
  what the loss measures (distillation's T²-scaled soft term alone is in the hundreds), so they
  cannot be compared. The test loss is the plain cross-entropy for all.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax_train, ax_loss, ax_acc) = plt.subplots(1, 3, figsize=(16, 4.5))
  for i, row in enumerate(rows):
    c = row["curves"]
    label = f"{i}: {row['label']}"
    ax_train.plot(c["train_epoch"], c["train_accuracy"], label=label)
    ax_loss.plot(c["test_epoch"], c["test_loss"], marker=".", label=label)
    ax_acc.plot(c["test_epoch"], c["test_accuracy"], marker=".", label=label)
  low = max(0.0, min(r["accuracy"] for r in rows) - 8.0)
  ax_train.set(xlabel="epoch", ylabel="training accuracy (%)", ylim=(low, 100.0),
               title="Training accuracy (augmented batches)")
  ax_loss.set(xlabel="epoch", ylabel="test cross-entropy (log scale)", yscale="log",
              title="Test loss")
  ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", ylim=(low, 100.0),
             title="Test accuracy")
  ax_acc.legend(fontsize=8, loc="lower right")
  for ax in (ax_train, ax_loss, ax_acc):
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def define_flags() -> None:
  runner.define_config_flag("default", "Starting config; fields overridable as "
                            "--config.field=value.")
  flags.DEFINE_list("steps", "baseline,resnet_d,cosine,label_smoothing,distill,mixup",
                    f"Cumulative settings, in order; from {list(STEPS)}.")
  flags.DEFINE_string("workdir", None, "Output directory; default runs/ablate_<config>.")
  flags.DEFINE_list("seeds", None, "Training seeds (default: config.seed).")
  flags.DEFINE_string("teacher_model", "resnet34d", "Distillation teacher's model name.")
  flags.DEFINE_float("teacher_width", 0.0, "Teacher's width multiplier (0: the student's).")
  flags.DEFINE_float("eval_every_epochs", 2.0,
                     "Test-set evaluations for the curves, every N epochs.")


def main() -> None:
  args = flags.FLAGS
  config = args.config.copy_and_resolve_references()
  config.eval_every_epochs = args.eval_every_epochs
  workdir = args.workdir or os.path.join("runs", f"ablate_{runner.config_name()}")
  seeds = runner.numbers("seeds") if args.seeds else [config.seed]
  start = time.time()
  rows = cli.run_reporting_errors(run_ablation, config, args.steps, workdir, seeds,
                                  args.teacher_model, args.teacher_width,
                                  usage_errors=(AblationError,))
  runner.write_outputs(workdir, "ablation", markdown_table(rows), rows, start, plot_curves)


if __name__ == "__main__":
  runner.run_command(main, define_flags, default_config="default")
