"""Fast training on XLA:CPU: convolutions, max pooling, oneDNN kernels and host memory.

Everything that makes a train step faster on the CPU, and nothing else, lives here; the models
reach it through one hook, the `conv_algorithm` they take (`Conv`, `max_pool`):

* `conv`: `conv_general_dilated` and `Conv` (`flax.linen.Conv`) with the algorithms
  'native' (XLA's own convolution, the default), 'auto' (the CPU algorithms below in
  computations lowered for the CPU, XLA's own elsewhere), 'blocked' and 'onednn';
* `pooling`: `max_pool` with a gradient XLA:CPU computes fast;
* `onednn`: oneDNN's convolutions as XLA FFI calls, from an extension compiled on first use
  where the `onednn` extra is installed (`extension`);
* `host_memory`: `retain_freed_memory()`, glibc settings that keep XLA:CPU's freed step
  buffers for reuse.

The fast algorithms are numerically XLA's up to float rounding and have the same parameters;
they support `jit`, `grad`, `vmap`, `pmap`, `shard_map` and `jax.export`, not forward-mode
differentiation (`jax.jvp`, `jax.hessian`), so modules built with their defaults never use
them, and the trainer turns them on by config.
"""

from models.xla_cpu.conv import CONV_ALGORITHMS
from models.xla_cpu.conv import Conv
from models.xla_cpu.conv import check_algorithm
from models.xla_cpu.conv import conv_general_dilated
from models.xla_cpu.conv import resolve_algorithm
from models.xla_cpu.pooling import max_pool
