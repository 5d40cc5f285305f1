"""What a user runs works after a non-editable ``pip install .``, from any directory."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from conftest import REPO


def _run(cmd, cwd, **kwargs):
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
                        **kwargs)
  assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-3000:])
  return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """A fresh venv with the project installed from a wheel (not editable).

  Its dependencies are this environment's: a ``.pth`` line adds our site-packages to its path.
  The ``.pth`` files inside an added path are not processed, so the editable install of the
  checkout stays invisible there, and the project resolves to the installed copy.
  """
  root = tmp_path_factory.mktemp("install")
  venv = root / "venv"
  _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=str(root))
  python = venv / "bin" / "python"
  site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
              cwd=str(root)).stdout.strip()
  with open(os.path.join(site, "dependencies.pth"), "w") as f:
    f.write(sysconfig.get_paths()["purelib"] + "\n")
  # Built from a copy: setuptools writes build/ and *.egg-info/ beside the sources.
  source = root / "source"
  shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
      ".venv", ".git", "runs", "build", "*.egg-info", "__pycache__"))
  _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
        "--no-cache-dir", str(source)], cwd=str(root))
  elsewhere = root / "elsewhere"
  elsewhere.mkdir()
  return {"python": str(python), "bin": str(venv / "bin"), "site": site, "cwd": str(elsewhere)}


@pytest.mark.slow
def test_installed_package_is_the_one_imported(installed):
  proc = _run([installed["python"], "-c",
               "import bagtricks, configs, models; print(bagtricks.__file__); "
               "print(configs.__file__); print(models.__file__)"], cwd=installed["cwd"])
  for path in proc.stdout.split():
    assert path.startswith(installed["site"]), path


@pytest.mark.slow
def test_installed_train_command_runs_a_packaged_config(installed):
  config = os.path.join(installed["site"], "configs", "dndt_iris.py")
  proc = _run([os.path.join(installed["bin"], "bagtricks-train"), f"--config={config}",
               "--config.num_epochs=5", "--workdir=run"], cwd=installed["cwd"])
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert summary["steps"] == 15 and summary["test_examples"] == 30
  assert os.path.exists(os.path.join(installed["cwd"], "run", "rules.txt"))


@pytest.mark.slow
def test_installed_runners_work_from_any_directory(installed, digits_data_dir):
  # The ablation runner with its default config (the packaged configs/default.py).
  proc = _run([installed["python"], "-m", "bagtricks.studies.ablate", "--steps=baseline",
               "--workdir=ablation", "--config.num_epochs=1", "--config.batch_size=128",
               "--config.model.width_multiplier=0.125", "--config.schedule.warmup_epochs=0.5",
               f"--config.dataset.data_dir={digits_data_dir}"], cwd=installed["cwd"])
  assert "ResNet (v1), step decay" in proc.stdout
  assert os.path.exists(os.path.join(installed["cwd"], "ablation", "ablation.md"))
  # The comparison runner imports the packaged configs it trains.
  proc = _run([installed["python"], "-c",
               "from bagtricks.studies import compare_trees; "
               "print(compare_trees.DNDT_CONFIGS['sklearn_iris'].get_config().model.name)"],
              cwd=installed["cwd"])
  assert proc.stdout.split()[-1] == "dndt"


def test_only_the_onednn_extra_brings_onednn_and_nothing_compiles_at_install():
  """A plain install and the GPU/TPU/Cloud Storage/text extras fetch no oneDNN wheel; the
  `onednn` extra (and `test`, which covers it) does. Nothing is compiled at install."""
  import importlib.metadata
  import tomllib
  from packaging.requirements import Requirement

  requirements = [Requirement(r) for r in importlib.metadata.requires("bagtricks")]
  linux = {"platform_system": "Linux", "platform_machine": "x86_64"}

  def names(extra):
    return {r.name for r in requirements
            if r.marker is None or r.marker.evaluate({**linux, "extra": extra})}

  for extra in ("", "cuda12", "tpu", "gcs", "text"):
    assert not [n for n in names(extra) if n.startswith("onednn")], extra
  for extra in ("onednn", "test"):
    assert {"onednn-cpu-gomp", "onednn-devel-cpu-gomp"} <= names(extra), extra
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    assert tomllib.load(f)["build-system"]["requires"] == ["setuptools>=68"]
  with open(os.path.join(REPO, "setup.py")) as f:
    assert "ext_modules" not in f.read()
