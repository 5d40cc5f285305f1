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
momentum and weight decay, under ``DataParallel`` on one device, with the trainer's default
convolution algorithm, ``auto``) and PyTorch's eager forward, cross-entropy, backward and
``torch.optim.SGD`` step (same momentum, Nesterov and weight decay), in both of PyTorch's
memory layouts: NCHW and ``channels_last`` (NHWC, PyTorch's advice for CNNs on CPU). After
compilation and ``--warmup`` steps of each, they run ``--rounds`` rounds of ``--steps`` steps
each, the order of the sides rotating from round to round so that none always runs first or
last; the faster PyTorch layout (by its median) is the ratio's baseline, and the table gives
the median ratio over the rounds with its min–max.

The machine's float32 peak is the best of a few large matrix products in XLA, in oneDNN (a 1×1
convolution through the same extension as the convolutions, where it is available) and in
PyTorch (MKL / oneDNN, where it is installed); each side's achieved GFLOP/s (train FLOPs = 3 × the
forward pass's multiply-adds × 2, convolutions and classifier, counted from the layer shapes)
is reported as a fraction of it. Peak memory is the growth of what the process has allocated
(glibc's ``mallinfo2``, else the resident set; sampled every 5 ms) while each side's warm-up
steps run: the memory its train step needs beyond the weights, optimizer state and batch.

Host memory: by default both modes are measured, each in its own process (the setting is
process-wide and must precede JAX's start): ``system`` (glibc's defaults, the trainer's
default), where every step page-faults its working set back in (XLA's single step buffer of
over 1 GB for the ResNet-50-D case, PyTorch's 32 MiB activations of the ResNet-18-D case,
just above glibc's largest mmap threshold), and ``retain``
(``models.xla_cpu.host_memory.retain_freed_memory()``, the trainer's
``config.host_memory='retain'``), where glibc keeps freed memory for reuse, for both sides
since they share the process.

PyTorch (CPU build) is optional: without it only the bagtricks columns are printed.
"""

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import models  # noqa: E402
from bagtricks import optim, precision, steps  # noqa: E402
from bagtricks.parallel import DataParallel  # noqa: E402
from bagtricks.state import init_train_state  # noqa: E402
from bagtricks.tasks import ClassificationTask  # noqa: E402
from configs import default  # noqa: E402
from models.xla_cpu import CONV_ALGORITHMS, conv, host_memory, onednn  # noqa: E402

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


def _best_seconds(run, repeats: int) -> float:
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - start)
  return best


def matmul_peak_gflops(torch=None, sizes=(2048, 3072), repeats: int = 5) -> dict:
  """Best float32 GFLOP/s of square matrix products in XLA, oneDNN and PyTorch.

  oneDNN's is a 1×1 convolution through `onednn.conv2d` (where its extension is available):
  the product of two [size, size] matrices by the kernels the convolutions use.
  PyTorch's is `torch.mm` (MKL or oneDNN), where PyTorch is given.

  Returns:
    {'xla': GFLOP/s, 'onednn': GFLOP/s or None, 'torch': GFLOP/s or None, 'peak': the
    largest}: the roofline the train steps are measured against.
  """
  rng = np.random.default_rng(0)
  found = {"xla": 0.0, "onednn": None, "torch": None}

  def record(name, flops, run):
    run()
    found[name] = max(found[name] or 0.0, flops / _best_seconds(run, repeats) / 1e9)

  xla_product = jax.jit(jnp.dot)
  onednn_product = jax.jit(lambda x, k: onednn.conv2d(x, k, (1, 1), ((0, 0), (0, 0))))
  for size in sizes:
    a, b = (rng.normal(size=(size, size)).astype(np.float32) for _ in range(2))
    flops = 2 * size**3
    xa, xb = jnp.asarray(a), jnp.asarray(b)
    record("xla", flops, lambda: xla_product(xa, xb).block_until_ready())
    if onednn.available():
      # One image of 1 × size pixels and size channels: its [size, size] rows times the kernel.
      images, kernel = xa.reshape(1, 1, size, size), xb.reshape(1, 1, size, size)
      record("onednn", flops, lambda: onednn_product(images, kernel).block_until_ready())
    if torch is not None:
      ta, tb = torch.from_numpy(a), torch.from_numpy(b)
      record("torch", flops, lambda: torch.mm(ta, tb))
  found["peak"] = max(v for v in found.values() if v is not None)
  return found


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
  """PyTorch eager train step: forward, cross-entropy, backward, SGD (Nesterov, L2 decay).

  `channels_last` puts the network's weights and the images in PyTorch's NHWC memory format,
  its recommended layout for CNN training on CPU.
  """

  def __init__(self, torch, net, batch: dict, channels_last: bool = False):
    config = default.get_config().optimizer
    self.torch = torch
    images = torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2)))
    if channels_last:
      net = net.to(memory_format=torch.channels_last)
      images = images.contiguous(memory_format=torch.channels_last)
    self.net = net.train()
    self.images = images
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


def timed_rounds(runners: dict, rounds: int, steps: int) -> dict:
  """Seconds per step of each runner in each round; the order rotates from round to round."""
  names = list(runners)
  seconds = {name: [] for name in names}
  for round_index in range(rounds):
    shift = round_index % len(names)
    for name in names[shift:] + names[:shift]:
      start = time.perf_counter()
      runners[name].run(steps)
      seconds[name].append((time.perf_counter() - start) / steps)
  return seconds


def _spread(values) -> dict:
  return {"median": float(np.median(values)), "min": float(np.min(values)),
          "max": float(np.max(values))}


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
  runners = {"bagtricks": ours}
  if torch is not None:
    variables = {"params": ours.initial_state.params,
                 "batch_stats": ours.initial_state.batch_stats}
    for layout, channels_last in (("torch_nchw", False), ("torch_channels_last", True)):
      net = build_torch_resnet(torch, variables, model.block, model.stage_sizes, small,
                               model.bn_momentum, model.bn_epsilon)
      runners[layout] = TorchStep(torch, net, batch, channels_last=channels_last)
  peak_memory = {}
  for side, runner in runners.items():
    with PeakMemory() as memory:
      runner.run(args.warmup)
    peak_memory[side] = memory.growth / 2**20

  seconds = timed_rounds(runners, args.rounds, args.steps)
  row = {"model": name, "image_size": size, "batch_size": batch_size,
         "conv_algorithm": conv.resolve_algorithm(args.conv_algorithm, jax.default_backend()),
         "onednn": onednn.version(), "host_memory": args.host_memory, "rounds": args.rounds,
         "steps_per_round": args.steps, "train_gflop_per_step": flops / 1e9,
         "compile_seconds": compile_seconds, "matmul_peak_gflops": peak_gflops}
  for side, times in seconds.items():
    step = float(np.median(times))
    row[side] = {"images_per_second": batch_size / step, "step_seconds": _spread(times),
                 "gflops": flops / step / 1e9, "peak_fraction": flops / step / 1e9 / peak_gflops,
                 "peak_memory_mb": peak_memory[side]}
  if torch is not None:
    baseline = min(("torch_nchw", "torch_channels_last"),
                   key=lambda side: np.median(seconds[side]))
    ratios = np.array(seconds[baseline]) / np.array(seconds["bagtricks"])
    row.update(torch_baseline=baseline, ratio=_spread(ratios))
  return row


def _print_table(results: dict) -> None:
  print(f"{'model':18} {'memory':7} {'GFLOP/step':>10} {'ours img/s':>10} {'NCHW':>7} "
        f"{'ch-last':>7} {'ratio (min-max)':>18} {'ours of peak':>12} {'torch of peak':>13} "
        f"{'ours MB':>8} {'torch MB':>8}")
  for row in results:
    key = f"{row['model']}:{row['image_size']}:{row['batch_size']}"
    ours = row["bagtricks"]
    nchw, last = row.get("torch_nchw"), row.get("torch_channels_last")
    baseline = row.get(row.get("torch_baseline"), {})
    ratio = row.get("ratio")
    ratio_text = (f"{ratio['median']:.2f}× ({ratio['min']:.2f}-{ratio['max']:.2f})"
                  if ratio else "-")
    ips = lambda side: f"{side['images_per_second']:.2f}" if side else "-"
    print(f"{key:18} {row['host_memory']:7} {row['train_gflop_per_step']:>10.1f} "
          f"{ours['images_per_second']:>10.2f} {ips(nchw):>7} {ips(last):>7} "
          f"{ratio_text:>18} {ours['peak_fraction']:>12.0%} "
          f"{baseline.get('peak_fraction', float('nan')):>13.0%} "
          f"{ours['peak_memory_mb']:>8.0f} {baseline.get('peak_memory_mb', float('nan')):>8.0f}")


def _measure(args) -> list:
  """Every case in this process, with its host-memory mode set first."""
  if args.host_memory == "retain":
    host_memory.retain_freed_memory()
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    torch = None
    print("PyTorch is not installed: timing bagtricks alone.")
  peak = matmul_peak_gflops(torch)
  threads = torch.get_num_threads() if torch is not None else "-"
  shown = lambda name: "-" if peak[name] is None else f"{peak[name]:.0f}"
  print(f"float32 matmul: XLA {shown('xla')}, oneDNN {shown('onednn')}, PyTorch "
        f"{shown('torch')} GFLOP/s on "
        f"{jax.devices()[0].device_kind} ({os.cpu_count()} CPUs; PyTorch threads: {threads}; "
        f"host memory: {args.host_memory}; bagtricks convolutions: "
        f"{conv.resolve_algorithm(args.conv_algorithm, jax.default_backend())}"
        f"{', oneDNN ' + onednn.version() if onednn.available() else ''})", flush=True)
  rows = []
  for case in args.models.split(","):
    rows.append(compare(case, args, peak["peak"], torch))
    print(json.dumps(rows[-1]), flush=True)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                      help="comma-separated model:image_size:batch_size (ResNet-D models)")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each side")
  parser.add_argument("--rounds", type=int, default=5,
                      help="rounds of every side, in rotating order (at least 5 for a spread)")
  parser.add_argument("--steps", type=int, default=2, help="timed steps per side and round")
  parser.add_argument("--conv_algorithm", default="auto", choices=CONV_ALGORITHMS,
                      help="bagtricks' convolution algorithm (models/xla_cpu/conv.py)")
  parser.add_argument("--host_memory", default="system,retain",
                      help="comma-separated modes of " + "/".join(host_memory.HOST_MEMORY_MODES)
                      + ", each measured in its own process")
  parser.add_argument("--json", help="also write the figures to this JSON file")
  args = parser.parse_args()
  modes = args.host_memory.split(",")
  unknown = [m for m in modes if m not in host_memory.HOST_MEMORY_MODES]
  if unknown:
    parser.error(f"--host_memory: unknown mode(s) {unknown}; use "
                 f"{', '.join(host_memory.HOST_MEMORY_MODES)}")

  if len(modes) == 1:
    results = _measure(args)
  else:
    results = []
    for mode in modes:
      child = [a for a in sys.argv[1:] if not a.startswith(("--host_memory", "--json"))]
      out = subprocess.run([sys.executable, __file__, *child, f"--host_memory={mode}"],
                           capture_output=True, text=True, check=False)
      sys.stdout.write(out.stdout)
      if out.returncode:
        sys.exit(f"--host_memory={mode} failed:\n{out.stderr[-3000:]}")
      results += [json.loads(line) for line in out.stdout.splitlines()
                  if line.startswith("{")]
  print()
  _print_table(results)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
