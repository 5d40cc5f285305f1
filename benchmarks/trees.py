r"""Train-step throughput of the trees and forests, against an MLP measured in the same run.

  python benchmarks/trees.py                    # batch 256, 100 timed steps per model
  python benchmarks/trees.py --batch=4096 --steps=200   # on a GPU

Each model is trained with the project's own train step (``steps.make_train_step`` on one
device, Adam, fp32) on a synthetic batch of the width its config uses: 30 features for the
tabular models (breast cancer's width), 8×8×1 images for the soft tree. The baseline is the
2×50 MLP on the 30 features; the ratio is each model's examples/s over the MLP's. Compilation
is excluded and reported separately.
"""

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cases():
  return [
      # (name, model kwargs, input shape, task)
      ("MLP 2×50 (baseline)", {"name": "mlp", "hidden": (50, 50)}, (30,), "classification"),
      ("DNDT 1 tree × 10 features", {"name": "dndt", "num_trees": 1, "features_per_tree": 10},
       (30,), "classification"),
      ("DNDT forest 10 trees × 10 features", {"name": "dndt", "num_trees": 10,
                                              "features_per_tree": 10}, (30,),
       "classification"),
      ("sNDF 10 trees depth 4", {"name": "ndf", "num_decision_units": 64, "num_trees": 10,
                                 "depth": 4, "leaf_learning": "gradient",
                                 "trunk": {"name": "mlp", "hidden": ()}}, (30,),
       "classification"),
      ("soft tree depth 8 (8×8 px)", {"name": "sdt", "depth": 8}, (8, 8, 1), "soft_tree"),
  ]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--steps", type=int, default=100, help="Timed steps per model.")
  args = parser.parse_args()
  sys.path.insert(0, REPO)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  import models  # pylint: disable=g-import-not-at-top
  from bagtricks import precision, steps, tasks  # pylint: disable=g-import-not-at-top
  from bagtricks.parallel import DataParallel  # pylint: disable=g-import-not-at-top
  from bagtricks.state import init_train_state  # pylint: disable=g-import-not-at-top

  dp = DataParallel("pmap", jax.local_devices()[:1])
  policy = precision.get_policy("fp32")
  print(f"device: {jax.devices()[0].device_kind}, batch {args.batch}, {args.steps} timed "
        "steps per model\n")
  print("| model | params | compile s | ms/step | examples/s | vs MLP |")
  print("|---|---|---|---|---|---|")
  baseline = None
  rng = np.random.default_rng(0)
  for name, kwargs, shape, task_name in _cases():
    kwargs = dict(kwargs)
    model = models.create_model(kwargs.pop("name"), num_classes=2 if shape == (30,) else 10,
                                axis_name="batch", **kwargs)
    num_classes = 2 if shape == (30,) else 10
    key = "features" if shape == (30,) else "image"
    if task_name == "soft_tree":
      task = tasks.SoftTreeTask(num_classes, depth=model.depth, input_key=key)
    else:
      task = tasks.ClassificationTask(num_classes, input_key=key)
    tx = optax.adam(1e-3)
    batch = {key: rng.normal(size=(1, args.batch) + shape).astype(np.float32),
             "label": rng.integers(0, num_classes, size=(1, args.batch)).astype(np.int32)}
    state = dp.replicate(init_train_state(model, tx, task, {k: v[0, :1] for k, v in
                                                            batch.items()}, seed=0))
    batch = dp.shard_batch(batch)
    step = dp.compile(steps.make_train_step(model, task, tx, policy), donate_state=True)
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / args.steps
    rate = args.batch / seconds
    baseline = baseline or rate
    params = sum(np.size(x) for x in jax.tree_util.tree_leaves(dp.unreplicate(state.params)))
    print(f"| {name} | {params:,} | {compile_s:.1f} | {1000 * seconds:.2f} | {rate:,.0f} | "
          f"{rate / baseline:.2f}× |", flush=True)


if __name__ == "__main__":
  main()
