r"""Graph neural networks against a graph-blind MLP on node, graph and reasoning tasks.

    python -m bagtricks.studies.graph_study [--workdir=runs/graphs] [--seeds=0,1,2] \
        [--tables=node,graph,babi] [--digits=sklearn_digits]

Every run goes through ``train.train_and_evaluate`` (a finished run in the workdir is reused):

* ``node``: semi-supervised node classification with GCN, GAT, GraphSAGE and the MLP
  (``node_mlp``: the same layers on each node alone) on Zachary's karate club
  (``configs/gcn_karate.py``), on a k-nearest-neighbour graph of the digits with 10 labels
  per class (``configs/gnn_digits.py``) and on that graph rewired so that neighbours mostly
  disagree (``dataset.rewire`` = ``--rewire``; GAT on the digits graphs only with
  ``--gat_on_digits``); the seed sets the initialization and, on the digits, which nodes are
  labelled.
* ``graph``: graph classification on networkx's atlas of small graphs by a structural
  property (``configs/gnn_atlas.py``), GGNN, GCN, GAT, GraphSAGE and the MLP with a graph
  readout; the seed sets the initialization and the train/test split.
* ``babi``: GGNN and the MLP on the generated bAbI tasks with 50 training graphs
  (``configs/ggnn_babi.py``); the seed sets the initialization and the stories.

Writes ``graphs.md`` (the tables, test accuracy % mean ± std over seeds) and ``graphs.json``
into the workdir.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Dict, List, Sequence

from absl import flags

from bagtricks import cli, data, paths, train, validate
from bagtricks.data import graphs
from bagtricks.studies import runner
from configs import gcn_karate, ggnn_babi, gnn_atlas, gnn_digits

NODE_MODELS = ("gcn", "gat", "graphsage", "node_mlp")
# GAT's dense attention over every pair of the 1,797 digits (with dropout on it, as in the
# paper) makes a step ~35× a GCN step on the digits graphs: ``--gat_on_digits`` adds it.
DIGITS_NODE_MODELS = ("gcn", "graphsage", "node_mlp")
GRAPH_MODELS = ("ggnn", "gcn", "gat", "graphsage", "node_mlp")
BABI_MODELS = ("ggnn", "node_mlp")
TABLES = ("node", "graph", "babi")
# bAbI tasks answered by a node, and those answered by a class per graph.
BABI_READOUT = {4: "select", 15: "select", 16: "select", 18: "graph", 19: "graph"}


def _train(config, workdir: str) -> float:
  return train.train_and_evaluate(config, workdir)["test_accuracy"]


def _runs(workdir: str, name: str, make_config: Callable, models: Sequence[str],
          seeds: Sequence[int]) -> Dict[str, List[float]]:
  """``{model: [test accuracy per seed]}`` of ``make_config(model, seed)``'s runs."""
  return {model: [_train(make_config(model, seed), paths.join(workdir, f"{name}_{model}_s{seed}"))
                  for seed in seeds] for model in models}


def node_rows(workdir: str, seeds: Sequence[int], digits: str, rewire: float,
              gat_on_digits: bool = False) -> List[Dict]:
  """One row per graph: its homophily and each model's accuracy per seed (None: not run)."""
  rows = []
  for name, rewired in (("karate_club", None), ("digits_knn", 0.0), ("digits_rewired", rewire)):

    def make_config(model, seed, rewired=rewired):
      config = gcn_karate.get_config() if rewired is None else gnn_digits.get_config()
      config.model.name = model
      config.seed = seed
      if rewired is not None:
        config.dataset.digits = digits
        config.dataset.rewire = rewired
        config.dataset.label_seed = seed
      return config

    source = data.get_source(validate.complete_config(make_config("gcn", seeds[0])))
    models = NODE_MODELS if rewired is None or gat_on_digits else DIGITS_NODE_MODELS
    runs = _runs(workdir, name, make_config, models, seeds)
    rows.append({"graph": name, "homophily": source.homophily,
                 **{m: runs.get(m, [None]) for m in NODE_MODELS}})
  return rows


def graph_rows(workdir: str, seeds: Sequence[int], properties: Sequence[str]) -> List[Dict]:
  """One row per atlas property: each model's accuracy per seed."""
  rows = []
  for prop in properties:

    def make_config(model, seed, prop=prop):
      config = gnn_atlas.get_config()
      config.model.name = model
      config.model.readout = "graph"
      if model != "ggnn":  # GGNN's hidden and steps are ints; the others' hidden a tuple.
        config.model = _without(config.model, ("hidden", "steps"))
      config.seed = config.dataset.split_seed = seed
      config.dataset.property = prop
      return config

    rows.append({"property": prop, **_runs(workdir, f"atlas_{prop}", make_config,
                                           GRAPH_MODELS, seeds)})
  return rows


def babi_rows(workdir: str, seeds: Sequence[int]) -> List[Dict]:
  """One row per bAbI task: GGNN's and the MLP's accuracy per seed."""
  rows = []
  for task, readout in BABI_READOUT.items():

    def make_config(model, seed, task=task, readout=readout):
      config = ggnn_babi.get_config()
      config.model.name = model
      config.model.readout = readout
      if model != "ggnn":
        config.model = _without(config.model, ("hidden", "steps"))
      config.seed = config.dataset.seed = seed
      config.dataset.task = task
      return config

    rows.append({"task": task, **_runs(workdir, f"babi{task}", make_config, BABI_MODELS,
                                       seeds)})
  return rows


def _without(model_config, fields):
  model_config = model_config.copy_and_resolve_references()
  for field in fields:
    del model_config[field]
  return model_config


def _table(title: str, first: Sequence[str], rows: List[Dict], row_cells: Callable,
           models: Sequence[str]) -> str:
  lines = [title, "", "| " + " | ".join(list(first) + list(models)) + " |",
           "|---" * (len(first) + len(models)) + "|"]
  for r in rows:
    cells = list(row_cells(r)) + [runner.mean_std(r[m], scale=100) for m in models]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def markdown_tables(results: Dict) -> str:
  seeds = results["seeds"]
  out = []
  if "node" in results:
    out.append(_table(f"**Node classification, test accuracy % (seeds {seeds})**",
                      ("graph", "edge homophily"), results["node"],
                      lambda r: (r["graph"], f"{r['homophily']:.2f}"), NODE_MODELS))
  if "graph" in results:
    out.append(_table(f"**Graph classification on the atlas, test accuracy % (seeds {seeds})**",
                      ("property",), results["graph"], lambda r: (r["property"],),
                      GRAPH_MODELS))
  if "babi" in results:
    out.append(_table(f"**bAbI tasks, 50 training graphs, test accuracy % (seeds {seeds})**",
                      ("task",), results["babi"], lambda r: (str(r["task"]),), BABI_MODELS))
  return "\n".join(out)


def main() -> None:
  seeds = runner.numbers("seeds")
  tables = flags.FLAGS.tables
  unknown = [t for t in tables if t not in TABLES]
  if not seeds or unknown or not tables:
    runner.usage_error(f"--seeds must be non-empty and --tables a list of {TABLES} "
                       f"(got {tables}).")
  workdir = flags.FLAGS.workdir
  start = time.time()
  results = {"seeds": seeds}
  if "node" in tables:
    results["node"] = cli.run_reporting_errors(node_rows, workdir, seeds, flags.FLAGS.digits,
                                               flags.FLAGS.rewire, flags.FLAGS.gat_on_digits)
  if "graph" in tables:
    results["graph"] = cli.run_reporting_errors(graph_rows, workdir, seeds,
                                                flags.FLAGS.properties)
  if "babi" in tables:
    results["babi"] = cli.run_reporting_errors(babi_rows, workdir, seeds)
  runner.write_outputs(workdir, "graphs", markdown_tables(results), results, start)


def define_flags() -> None:
  flags.DEFINE_string("workdir", os.path.join("runs", "graphs"), "Output directory.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the runs.")
  flags.DEFINE_list("tables", list(TABLES), f"Which tables: {TABLES}.")
  flags.DEFINE_string("digits", "sklearn_digits", "The digits of the k-NN graphs: "
                      "'sklearn_digits' or 'mnist_5k'.")
  flags.DEFINE_float("rewire", 0.7, "Fraction of the same-class edges the rewired graph moves.")
  flags.DEFINE_bool("gat_on_digits", False, "Train GAT on the digits graphs too (slow).")
  flags.DEFINE_list("properties", list(graphs.ATLAS_PROPERTIES),
                    "The atlas properties of the graph table.")


if __name__ == "__main__":
  runner.run_command(main, define_flags)
