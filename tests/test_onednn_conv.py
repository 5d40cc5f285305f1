"""oneDNN convolutions (models/xla_cpu/onednn.py) against XLA's and a NumPy reference."""

import functools
import os
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import Mesh, PartitionSpec

import models
from conftest import lowered_text
from models.xla_cpu import conv
from models.xla_cpu import extension
from models.xla_cpu import onednn

NHWC = ("NHWC", "HWIO", "NHWC")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINUX_X86_64 = platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")



def extension_installed() -> bool:
  """Whether the onednn extra's wheels are installed."""
  return None not in (extension.onednn_library(), extension._distribution_file(  # pylint: disable=protected-access
      extension.ONEDNN_DEVEL, "dnnl.hpp"))


needs_onednn = pytest.mark.skipif(not onednn.available(),
                                  reason=f"oneDNN convolutions: {onednn.unavailable_reason()}")


def test_extension_is_built_where_it_should_be():
  """With the onednn extra on Linux x86-64 the extension builds: a failed build must not pass
  silently."""
  if not LINUX_X86_64:
    pytest.skip("the oneDNN extension is built on Linux x86-64 only")
  if not extension_installed():
    pytest.skip("the onednn extra is not installed")
  assert onednn.available(), onednn.unavailable_reason()
  assert onednn.version().startswith("3."), onednn.version()


@pytest.fixture(autouse=True)
def bounds_checking():
  """Every oneDNN call of these tests fails if a kernel writes past its buffers."""
  onednn.set_bounds_checking(True)
  yield
  onednn.set_bounds_checking(False)


def _random_case(seed: int):
  """Shapes, strides and (possibly asymmetric) padding drawn from `seed`, as `supports` allows."""
  rng = np.random.default_rng(seed)
  kernel = (int(rng.choice([1, 3, 5, 7])), int(rng.choice([1, 3])))
  stride = 1 if kernel == (1, 1) else int(rng.choice([1, 2, 3]))
  strides = (stride, stride)
  padding = tuple((int(rng.integers(0, k)), int(rng.integers(0, k))) for k in kernel)
  height, width = (int(rng.integers(k, 13)) for k in kernel)
  return dict(batch=int(rng.integers(1, 5)), height=height, width=width,
              in_features=int(rng.integers(1, 20)), features=int(rng.integers(1, 20)),
              kernel=kernel, strides=strides, padding=padding)


CASES = [_random_case(seed) for seed in range(12)] + [
    # ResNet shapes: a 3×3 block convolution, a stride-2 3×3, a 1×1 expansion, the 7×7 stem,
    # channel counts that fill and that do not fill oneDNN's 16-channel blocks.
    dict(batch=2, height=8, width=8, in_features=32, features=32, kernel=(3, 3),
         strides=(1, 1), padding=((1, 1), (1, 1))),
    dict(batch=3, height=9, width=9, in_features=16, features=48, kernel=(3, 3),
         strides=(2, 2), padding=((1, 1), (1, 1))),
    dict(batch=2, height=5, width=5, in_features=24, features=96, kernel=(1, 1),
         strides=(1, 1), padding=((0, 0), (0, 0))),
    dict(batch=2, height=16, width=16, in_features=3, features=8, kernel=(7, 7),
         strides=(2, 2), padding=((3, 3), (3, 3))),
]


def _arrays(case, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(case["batch"], case["height"], case["width"], case["in_features"]))
  kernel = rng.normal(size=case["kernel"] + (case["in_features"], case["features"]))
  return x.astype(np.float32), kernel.astype(np.float32)


def _numpy_conv(x, kernel, strides, padding):
  """The convolution's definition, y[n,h,w,o] = Σ x_pad[n, s·h+i, s·w+j, c] K[i,j,c,o], in float64."""
  x = np.pad(x.astype(np.float64), ((0, 0),) + tuple(padding) + ((0, 0),))
  kh, kw, _, _ = kernel.shape
  out_h = (x.shape[1] - kh) // strides[0] + 1
  out_w = (x.shape[2] - kw) // strides[1] + 1
  y = np.zeros((x.shape[0], out_h, out_w, kernel.shape[3]))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i:i + strides[0] * (out_h - 1) + 1:strides[0],
                j:j + strides[1] * (out_w - 1) + 1:strides[1]]
      y += patch @ kernel[i, j].astype(np.float64)
  return y


@needs_onednn
@pytest.mark.parametrize("case", CASES, ids=lambda c: "k{kernel}s{strides}p{padding}c{in_features}"
                         .format(**c).replace(" ", ""))
def test_values_and_gradients_equal_xla(case):
  x, kernel = _arrays(case)
  strides, padding = case["strides"], case["padding"]
  ours = functools.partial(onednn.conv2d, strides=strides, padding=padding)

  def reference(x_, k_):
    return lax.conv_general_dilated(x_, k_, strides, padding, dimension_numbers=NHWC,
                                    precision=lax.Precision.HIGHEST)

  y = jax.jit(ours)(x, kernel)
  np.testing.assert_allclose(np.asarray(y), _numpy_conv(x, kernel, strides, padding),
                             rtol=1e-5, atol=1e-4)
  output_grad = np.random.default_rng(1).normal(size=y.shape).astype(np.float32)
  ours_grads = jax.jit(lambda a, b, g: jax.vjp(ours, a, b)[1](g))(x, kernel, output_grad)
  ref_grads = jax.vjp(reference, x, kernel)[1](output_grad)
  for name, a, b in zip(("input grad", "kernel grad"), ours_grads, ref_grads):
    assert a.shape == b.shape, name
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-4, err_msg=name)


@needs_onednn
@pytest.mark.slow
def test_many_shapes_stay_in_bounds():
  """200 more random convolutions, all three passes, in bounds-checking mode: no kernel writes
  past its output or scratch space (oneDNN 3.2's 1×1 weight gradient with unequal strides
  did, which `supports` excludes)."""
  for seed in range(100, 300):
    case = _random_case(seed)
    x, kernel = _arrays(case, seed)
    fn = functools.partial(onednn.conv2d, strides=case["strides"],
                           padding=case["padding"])
    y, vjp = jax.vjp(fn, x, kernel)
    jax.block_until_ready(vjp(jnp.ones_like(y)))


def test_supported_convolutions():
  x, kernel = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 8))
  pointwise = jnp.ones((1, 1, 4, 8))
  same = ((1, 1), (1, 1))
  assert onednn.supports(x, kernel, (2, 2), 1, same)
  assert onednn.supports(x, pointwise, (1, 1), 1, ((0, 0), (0, 0)))
  assert not onednn.supports(x, pointwise, (2, 2), 1, ((0, 0), (0, 0)))
  assert not onednn.supports(x, kernel, (2, 1), 1, same)
  assert not onednn.supports(x, kernel[:, :, :2], (1, 1), 2, same)
  assert not onednn.supports(x, kernel, (1, 1), 1, ((-1, 1), (1, 1)))
  assert not onednn.supports(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), (1, 1),
                                  1, same)


# The case that showed oneDNN 3.2's out-of-bounds write, forced past `supports`. The write
# happens in the AVX2 1×1 weight-gradient kernel when it runs on one thread (with more, the
# work is split so that it stays in bounds), so the child process pins both.
_OUT_OF_BOUNDS_CASE = """
import functools, jax, numpy as np
from models.xla_cpu import onednn
onednn.set_bounds_checking(True)
x = np.ones((3, 8, 8, 1), np.float32)
dy = np.ones((3, 4, 8, 10), np.float32)
call = functools.partial(onednn._call, "backward_weights", (1, 1, 1, 10), strides=(2, 1),
                         padding=((0, 0), (0, 0)))
jax.block_until_ready(jax.jit(call)(x, dy))
"""


@needs_onednn
def test_out_of_bounds_write_is_an_error_not_a_crash():
  """In bounds-checking mode the call fails with an error naming the convolution."""
  env = dict(os.environ, OMP_NUM_THREADS="1", ONEDNN_MAX_CPU_ISA="AVX2", JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-c", _OUT_OF_BOUNDS_CASE], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode != 0, "the out-of-bounds write was not detected"
  assert ("oneDNN wrote past a buffer in the backward weights pass of a 1x1 convolution, "
          "1->10 channels") in done.stderr, done.stderr[-2000:]


@needs_onednn
def test_second_call_reuses_the_plan_and_matches():
  """Repeated and differently shaped calls in one program (the per-shape primitive cache)."""
  case_a, case_b = CASES[-4], CASES[-3]
  xa, ka = _arrays(case_a)
  xb, kb = _arrays(case_b)

  @jax.jit
  def two(xa, ka, xb, kb):
    first = onednn.conv2d(xa, ka, case_a["strides"], case_a["padding"])
    again = onednn.conv2d(xa * 2, ka, case_a["strides"], case_a["padding"])
    other = onednn.conv2d(xb, kb, case_b["strides"], case_b["padding"])
    return first, again, other

  first, again, other = two(xa, ka, xb, kb)
  np.testing.assert_allclose(np.asarray(again), 2 * np.asarray(first), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(np.asarray(other),
                             _numpy_conv(xb, kb, case_b["strides"], case_b["padding"]),
                             rtol=1e-5, atol=1e-4)


@needs_onednn
@pytest.mark.slow
def test_vmap_and_device_parallel():
  """Under vmap, pmap over 8 devices and shard_map: the same values and gradients as XLA's."""
  case = dict(CASES[-4], batch=16)
  x, kernel = _arrays(case)
  strides, padding = case["strides"], case["padding"]

  def loss_grads(fn, x_, k_):
    return jax.grad(lambda a, b: jnp.sum(jnp.sin(fn(a, b))), argnums=(0, 1))(x_, k_)

  def assert_close(a, b):
    # float32 rounding of outputs of size ~10 passes through cos(): relative to the scale.
    b = np.asarray(b)
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=2e-5 * np.abs(b).max())

  ours = functools.partial(loss_grads, functools.partial(
      onednn.conv2d, strides=strides, padding=padding))
  reference = functools.partial(loss_grads, lambda a, b: lax.conv_general_dilated(
      a, b, strides, padding, dimension_numbers=NHWC, precision=lax.Precision.HIGHEST))
  # vmap over groups of 4 images, each group with its own kernel scale.
  scales = np.array([1.0, 0.5, -1.0, 2.0], np.float32)
  xs = x.reshape((4, 4) + x.shape[1:])
  vmapped = jax.jit(jax.vmap(lambda xg, s: ours(xg, kernel * s)))(xs, scales)
  for group, scale in enumerate(scales):
    want = reference(xs[group], kernel * scale)
    for a, b in zip(vmapped, want):
      assert_close(a[group], b)

  devices = jax.local_devices()[:8]
  assert len(devices) == 8
  shards = x.reshape((8, -1) + x.shape[1:])
  pmapped = jax.pmap(ours, in_axes=(0, None), devices=devices)(shards, kernel)
  mesh = Mesh(np.array(devices), ("batch",))
  sharded = jax.shard_map(
      lambda xs_, k_: (ours(xs_, k_)[0], ours(xs_, k_)[1][None]), mesh=mesh,
      in_specs=(PartitionSpec("batch"), PartitionSpec()),
      out_specs=(PartitionSpec("batch"), PartitionSpec("batch")))(x, kernel)
  wants = [reference(shards[shard], kernel) for shard in range(8)]
  # shard_map differentiates the replicated kernel once for all devices: the sum of theirs.
  kernel_grad_sum = np.sum([np.asarray(want[1], np.float64) for want in wants], axis=0)
  for name, got in (("pmap", pmapped), ("shard_map", sharded)):
    for shard, want in enumerate(wants):
      assert_close(np.asarray(got[0]).reshape(shards.shape)[shard], want[0])
      assert_close(got[1][shard], want[1] if name == "pmap" else kernel_grad_sum)


@needs_onednn
def test_automatic_choice():
  """'auto' in a CPU computation runs oneDNN for float32 convolutions of at least 1 MiB
  (256 KiB for 1×1), XLA's for smaller, grouped, half-precision ones, and XLA's everywhere in
  a GPU or TPU computation."""
  assert conv.resolve_algorithm("auto", "cpu") == "onednn"
  assert conv.resolve_algorithm("onednn", "cuda") == "native"
  big = dict(batch=8, height=32, width=32, in_features=32, features=32, kernel=(3, 3),
             strides=(1, 1), padding=((1, 1), (1, 1)))  # 1 MiB of input.
  pointwise = dict(big, batch=2, kernel=(1, 1), padding=((0, 0), (0, 0)))  # 256 KiB.

  def lowered(case, algorithm="auto", groups=1, dtype=jnp.float32, platform="cpu"):
    x, kernel = _arrays(case)
    kernel = kernel[:, :, :case["in_features"] // groups]
    fn = lambda a, b: conv.conv_general_dilated(
        a, b, case["strides"], case["padding"], dimension_numbers=NHWC,
        feature_group_count=groups, algorithm=algorithm)
    return lowered_text(fn, jnp.asarray(x, dtype), jnp.asarray(kernel, dtype),
                        platform=platform)

  target = "bagtricks_onednn_conv_forward"
  for case in (big, pointwise):
    assert target in lowered(case)
    assert target in lowered(case, "onednn")
    assert target not in lowered(case, "blocked")
    assert target not in lowered(case, groups=2)
    assert target not in lowered(case, dtype=jnp.bfloat16)
    below = lowered(dict(case, batch=1))  # Under the threshold.
    assert target not in below and below.count("stablehlo.convolution") == 1
    for platform in ("cuda", "tpu"):
      for algorithm in ("auto", "onednn"):
        other = lowered(case, algorithm, platform=platform)
        assert target not in other and other.count("stablehlo.convolution") == 1


def test_unavailable_extension_is_a_clear_error(monkeypatch):
  """Without the extension 'auto' falls back to 'blocked' and 'onednn' names the reason."""
  onednn.set_bounds_checking(False)
  monkeypatch.setattr(onednn, "_load", lambda: (None, "the extension is not built"))
  assert conv.resolve_algorithm("auto", "cpu") == "blocked"
  assert conv.resolve_algorithm("onednn", "tpu") == "native"
  with pytest.raises(ValueError, match="conv_algorithm='onednn' is unavailable: the extension "
                     "is not built; use 'auto' or 'blocked'"):
    conv.resolve_algorithm("onednn", "cpu")
  model = models.create_model("resnet18d", num_classes=2, width_multiplier=0.125,
                              conv_algorithm="onednn")
  with pytest.raises(ValueError, match="conv_algorithm='onednn' is unavailable"):
    model.init(jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 3)))
  with pytest.raises(RuntimeError, match="the extension is not built"):
    onednn.conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2)), (1, 1), ((1, 1),) * 2)


def test_without_the_extra_nothing_is_compiled(monkeypatch, tmp_path):
  """A plain install (no onednn wheels) compiles nothing and says which extra to install."""
  monkeypatch.setenv("BAGTRICKS_CACHE_DIR", str(tmp_path))
  monkeypatch.setattr(extension, "_distribution_file", lambda distribution, suffix: None)

  def no_compiler(*args, **kwargs):
    raise AssertionError(f"ran {args}")

  monkeypatch.setattr(extension.subprocess, "run", no_compiler)
  path, reason = extension.build()
  assert path is None
  assert reason == "the onednn extra is not installed (pip install 'bagtricks[onednn]')"
  assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not (LINUX_X86_64 and extension_installed()),
                    reason="needs the onednn extra on Linux x86-64")
@pytest.mark.slow
def test_extension_compiles_once_into_the_cache(monkeypatch, tmp_path):
  monkeypatch.setenv("BAGTRICKS_CACHE_DIR", str(tmp_path))
  path, reason = extension.build()
  assert reason == "" and os.path.dirname(path) == str(tmp_path), reason
  built = os.stat(path).st_mtime_ns
  monkeypatch.setattr(extension.subprocess, "run", lambda *a, **k: pytest.fail("compiled again"))
  assert extension.build() == (path, "")
  assert os.stat(path).st_mtime_ns == built
  assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(path)]
