r"""Design-space runner: random RegNets through the train loop, and their error EDFs.

  python -m bagtricks.studies.design_space --config=configs/regnet_space_digits.py

"Designing Network Design Spaces" (Radosavovic et al. 2020) compares design spaces by the
distribution of errors of models sampled from them: n models are drawn at random within a FLOP
regime, each is trained, and the empirical distribution function of their errors,
F(e) = (1/n) Σ_i 1[e_i < e], is plotted per space; a space whose EDF rises earlier holds more
good models. This runner does that with the RegNet design space (``models.regnet``): for each
space in ``config.design_space.spaces`` ('RegNetX', or 'RegNetY' with squeeze-and-excitation)
it samples ``num_models`` designs with ``regnet.sample_designs`` under
``config.design_space.flop_range``, trains each by ``train.train_and_evaluate`` (the one loop,
the config's recipe, the generic ``regnet`` model) in ``<workdir>/<space>_<NN>``, and writes
``design_space.md`` (one row per model), ``design_space.json`` and ``edf.png``. A run that
already finished with the same config is reused, an interrupted one resumes.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Dict, List

import numpy as np
from absl import flags

from bagtricks import cli, data, paths, train
from bagtricks.studies import runner
from models import regnet

# Squeeze-and-excitation ratio of each design space.
SPACES = {"RegNetX": 0.0, "RegNetY": 0.25}


class DesignSpaceError(ValueError):
  """A bad ``config.design_space``."""


def design_space_of(config, name: str) -> regnet.DesignSpace:
  """The sampler's ranges for space ``name`` from ``config.design_space`` and the data shape.

  Raises:
    DesignSpaceError: unknown space name.
  """
  if name not in SPACES:
    raise DesignSpaceError(f"config.design_space.spaces has {name!r}; use names from "
                           f"{list(SPACES)}.")
  ds = config.design_space
  return regnet.DesignSpace(
      depth=tuple(ds.depth), w0=tuple(ds.w0), wa=tuple(ds.wa), wm=tuple(ds.wm),
      group_widths=tuple(ds.group_widths), bottleneck_ratios=tuple(ds.bottleneck_ratios),
      se_ratio=SPACES[name], num_stages=tuple(ds.num_stages), flop_range=tuple(ds.flop_range),
      image_size=data.image_size(config), num_classes=ds.num_classes,
      in_channels=config.dataset.channels, small_stem=config.model.small_stem,
      stem_width=config.model.stem_width)


def edf(errors: List[float], points: np.ndarray) -> np.ndarray:
  """The empirical distribution function F(e) = (1/n) Σ_i 1[e_i < e] at ``points``."""
  errors = np.asarray(errors, dtype=np.float64)
  return (errors[None, :] < np.asarray(points, dtype=np.float64)[:, None]).mean(axis=1)


def run_design_space(config, workdir: str) -> List[Dict]:
  """Samples, trains and evaluates ``num_models`` RegNets per design space.

  Args:
    config: a training config with ``model.name = 'regnet'`` and ``design_space`` fields.
    workdir: where the runs and the report go.

  Returns:
    One row per model: space, design, stage widths and depths, FLOPs, test error (%) and
    training seconds.
  """
  config = config.copy_and_resolve_references()
  if "design_space" not in config or config.model.name != "regnet":
    raise DesignSpaceError("The config needs model.name='regnet' and a design_space section; "
                           "start from configs/regnet_space_digits.py.")
  spaces = [design_space_of(config, name) for name in config.design_space.spaces]
  rows = []
  for space_index, (name, space) in enumerate(zip(config.design_space.spaces, spaces)):
    try:
      sampled = regnet.sample_designs(space, config.design_space.num_models,
                                      seed=config.design_space.seed + space_index)
    except ValueError as e:
      raise DesignSpaceError(f"config.design_space: {e}") from e
    for model_index, (design, cost) in enumerate(sampled):
      run_config = config.copy_and_resolve_references()
      for field, value in dataclasses.asdict(design).items():
        run_config.model[field] = value
      summary = train.train_and_evaluate(run_config,
                                         paths.join(workdir, f"{name}_{model_index:02d}"))
      stages = regnet.stage_specs(design)
      rows.append({
          "space": name, "design": dataclasses.asdict(design), "flops": cost,
          "widths": [s.width for s in stages], "depths": [s.depth for s in stages],
          "error": 100.0 * (1.0 - summary["test_accuracy"]),
          "train_seconds": summary["train_seconds"]})
  return rows


def markdown_table(rows: List[Dict]) -> str:
  """One line per model, and each space's error quantiles."""
  lines = ["| space | d | w0 | wa | wm | g | b | stage widths (depths) | kFLOPs | test error (%) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for row in sorted(rows, key=lambda r: (r["space"], r["error"])):
    d = row["design"]
    stages = ", ".join(f"{w} ({n})" for w, n in zip(row["widths"], row["depths"]))
    lines.append(f"| {row['space']} | {d['depth']} | {d['w0']} | {d['wa']:.2f} | "
                 f"{d['wm']:.3f} | {d['group_width']} | {d['bottleneck_ratio']:g} | {stages} | "
                 f"{row['flops'] / 1e3:.0f} | {row['error']:.2f} |")
  lines += ["", "| space | models | min error | median error | max error |",
            "|---|---|---|---|---|"]
  for space in dict.fromkeys(r["space"] for r in rows):
    errors = [r["error"] for r in rows if r["space"] == space]
    lines.append(f"| {space} | {len(errors)} | {min(errors):.2f} | {np.median(errors):.2f} | "
                 f"{max(errors):.2f} |")
  return "\n".join(lines) + "\n"


def plot_edf(rows: List[Dict], path: str) -> None:
  """Error EDF per design space (the paper's Figure 2 style) and error against FLOPs."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax_edf, ax_flops) = plt.subplots(1, 2, figsize=(11, 4.2))
  errors_all = [r["error"] for r in rows]
  points = np.linspace(max(0.0, min(errors_all) - 1.0), max(errors_all) + 1.0, 500)
  for space in dict.fromkeys(r["space"] for r in rows):
    errors = [r["error"] for r in rows if r["space"] == space]
    ax_edf.plot(points, edf(errors, points),
                label=f"{space} [{np.min(errors):.1f} | {np.median(errors):.1f}]")
    ax_flops.scatter([r["flops"] / 1e3 for r in rows if r["space"] == space], errors,
                     label=space)
  ax_edf.set(xlabel="test error (%)", ylabel="cumulative probability", ylim=(0.0, 1.02),
             title=f"Error EDF, {len(rows)} models (legend: [min | median] error)")
  ax_flops.set(xlabel="kFLOPs (multiply-adds) per image", ylabel="test error (%)",
               title="Error against FLOPs")
  for ax in (ax_edf, ax_flops):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def define_flags() -> None:
  runner.define_config_flag("regnet_space_digits", "Config with model.name='regnet' and "
                            "design_space fields; overridable as --config.x=y.")
  flags.DEFINE_string("workdir", None, "Output directory; default runs/design_space_<config>.")


def main() -> None:
  workdir = flags.FLAGS.workdir or os.path.join("runs", f"design_space_{runner.config_name()}")
  start = time.time()
  rows = cli.run_reporting_errors(run_design_space, flags.FLAGS.config, workdir,
                                  usage_errors=(DesignSpaceError,))
  runner.write_outputs(workdir, "design_space", markdown_table(rows), rows, start, plot_edf,
                       picture="edf.png")


if __name__ == "__main__":
  runner.run_command(main, define_flags, default_config="regnet_space_digits")
