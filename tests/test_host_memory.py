"""host_memory.retain_freed_memory: XLA:CPU's freed buffers come back without page faults.

Each case runs in its own Python process: the settings are process-wide. The reference is the
kernel's own count of minor page faults (``getrusage``), against the pages a buffer spans.
"""

import json
import subprocess
import sys

import pytest

from conftest import REPO

# A jitted computation whose 128 MiB output is allocated by XLA:CPU on every call and freed when
# deleted: the page faults of calls 2 to 17, per page of that buffer.
_FAULTS_PER_PAGE = """
import json, resource, sys
from models.xla_cpu import host_memory
retained = host_memory.retain_freed_memory() if sys.argv[1] == "retain" else None
import jax, jax.numpy as jnp
x = jnp.zeros((32, 1024, 1024), jnp.float32)
add_one = jax.jit(lambda a: a + 1.0)
pages = x.nbytes // resource.getpagesize()
assert float(add_one(x)[31, 1023, 1023]) == 1.0
faults = []
for _ in range(16):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  y = add_one(x).block_until_ready()
  y.delete()  # Frees its buffer now.
  faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / pages)
print(json.dumps({"faults_per_page": faults, "retained": retained,
                  "async": jax.config.read("jax_cpu_enable_async_dispatch")}))
"""


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=300)


def _faults(mode: str) -> dict:
  proc = _run(_FAULTS_PER_PAGE, mode)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
@pytest.mark.slow
def test_retained_buffers_are_reused_without_page_faults():
  system = _faults("system")
  retain = _faults("retain")
  # glibc's defaults: the 128 MiB buffer is mmap'd afresh and every page faults in again.
  assert min(system["faults_per_page"]) > 0.9, system
  assert system["async"] is True
  # Retained: a freed buffer is a later call's, already mapped. glibc's free lists settle on a
  # few places for it within the first calls (now and then one more later), after which the
  # calls fault in nothing.
  assert retain["retained"] is True
  assert sum(retain["faults_per_page"]) <= 6, retain
  assert sorted(retain["faults_per_page"])[8] < 0.05, retain
  assert retain["async"] is False


def test_called_after_jax_started_warns_and_keeps_async_dispatch():
  code = ("import jax, jax.numpy as jnp\n"
          "jnp.ones(3).block_until_ready()\n"
          "from models.xla_cpu import host_memory\n"
          "host_memory.retain_freed_memory()\n"
          "print(jax.config.read('jax_cpu_enable_async_dispatch'))\n")
  proc = _run(code)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip().splitlines()[-1] == "True"
  assert "call it before the first JAX computation" in proc.stderr


_TRAIN = """
import json, sys
sys.path.insert(0, "tests")
from conftest import tiny_config
import jax
from bagtricks import train
config = tiny_config(sys.argv[1])
config.host_memory = sys.argv[2]
config.num_devices = 1
summary = train.train_and_evaluate(config, sys.argv[3])
print(json.dumps({"test_loss": summary["test_loss"], "steps": summary["steps"],
                  "async": jax.config.read("jax_cpu_enable_async_dispatch")}))
"""


@pytest.mark.slow
def test_config_retain_trains_the_same_run_with_synchronous_dispatch(digits_data_dir, tmp_path):
  results = {}
  for mode in ("system", "retain"):
    proc = _run(_TRAIN, digits_data_dir, mode, str(tmp_path / mode))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "call it before the first JAX computation" not in proc.stderr
    results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
  assert results["system"]["async"] is True and results["retain"]["async"] is False
  # The same program on the same data: only where buffers come from differs.
  assert results["retain"]["steps"] == results["system"]["steps"] > 0
  assert results["retain"]["test_loss"] == results["system"]["test_loss"]
