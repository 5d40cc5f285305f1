"""Modules built with their defaults work under every JAX transformation on CPU.

A user's `models.ResNet18D(num_classes=10)` or RegNet gets XLA's own convolutions: forward-mode
differentiation (`jax.jvp`, `jax.hessian`), `jax.vmap` and `jax.export` of the forward pass,
at 32×32 and 224×224. The CPU algorithms the trainer turns on (`conv_algorithm='auto'`)
support everything but forward mode, which they refuse by name.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from bagtricks import state


def _forward(model, x):
  # Compiled whole: op by op, every op of the network is a compile of its own.
  variables = state.init_variables(model, jax.random.PRNGKey(0), x[:1], train=False)
  return variables, lambda images: model.apply(variables, images, train=False)


def _images(batch, size, channels=3, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, size, size, channels)),
                     jnp.float32)


@pytest.mark.parametrize("build,size,batch", [
    (lambda: models.ResNet18D(num_classes=10), 32, 8),
    (lambda: models.ResNet50D(num_classes=10, width_multiplier=0.25), 224, 2),
    (lambda: models.create_model("regnetx_002", num_classes=10), 224, 2),
    (lambda: models.create_model("regnety_002", num_classes=10, small_stem=True), 32, 4),
], ids=["resnet18d-32", "resnet50d-224", "regnetx_002-224", "regnety_002-32"])
@pytest.mark.slow
def test_jvp_vmap_and_export_of_a_default_module(build, size, batch):
  model = build()
  assert model.conv_algorithm == "native"
  x = _images(batch, size)
  _, forward = _forward(model, x)
  logits = jax.jit(forward)(x)
  # jvp against reverse mode: <u, J d> from the tangent equals <Jᵀ u, d> from a VJP.
  direction = _images(batch, size, seed=1)
  primal, tangent = jax.jit(lambda x_, d: jax.jvp(forward, (x_,), (d,)))(x, direction)
  np.testing.assert_allclose(primal, logits, rtol=1e-4, atol=1e-4)
  cotangent = jnp.asarray(np.random.default_rng(2).normal(size=logits.shape), jnp.float32)
  pulled = jax.jit(lambda x_, u: jax.vjp(forward, x_)[1](u)[0])(x, cotangent)
  forward_mode = float(jnp.vdot(cotangent, tangent))
  reverse_mode = float(jnp.vdot(pulled, direction))
  assert abs(forward_mode - reverse_mode) <= 1e-3 * abs(reverse_mode) + 1e-5, (forward_mode,
                                                                                 reverse_mode)
  # vmap over a leading axis of groups: each group as its own call.
  groups = x.reshape((2, batch // 2) + x.shape[1:])
  np.testing.assert_allclose(jax.jit(jax.vmap(forward))(groups).reshape(logits.shape), logits,
                             rtol=1e-4, atol=1e-4)
  # export, serialize, deserialize and call.
  exported = jax.export.export(jax.jit(forward))(jax.ShapeDtypeStruct(x.shape, x.dtype))
  restored = jax.export.deserialize(exported.serialize())
  np.testing.assert_allclose(restored.call(x), logits, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_hessian_of_a_small_default_network():
  """The Hessian of a loss with respect to the head's bias, through the whole network:
  symmetric, and equal to the closed form of softmax cross-entropy, diag(p̄) − mean(p pᵀ)."""
  model = models.ResNet18D(num_classes=4, width_multiplier=0.125, small_stem=True)
  x = _images(3, 8, channels=1)
  variables, forward = _forward(model, x)
  labels = jnp.array([0, 1, 3])

  def loss(bias):
    params = {**variables["params"], "head": {**variables["params"]["head"], "bias": bias}}
    logits = model.apply({**variables, "params": params}, x, train=False)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

  bias = variables["params"]["head"]["bias"]
  hessian = jax.jit(jax.hessian(loss))(bias)
  logits = jax.jit(forward)(x)
  p = np.asarray(jax.nn.softmax(logits), np.float64)
  expected = np.diag(p.mean(0)) - np.einsum("bi,bj->ij", p, p) / len(p)
  np.testing.assert_allclose(hessian, expected, rtol=1e-4, atol=1e-6)
  # And a Hessian-vector product over every parameter (forward over reverse) runs.
  flat, unravel = jax.flatten_util.ravel_pytree(variables["params"])

  def full_loss(flat_params):
    logits_ = model.apply({**variables, "params": unravel(flat_params)}, x, train=False)
    return jnp.mean(logits_ ** 2)

  hvp = jax.jit(lambda v: jax.jvp(jax.grad(full_loss), (flat,), (v,))[1])(jnp.ones_like(flat))
  assert hvp.shape == flat.shape and bool(jnp.all(jnp.isfinite(hvp)))


def test_cpu_algorithms_refuse_forward_mode_by_name(monkeypatch):
  from models.xla_cpu import conv
  monkeypatch.setattr(conv, "_BLOCK_BYTES", 1)
  model = models.ResNet18D(num_classes=10, width_multiplier=0.125, conv_algorithm="auto")
  x = _images(4, 32)
  # 'auto' picks its algorithm when lowered for the CPU, which is where forward mode is
  # refused and reverse mode must go through; nothing needs compiling.
  variables = jax.eval_shape(lambda x_: model.init(jax.random.PRNGKey(0), x_, train=False), x)

  def forward(variables_, x_):
    return model.apply(variables_, x_, train=False)

  with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
    jax.jit(lambda v, x_: jax.jvp(lambda y: forward(v, y), (x_,), (x_,))).lower(variables, x)
  lowered = jax.jit(jax.grad(lambda v, x_: jnp.sum(forward(v, x_)), argnums=1)).lower(
      variables, x)
  assert lowered.out_info.shape == x.shape  # Reverse mode works.
