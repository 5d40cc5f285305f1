r"""Throughput of the on-device batch augmentations, against a pass-through baseline.

  python benchmarks/augment.py                          # batch 128 at 32 px and 64 at 224 px
  python benchmarks/augment.py --sizes=224:256 --repeats=50   # on a GPU

Each augmentation is jitted alone and timed on a synthetic ``[batch, size, size, 3]`` float32
batch (compilation excluded). The baseline, measured in the same run, is a jitted function that
reads and writes the batch once (``x * 1.0001``), i.e. the memory traffic every augmentation
pays at least; the ratio says how much slower than that each one is. For scale, one ResNet-18-D
train step at 32 px batch 128 takes about 23 s on this CPU (``benchmarks/train_step.py``).
"""

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cases(size: int):
  from bagtricks import augment  # pylint: disable=g-import-not-at-top
  d_min = max(2, round(size * 96 / 224))
  return {
      "pass-through (baseline)": lambda key, x, y: (x * 1.0001, y),
      "mixup α=0.2": lambda key, x, y: augment.mixup(key, x, y, 0.2)[:2],
      "CutMix α=1": lambda key, x, y: augment.cutmix(key, x, y, 1.0)[:2],
      "mixup/CutMix switch": lambda key, x, y: augment.mixup_or_cutmix(key, x, y, 0.2, 1.0,
                                                                       0.5)[:2],
      "Cutout 1 hole": lambda key, x, y: (augment.cutout(key, x, 1, size // 2), y),
      "GridMask": lambda key, x, y: (augment.gridmask(key, x, d_min, size, 0.6, 0.8), y),
      "GridMask rotated": lambda key, x, y: (augment.gridmask(key, x, d_min, size, 0.6, 0.8,
                                                              max_rotation=360), y),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", default="32:128,224:64",
                      help="Comma-separated image_size:batch_size cases.")
  parser.add_argument("--repeats", type=int, default=20, help="Timed calls per case.")
  args = parser.parse_args()
  sys.path.insert(0, REPO)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  print(f"device: {jax.devices()[0].device_kind}, {args.repeats} timed calls per case\n")
  print("| px | batch | augmentation | ms/batch | img/s | vs baseline |")
  print("|---|---|---|---|---|---|")
  for case in args.sizes.split(","):
    size, batch = (int(v) for v in case.split(":"))
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, size, size, 3))
    y = jax.nn.one_hot(jnp.arange(batch) % 1000, 1000)
    baseline = None
    for name, fn in _cases(size).items():
      run = jax.jit(fn)
      jax.block_until_ready(run(jax.random.PRNGKey(0), x, y))  # compile
      start = time.perf_counter()
      for i in range(args.repeats):
        out = run(jax.random.PRNGKey(i), x, y)
      jax.block_until_ready(out)
      seconds = (time.perf_counter() - start) / args.repeats
      baseline = baseline or seconds
      print(f"| {size} | {batch} | {name} | {1000 * seconds:.2f} | {batch / seconds:,.0f} | "
            f"{seconds / baseline:.2f}× |", flush=True)


if __name__ == "__main__":
  main()
