r"""ResNet train steps on a CPU: bagtricks beside PyTorch, same network and weights, one process.

  python benchmarks/compare_torch.py             # ResNet-50-D 224px b8, ResNet-18-D 32px b128
  python benchmarks/compare_torch.py --models=resnet18d:32:128 --rounds=5 --steps=2
  python benchmarks/compare_torch.py --json=/tmp/compare_torch.json

For every ``model:image_size:batch_size`` case the script builds the ResNet in bagtricks
(``models.create_model``: ResNet-D with the deep stem; ``small_stem`` for inputs of 32 px or
less) and the same network in PyTorch (written out below: the same layers, paddings, average-pool
shortcut and BatchNorm), copies the bagtricks initial weights into the PyTorch one, and times
one float32 train step of each on the same random batch: bagtricks' own step
(``steps.make_train_step`` with the classification task and the default SGD with Nesterov
momentum and weight decay, under ``DataParallel`` on one device, the default convolution
algorithm) and PyTorch's eager forward, cross-entropy, backward and ``torch.optim.SGD`` step
(same momentum, Nesterov and weight decay). After compilation and ``--warmup`` steps of each,
they alternate ``--rounds`` times ``--steps`` steps each, so both see the same machine load, and
the ratio is taken from their total times.

The script first measures the machine's float32 matrix-multiply peak (the best of a few
2048×2048 products in XLA) and reports each side's achieved GFLOP/s (train FLOPs = 3 × the
forward pass's multiply-adds × 2, convolutions and classifier, counted from the layer shapes)
and its fraction of that peak. Peak memory is the growth of what the process has allocated
(glibc's ``mallinfo2``, else the resident set; sampled every 5 ms) while each side's warm-up
steps run: the memory its train step needs beyond the weights, optimizer state and batch.

Host memory is ``retain`` by default: ``bagtricks.host_memory.retain_freed_memory()`` runs
first (the trainer's ``config.host_memory='retain'``), so glibc keeps freed memory for reuse
instead of unmapping it, for both sides, since they share the process. Under glibc's defaults
(``--host_memory=system``) every step page-faults its working set back in: XLA's single step
buffer of over 1 GB for the ResNet-50-D case, and PyTorch's 32 MiB activations of the
ResNet-18-D case, which sit just above glibc's largest mmap threshold. Those faults are the
allocator's, not the train step's; ``system`` times them too.

PyTorch (CPU build) is optional: without it only the bagtricks columns are printed.
"""

import argparse
import ctypes
import json
import os
import resource
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import models  # noqa: E402
from bagtricks import host_memory, optim, precision, steps  # noqa: E402
from bagtricks.parallel import DataParallel  # noqa: E402
from bagtricks.state import init_train_state  # noqa: E402
from bagtricks.tasks import ClassificationTask  # noqa: E402
from configs import default  # noqa: E402
from models import conv, onednn_conv  # noqa: E402
from models.conv import CONV_ALGORITHMS  # noqa: E402

DEFAULT_MODELS = ("resnet50d:224:8", "resnet18d:32:128")
LEARNING_RATE = 0.1


class _MallInfo2(ctypes.Structure):
  _fields_ = [(name, ctypes.c_size_t) for name in (
      "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
      "fordblks", "keepcost")]


def _glibc_mallinfo2():
  """glibc's ``mallinfo2`` (2.33+), or None where there is none."""
  mallinfo2 = getattr(host_memory.glibc(), "mallinfo2", None)
  if mallinfo2 is not None:
    mallinfo2.restype = _MallInfo2
  return mallinfo2


class PeakMemory:
  """Samples the memory the process has allocated, in a thread; ``peak`` is the largest seen.

  Used as a context manager around one side's first steps: ``growth`` is then its peak minus
  the amount when it started, the memory that side's train step needs beyond what is already
  allocated. Where glibc has ``mallinfo2`` the amount is the bytes ``malloc`` has handed out
  (heap and mmap'd blocks; XLA:CPU and PyTorch's CPU tensors both come from ``malloc``), which
  stays right when freed memory is kept for reuse (``--host_memory=retain``); elsewhere it is
  the resident set size.
  """

  def __init__(self, interval: float = 0.005):
    self.interval = interval
    self.start = self.peak = 0
    self._mallinfo2 = _glibc_mallinfo2()
    self._done = threading.Event()
    self._thread = threading.Thread(target=self._sample, daemon=True)

  def current(self) -> int:
    if self._mallinfo2 is not None:
      info = self._mallinfo2()
      return info.uordblks + info.hblkhd
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * resource.getpagesize()

  def _sample(self):
    while not self._done.is_set():
      self.peak = max(self.peak, self.current())
      time.sleep(self.interval)

  def __enter__(self):
    self.start = self.peak = self.current()
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._done.set()
    self._thread.join()
    self.peak = max(self.peak, self.current())

  @property
  def growth(self) -> int:
    return self.peak - self.start


def matmul_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
  """Best float32 GFLOP/s of a jitted ``size``×``size`` matrix product (the roofline)."""
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.normal(size=(size, size)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(size, size)), jnp.float32)
  product = jax.jit(jnp.dot)
  product(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    product(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best / 1e9


def train_flops_per_image(model, image_size: int) -> float:
  """Float32 FLOPs of one train step per image: 3 × (2 × forward multiply-adds).

  The multiply-adds of every convolution and of the classifier are read from the shapes of
  their outputs and kernels (``jax.eval_shape`` of the forward pass with the intermediates
  captured); the backward pass costs twice the forward (input and weight gradients).
  """
  import flax  # pylint: disable=g-import-not-at-top
  example = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  variables = jax.eval_shape(lambda key: model.init(key, example, train=False),
                             jax.random.PRNGKey(0))
  _, state = jax.eval_shape(
      lambda v: model.apply(v, example, train=False, capture_intermediates=True,
                            mutable=["intermediates"]), variables)
  params = flax.traverse_util.flatten_dict(variables["params"])
  outputs = flax.traverse_util.flatten_dict(state["intermediates"])
  macs = 0
  for path, kernel in params.items():
    if path[-1] != "kernel":
      continue
    out = outputs[path[:-1] + ("__call__",)][0]
    spatial = int(np.prod(out.shape[1:-1])) if out.ndim == 4 else 1
    macs += spatial * int(np.prod(kernel.shape))
  return 3 * 2 * macs


class BagtricksStep:
  """The trainer's classification train step on one device."""

  def __init__(self, model, batch: dict):
    config = default.get_config()
    policy = precision.get_policy("fp32")
    tx = precision.wrap_optimizer(optim.build_optimizer(config, LEARNING_RATE), policy)
    task = ClassificationTask(model.num_classes)
    example = {k: v[:1] for k, v in batch.items()}
    self.initial_state = init_train_state(model, tx, task, example, seed=0)
    self.dp = DataParallel("pmap", jax.local_devices()[:1])
    step = self.dp.compile(steps.make_train_step(model, task, tx, policy), donate_state=True)
    self.batch = self.dp.shard_batch({k: v[None] for k, v in batch.items()})
    self.state = self.dp.replicate(self.initial_state)
    self.step = step.lower(self.state, self.batch).compile()

  def run(self, n: int) -> float:
    for _ in range(n):
      self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready(metrics)
    return float(np.asarray(self.dp.metrics_to_host(metrics)["loss"]))


def build_torch_resnet(torch, variables, block: str, stage_sizes, small_stem: bool,
                       bn_momentum: float, bn_epsilon: float):
  """The bagtricks ResNet-D in PyTorch, with the bagtricks ``variables`` copied in.

  Args:
    torch: the imported ``torch`` module (an optional dependency).
    variables: bagtricks variables ``{'params': ..., 'batch_stats': ...}``.
    block: 'basic' or 'bottleneck'.
    stage_sizes: blocks per stage.
    small_stem: whether the stem has stride 1 and no max pool.
    bn_momentum: the bagtricks (Flax) BatchNorm decay; PyTorch's momentum is 1 - it.
    bn_epsilon: the BatchNorm epsilon.

  Returns:
    A ``torch.nn.Module`` mapping NCHW images to logits.
  """
  nn = torch.nn
  params = variables["params"]
  stats = variables["batch_stats"]

  def conv(path, stride=1):
    kernel = np.asarray(_lookup(params, path)["kernel"])  # [kh, kw, in, out]
    kh, _, cin, cout = kernel.shape
    layer = nn.Conv2d(cin, cout, kh, stride=stride, padding=kh // 2, bias=False)
    layer.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    return layer

  def norm(path):
    p, s = _lookup(params, path), _lookup(stats, path)
    layer = nn.BatchNorm2d(p["scale"].shape[0], eps=bn_epsilon, momentum=1 - bn_momentum)
    layer.weight.data = torch.from_numpy(np.array(p["scale"]))
    layer.bias.data = torch.from_numpy(np.array(p["bias"]))
    layer.running_mean.data = torch.from_numpy(np.array(s["mean"]))
    layer.running_var.data = torch.from_numpy(np.array(s["var"]))
    return layer

  class Shortcut(nn.Module):
    def __init__(self, path, stride):
      super().__init__()
      # ResNet-D: 2×2 average pool (ceil mode, no padding counted), then a 1×1 conv.
      self.pool = (nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
                   if stride > 1 else nn.Identity())
      self.conv, self.norm = conv(path + "/conv"), norm(path + "/norm")

    def forward(self, x):
      return self.norm(self.conv(self.pool(x)))

  class Block(nn.Module):
    def __init__(self, path, stride):
      super().__init__()
      names = ("conv1", "conv2") if block == "basic" else ("conv1", "conv2", "conv3")
      strides = (stride, 1) if block == "basic" else (1, stride, 1)
      self.convs = nn.ModuleList(conv(f"{path}/{n}", s) for n, s in zip(names, strides))
      self.norms = nn.ModuleList(norm(f"{path}/norm{i + 1}") for i in range(len(names)))
      self.shortcut = (Shortcut(path + "/shortcut", stride)
                       if "shortcut" in _lookup(params, path) else None)

    def forward(self, x):
      out = x
      for i, (c, n) in enumerate(zip(self.convs, self.norms)):
        out = n(c(out))
        if i < len(self.convs) - 1:
          out = torch.relu(out)
      return torch.relu(out + (x if self.shortcut is None else self.shortcut(x)))

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      stem_stride = 1 if small_stem else 2
      layers = []
      for i in (1, 2, 3):
        layers += [conv(f"stem_conv{i}", stem_stride if i == 1 else 1), norm(f"stem_norm{i}"),
                   nn.ReLU()]
      if not small_stem:
        layers.append(nn.MaxPool2d(3, 2, padding=1))
      for s, num_blocks in enumerate(stage_sizes):
        for b in range(num_blocks):
          layers.append(Block(f"stage{s + 1}_block{b + 1}", 2 if s > 0 and b == 0 else 1))
      self.trunk = nn.Sequential(*layers)
      head = params["head"]
      self.head = nn.Linear(*head["kernel"].shape)
      self.head.weight.data = torch.from_numpy(np.ascontiguousarray(np.asarray(head["kernel"]).T))
      self.head.bias.data = torch.from_numpy(np.array(head["bias"]))

    def forward(self, x):
      return self.head(self.trunk(x).mean(dim=(2, 3)))

  return Net()


def _lookup(tree, path: str):
  for key in path.split("/"):
    tree = tree[key]
  return tree


class TorchStep:
  """PyTorch eager train step: forward, cross-entropy, backward, SGD (Nesterov, L2 decay)."""

  def __init__(self, torch, net, batch: dict):
    config = default.get_config().optimizer
    self.torch = torch
    self.net = net.train()
    self.images = torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2)))
    self.labels = torch.from_numpy(batch["label"].astype(np.int64))
    self.optimizer = torch.optim.SGD(net.parameters(), lr=LEARNING_RATE,
                                     momentum=config.momentum, nesterov=config.nesterov,
                                     weight_decay=config.weight_decay)

  def run(self, n: int) -> float:
    for _ in range(n):
      self.optimizer.zero_grad(set_to_none=True)
      loss = self.torch.nn.functional.cross_entropy(self.net(self.images), self.labels)
      loss.backward()
      self.optimizer.step()
    return float(loss.detach())


def compare(case: str, args, peak_gflops: float, torch) -> dict:
  """Times one ``model:image_size:batch_size`` case; returns its figures."""
  name, size, batch_size = case.split(":")
  size, batch_size = int(size), int(batch_size)
  small = size <= 32
  num_classes = 10 if small else 1000
  model = models.create_model(name, num_classes=num_classes, small_stem=small,
                              axis_name="batch", conv_algorithm=args.conv_algorithm)
  if model.variant != "D" or model.norm != "batch":
    raise SystemExit(f"--models: {name} is not a ResNet-D with BatchNorm; the PyTorch side "
                     "is written for ResNet-D (e.g. resnet18d, resnet50d).")
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(batch_size, size, size, 3)).astype(np.float32),
           "label": rng.integers(0, num_classes, batch_size).astype(np.int32)}
  flops = train_flops_per_image(model, size) * batch_size

  start = time.perf_counter()
  ours = BagtricksStep(model, batch)
  compile_seconds = time.perf_counter() - start
  with PeakMemory() as memory:
    ours.run(args.warmup)
  ours_memory = memory.growth
  theirs, theirs_memory = None, None
  if torch is not None:
    variables = {"params": ours.initial_state.params,
                 "batch_stats": ours.initial_state.batch_stats}
    net = build_torch_resnet(torch, variables, model.block, model.stage_sizes, small,
                             model.bn_momentum, model.bn_epsilon)
    theirs = TorchStep(torch, net, batch)
    with PeakMemory() as memory:
      theirs.run(args.warmup)
    theirs_memory = memory.growth

  times = {"bagtricks": 0.0, "torch": 0.0}
  for _ in range(args.rounds):
    for side, runner in (("bagtricks", ours), ("torch", theirs)):
      if runner is None:
        continue
      start = time.perf_counter()
      runner.run(args.steps)
      times[side] += time.perf_counter() - start
  timed_steps = args.rounds * args.steps
  row = {"model": name, "image_size": size, "batch_size": batch_size,
         "conv_algorithm": conv.resolve_algorithm(args.conv_algorithm),
         "onednn": onednn_conv.version(), "host_memory": args.host_memory,
         "train_gflop_per_step": flops / 1e9, "compile_seconds": compile_seconds,
         "bagtricks_images_per_second": timed_steps * batch_size / times["bagtricks"],
         "bagtricks_step_seconds": times["bagtricks"] / timed_steps,
         "gflops": flops * timed_steps / times["bagtricks"] / 1e9,
         "bagtricks_peak_memory_mb": ours_memory / 2**20}
  row["peak_fraction"] = row["gflops"] / peak_gflops
  row["matmul_peak_gflops"] = peak_gflops
  if theirs is not None:
    row.update({
        "torch_images_per_second": timed_steps * batch_size / times["torch"],
        "torch_step_seconds": times["torch"] / timed_steps,
        "torch_gflops": flops * timed_steps / times["torch"] / 1e9,
        "torch_peak_memory_mb": theirs_memory / 2**20,
        "ratio": times["torch"] / times["bagtricks"]})
    row["torch_peak_fraction"] = row["torch_gflops"] / peak_gflops
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                      help="comma-separated model:image_size:batch_size (ResNet-D models)")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each side")
  parser.add_argument("--rounds", type=int, default=3, help="alternations of the two sides")
  parser.add_argument("--steps", type=int, default=2, help="timed steps per side and round")
  parser.add_argument("--conv_algorithm", default="auto", choices=CONV_ALGORITHMS,
                      help="bagtricks' convolution algorithm (models/conv.py)")
  parser.add_argument("--host_memory", default="retain", choices=host_memory.HOST_MEMORY_MODES,
                      help="'retain': host_memory.retain_freed_memory() for the whole process "
                      "(both sides) before anything runs")
  parser.add_argument("--json", help="also write the figures to this JSON file")
  args = parser.parse_args()
  if args.host_memory == "retain":
    host_memory.retain_freed_memory()

  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    torch = None
    print("PyTorch is not installed: timing bagtricks alone.")
  peak = matmul_peak_gflops()
  threads = torch.get_num_threads() if torch is not None else "-"
  print(f"float32 2048² matmul peak: {peak:.0f} GFLOP/s on {jax.devices()[0].device_kind} "
        f"({os.cpu_count()} CPUs; PyTorch threads: {threads}; host memory: {args.host_memory}; "
        f"bagtricks convolutions: {conv.resolve_algorithm(args.conv_algorithm)}"
        f"{', oneDNN ' + onednn_conv.version() if onednn_conv.available() else ''})", flush=True)

  results = {}
  for case in args.models.split(","):
    row = compare(case, args, peak, torch)
    results[f"{row['model']}:{row['image_size']}:{row['batch_size']}"] = row
    print(json.dumps(row), flush=True)

  print()
  print(f"{'model':18} {'GFLOP/step':>10} {'bagtricks img/s':>15} {'torch img/s':>11} "
        f"{'ratio':>6} {'GFLOP/s':>8} {'of peak':>7} {'torch of peak':>13} "
        f"{'peak MB':>8} {'torch MB':>8}")
  for key, row in results.items():
    torch_ips = row.get("torch_images_per_second")
    print(f"{key:18} {row['train_gflop_per_step']:>10.1f} "
          f"{row['bagtricks_images_per_second']:>15.2f} "
          f"{torch_ips if torch_ips is None else f'{torch_ips:.2f}':>11} "
          f"{row.get('ratio', float('nan')):>5.2f}× {row['gflops']:>8.1f} "
          f"{row['peak_fraction']:>7.0%} {row.get('torch_peak_fraction', float('nan')):>13.0%} "
          f"{row['bagtricks_peak_memory_mb']:>8.0f} "
          f"{row.get('torch_peak_memory_mb', float('nan')):>8.0f}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
