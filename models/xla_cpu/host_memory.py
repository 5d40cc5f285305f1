"""Keeping freed host memory for reuse when XLA runs on the CPU.

XLA:CPU allocates each execution's temporary buffer with ``malloc`` and frees it when the
execution ends; a ResNet-50-D train step at 224², batch 8, needs one 1.2 GB buffer. glibc
serves an allocation that large with a fresh ``mmap`` and returns it to the kernel with
``munmap`` when it is freed, so every step page-faults its whole working set back in: about
316,000 faults per step, some 150 ms of a 1.1 s step on the 2-core machine of README's Speed
section. (With JAX's asynchronous dispatch the buffer is allocated on a worker thread, whose
glibc arena maps anything over 64 MiB with ``mmap`` whatever the settings.)

``retain_freed_memory`` makes the buffer come back from the heap instead:
  - JAX runs single-device computations on the calling thread
    (``jax_cpu_enable_async_dispatch=False``), so their buffers come from glibc's main arena;
  - the main arena serves large blocks from its heap, not ``mmap`` (``M_MMAP_MAX=0``);
  - and returns freed heap to the kernel only when more than 2 GiB of it lies free at the
    heap's top (``M_TRIM_THRESHOLD``, the most ``mallopt`` accepts).

The costs: the process holds on to up to 2 GiB of freed memory, and Python waits for each
single-device computation instead of queueing the next one. For steps that need hundreds of MB
the faults cost more (ResNet-50-D's step took 824 ms instead of 1,120 ms); for small ones the
lost queueing does (the default digits job trained 8-12 % slower). And the settings are
process-wide. So they are opt-in: the trainer's ``config.host_memory='retain'`` and the
benchmarks' ``--host_memory=retain`` call this; importing a module of bagtricks never does. On
GPU and TPU the step's buffers live in device memory and the dispatch setting does not apply.
"""

import ctypes
import ctypes.util
import platform
import sys
from typing import Optional

from absl import logging
import jax
from jax._src import xla_bridge  # backends_are_initialized has no public alias.

HOST_MEMORY_MODES = ("system", "retain")

# glibc's mallopt parameters (malloc.h) and the largest value an int parameter takes.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_MAX_TRIM_THRESHOLD = 2**31 - 1


def glibc() -> Optional[ctypes.CDLL]:
  """The C library as a ctypes handle on Linux with glibc; None elsewhere."""
  if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
    return None
  return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def retain_freed_memory() -> bool:
  """Sets up the process so XLA:CPU's freed buffers are reused instead of unmapped.

  Call it before JAX starts its backends (the dispatch setting is read when JAX creates its CPU
  client); called later, only the allocator settings take effect and a warning says so.

  Returns:
    Whether glibc took the allocator settings (False off Linux/glibc, where only the dispatch
    setting is made).
  """
  if xla_bridge.backends_are_initialized():
    logging.warning("retain_freed_memory: JAX's backends are already running, so its CPU "
                    "dispatch stays asynchronous; call it before the first JAX computation.")
  else:
    jax.config.update("jax_cpu_enable_async_dispatch", False)
  libc = glibc()
  if libc is None:
    return False
  return (libc.mallopt(_M_MMAP_MAX, 0) == 1
          and libc.mallopt(_M_TRIM_THRESHOLD, _MAX_TRIM_THRESHOLD) == 1)
