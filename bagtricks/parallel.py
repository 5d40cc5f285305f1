"""Runs a per-device step data-parallel, with ``jax.pmap`` or ``jax.jit`` over ``shard_map``.

The train and eval steps are written once, for one device's share of the batch, using
``axis_name`` collectives (``lax.pmean`` of gradients, cross-device BatchNorm statistics).
``DataParallel`` turns such a function into one that takes the replicated state and a batch
shaped ``[devices, per_device_batch, ...]``:

* ``pmap``: the classic Flax recipe; state carries a leading device axis.
* ``shard_map``: ``jax.jit(jax.shard_map(...))`` over a one-axis ``Mesh``; state is a
  replicated global array. ``check_vma=False`` keeps the per-device semantics identical to
  ``pmap``: with varying-manual-axes checking on, JAX would already sum the gradients of the
  replicated parameters over devices, and the step's own ``pmean`` would then be applied to a
  sum instead of a per-device gradient.

Both backends run on one CPU, a multi-GPU host or a TPU pod slice (with
``jax.distributed.initialize()``; every process feeds its local devices' share).
"""

from __future__ import annotations

from typing import Any, Callable, List, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bagtricks import config_fields

AXIS_NAME = "batch"
BACKENDS = ("pmap", "shard_map")


def _first_device_copy(x: jax.Array) -> np.ndarray:
  # A pmap output has a leading device axis; its first device's shard keeps that axis as
  # size 1 under a NamedSharding and drops it under a PmapSharding.
  data = np.asarray(x.addressable_shards[0].data)
  return data[0] if data.ndim == x.ndim else data


class DataParallel:
  """Places state and batches on devices and compiles per-device steps.

  Args:
    backend: ``'pmap'`` or ``'shard_map'``.
    local_devices: this process's devices to use (default: all local devices).
  """

  def __init__(self, backend: str = "pmap", local_devices: Sequence[jax.Device] | None = None):
    if backend not in BACKENDS:
      raise ValueError(f"config.parallel={backend!r} is unknown; use one of {BACKENDS}.")
    self.backend = backend
    self.local_devices = list(local_devices or jax.local_devices())
    if jax.process_count() > 1:
      # Across hosts every process contributes its local devices to one global mesh.
      global_devices = jax.devices()
    else:
      global_devices = self.local_devices
    self.mesh = Mesh(np.array(global_devices), (AXIS_NAME,))
    self._replicated = NamedSharding(self.mesh, P())
    self._split = NamedSharding(self.mesh, P(AXIS_NAME))
    self._local_mesh = Mesh(np.array(self.local_devices), (AXIS_NAME,))

  @property
  def num_local_devices(self) -> int:
    return len(self.local_devices)

  @property
  def num_devices(self) -> int:
    return self.mesh.size

  def replicate(self, tree: Any) -> Any:
    """Host pytree → the state layout the compiled steps take."""
    if self.backend == "pmap":
      sharding = NamedSharding(self._local_mesh, P(AXIS_NAME))
      n = self.num_local_devices
      return jax.tree_util.tree_map(
          lambda x: jax.device_put(np.stack([np.asarray(x)] * n), sharding), tree)
    return jax.tree_util.tree_map(lambda x: jax.device_put(np.asarray(x), self._replicated),
                                  tree)

  def unreplicate(self, tree: Any) -> Any:
    """Device state → one host (NumPy) copy."""
    if self.backend == "pmap":
      return jax.tree_util.tree_map(_first_device_copy, tree)
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_shards[0].data), tree)

  def shard_batch(self, batch: Any) -> Any:
    """``[local_devices, per_device, ...]`` host arrays → device arrays."""
    if self.backend == "pmap":
      sharding = NamedSharding(self._local_mesh, P(AXIS_NAME))
      return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), batch)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(self._split, x), batch)

  def compile(self, per_device_fn: Callable, donate_state: bool = False,
              replicated_args: int = 0) -> Callable:
    """Turns ``fn(state, batch, *extra) -> outputs`` (one device's view) into a parallel step.

    ``outputs`` must be replicated across devices (reduce with ``axis_name`` collectives).

    Args:
      per_device_fn: the step for one device, using collectives over ``AXIS_NAME``.
      donate_state: let XLA reuse the input state's buffers for the output.
      replicated_args: how many arguments follow ``batch`` (e.g. a distillation teacher's
        variables); like the state, they are passed in the layout of ``replicate``.

    Returns:
      ``fn(state, batch, *extra) -> outputs`` on the layouts of ``replicate``/``shard_batch``.
    """
    donate = (0,) if donate_state else ()
    if self.backend == "pmap":
      # Multi-host pmap spans every process's devices; each process feeds its local ones.
      devices = jax.devices() if jax.process_count() > 1 else self.local_devices
      return jax.pmap(per_device_fn, axis_name=AXIS_NAME, devices=devices,
                      donate_argnums=donate)

    def on_block(state, batch, *extra):
      # Each device sees a [1, per_device, ...] block of the device axis.
      block = jax.tree_util.tree_map(lambda x: x[0], batch)
      return per_device_fn(state, block, *extra)

    mapped = jax.shard_map(on_block, mesh=self.mesh,
                           in_specs=(P(), P(AXIS_NAME)) + (P(),) * replicated_args,
                           out_specs=P(), check_vma=False)
    return jax.jit(mapped, donate_argnums=donate)

  def metrics_to_host(self, metrics: Any) -> Any:
    """Replicated metrics → host floats."""
    host = self.unreplicate(metrics)
    return jax.tree_util.tree_map(lambda x: np.asarray(x).item(), host)


def _parallel_problems(config) -> List[str]:
  # The device count is checked against the machine by `validate` (it needs the devices).
  return config_fields.choice(config, "parallel", BACKENDS)


# How the step runs over devices and processes: every local device, one process by default.
PARALLEL_FIELDS = config_fields.ConfigFields(
    "parallel",
    defaults={"parallel": "pmap", "num_devices": 0, "distributed.enabled": False,
              "distributed.coordinator_address": None, "distributed.num_processes": None,
              "distributed.process_id": None},
    check=_parallel_problems)
