"""The CPU convolution algorithms of models/xla_cpu/conv.py against `lax.conv_general_dilated`."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import Mesh, PartitionSpec

import models
from conftest import jaxpr_primitives, lowered_text
from models.xla_cpu import conv
from models.xla_cpu import onednn

NHWC = ("NHWC", "HWIO", "NHWC")


def _random_case(seed: int):
  """A random convolution: shapes, stride, padding and groups drawn from `seed`."""
  rng = np.random.default_rng(seed)
  groups = int(rng.choice([1, 1, 2, 3]))
  in_features = groups * int(rng.integers(1, 5))
  features = groups * int(rng.integers(1, 5))
  kernel_size = int(rng.choice([1, 3, 5]))
  strides = int(rng.choice([1, 2]))
  pad = int(rng.integers(0, kernel_size // 2 + 1))
  batch = int(rng.integers(2, 7))
  size = int(rng.integers(kernel_size, 11))
  return dict(batch=batch, size=size, in_features=in_features, features=features,
              kernel_size=kernel_size, strides=strides, pad=pad, groups=groups)


CASES = [_random_case(seed) for seed in range(8)] + [
    # Fixed corner cases: strided 1×1, depthwise, stride-2 3×3 on an even size, a 7×7 stem.
    dict(batch=4, size=7, in_features=6, features=8, kernel_size=1, strides=2, pad=0, groups=1),
    dict(batch=4, size=7, in_features=6, features=6, kernel_size=1, strides=1, pad=0, groups=2),
    dict(batch=3, size=8, in_features=6, features=6, kernel_size=3, strides=2, pad=1, groups=6),
    dict(batch=4, size=8, in_features=4, features=8, kernel_size=3, strides=2, pad=1, groups=1),
    dict(batch=2, size=9, in_features=3, features=4, kernel_size=7, strides=2, pad=3, groups=1),
]


def _arrays(case, seed=0):
  rng = np.random.default_rng(seed)
  k = case["kernel_size"]
  x = rng.normal(size=(case["batch"], case["size"], case["size"], case["in_features"]))
  kernel = rng.normal(size=(k, k, case["in_features"] // case["groups"], case["features"]))
  return x.astype(np.float32), kernel.astype(np.float32)


def _conv_fn(case, algorithm):
  padding = ((case["pad"], case["pad"]),) * 2
  strides = (case["strides"],) * 2
  if algorithm == "reference":
    return lambda x, k: lax.conv_general_dilated(
        x, k, strides, padding, dimension_numbers=NHWC, feature_group_count=case["groups"])
  return lambda x, k: conv.conv_general_dilated(
      x, k, strides, padding, dimension_numbers=NHWC, feature_group_count=case["groups"],
      algorithm=algorithm)


@pytest.fixture
def small_blocks(monkeypatch):
  """Blocks of one or two images, so tiny test batches exercise the blocked weight gradient."""
  monkeypatch.setattr(conv, "_BLOCK_BYTES", 1)
  monkeypatch.setattr(conv, "_BLOCK_KERNEL_RATIO", 0)
  monkeypatch.setattr(conv, "_MIN_MATMUL_BYTES", 1)
  monkeypatch.setattr(conv, "_SMALL_MAP", 0)  # Small maps blocked too, not patches.
  # Checks that the blocked path really runs in blocks.
  assert conv.weight_gradient_block(4, 100, 100) == 1


def _value_and_grads(fn, x, kernel, output_grad):
  y, vjp = jax.vjp(fn, x, kernel)
  return (y,) + vjp(output_grad)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "k{kernel_size}s{strides}p{pad}g{groups}"
                         .format(**c))
def test_blocked_equals_native_values_and_gradients(case, small_blocks):
  del small_blocks
  x, kernel = _arrays(case)
  y_ref = _conv_fn(case, "reference")(x, kernel)
  output_grad = np.random.default_rng(1).normal(size=y_ref.shape).astype(np.float32)
  ours = jax.jit(functools.partial(_value_and_grads, _conv_fn(case, "blocked")))
  ref = functools.partial(_value_and_grads, _conv_fn(case, "reference"))
  if case["kernel_size"] > 1:
    # A forward, input-gradient and weight-gradient convolution per image (`small_blocks`).
    count = ours.lower(x, kernel, output_grad).as_text().count("stablehlo.convolution")
    assert count == 3 * case["batch"], count
  for name, a, b in zip(("output", "input grad", "kernel grad"), ours(x, kernel, output_grad),
                        ref(x, kernel, output_grad)):
    assert a.shape == b.shape, name
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-4, err_msg=name)


SMALL_MAPS = [
    # Outputs of 1, 2 and 3 pixels a side: stride 1 with and without padding, stride 2, a 5×5
    # kernel wider than its input, one image.
    dict(batch=3, size=1, in_features=4, features=5, kernel_size=3, strides=1, pad=1, groups=1),
    dict(batch=3, size=2, in_features=6, features=4, kernel_size=3, strides=1, pad=1, groups=1),
    dict(batch=2, size=3, in_features=3, features=7, kernel_size=3, strides=1, pad=1, groups=1),
    dict(batch=2, size=4, in_features=5, features=3, kernel_size=3, strides=1, pad=0, groups=1),
    dict(batch=2, size=4, in_features=4, features=8, kernel_size=3, strides=2, pad=1, groups=1),
    dict(batch=1, size=2, in_features=3, features=2, kernel_size=5, strides=2, pad=2, groups=1),
]


@pytest.mark.parametrize("case", SMALL_MAPS,
                         ids=lambda c: "n{size}k{kernel_size}s{strides}p{pad}".format(**c))
def test_small_maps_are_one_matrix_product_equal_to_native(case):
  x, kernel = _arrays(case)
  y_ref = _conv_fn(case, "reference")(x, kernel)
  assert max(y_ref.shape[1:3]) <= 3
  for algorithm in ("blocked", "auto"):
    cpu = lowered_text(_conv_fn(case, algorithm), x, kernel, platform="cpu")
    assert "convolution" not in cpu and "dot_general" in cpu, algorithm
  for platform in ("cuda", "tpu"):  # 'auto' is XLA's convolution there.
    other = lowered_text(_conv_fn(case, "auto"), x, kernel, platform=platform)
    assert other.count("stablehlo.convolution") == 1 and "dot_general" not in other
  output_grad = np.random.default_rng(1).normal(size=y_ref.shape).astype(np.float32)
  ours = jax.jit(functools.partial(_value_and_grads, _conv_fn(case, "blocked")))
  ref = functools.partial(_value_and_grads, _conv_fn(case, "reference"))
  for name, a, b in zip(("output", "input grad", "kernel grad"), ours(x, kernel, output_grad),
                        ref(x, kernel, output_grad)):
    assert a.shape == b.shape, name
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-4, err_msg=name)
  # Plain XLA operations: forward mode works too.
  tangents = (np.ones_like(x), np.full_like(kernel, 0.5))
  _, ours_jvp = jax.jvp(_conv_fn(case, "auto"), (x, kernel), tangents)
  _, ref_jvp = jax.jvp(_conv_fn(case, "reference"), (x, kernel), tangents)
  np.testing.assert_allclose(np.asarray(ours_jvp), np.asarray(ref_jvp), rtol=1e-5, atol=1e-4)


def test_larger_or_grouped_small_convolutions_keep_xla_convolution():
  # A 4×4 output, and a grouped 2×2 one: XLA's convolution (their inputs are under 1 MiB).
  for case in (dict(SMALL_MAPS[2], size=4), dict(SMALL_MAPS[1], in_features=6, features=4,
                                                  groups=2)):
    x, kernel = _arrays(case)
    assert jaxpr_primitives(_conv_fn(case, "blocked"), x, kernel) == {"conv_general_dilated"}


def test_weight_gradient_block_sizes():
  # 1 MiB blocks: 32×32 images of 64 channels in and out are 512 KiB each (input plus output
  # gradient), so two per block; 3 images of 400 KiB fit twice but 2 does not divide 9.
  assert conv.weight_gradient_block(128, 2 * 32 * 32 * 64 * 4, 3 * 3 * 64 * 64 * 4) == 2
  assert conv.weight_gradient_block(9, 400 * 1024, 1000) == 1
  assert conv.weight_gradient_block(12, 300 * 1024, 1000) == 3
  # Blocks hold at least the kernel: 3×3, 256→256 (2.25 MiB) on 8×8 maps of 128 KiB per image
  # takes blocks of 16 images (17 would fit, 16 is the largest divisor of 128 under it) ...
  assert conv.weight_gradient_block(128, 2 * 8 * 8 * 256 * 4, 3 * 3 * 256 * 256 * 4) == 16
  # ... and a kernel larger than the whole batch's data (3×3, 512→512 on 8 7×7 maps) keeps the
  # batch whole.
  assert conv.weight_gradient_block(8, 2 * 7 * 7 * 512 * 4, 3 * 3 * 512 * 512 * 4) == 8
  # At most 64 blocks: 256 tiny images give blocks of 4.
  assert conv.weight_gradient_block(256, 1 << 21, 100) == 4
  # 131 (a prime) would need 131 blocks of one: left whole.
  assert conv.weight_gradient_block(131, 1 << 21, 100) == 131


@pytest.mark.parametrize("in_features,features", [(3, 8), (8, 3), (5, 5)])
def test_pointwise_weight_gradient_transposes_the_smaller_operand(in_features, features,
                                                                 small_blocks):
  """1×1 gradients equal the native ones; only the smaller operand is transposed for dK."""
  del small_blocks
  case = dict(batch=3, size=5, in_features=in_features, features=features, kernel_size=1,
              strides=1, pad=0, groups=1)
  x, kernel = _arrays(case)
  output_grad = np.random.default_rng(1).normal(size=(3, 5, 5, features)).astype(np.float32)
  ours = _value_and_grads(_conv_fn(case, "blocked"), x, kernel, output_grad)
  ref = _value_and_grads(_conv_fn(case, "reference"), x, kernel, output_grad)
  for name, a, b in zip(("output", "input grad", "kernel grad"), ours, ref):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5, err_msg=name)
  # The backward pass transposes one [rows, channels] matrix: x [75, in] when in ≤ out, else
  # the output gradient [75, out] (and then the small [out, in] product).
  jaxpr = jax.make_jaxpr(lambda x_, k_, g_: jax.vjp(_conv_fn(case, "blocked"), x_, k_)[1](g_))(
      x, kernel, output_grad)
  transposed = sorted(eqn.invars[0].aval.shape for eqn in _all_eqns(jaxpr.jaxpr)
                      if eqn.primitive.name == "transpose")
  big = [shape for shape in transposed if shape[0] == 75]
  assert big == [(75, min(in_features, features))], transposed


def _all_eqns(jaxpr):
  """The equations of `jaxpr` and of every jaxpr nested in its parameters."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (list, tuple)) else [param]):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _all_eqns(inner)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_compute(dtype, small_blocks):
  del small_blocks
  for case in (CASES[-2], CASES[-4], CASES[-5]):
    x, kernel = _arrays(case)
    y_ref = _conv_fn(case, "reference")(x, kernel)
    output_grad = np.random.default_rng(1).normal(size=y_ref.shape).astype(np.float32)
    ref = _value_and_grads(_conv_fn(case, "reference"), x, kernel, output_grad)
    low = [jnp.asarray(a, dtype) for a in (x, kernel, output_grad)]
    ours = jax.jit(functools.partial(_value_and_grads, _conv_fn(case, "blocked")))(*low)
    for name, a, b in zip(("output", "input grad", "kernel grad"), ours, ref):
      assert a.dtype == dtype, name
      # Half precision keeps 8 (bf16) or 11 (fp16) significant bits.
      scale = float(np.abs(b).max())
      np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b), rtol=0,
                                 atol=0.03 * scale, err_msg=name)


def test_automatic_choice_per_platform(monkeypatch):
  # On CPU, 'onednn' where its extension is available (tests/test_onednn_conv.py), else
  # 'blocked'; on other platforms XLA's own, except an explicit 'blocked'.
  monkeypatch.setattr(onednn, "_load", lambda: (None, "not built"))
  assert conv.resolve_algorithm("auto", "cpu") == "blocked"
  assert conv.resolve_algorithm("auto", "cuda") == "native"
  assert conv.resolve_algorithm("auto", "tpu") == "native"
  assert conv.resolve_algorithm("native", "cpu") == "native"
  assert conv.resolve_algorithm("blocked", "cuda") == "blocked"
  with pytest.raises(ValueError, match="conv_algorithm='fast'.*'native', 'auto', 'blocked'"):
    conv.resolve_algorithm("fast", "cpu")

  pointwise = dict(batch=2, size=4, in_features=3, features=5, kernel_size=1, strides=1, pad=0,
                   groups=1)
  spatial = dict(pointwise, kernel_size=3, pad=1)
  # Inputs under 256 KiB (1×1) or 1 MiB (k×k) keep XLA's convolution even on CPU.
  for case in (pointwise, spatial):
    x, kernel = _arrays(case)
    assert jaxpr_primitives(_conv_fn(case, "blocked"), x, kernel) == {"conv_general_dilated"}
    assert jaxpr_primitives(_conv_fn(case, "auto"), x, kernel) == {"conv_general_dilated"}
  monkeypatch.setattr(conv, "_MIN_MATMUL_BYTES", 1)
  monkeypatch.setattr(conv, "_BLOCK_BYTES", 1)  # Blocks of one image from here on.
  monkeypatch.setattr(conv, "_BLOCK_KERNEL_RATIO", 0)
  for case in (pointwise, spatial):
    x, kernel = _arrays(case)
    # The choice follows the platform the computation is lowered for, whatever the default
    # backend: the blocked algorithm (one convolution per image, or a matrix product) where
    # it is the CPU, XLA's one convolution where it is a GPU or TPU.
    native_count = lowered_text(_conv_fn(case, "native"), x, kernel).count("convolution")
    assert native_count == 1
    cpu = lowered_text(_conv_fn(case, "auto"), x, kernel, platform="cpu")
    if case is pointwise:
      assert "convolution" not in cpu and "dot_general" in cpu
    else:
      assert cpu.count("stablehlo.convolution") == case["batch"]
    for platform in ("cuda", "rocm", "tpu"):
      other = lowered_text(_conv_fn(case, "auto"), x, kernel, platform=platform)
      assert other.count("stablehlo.convolution") == 1 and "dot_general" not in other
      blocked = lowered_text(_conv_fn(case, "blocked"), x, kernel, platform=platform)
      assert blocked == lowered_text(_conv_fn(case, "blocked"), x, kernel, platform="cpu")


def test_conv_module_has_flax_parameters():
  x = jnp.ones((2, 6, 6, 4))
  for kwargs in (dict(kernel_size=(3, 3)), dict(kernel_size=(1, 1), use_bias=True),
                 dict(kernel_size=(3, 3), feature_group_count=2, strides=(2, 2))):
    ours = conv.Conv(8, **kwargs).init(jax.random.PRNGKey(0), x)
    theirs = nn.Conv(8, **kwargs).init(jax.random.PRNGKey(0), x)
    assert jax.tree_util.tree_map(jnp.shape, ours) == jax.tree_util.tree_map(jnp.shape, theirs)
    np.testing.assert_array_equal(ours["params"]["kernel"], theirs["params"]["kernel"])
  with pytest.raises(ValueError, match="conv_algorithm='gpu'"):
    conv.Conv(8, kernel_size=(3, 3), algorithm="gpu")
  with pytest.raises(ValueError, match="conv_algorithm='gpu'"):
    models.create_model("resnet18d", conv_algorithm="gpu")


@pytest.mark.parametrize("backend", ["pmap", "shard_map"])
@pytest.mark.slow
def test_gradients_across_devices(backend, small_blocks):
  """Per-device gradients of the blocked conv equal the native ones under pmap / shard_map."""
  del small_blocks
  devices = jax.local_devices()[:8]
  case = dict(batch=16, size=6, in_features=4, features=6, kernel_size=3, strides=2, pad=1,
              groups=2)
  x, kernel = _arrays(case)

  def loss_grads(algorithm, x_shard, k):
    return jax.grad(lambda x_, k_: jnp.sum(jnp.sin(_conv_fn(case, algorithm)(x_, k_))),
                    argnums=(0, 1))(x_shard, k)

  results = {}
  for algorithm in ("blocked", "native"):
    fn = functools.partial(loss_grads, algorithm)
    if backend == "pmap":
      shards = x.reshape((len(devices), -1) + x.shape[1:])
      grads = jax.pmap(fn, in_axes=(0, None), devices=devices)(shards, kernel)
      results[algorithm] = (grads[0].reshape(x.shape), grads[1])
    else:
      mesh = Mesh(np.array(devices), ("batch",))
      results[algorithm] = jax.shard_map(
          lambda xs, k, fn=fn: (fn(xs, k)[0], fn(xs, k)[1][None]), mesh=mesh,
          in_specs=(PartitionSpec("batch"), PartitionSpec()),
          out_specs=(PartitionSpec("batch"), PartitionSpec("batch")))(x, kernel)
  for a, b in zip(results["blocked"], results["native"]):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_train_step_equal_with_and_without(monkeypatch):
  """One train step of a ResNet-18-D (small stem, 3×3 convolutions) and a ResNet-D of one
  bottleneck block per stage (ResNet-50-D's stem max pool, 1×1 convolutions and downsampling
  shortcuts, at a quarter of its compile time): blocked, oneDNN and native give the same
  state."""
  # Blocks of two of the four images in every weight gradient.
  monkeypatch.setattr(conv, "_MAX_BLOCKS", 2)
  monkeypatch.setattr(conv, "_BLOCK_BYTES", 1)
  monkeypatch.setattr(conv, "_BLOCK_KERNEL_RATIO", 0)
  monkeypatch.setattr(conv, "_MIN_MATMUL_BYTES", 1)
  from bagtricks import optim, precision, steps
  from bagtricks.parallel import AXIS_NAME, DataParallel
  from bagtricks.state import init_train_state
  from bagtricks.tasks import ClassificationTask
  from configs import default

  config = default.get_config()
  policy = precision.get_policy("fp32")
  tx = optim.build_optimizer(config, 0.1)
  task = ClassificationTask(10)
  rng = np.random.default_rng(0)
  constructors = {"resnet18d": models.ResNet18D,
                  "bottleneck": functools.partial(models.ResNet, stage_sizes=(1, 1, 1, 1),
                                                  block="bottleneck", variant="D")}
  for name, size, small_stem in (("resnet18d", 8, True), ("bottleneck", 32, False)):
    batch = {"image": rng.normal(size=(4, size, size, 3)).astype(np.float32),
             "label": rng.integers(0, 10, size=(4,)).astype(np.int32)}
    states = {}
    algorithms = ("blocked", "onednn", "native") if onednn.available() else ("blocked",
                                                                                  "native")
    for algorithm in algorithms:
      model = constructors[name](num_classes=10, width_multiplier=0.125,
                                 small_stem=small_stem, axis_name=AXIS_NAME,
                                 conv_algorithm=algorithm)
      state = init_train_state(model, tx, task, {k: v[:1] for k, v in batch.items()}, seed=0)
      dp = DataParallel("pmap", jax.local_devices()[:1])
      step = dp.compile(steps.make_train_step(model, task, tx, policy))
      new_state, _ = step(dp.replicate(state), dp.shard_batch({k: v[None] for k, v in
                                                              batch.items()}))
      states[algorithm] = dp.unreplicate(new_state)
    reference = jax.tree_util.tree_leaves(states["native"].params)
    for algorithm in algorithms[:-1]:
      for a, b in zip(jax.tree_util.tree_leaves(states[algorithm].params), reference):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5,
                                   err_msg=algorithm)
    leaves = [jax.tree_util.tree_leaves(states[a].params) for a in ("blocked", "native")]
    assert not np.allclose(np.asarray(leaves[0][0]),
                           np.asarray(jax.tree_util.tree_leaves(state.params)[0]))
