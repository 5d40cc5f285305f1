r"""Train-step throughput, compile time and peak memory of the real train step.

  python benchmarks/train_step.py                 # ResNet-18-D 32px b128 and ResNet-50-D 224px b8
  python benchmarks/train_step.py --cases=resnet18d:32:128 --precisions=fp32,bf16 --steps=20
  python benchmarks/train_step.py --cases=resnet50d:224:128 --max_seconds=30   # on a GPU
  python benchmarks/train_step.py --cases=resnet18d:8:128 --precisions=fp32 \
      --conv_algorithm=native,auto                # XLA's convolutions against the CPU ones

Each (model, precision) case runs in its own subprocess (so peak memory is its own) through the
same ``steps.make_train_step`` and ``DataParallel`` the trainer uses, on synthetic data with
the default SGD/cosine optimizer. Throughput excludes compilation. Every case is also reported
as a ratio to the fp32 run of the same model with the first convolution algorithm, measured in
this same invocation (the baseline).
Peak memory is the accelerator's ``peak_bytes_in_use`` when there is one, else the process's
peak resident set size. ``--host_memory=retain`` runs each case with
``models.xla_cpu.host_memory.retain_freed_memory()`` (the trainer's
``config.host_memory='retain'``). Convolutions are computed as the trainer's default config
computes them (``--conv_algorithm=auto``: XLA:CPU's fast algorithms on a CPU, XLA's own on a
GPU or TPU); several algorithms, comma-separated, run every case with each in turn.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CASES = ("resnet18d:32:128", "resnet50d:224:8")


def run_case(model_name: str, image_size: int, batch_size: int, precision_name: str,
             steps: int, max_seconds: float, host_memory_mode: str = "system",
             conv_algorithm: str = "auto") -> dict:
  """Times up to ``steps`` train steps (within ``max_seconds``) of one case in this process."""
  sys.path.insert(0, REPO)
  from models.xla_cpu import host_memory  # pylint: disable=g-import-not-at-top
  if host_memory_mode == "retain":
    host_memory.retain_freed_memory()  # Before JAX starts its CPU client.
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  import models  # pylint: disable=g-import-not-at-top
  from bagtricks import hooks, optim, precision, steps as steps_lib  # pylint: disable=g-import-not-at-top
  from bagtricks.parallel import AXIS_NAME, DataParallel  # pylint: disable=g-import-not-at-top
  from bagtricks.state import init_train_state  # pylint: disable=g-import-not-at-top
  from bagtricks.tasks import ClassificationTask  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top

  config = default.get_config()
  policy = precision.get_policy(precision_name)
  small = image_size <= 32
  model = models.create_model(model_name, num_classes=1000 if not small else 10,
                              small_stem=small, axis_name=AXIS_NAME,
                              dtype=policy.compute_dtype, conv_algorithm=conv_algorithm)
  schedule = optim.warmup_cosine_schedule(0.1, 10, 1000)
  tx = precision.wrap_optimizer(optim.build_optimizer(config, schedule), policy)
  task = ClassificationTask(model.num_classes)
  example = {"image": np.zeros((1, image_size, image_size, 3), np.float32),
             "label": np.zeros((1,), np.int32)}
  state = init_train_state(model, tx, task, example, seed=0)

  dp = DataParallel("pmap", jax.local_devices()[:1])
  step = dp.compile(steps_lib.make_train_step(model, task, tx, policy,
                                              [hooks.ReportSchedule("learning_rate", schedule)]),
                    donate_state=True)
  rng = np.random.default_rng(0)
  batch = dp.shard_batch({
      "image": rng.normal(size=(1, batch_size, image_size, image_size, 3)).astype(np.float32),
      "label": rng.integers(0, model.num_classes, (1, batch_size)).astype(np.int32)})
  p_state = dp.replicate(state)

  start = time.perf_counter()
  compiled = step.lower(p_state, batch).compile()
  compile_seconds = time.perf_counter() - start
  p_state, metrics = compiled(p_state, batch)  # warm-up
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  timed = 0
  # At least 2 steps, at most `steps`, and stop early once `max_seconds` have passed (a
  # full-width ResNet step takes ~20 s on a 2-core CPU).
  while timed < max(steps, 2) and (timed < 2 or time.perf_counter() - start < max_seconds):
    p_state, metrics = compiled(p_state, batch)
    jax.block_until_ready(metrics)
    timed += 1
  seconds = time.perf_counter() - start

  device = jax.local_devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    peak, peak_kind = stats["peak_bytes_in_use"], "device"
  else:
    peak, peak_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "host RSS"
  return {
      "model": model_name, "image_size": image_size, "batch_size": batch_size,
      "precision": precision_name, "device": device.device_kind, "steps": timed,
      "host_memory": host_memory_mode, "conv_algorithm": conv_algorithm,
      "images_per_second": timed * batch_size / seconds,
      "step_ms": 1000 * seconds / timed, "compile_seconds": compile_seconds,
      "peak_memory_mb": peak / 2**20, "peak_memory_kind": peak_kind,
      "final_loss": float(np.asarray(dp.metrics_to_host(metrics)["loss"])),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cases", default=",".join(DEFAULT_CASES),
                      help="comma-separated model:image_size:batch_size")
  parser.add_argument("--precisions", default="fp32,bf16")
  parser.add_argument("--steps", type=int, default=50, help="most timed steps per case")
  parser.add_argument("--max_seconds", type=float, default=60.0,
                      help="stop timing a case after this long (at least 2 steps are timed)")
  parser.add_argument("--host_memory", default="system", choices=("system", "retain"),
                      help="'retain': host_memory.retain_freed_memory() in each case")
  parser.add_argument("--conv_algorithm", default="auto",
                      help="how convolutions are computed (models/xla_cpu/conv.py): native, "
                      "auto, blocked or onednn, or several of them comma-separated")
  parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
  args = parser.parse_args()

  if args.case:
    model, size, batch, prec = args.case.split(":")
    print(json.dumps(run_case(model, int(size), int(batch), prec, args.steps,
                              args.max_seconds, args.host_memory, args.conv_algorithm)))
    return

  sys.path.insert(0, REPO)
  from models.xla_cpu.conv import check_algorithm  # pylint: disable=g-import-not-at-top
  algorithms = args.conv_algorithm.split(",")
  for algorithm in algorithms:  # Before any case runs.
    try:
      check_algorithm(algorithm)
    except ValueError as e:
      parser.error(f"--conv_algorithm: {e}")
  rows = []
  for case in args.cases.split(","):
    model, size, batch = case.split(":")
    for prec in args.precisions.split(","):
      for algorithm in algorithms:
        out = subprocess.run(
            [sys.executable, __file__, f"--case={model}:{size}:{batch}:{prec}",
             f"--steps={args.steps}", f"--max_seconds={args.max_seconds}",
             f"--host_memory={args.host_memory}", f"--conv_algorithm={algorithm}"],
            capture_output=True, text=True, check=False)
        if out.returncode:
          sys.exit(f"{case} {prec} {algorithm} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)

  print()
  print(f"{'model':10} {'px':>4} {'batch':>5} {'prec':5} {'conv':7} {'img/s':>9} "
        f"{'vs base':>8} {'step ms':>9} {'compile s':>9} {'peak MB':>9}  device")
  for row in rows:
    base = next((r for r in rows if r["model"] == row["model"] and r["image_size"] ==
                 row["image_size"] and r["batch_size"] == row["batch_size"] and
                 r["precision"] == "fp32" and r["conv_algorithm"] == algorithms[0]), None)
    ratio = f"{row['images_per_second'] / base['images_per_second']:.2f}x" if base else "-"
    print(f"{row['model']:10} {row['image_size']:>4} {row['batch_size']:>5} "
          f"{row['precision']:5} {row['conv_algorithm']:7} {row['images_per_second']:>9.1f} "
          f"{ratio:>8} "
          f"{row['step_ms']:>9.1f} {row['compile_seconds']:>9.1f} "
          f"{row['peak_memory_mb']:>9.0f}  {row['device']} ({row['peak_memory_kind']})")


if __name__ == "__main__":
  main()
