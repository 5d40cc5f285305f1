r"""Fine-tuning vs training from scratch on the digits ("Rethinking ImageNet Pre-training").

  python -m bagtricks.studies.pretrain_study [--workdir=runs/pretrain_study] [--seeds=0,1,2]

He, Girshick & Dollár (2018) find that (1) pre-training speeds up convergence, (2) a model
trained from scratch catches up given a longer schedule (2×–6×), and (3) with little target
data the model from scratch falls behind. This runner repeats their design at toy scale, every
run through ``train.train_and_evaluate``:

* the source task: the digits 0–4 (``dataset.classes``), trained once in ``<workdir>/source``;
* the target task: the digits 5–9, relabelled 0–4, with 100 % or the first 10 % of the train
  split (``train[:10%]``), fine-tuned from the source (``init_from``, the head re-initialized
  with ``init_reinit``, the paper's new task-specific layers) or trained from scratch, with the
  1× schedule of ``--base_steps`` optimizer steps or its stretches (``schedule_multiplier``),
  for every seed. The schedules count optimizer steps, as the paper's do, so a 10 % run sees
  each of its examples ten times as often.

It writes ``pretrain_study.md`` (the table), ``pretrain_study.png`` (test accuracy against
steps, the mean over seeds) and ``pretrain_study.json`` into the workdir; finished runs are
reused when the command is run again.
"""

from __future__ import annotations

import os
import time
from typing import Dict, List, Sequence

import numpy as np
from absl import flags

from bagtricks import cli, data, paths, records, train
from bagtricks.studies import runner

SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
INITS = ("finetune", "scratch")


class StudyError(ValueError):
  """Bad study flags."""


def _split(fraction: float) -> str:
  return "train" if fraction == 1.0 else f"train[:{round(100 * fraction)}%]"


def source_config(config, steps: int):
  """The pre-training run: the source classes for ``steps`` optimizer steps."""
  source = config.copy_and_resolve_references()
  source.dataset.classes = SOURCE_CLASSES
  return _with_steps(source, steps, eval_points=5)


def _with_steps(config, steps: int, eval_points: int):
  # Epoch fields from a step count: the epoch length depends on the (filtered) split.
  steps_per_epoch = data.get_source(config).info().steps_per_epoch
  with config.ignore_type():  # A whole number of steps is seldom a whole number of epochs.
    config.num_epochs = steps / steps_per_epoch
  config.schedule.warmup_epochs = 0.1 * config.num_epochs
  config.eval_every_epochs = config.num_epochs / eval_points
  config.checkpoint_every_steps = 10 * steps
  return config


def target_config(config, init: str, fraction: float, multiplier: float, seed: int,
                  base_steps: int, source_dir: str):
  """One target run: ``init`` (finetune | scratch), a train fraction, a schedule multiplier."""
  target = config.copy_and_resolve_references()
  target.seed = seed
  target.dataset.classes = TARGET_CLASSES
  target.dataset.train_split = _split(fraction)
  # The 1× schedule and its evaluations; the multiplier stretches the schedule, and the
  # evaluations (every 1/10 of the 1× length) continue at the same interval.
  _with_steps(target, base_steps, eval_points=10)
  target.schedule_multiplier = multiplier
  target.checkpoint_every_steps = int(10 * base_steps * multiplier)
  if init == "finetune":
    target.init_from = source_dir
    target.init_reinit = "^head/"
  return target


def test_accuracy_curve(run_dir: str) -> Dict[str, List[float]]:
  """``{'steps', 'test_accuracy'}`` (%) of every evaluation in ``run_dir/metrics.jsonl``."""
  curve = {"steps": [], "test_accuracy": []}
  for record in records.read_metrics(run_dir):
    if "test_accuracy" in record:
      curve["steps"].append(record["step"])
      curve["test_accuracy"].append(100 * record["test_accuracy"])
  return curve


def run_study(config, workdir: str, seeds: Sequence[int], fractions: Sequence[float],
              multipliers: Sequence[float], base_steps: int, source_steps: int) -> Dict:
  """Trains the source, then every target setting for every seed.

  Returns:
    ``{'source': summary, 'rows': [...]}``, one row per (init, fraction, multiplier) with the
    final test accuracies per seed, their mean and std, and the mean test-accuracy curve.
  """
  if not seeds or not fractions or not multipliers or base_steps < 10 or source_steps < 1:
    raise StudyError("--seeds, --fractions and --multipliers must be non-empty and "
                     "--base_steps >= 10, --source_steps >= 1.")
  if any(not 0 < f <= 1 for f in fractions) or any(m <= 0 for m in multipliers):
    raise StudyError(f"--fractions={list(fractions)} must lie in (0, 1] and "
                     f"--multipliers={list(multipliers)} be > 0.")
  source_dir = paths.join(workdir, "source")
  source = train.train_and_evaluate(source_config(config, source_steps), source_dir)
  rows = []
  for fraction in fractions:
    for multiplier in multipliers:
      for init in INITS:
        runs = []
        for seed in seeds:
          name = f"{init}_{round(100 * fraction)}pct_{multiplier:g}x_s{seed}"
          run_dir = paths.join(workdir, name)
          summary = train.train_and_evaluate(
              target_config(config, init, fraction, multiplier, seed, base_steps, source_dir),
              run_dir)
          runs.append({"summary": summary, "curves": test_accuracy_curve(run_dir)})
        rows.append(_row(init, fraction, multiplier, runs, base_steps))
  return {"source": source, "rows": rows, "base_steps": base_steps}


def _row(init: str, fraction: float, multiplier: float, runs: List[Dict],
         base_steps: int) -> Dict:
  accuracies = [100 * r["summary"]["test_accuracy"] for r in runs]
  steps = runs[0]["curves"]["steps"]
  curves = np.array([r["curves"]["test_accuracy"] for r in runs])
  early_step = base_steps // 5
  early = [c[steps.index(early_step)] for c in curves] if early_step in steps else []
  return {"init": init, "fraction": fraction, "multiplier": multiplier,
          "accuracies": accuracies, "accuracy": float(np.mean(accuracies)),
          "std": float(np.std(accuracies)), "early_step": early_step,
          "early_accuracy": float(np.mean(early)) if early else None,
          "steps": [float(s) for s in steps], "curve": curves.mean(axis=0).tolist(),
          "train_seconds": float(np.mean([r["summary"]["train_seconds"] for r in runs]))}


def markdown_table(result: Dict) -> str:
  """The study's table: one line per target setting, mean ± std over the seeds."""
  rows = result["rows"]
  seeds = len(rows[0]["accuracies"])
  lines = [f"| target data | schedule | init | test acc. @ {rows[0]['early_step']} steps (%) "
           f"| final test acc. (%), {seeds} seeds | per seed |",
           "|---|---|---|---|---|---|"]
  for row in rows:
    early = "" if row["early_accuracy"] is None else f"{row['early_accuracy']:.1f}"
    lines.append(
        f"| {100 * row['fraction']:g} % | {row['multiplier']:g}× "
        f"({round(result['base_steps'] * row['multiplier'])} steps) | {row['init']} | {early} | "
        f"{row['accuracy']:.2f} ± {row['std']:.2f} | "
        + ", ".join(f"{a:.1f}" for a in row["accuracies"]) + " |")
  source = result["source"]
  lines.append("")
  lines.append(f"Source (digits {SOURCE_CLASSES[0]}–{SOURCE_CLASSES[-1]}, {source['steps']} "
               f"steps): test accuracy {100 * source['test_accuracy']:.2f} %.")
  return "\n".join(lines) + "\n"


def plot(result: Dict, path: str) -> None:
  """Test accuracy against optimizer steps: one panel per data fraction, mean over seeds."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fractions = sorted({r["fraction"] for r in result["rows"]}, reverse=True)
  fig, axes = plt.subplots(1, len(fractions), figsize=(6.5 * len(fractions), 4.5),
                           squeeze=False)
  styles = {"finetune": "-", "scratch": "--"}
  multipliers = sorted({r["multiplier"] for r in result["rows"]})
  colors = dict(zip(multipliers, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
  for ax, fraction in zip(axes[0], fractions):
    for row in result["rows"]:
      if row["fraction"] != fraction:
        continue
      ax.plot(row["steps"], row["curve"], styles[row["init"]], marker=".",
              color=colors[row["multiplier"]],
              label=f"{row['init']} {row['multiplier']:g}× ({row['accuracy']:.1f} %)")
    ax.set(xlabel="optimizer steps", ylabel="test accuracy (%)", ylim=(0, 100),
           title=f"digits 5–9, {100 * fraction:g} % of the train split "
                 f"(mean of {len(result['rows'][0]['accuracies'])} seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def define_flags() -> None:
  runner.define_config_flag("pretrain_digits", "Starting config (model, recipe); fields "
                            "overridable as --config.field=value.")
  flags.DEFINE_string("workdir", os.path.join("runs", "pretrain_study"), "Output directory.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the target runs.")
  flags.DEFINE_list("fractions", ["0.1", "1.0"], "Fractions of the target train split.")
  flags.DEFINE_list("multipliers", ["1", "3"], "Schedule multipliers.")
  flags.DEFINE_integer("base_steps", 100, "Optimizer steps of the 1× schedule.")
  flags.DEFINE_integer("source_steps", 300, "Optimizer steps of pre-training.")


def main() -> None:
  args = flags.FLAGS
  config = args.config.copy_and_resolve_references()
  seeds = runner.numbers("seeds")
  fractions = runner.numbers("fractions", float)
  multipliers = runner.numbers("multipliers", float)
  start = time.time()
  result = cli.run_reporting_errors(run_study, config, args.workdir, seeds, fractions,
                                    multipliers, args.base_steps, args.source_steps,
                                    usage_errors=(StudyError,))
  runner.write_outputs(args.workdir, "pretrain_study", markdown_table(result), result, start,
                       plot)


if __name__ == "__main__":
  runner.run_command(main, define_flags, default_config="pretrain_digits")
