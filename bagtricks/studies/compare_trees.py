"""The trees' and forests' comparison tables, beside their papers' numbers and scikit-learn.

    python -m bagtricks.studies.compare_trees [--seeds=0,1,2,3,4] [--image_seeds=0,1] \
        [--digits=sklearn_digits|mnist_5k] [--tables=dndt,sdt,ndf] [--workdir=...]

Every run goes through ``train_and_evaluate`` with a config from ``configs/`` (reused when its
``workdir`` already holds the same finished run) and prints three markdown tables, also written
to ``<workdir>/trees.md`` and ``trees.json``:

1. DNDT (Yang et al. 2018, Table 2) on iris, breast cancer and wine, seed s giving both the
   stratified split and the initialization, beside the hard-rule accuracy of the same trees,
   the shallow neural decision forest, and scikit-learn's ``DecisionTreeClassifier`` and an
   MLP of 2×50 hidden units (``MLPClassifier``) fitted on the same standardized split.
2. Soft decision tree on the digits, trained on the labels vs on a ResNet-18-D's soft targets
   (Frosst & Hinton 2017), both predictions (max-path leaf and mixture).
3. Neural decision forest head vs softmax head on the same ResNet-18-D trunk and budget
   (Kontschieder et al. 2015).

``--digits`` picks the digits of tables 2 and 3: scikit-learn's 8×8 ones or the 5,000 MNIST
digits (the ResNets with the budget of ``configs/mnist_5k.py``, the trees with
``configs/sdt_mnist.py`` and ``sdt_distill_mnist.py``);
``--tables`` the tables to make.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Sequence

from absl import flags

from bagtricks import cli, data, paths, train
from bagtricks.studies import runner
from configs import default as default_config
from configs import (dndt_breast_cancer, dndt_iris, dndt_wine, mnist_5k, ndf_digits,
                     ndf_tabular, sdt_digits, sdt_distill_digits, sdt_distill_mnist, sdt_mnist)

# Yang et al. 2018, Table 2 (DNDT column); wine is not in the paper.
PAPER_DNDT = {"sklearn_iris": 100.0, "sklearn_breast_cancer": 94.9, "sklearn_wine": None}
DNDT_CONFIGS = {"sklearn_iris": dndt_iris, "sklearn_breast_cancer": dndt_breast_cancer,
                "sklearn_wine": dndt_wine}
# Frosst & Hinton 2017, MNIST, depth 8.
PAPER_SDT = {"direct": 94.45, "distilled": 96.76}


def sklearn_baselines(name: str, seed: int) -> Dict[str, float]:
  """Test accuracy (%) of a CART tree and a 2×50 MLP on the split of ``load_tabular``."""
  from sklearn.neural_network import MLPClassifier  # pylint: disable=g-import-not-at-top
  from sklearn.tree import DecisionTreeClassifier  # pylint: disable=g-import-not-at-top
  table = data.load_tabular(name, 0.2, seed)
  x_train, y_train = table.splits["train"]
  x_test, y_test = table.splits["test"]
  tree = DecisionTreeClassifier(random_state=seed).fit(x_train, y_train)
  mlp = MLPClassifier(hidden_layer_sizes=(50, 50), max_iter=2000,
                      random_state=seed).fit(x_train, y_train)
  return {"decision_tree": 100 * tree.score(x_test, y_test),
          "mlp": 100 * mlp.score(x_test, y_test)}


TABLES = ("dndt", "sdt", "ndf")
# Per --digits: the name that prefixes its runs' workdirs.
DIGITS_RUN_PREFIX = {"sklearn_digits": "digits", "mnist_5k": "mnist"}


# Per --digits: the soft tree's configs, trained on the labels and distilled.
SDT_CONFIGS = {"sklearn_digits": (sdt_digits, sdt_distill_digits),
               "mnist_5k": (sdt_mnist, sdt_distill_mnist)}


def _on_digits(get_config: Callable, digits: str) -> Callable:
  # A ResNet config of the digits on --digits, with that dataset's budget.
  if digits == "sklearn_digits":
    return get_config
  return lambda: mnist_5k.on_mnist(get_config())


def _seeded(get_config: Callable, seed: int, **dataset):
  config = get_config()
  config.seed = seed
  for key, value in dataset.items():
    config.dataset[key] = value
  return config


def dndt_rows(workdir: str, seeds: Sequence[int]) -> List[Dict]:
  """Table 1: per dataset, the accuracies (%) of every seed for each model."""
  rows = []
  for name, module in DNDT_CONFIGS.items():
    row = {"dataset": name, "paper_dndt": PAPER_DNDT[name], "dndt": [], "dndt_rules": [],
           "sndf": [], "decision_tree": [], "mlp": []}
    for seed in seeds:
      dndt = train.train_and_evaluate(_seeded(module.get_config, seed, split_seed=seed),
                                 paths.join(workdir, f"dndt_{name}_s{seed}"))
      sndf = train.train_and_evaluate(
          _seeded(ndf_tabular.get_config, seed, name=name, split_seed=seed),
          paths.join(workdir, f"sndf_{name}_s{seed}"))
      row["dndt"].append(100 * dndt["test_accuracy"])
      row["dndt_rules"].append(100 * dndt["rules_test_accuracy"])
      row["sndf"].append(100 * sndf["test_accuracy"])
      for key, value in sklearn_baselines(name, seed).items():
        row[key].append(value)
    rows.append(row)
  return rows


def sdt_rows(workdir: str, seeds: Sequence[int], digits: str = "sklearn_digits") -> List[Dict]:
  """Table 2: the soft tree on labels vs distilled from a ResNet-18-D trained here."""
  # The teacher is the softmax-head ResNet-18-D of table 3 (the default run, seed 0).
  prefix = DIGITS_RUN_PREFIX[digits]
  teacher_dir = paths.join(workdir, f"{prefix}_softmax_s0")
  teacher = train.train_and_evaluate(_on_digits(default_config.get_config, digits)(),
                                     teacher_dir)
  rows = []
  tree_prefix = "sdt" if digits == "sklearn_digits" else f"{prefix}_sdt"
  for label, module in zip(("direct", "distilled"), SDT_CONFIGS[digits]):
    get_config = module.get_config
    row = {"training": label, "paper_mnist": PAPER_SDT[label], "max_path": [], "mixture": [],
           "teacher": 100 * teacher["test_accuracy"]}
    for seed in seeds:
      config = _seeded(get_config, seed)
      if config.distill.enabled:
        config.distill.teacher_workdir = teacher_dir
      summary = train.train_and_evaluate(config,
                                         paths.join(workdir, f"{tree_prefix}_{label}_s{seed}"))
      row["max_path"].append(100 * summary["test_accuracy_max_path"])
      row["mixture"].append(100 * summary["test_accuracy"])
    rows.append(row)
  return rows


def ndf_rows(workdir: str, seeds: Sequence[int], digits: str = "sklearn_digits") -> List[Dict]:
  """Table 3: ResNet-18-D trunk with a forest head vs a softmax head, same recipe."""
  rows = []
  for label, get_config in (("softmax head", default_config.get_config),
                            ("forest head (fixed-point π)", ndf_digits.get_config)):
    accuracies = []
    for seed in seeds:
      key = "softmax" if "softmax" in label else "ndf"
      summary = train.train_and_evaluate(
          _seeded(_on_digits(get_config, digits), seed),
          paths.join(workdir, f"{DIGITS_RUN_PREFIX[digits]}_{key}_s{seed}"))
      accuracies.append(100 * summary["test_accuracy"])
    rows.append({"model": label, "accuracy": accuracies})
  return rows


DIGITS_TITLE = {"sklearn_digits": "the 8×8 digits (1,437 train, 360 test)",
                "mnist_5k": "MNIST 5k (4,000 train, 1,000 test)"}


def markdown_tables(dndt: List[Dict], sdt: List[Dict], ndf: List[Dict],
                    seeds: Sequence[int], image_seeds: Sequence[int],
                    digits: str = "sklearn_digits", ndf_epochs: float = 40) -> str:
  """The tables made (mean ± std of test accuracy, %); an empty list leaves its table out."""
  out = []
  if dndt:
    out += [f"DNDT, test accuracy % (mean ± std over seeds {list(seeds)}; seed = split and "
            "init)", "",
            "| dataset | paper DNDT | DNDT | DNDT hard rules | sNDF | sklearn tree | MLP 2×50 |",
            "|---|---|---|---|---|---|---|"]
  for r in dndt:
    paper = "–" if r["paper_dndt"] is None else f"{r['paper_dndt']:.1f}"
    out.append(f"| {r['dataset'][len('sklearn_'):]} | {paper} | {runner.mean_std(r['dndt'])} | "
               f"{runner.mean_std(r['dndt_rules'])} | {runner.mean_std(r['sndf'])} | "
               f"{runner.mean_std(r['decision_tree'])} | {runner.mean_std(r['mlp'])} |")
  if sdt:
    out += ["", f"Soft decision tree (depth 8) on {DIGITS_TITLE[digits]}, test accuracy % "
            f"(seeds {list(seeds)}; the paper's MNIST: 60,000 train, 10,000 test)", "",
            "| training | paper (MNIST) | max-path leaf | mixture | teacher |",
            "|---|---|---|---|---|"]
  for r in sdt:
    teacher = f"{r['teacher']:.2f}" if r["training"] == "distilled" else "–"
    out.append(f"| {r['training']} | {r['paper_mnist']:.2f} | {runner.mean_std(r['max_path'])} | "
               f"{runner.mean_std(r['mixture'])} | {teacher} |")
  if ndf:
    out += ["", f"ResNet-18-D trunk on {DIGITS_TITLE[digits]}, same recipe and {ndf_epochs:g} "
            f"epochs, test accuracy % (seeds {list(image_seeds)})", "", "| head | accuracy |",
            "|---|---|"]
  for r in ndf:
    out.append(f"| {r['model']} | {runner.mean_std(r['accuracy'])} |")
  return "\n".join(out).lstrip("\n") + "\n"


def main() -> None:
  workdir = flags.FLAGS.workdir
  seeds = runner.numbers("seeds")
  image_seeds = runner.numbers("image_seeds")
  digits = flags.FLAGS.digits
  tables = runner.names("tables", TABLES)
  start = time.time()
  dndt = cli.run_reporting_errors(dndt_rows, workdir, seeds) if "dndt" in tables else []
  sdt = cli.run_reporting_errors(sdt_rows, workdir, seeds, digits) if "sdt" in tables else []
  ndf = (cli.run_reporting_errors(ndf_rows, workdir, image_seeds, digits)
         if "ndf" in tables else [])
  epochs = _on_digits(default_config.get_config, digits)().num_epochs
  name = "trees" if digits == "sklearn_digits" else f"trees_{DIGITS_RUN_PREFIX[digits]}"
  runner.write_outputs(
      workdir, name, markdown_tables(dndt, sdt, ndf, seeds, image_seeds, digits, epochs),
      {"digits": digits, "dndt": dndt, "sdt": sdt, "ndf": ndf}, start)


def define_flags() -> None:
  flags.DEFINE_string("workdir", "runs/trees", "Where the runs and tables go.")
  flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"],
                    "Seeds of the tabular and soft-tree runs.")
  flags.DEFINE_list("image_seeds", ["0", "1"],
                    "Seeds of the ResNet-18-D runs (about 100 s each here on the 8×8 digits).")
  flags.DEFINE_enum("digits", "sklearn_digits", list(DIGITS_RUN_PREFIX),
                    "The digits of the soft-tree and forest-head tables.")
  flags.DEFINE_list("tables", list(TABLES), "The tables to make.")


if __name__ == "__main__":
  runner.run_command(main, define_flags)
