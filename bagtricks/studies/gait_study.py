r"""Cross-view gait recognition on the generated walkers: GaitSet against the GEI baseline.

  python -m bagtricks.studies.gait_study [--config=configs/gaitset_walkers.py] \
      [--seeds=0,1,2] [--set_sizes=1,4,16] [--workdir=runs/gait]

On the config's walkers (``data.gait_sets``: the training people, and the test people never
trained on), scored by CASIA-B's protocol (gallery NM 1–4; probes NM 5–6, BG 1–2 and CL 1–2;
rank-1 per probe view averaged over the gallery views other than its own):

* the classical baseline, the gait energy image (the mean silhouette, Han & Bhanu 2006)
  matched by nearest neighbour;
* GaitSet trained for every seed through ``train.train_and_evaluate`` (a finished run in
  the workdir is reused);
* the paper's set-size experiment: the trained model scoring test sets of 1, 4, ...
  frames (the same frames of each sequence for every model);
* probes that mix two views: each NM probe set is half of its frames at view θ and half at
  θ + 90° (same person and sequence), against the gallery views other than those two, beside
  the same probes with all their frames at θ alone and at θ + 90° alone.

Writes ``gait.md`` (the tables), ``gait.json`` and ``gait.png`` (a walker in each condition at
each view, and rank-1 per probe view).
"""

from __future__ import annotations

import os
import time
from typing import Dict, List, Sequence

import numpy as np
from absl import flags

from bagtricks import paths, train
from bagtricks.data import gait, gait_sets
from bagtricks.gait_protocol import META_KEYS
from bagtricks.studies import runner
from bagtricks.tasks.gait import rank1_summary

PROBES = tuple(gait.PROBES)
VIEW_STEP = 90  # The second view of a mixed probe, in degrees after the first.


def per_view_results(results: Dict[str, float], views: Sequence[int]) -> Dict[str, Dict]:
  """``rank1_summary``'s (or a run summary's, prefix dropped) numbers as ``{probe:
  {'per_view': [...]}}``."""
  return {p: {"per_view": [results[f"rank1_{p.lower()}_{v}"] for v in views]} for p in PROBES}


def gei_results(test: Dict[str, np.ndarray]) -> Dict[str, Dict]:
  """The GEI baseline's rank-1 on a test split (``frames`` [n, frames, H, W] and its meta)."""
  views = tuple(int(v) for v in np.unique(test["view"]))
  geis = np.asarray(test["frames"], np.float32).mean(axis=1)
  return per_view_results(rank1_summary(geis.reshape(len(geis), -1), test), views)


def embed(apply, variables, frames: np.ndarray, batch: int = 128) -> np.ndarray:
  """The trained model's flattened embeddings ``[n, strips · D]`` of sets ``[n, f, H, W]``."""
  out = [np.asarray(apply(variables, frames[i:i + batch])) for i in range(0, len(frames), batch)]
  return np.concatenate(out).reshape(len(frames), -1)


def mixed_view_rank1(embedding, test: Dict[str, np.ndarray], views: Sequence[int]) -> Dict:
  """Rank-1 of NM probes whose set mixes two views, and of the same probes at one view.

  For each view θ with θ + 90° among ``views``: each NM 5–6 probe at θ becomes the set of its
  first half of frames at θ and its second half at θ + 90° (the same person's same
  sequence). Each probe is matched against the NM 1–4 gallery of every other view, one
  gallery view at a time, as the protocol does.

  Args:
    embedding: ``fn(frames [n, f, H, W]) -> [n, d]``.
    test: the test split's ``frames`` and meta.
    views: the views drawn.

  Returns:
    ``{'pairs': [(θ, θ + 90°)], 'mixed', 'first view only', 'second view only': rank-1
    averaged over pairs and gallery views}``.
  """
  names = list(gait.CONDITIONS)
  probe_name, probe_sequences = gait.PROBES["NM"]
  probes = test["condition"] == names.index(probe_name)
  probes &= np.isin(test["sequence"], probe_sequences)
  gallery = (test["condition"] == names.index(gait.GALLERY[0])) & np.isin(
      test["sequence"], gait.GALLERY[1])
  gallery_embeddings = embedding(test["frames"][gallery])
  gallery_meta = {k: test[k][gallery] for k in META_KEYS}
  half = test["frames"].shape[1] // 2
  scores: Dict[str, List[float]] = {"mixed": [], "first view only": [],
                                    "second view only": []}
  pairs = [(a, a + VIEW_STEP) for a in views if a + VIEW_STEP in views]
  for first, second in pairs:
    a = np.flatnonzero(probes & (test["view"] == first))
    # The same person's same sequence at the second view, row for row.
    key = {(p, s): i for i in np.flatnonzero(probes & (test["view"] == second))
           for p, s in [(test["person"][i], test["sequence"][i])]}
    b = np.array([key[(test["person"][i], test["sequence"][i])] for i in a])
    mixed = np.concatenate([test["frames"][a, :half], test["frames"][b, half:]], axis=1)
    sets = {"mixed": embedding(mixed), "first view only": embedding(test["frames"][a]),
            "second view only": embedding(test["frames"][b])}
    for view in views:
      if view in (first, second):
        continue
      rows = gallery_meta["view"] == view
      for name, probe_embeddings in sets.items():
        scores[name].append(gait.rank1(probe_embeddings, test["person"][a],
                                       gallery_embeddings[rows], gallery_meta["person"][rows]))
  return {"pairs": pairs, **{k: float(np.mean(v)) for k, v in scores.items()}}


def trained_results(config, run_dir: str, set_sizes: Sequence[int]) -> Dict:
  """A trained GaitSet's protocol results, set sizes and mixed-view probes (the model is
  restored once and applied to the test split's sequences with all their frames)."""
  summary = train.train_and_evaluate(config, run_dir)
  views = tuple(config.dataset.views)
  results = {"protocol": per_view_results(
      {k[len("test_"):]: v for k, v in summary.items() if k.startswith("test_rank1")}, views),
      "set_sizes": {}}
  every_frame = config.copy_and_resolve_references()
  every_frame.dataset.eval_frames = 0
  source, apply, variables = runner.finished_run_model(every_frame, run_dir)
  test = source.splits["test"]

  def embedding(frames):
    return embed(apply, variables, frames)

  for size in set_sizes:  # The sets the source makes with dataset.eval_frames = size.
    sets = gait_sets.test_sets(test["frames"], size, config.dataset.generator_seed)
    measured = rank1_summary(embedding(sets), test)
    results["set_sizes"][size] = {p: measured[f"rank1_{p.lower()}"] for p in PROBES}
  results["mixed_views"] = mixed_view_rank1(embedding, test, views)
  return results


def mean_row(values: List[Dict[str, float]], keys: Sequence[str]) -> str:
  return " | ".join(runner.mean_std([v[k] for v in values], 100.0) for k in keys)


def markdown_table(methods: Dict[str, List[Dict]], trained: List[Dict], test_people: int,
                   seeds: Sequence[int], views: Sequence[int]) -> str:
  """The protocol's table (every method, mean and per probe view), then the set sizes and
  mixed-view probes of the trained model, as mean ± std over ``seeds``."""
  lines = [f"Rank-1 (%) of {test_people} test people, identical view excluded; gallery NM "
           f"1-4; seeds {list(seeds)}.", "",
           "| method | probe | mean | " + " | ".join(f"{v}°" for v in views) + " |",
           "|---" * (3 + len(views)) + "|"]
  for method, runs in methods.items():
    for probe in PROBES:
      per_view = [np.array(r[probe]["per_view"]) for r in runs]
      means = [{"mean": float(np.mean(p))} for p in per_view]
      lines.append(f"| {method} | {probe} | {mean_row(means, ['mean'])} | "
                   + " | ".join(f"{100 * np.mean([p[i] for p in per_view]):.1f}"
                                for i in range(len(views))) + " |")
  if trained and trained[0]["set_sizes"]:
    lines += ["", "GaitSet, test sets of n frames (the same frames for every seed):", "",
              "| frames | " + " | ".join(PROBES) + " |", "|---" * (1 + len(PROBES)) + "|"]
    for size in trained[0]["set_sizes"]:
      lines.append(f"| {size} | " + mean_row([t["set_sizes"][size] for t in trained], PROBES)
                   + " |")
  if trained and trained[0]["mixed_views"]["pairs"]:
    keys = ("mixed", "first view only", "second view only")
    pairs = ", ".join(f"{a}°+{b}°" for a, b in trained[0]["mixed_views"]["pairs"])
    lines += ["", f"GaitSet, NM probes mixing two views ({pairs}), half the frames each, "
              "against the other gallery views:", "",
              "| " + " | ".join(keys) + " |", "|---" * len(keys) + "|",
              "| " + mean_row([t["mixed_views"] for t in trained], keys) + " |"]
  return "\n".join(lines) + "\n"


def plot(results: Dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  examples = np.array(results["examples"])  # [conditions, views, H, W]
  views = results["views"]
  rows, cols = examples.shape[:2]
  fig = plt.figure(figsize=(12, 1.4 * rows + 3))
  grid = fig.add_gridspec(rows + 2, cols)
  for r in range(rows):
    for c in range(cols):
      ax = fig.add_subplot(grid[r, c])
      ax.imshow(examples[r, c], cmap="gray", vmin=0, vmax=1)
      ax.axis("off")
      if r == 0:
        ax.set_title(f"{views[c]}°", fontsize=8)
  ax = fig.add_subplot(grid[rows:, :])
  for (method, runs), style in zip(results["methods"].items(), ("--", "-")):
    for probe in PROBES:
      per_view = np.mean([r[probe]["per_view"] for r in runs], axis=0)
      ax.plot(views, 100 * per_view, style, marker="o", label=f"{method} {probe}")
  ax.set_xticks(views)
  ax.set_xlabel("probe view (°)")
  ax.set_ylabel("rank-1 (%), identical view excluded")
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def examples_of_first_person(test: Dict[str, np.ndarray], views: Sequence[int]) -> List:
  """The first test person's first frame in each condition's first sequence, at each view."""
  first = test["person"] == test["person"].min()
  return [[test["frames"][np.flatnonzero(first & (test["condition"] == c)
                                         & (test["sequence"] == 1) & (test["view"] == v))[0], 0]
           for v in views] for c in range(len(gait.CONDITIONS))]


def main() -> None:
  args = flags.FLAGS
  from bagtricks import data  # pylint: disable=g-import-not-at-top
  from bagtricks import validate  # pylint: disable=g-import-not-at-top
  config = validate.complete_config(args.config)
  seeds, set_sizes = runner.numbers("seeds"), runner.numbers("set_sizes")
  if any(not 1 <= size <= config.dataset.frames for size in set_sizes):
    runner.usage_error(f"--set_sizes={set_sizes} must be in 1..{config.dataset.frames} "
                       "(config.dataset.frames, the frames drawn per sequence).")
  start = time.time()
  test = data.get_source(config).splits["test"]
  views = tuple(config.dataset.views)
  methods = {"GEI + nearest neighbour": [gei_results(test)]}
  trained = []
  for seed in seeds:
    run = config.copy_and_resolve_references()
    run.seed = seed
    trained.append(trained_results(run, paths.join(args.workdir, f"gaitset_s{seed}"),
                                   set_sizes))
  if trained:
    methods["GaitSet"] = [t["protocol"] for t in trained]
  results = {"methods": methods, "trained": trained, "seeds": seeds, "views": views,
             "examples": np.asarray(examples_of_first_person(test, views)).tolist()}
  table = markdown_table(methods, trained, config.dataset.test_identities, seeds, views)
  runner.write_outputs(args.workdir, "gait", table, results, start, plot=plot)


def define_flags() -> None:
  runner.define_config_flag("gaitset_walkers", "The GaitSet run config (its dataset too).")
  flags.DEFINE_string("workdir", os.path.join("runs", "gait"), "Output directory.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds of GaitSet; empty: GEI only.")
  flags.DEFINE_list("set_sizes", ["1", "4", "16"], "Frames per test set to score GaitSet with.")


if __name__ == "__main__":
  runner.run_command(main, define_flags, default_config="gaitset_walkers")
