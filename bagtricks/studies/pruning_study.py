r"""Channel pruning of a small SSD: L1-norm, DCP and LCP at several pruned fractions.

  python -m bagtricks.studies.pruning_study [--config=configs/ssd_pruning_digits.py] \
      [--workdir=runs/pruning]

Every run goes through ``train.train_and_evaluate`` (a finished run in the workdir is
reused): the unpruned detector (the config without its ``pruning`` section) in
``<workdir>/unpruned``; then, for each method of ``config.pruning.methods`` and fraction of
``config.pruning.fractions``, the channels each basic block of the trunk keeps
(``pruning.l1_selection``, ``channel_selection.Selector``), the detector rebuilt with them
(``<workdir>/<method>_<percent>_s<seed>/pruned``, step 0) and fine-tuned from those weights
(``init_from``) for ``pruning.finetune_epochs``, once for each seed of ``pruning.seeds``
(the sampled boxes, the auxiliary networks and the fine-tuning's batches; the detector is
trained once, with ``config.seed``).

The table has, per method and fraction (the mean ± standard deviation over the seeds),
mAP@0.5 and mAP@0.75 on the whole test split after fine-tuning and
mAP@0.5 right after pruning (before any fine-tuning), the parameters, the FLOPs of one
64×64 image (XLA's count of the forward pass) and the images/s of the forward pass at the
eval batch size, measured here, alternating between the detectors. Writes
``pruning.md``, ``pruning.json`` and ``pruning.png`` (test canvases with the unpruned
detector's boxes and the true ones).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Dict, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from bagtricks import channel_selection, checkpoint, data, finetune, paths, pruning, tasks, train
from bagtricks.steps import model_variables
from bagtricks.studies import runner

METHODS = ("l1",) + channel_selection.METHODS
SETTINGS = tuple(f.name for f in dataclasses.fields(channel_selection.SelectionSettings)
                 if f.name not in ("iou_threshold", "seed"))
PICTURED = 8  # Test canvases in the picture.
TIMING_REPEATS = 5


def check_pruning(config) -> List[str]:
  """Problems of ``config.pruning``, each naming its field, found before anything runs."""
  p = config.get("pruning")
  if p is None:
    return ["config.pruning is missing; use configs/ssd_pruning_digits.py or add its fields."]
  problems = [f"config.pruning.fractions holds {f!r}; a pruned fraction must be in (0, 1)."
              for f in p.fractions if not isinstance(f, (int, float)) or not 0 < f < 1]
  problems += [f"config.pruning.methods holds {m!r}, which is unknown; use any of {METHODS}."
               for m in p.methods if m not in METHODS]
  if not p.seeds or not all(isinstance(s, int) for s in p.seeds):
    problems.append(f"config.pruning.seeds={tuple(p.seeds)!r} must be one or more integers.")
  problems += pruning.block_problems(p.layers, pruning.blocks_of(config.model.stage_sizes),
                                     field="config.pruning.layers holds")
  for field in ("calibration_images", "calibration_batch", "aux_steps", "rounds",
                "positives", "negatives", "roi_bins", "aux_hidden"):
    if not isinstance(p[field], int) or p[field] < 1:
      problems.append(f"config.pruning.{field}={p[field]!r} must be a positive integer.")
  for field in ("finetune_epochs", "finetune_lr", "aux_lr"):
    if not p[field] > 0:
      problems.append(f"config.pruning.{field}={p[field]!r} must be positive.")
  return problems


def detector_config(config):
  """The unpruned detector's run config: ``config`` without its ``pruning`` section."""
  plain = config.copy_and_resolve_references()
  with plain.unlocked():
    del plain["pruning"]
  return plain


def trial_config(config, seed: int):
  """``config`` whose selection and fine-tuning draw from ``seed``."""
  trial = config.copy_and_resolve_references()
  trial.seed = seed
  return trial


def finetune_config(config, widths: Sequence[int], pruned_dir: str):
  """The pruned detector's fine-tuning run from its pruned weights."""
  run = detector_config(config)
  with run.unlocked(), run.ignore_type():
    run.model.inner_widths = tuple(int(w) for w in widths)
    run.init_from = pruned_dir
    run.num_epochs = float(config.pruning.finetune_epochs)
  run.optimizer.base_lr = config.pruning.finetune_lr
  run.schedule.warmup_epochs = 0.0
  return run


def restore(run_config, workdir: str, info):
  """``(model, {'params', 'batch_stats'})`` of the finished run in ``workdir`` (``info``: its
  data source's)."""
  hook = runner.restored_run(workdir, info, config=run_config)
  variables = hook.variables()
  return hook.model, {"params": variables["params"], "batch_stats": variables["batch_stats"]}


def calibration_batches(config, source) -> List[Dict[str, np.ndarray]]:
  """The first ``pruning.calibration_images`` training canvases of ``source``, in batches."""
  p = config.pruning
  rows: Dict[str, List[np.ndarray]] = {}
  for batch in source.eval_batches(1, split=config.dataset.train_split):
    real = batch["mask"][0] > 0
    for k in ("image", "boxes", "classes", "valid"):
      rows.setdefault(k, []).append(batch[k][0][real])
    if sum(len(r) for r in rows["image"]) >= p.calibration_images:
      break
  rows = {k: np.concatenate(v)[:p.calibration_images] for k, v in rows.items()}
  return [{k: v[i:i + p.calibration_batch] for k, v in rows.items()}
          for i in range(0, len(rows["image"]), p.calibration_batch)]


def eval_split_outputs(source, model, variables):
  """Yields ``(the model's outputs, batch)`` for every eval batch of ``source`` (NumPy, real
  rows)."""
  apply = jax.jit(lambda v, x: model.apply(model_variables(v["params"], v["batch_stats"]), x,
                                           train=False))
  for batch in source.eval_batches(1):
    real = batch["mask"][0] > 0
    batch = {k: v[0][real] for k, v in batch.items()}
    yield jax.tree_util.tree_map(np.asarray, apply(variables, batch["image"])), batch


def evaluate(source, task, model, variables) -> Dict[str, float]:
  """mAP50 / mAP75 / mAP of ``model`` on the whole eval split, as the loop evaluates."""
  examples: Dict[str, List[np.ndarray]] = {}
  for outputs, batch in eval_split_outputs(source, model, variables):
    for k, v in task.eval_examples(outputs, batch).items():
      examples.setdefault(k, []).append(np.asarray(v))
  return task.examples_summary({k: np.concatenate(v) for k, v in examples.items()})


def selection_settings(config) -> channel_selection.SelectionSettings:
  return channel_selection.SelectionSettings(
      iou_threshold=config.detection.iou_threshold, seed=config.seed,
      **{k: config.pruning[k] for k in SETTINGS})


def select_channels(config, method: str, fraction: float, model, variables, batches,
                    anchors) -> Dict:
  """The kept channels of every block and the trunk's params (``Selector`` updates the kept
  conv2 weights; L1 keeps them), with what the selection logged."""
  trunk = variables["params"]["trunk"]
  layers = tuple(config.pruning.layers)
  if method == "l1":
    return {"kept": pruning.l1_selection(trunk, fraction, layers), "params": trunk,
            "aux_history": []}
  selector = channel_selection.Selector(model, variables, anchors, batches, method,
                                        selection_settings(config))
  kept, params, history = selector.select(fraction, layers, progress=print)
  return {"kept": kept, "params": params, "aux_history": history}


def pruned_detector(config, method: str, fraction: float, model, variables, batches,
                    source, task, run_dir: str):
  """The rebuilt detector of one method and fraction, its weights written to
  ``<run_dir>/pruned`` and its selection to ``selection.json`` (both reused when there);
  ``source`` and ``task`` are the detector's data and task.

  Returns:
    ``(model, variables, selection record)``.
  """
  record_path, pruned_dir = paths.join(run_dir, "selection.json"), paths.join(run_dir, "pruned")
  if paths.exists(record_path) and checkpoint.has_checkpoint(paths.join(pruned_dir,
                                                                        "checkpoints")):
    record = json.loads(paths.read_text(record_path))
    _, weights = finetune.read_pretrained(pruned_dir)
    return (model.clone(inner_widths=tuple(record["widths"])),
            jax.tree_util.tree_map(jnp.asarray, weights), record)
  started = time.time()
  chosen = select_channels(config, method, fraction, model, variables, batches, task.anchors)
  trunk_params, trunk_stats, widths = pruning.prune_trunk(
      chosen["params"], variables["batch_stats"]["trunk"], chosen["kept"])
  pruned = model.clone(inner_widths=widths)
  weights = {"params": {**variables["params"], "trunk": trunk_params},
             "batch_stats": {**variables["batch_stats"], "trunk": trunk_stats}}
  weights = jax.tree_util.tree_map(jnp.asarray, weights)
  record = {"widths": list(widths), "selection_seconds": round(time.time() - started, 1),
            "kept": {k: [int(i) for i in v] for k, v in chosen["kept"].items()},
            "aux_history": chosen["aux_history"],
            "before_finetuning": evaluate(source, task, pruned, weights)}
  checkpoint.write_weights(weights, paths.join(pruned_dir, "checkpoints"))
  paths.write_text(record_path, json.dumps(record, indent=1))
  return pruned, weights, record


def costs(model, variables, image_shape) -> Dict[str, float]:
  """Parameters and XLA's FLOPs of one image's forward pass."""
  count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables["params"]))
  native = model.clone(conv_algorithm="native")  # Custom calls have no FLOP count.
  lowered = jax.jit(lambda v, x: native.apply(v, x, train=False)).lower(
      variables, jnp.zeros((1,) + tuple(image_shape), jnp.float32))
  analysis = lowered.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return {"parameters": count, "flops": float(analysis["flops"])}


def images_per_second(detectors: Dict[str, tuple], batch_size: int, image_shape
                      ) -> Dict[str, float]:
  """Forward-pass images/s of each ``(model, variables)``, the median of ``TIMING_REPEATS``
  timings taken in turn (so that every detector meets the same machine load)."""
  images = jnp.zeros((batch_size,) + tuple(image_shape), jnp.float32)
  apply = {name: jax.jit(lambda v, x, m=m: m.apply(v, x, train=False))
           for name, (m, _) in detectors.items()}
  times: Dict[str, List[float]] = {name: [] for name in detectors}
  for name, (_, v) in detectors.items():
    jax.block_until_ready(apply[name](v, images))  # Compile.
  for _ in range(TIMING_REPEATS):
    for name, (_, v) in detectors.items():
      start = time.perf_counter()
      jax.block_until_ready(apply[name](v, images))
      times[name].append(time.perf_counter() - start)
  return {name: batch_size / float(np.median(t)) for name, t in times.items()}


def mean_and_spread(values: Sequence[float], scale: float = 100.0) -> str:
  """``mean`` of one value, ``mean ± std`` (population) of several, times ``scale``."""
  values = scale * np.asarray(values, np.float64)
  if len(values) == 1:
    return f"{values[0]:.2f}"
  return f"{values.mean():.2f} ± {values.std():.2f}"


def markdown_table(rows: List[Dict]) -> str:
  """One line per method and fraction, in the rows' order; the scores over its seeds."""
  groups: Dict[tuple, List[Dict]] = {}
  for r in rows:
    groups.setdefault((r["method"], r["fraction"]), []).append(r)
  lines = ["| method | pruned | seeds | mAP@0.5 (%) | mAP@0.75 (%) | mAP@0.5 before fine-tuning "
           "(%) | parameters | MFLOPs / image | images/s |",
           "|---|---|---|---|---|---|---|---|---|"]
  for (method, fraction), group in groups.items():
    first = group[0]
    before = ("–" if first["before_finetuning"] is None
              else mean_and_spread([r["before_finetuning"] for r in group]))
    speed = np.mean([r["images_per_second"] for r in group])
    lines.append(
        f"| {method} | {round(100 * fraction)} % | {len(group)} | "
        f"{mean_and_spread([r['mAP50'] for r in group])} | "
        f"{mean_and_spread([r['mAP75'] for r in group])} | {before} | "
        f"{first['parameters']:,} | {first['flops'] / 1e6:.1f} | {speed:.0f} |")
  return "\n".join(lines) + "\n"


def shared_channels(kept_a: Dict[str, Sequence[int]], kept_b: Dict[str, Sequence[int]]) -> float:
  """The share of ``kept_a``'s kept channels that ``kept_b`` keeps too (same blocks)."""
  common = sum(len(set(kept_a[block]) & set(kept_b[block])) for block in kept_a)
  return common / sum(len(kept) for kept in kept_a.values())


def overlap_table(rows: List[Dict]) -> str:
  """How alike the selections are, per fraction: two methods compared seed for seed, and
  one method's seeds compared with each other (the spread a seed alone gives)."""
  lines = ["| pruned | selections compared | pairs | channels kept by both (%) |",
           "|---|---|---|---|"]
  pruned = [r for r in rows if "kept" in r]
  for fraction in dict.fromkeys(r["fraction"] for r in pruned):
    runs = [r for r in pruned if r["fraction"] == fraction]
    pairs: Dict[tuple, List[float]] = {}
    for i, a in enumerate(runs):
      for b in runs[i + 1:]:
        same_method = a["method"] == b["method"]
        if same_method != (a["seed"] == b["seed"]):  # Methods seed for seed, or seeds.
          key = ((a["method"], "seeds") if same_method else (a["method"], b["method"]))
          pairs.setdefault(key, []).append(shared_channels(a["kept"], b["kept"]))
    for (first, second), shares in pairs.items():
      what = (f"{first}, seed against seed" if second == "seeds"
              else f"{first} against {second}, same seed")
      lines.append(f"| {round(100 * fraction)} % | {what} | {len(shares)} | "
                   f"{100 * np.mean(shares):.1f} |")
  return "\n".join(lines) + "\n"


def plot(results: Dict, path: str) -> None:
  """Test canvases: true boxes (green) and the unpruned detector's (red, score ≥ 0.5)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  examples = results["examples"]
  fig, axes = plt.subplots(2, len(examples) // 2, figsize=(2.2 * len(examples) // 2, 4.6))
  for ax, example in zip(axes.ravel(), examples):
    image = np.asarray(example["image"])
    side = image.shape[0]
    ax.imshow(image[..., 0], cmap="gray")
    for box, color in [(b, "lime") for b in example["truth"]] + [
        (b, "red") for b in example["detected"]]:
      x0, y0, x1, y1 = np.asarray(box) * side - 0.5
      ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=color, lw=1))
    for box, label, score in zip(example["detected"], example["labels"], example["scores"]):
      ax.text(box[0] * side, box[1] * side - 1, f"{label} {score:.2f}", color="red",
              fontsize=6)
    ax.axis("off")
  fig.suptitle("true boxes (green), detections scoring ≥ 0.5 (red): the unpruned SSD")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def pictured_examples(source, task, model, variables) -> List[Dict]:
  outputs, batch = next(eval_split_outputs(source, model, variables))
  found = task.eval_examples(outputs, batch)
  examples = []
  for i in range(PICTURED):
    detected = task.detections(np.asarray(found["probabilities"][i]),
                               np.asarray(found["predicted_boxes"][i]))
    sure = detected["scores"] >= 0.5
    examples.append({"image": batch["image"][i].tolist(),
                     "truth": batch["boxes"][i][batch["valid"][i]].tolist(),
                     "detected": detected["boxes"][sure].tolist(),
                     "labels": detected["classes"][sure].tolist(),
                     "scores": detected["scores"][sure].tolist()})
  return examples


def pruned_row(config, method: str, fraction: float, workdir: str, unpruned,
               detectors: Dict[str, tuple]) -> Dict:
  """Prunes (or reuses) and fine-tunes one method × fraction with ``config.seed``; its row.

  ``unpruned`` is ``(model, variables, calibration batches, source, task)``; the pruned
  ``(model, weights)`` is added to ``detectors`` under the run's name.
  """
  model, variables, batches, source, task = unpruned
  name = f"{method}_{round(100 * fraction)}_s{config.seed}"
  run_dir = paths.join(workdir, name)
  pruned, weights, record = pruned_detector(config, method, fraction, model, variables,
                                            batches, source, task, run_dir)
  tuned = train.train_and_evaluate(
      finetune_config(config, record["widths"], paths.join(run_dir, "pruned")),
      paths.join(run_dir, "finetuned"))
  detectors[name] = (pruned, weights)
  return {"method": method, "fraction": fraction, "seed": config.seed,
          "mAP50": tuned["test_mAP50"], "mAP75": tuned["test_mAP75"], "mAP": tuned["test_mAP"],
          "before_finetuning": record["before_finetuning"]["mAP50"],
          "before_finetuning_mAP75": record["before_finetuning"]["mAP75"], "run": name,
          "widths": record["widths"], "kept": record["kept"]}


def run_study(config, workdir: str) -> Dict:
  """Every run of the study and its rows (module docstring)."""
  p = config.pruning
  plain = detector_config(config)
  unpruned_dir = paths.join(workdir, "unpruned")
  summary = train.train_and_evaluate(plain, unpruned_dir)
  # The canvases are generated when a source is made: once here, for everything below.
  source = data.get_source(plain)
  info = source.info()
  task = tasks.create_task(plain, info)
  model, variables = restore(plain, unpruned_dir, info)
  batches = calibration_batches(config, source)
  detectors = {"unpruned": (model, variables)}
  rows = [{"method": "unpruned", "fraction": 0.0, "mAP50": summary["test_mAP50"],
           "mAP75": summary["test_mAP75"], "mAP": summary["test_mAP"], "seed": config.seed,
           "before_finetuning": None, "before_finetuning_mAP75": None, "run": "unpruned"}]
  for method in p.methods:
    for fraction in p.fractions:
      for seed in p.seeds:
        rows.append(pruned_row(trial_config(config, seed), method, fraction, workdir,
                               (model, variables, batches, source, task), detectors))
  image_shape = info.element_spec["image"].shape
  speed = images_per_second(detectors, plain.eval_batch_size, image_shape)
  for row in rows:
    m, v = detectors[row["run"]]
    row.update(costs(m, v, image_shape), images_per_second=speed[row["run"]])
  return {"rows": rows, "examples": pictured_examples(source, task, model, variables)}


def define_flags() -> None:
  runner.define_config_flag("ssd_pruning_digits", "The detector and pruning config.")
  flags.DEFINE_string("workdir", "runs/pruning", "Where the runs and the table go.")


def main() -> None:
  config = flags.FLAGS.config
  problems = check_pruning(config)
  if problems:
    runner.usage_error(" ".join(problems))
  started = time.time()
  results = run_study(config, flags.FLAGS.workdir)
  table = markdown_table(results["rows"]) + "\n" + overlap_table(results["rows"])
  runner.write_outputs(flags.FLAGS.workdir, "pruning", table, results, started, plot=plot)


if __name__ == "__main__":
  runner.run_command(main, define_flags, default_config="ssd_pruning_digits")
