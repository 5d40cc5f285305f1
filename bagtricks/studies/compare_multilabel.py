r"""Multi-label learning with hidden labels: oracle BCE, BCE on known labels, partial-BCE.

    python -m bagtricks.studies.compare_multilabel [--workdir=runs/multilabel] \
        [--hidden_fractions=0.7,0.9] [--seeds=0]

On the digit mosaics (``configs/multilabel_mosaic.py``: the same mosaics, model, recipe and
epoch budget for every run), each hidden fraction trains three runs through
``train_and_evaluate`` (a finished run in the same workdir is reused): BCE on every label
(the oracle, which sees the hidden labels), BCE on the known labels only, and the partial-BCE
of Durand et al. (2019). The table of test mAP (mean ± std over seeds) is printed and written
to ``<workdir>/multilabel.md`` and ``multilabel.json``.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Sequence

from absl import flags

from bagtricks import cli, paths, train
from bagtricks.studies import runner
from configs import multilabel_mosaic

LOSSES = (("full_bce", "BCE, every label (oracle)"), ("known_bce", "BCE, known labels only"),
          ("partial_bce", "partial-BCE"))


def multilabel_rows(workdir: str, hidden_fractions: Sequence[float], seeds: Sequence[int],
                    change: Callable = lambda config: None,
                    loss_names: Sequence[str] = tuple(name for name, _ in LOSSES)) -> List[Dict]:
  """One row per hidden fraction: the test mAP of every seed for each of ``loss_names``."""
  rows = []
  for hidden in hidden_fractions:
    row = {"hidden_fraction": hidden}
    for loss in loss_names:
      row[loss] = []
      for seed in seeds:
        config = multilabel_mosaic.get_config()
        config.seed = seed
        config.dataset.hidden_fraction = hidden
        config.multilabel.loss = loss
        change(config)
        summary = train.train_and_evaluate(
            config, paths.join(workdir, f"{loss}_h{hidden:g}_s{seed}"))
        row[loss].append(summary["test_mAP"])
    rows.append(row)
  return rows


def markdown_table(rows: List[Dict], seeds: Sequence[int]) -> str:
  """Test mAP (%) per hidden fraction and loss."""
  columns = [(loss, label) for loss, label in LOSSES if rows and loss in rows[0]]
  out = [f"Digit mosaics, test mAP % (seeds {list(seeds)})", "",
         "| labels hidden | known per mosaic | " + " | ".join(label for _, label in columns)
         + " |", "|---|---|" + "---|" * len(columns)]
  for r in rows:
    known = 10 - int(round(10 * r["hidden_fraction"]))
    out.append(f"| {100 * r['hidden_fraction']:.0f} % | {known} of 10 | "
               + " | ".join(runner.mean_std(r[loss], scale=100) for loss, _ in columns) + " |")
  return "\n".join(out) + "\n"


def main() -> None:
  workdir = flags.FLAGS.workdir
  hidden = runner.numbers("hidden_fractions", float)
  seeds = runner.numbers("seeds")
  start = time.time()
  rows = cli.run_reporting_errors(multilabel_rows, workdir, hidden, seeds)
  runner.write_outputs(workdir, "multilabel", markdown_table(rows, seeds), rows, start)


def define_flags() -> None:
  flags.DEFINE_string("workdir", "runs/multilabel", "Where the runs and the table go.")
  flags.DEFINE_list("hidden_fractions", ["0.7", "0.9"],
                    "Fractions of each training mosaic's labels hidden.")
  flags.DEFINE_list("seeds", ["0"], "Training seeds.")


if __name__ == "__main__":
  runner.run_command(main, define_flags)
