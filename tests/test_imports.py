"""The pure-JAX pieces import without TensorFlow, so other JAX code can use them alone."""

import subprocess
import sys

from conftest import REPO

PURE_JAX = ["models", "bagtricks.optim", "bagtricks.precision", "bagtricks.losses",
            "bagtricks.augment", "bagtricks.som_memory", "bagtricks.boxes",
            "bagtricks.detection_eval", "bagtricks.pruning",
            "bagtricks.steps", "bagtricks.parallel", "bagtricks.state", "bagtricks.tasks",
            "bagtricks.hooks"]


def test_pure_jax_modules_import_without_tensorflow():
  code = (
      "import sys\n"
      "for name in ('tensorflow', 'tensorflow_datasets'):\n"
      "  sys.modules[name] = None  # any import of them now raises ImportError\n"
      f"import importlib\nfor m in {PURE_JAX!r}:\n  importlib.import_module(m)\n"
      "print('ok')\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "ok"
