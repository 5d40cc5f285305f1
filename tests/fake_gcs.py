"""A fake Cloud Storage for tests: ``gs://bucket/key`` objects kept as files under a local root.

``install(root)`` makes every ``gs://`` path of the process land under ``root``, through the
same two layers a real bucket goes through: ``etils.epath`` (the project's ``bagtricks.paths``:
records, TensorBoard events, configs, pictures) and Orbax's TensorStore key-value store (the
checkpoints' arrays). It keeps the object-store rules that differ from a disk: an object cannot
be opened for appending, and nothing reaches it through ``open()`` or ``os`` on the ``gs://``
string (that would write a local ``gs:`` directory, which the tests look for). Orbax sees a
``gs://`` path, so it also uses its Cloud Storage ways (commit marker files instead of a
rename).

Run as a script, it installs itself and then runs the training command:

  python tests/fake_gcs.py ROOT [train.py flags ...]
"""

from __future__ import annotations

import os
import runpy
import sys
from typing import Iterator

from etils.epath import backend as backend_lib
from etils.epath import gpath

_SCHEME = "gs://"


class FakeBucketBackend:
  """An ``etils.epath`` backend serving ``gs://`` paths from files under ``root``."""

  def __init__(self, root: str):
    self.root = os.path.abspath(root)
    self._os = backend_lib.os_backend

  def local(self, path) -> str:
    path = os.fspath(path)
    if not path.startswith(_SCHEME):
      raise ValueError(f"not a gs:// path: {path}")
    return os.path.join(self.root, path[len(_SCHEME):])

  def remote(self, local: str) -> str:
    return _SCHEME + os.path.relpath(local, self.root)

  def open(self, path, mode):
    if "a" in mode or "+" in mode:
      raise OSError(f"{path}: Cloud Storage objects cannot be appended to or updated in place")
    local = self.local(path)
    if "w" in mode:  # A bucket has no directories: an object may be written anywhere.
      os.makedirs(os.path.dirname(local), exist_ok=True)
    return self._os.open(local, mode)

  def exists(self, path) -> bool:
    return self._os.exists(self.local(path))

  def isdir(self, path) -> bool:
    return self._os.isdir(self.local(path))

  def listdir(self, path) -> list:
    return self._os.listdir(self.local(path))

  def glob(self, path) -> list:
    return [self.remote(p) for p in self._os.glob(self.local(path))]

  def walk(self, top, *, top_down=True, on_error=None) -> Iterator:
    for root, dirs, files in self._os.walk(self.local(top), top_down=top_down,
                                           on_error=on_error):
      yield self.remote(root), dirs, files

  def makedirs(self, path, *, exist_ok=False, mode=0o777) -> None:
    self._os.makedirs(self.local(path), exist_ok=exist_ok, mode=mode)

  def mkdir(self, path, *, exist_ok=False, mode=0o777) -> None:
    self._os.mkdir(self.local(path), exist_ok=exist_ok, mode=mode)

  def rmtree(self, path) -> None:
    self._os.rmtree(self.local(path))

  def remove(self, path) -> None:
    self._os.remove(self.local(path))

  def rename(self, path, dst) -> None:
    self._os.rename(self.local(path), self.local(dst))

  def replace(self, path, dst) -> None:
    self._os.replace(self.local(path), self.local(dst))

  def copy(self, path, dst, overwrite: bool) -> None:
    self._os.copy(self.local(path), self.local(dst), overwrite=overwrite)

  def stat(self, path):
    return self._os.stat(self.local(path))


def install(root: str) -> FakeBucketBackend:
  """Serves every ``gs://`` path of this process from ``root`` (see the module docstring)."""
  # pylint: disable=protected-access,g-import-not-at-top
  from orbax.checkpoint._src.path import gcs_utils

  fake = FakeBucketBackend(root)
  real_backend = gpath._GPath._backend

  def backend(self):
    return fake if self._uri_scheme == "gs" else real_backend.fget(self)

  gpath._GPath._backend = property(backend)

  def kvstore_for_gcs(ckpt_path: str) -> dict:
    # TensorStore's file driver where its gcs driver would go; the trailing slash as Orbax
    # gives its kvstack specs.
    local = fake.local(ckpt_path.rstrip("/"))
    return {"driver": "file", "path": local + ("/" if ckpt_path.endswith("/") else "")}

  gcs_utils.get_kvstore_for_gcs = kvstore_for_gcs
  # A bucket with a flat namespace, the default (Orbax asks the Cloud Storage API otherwise).
  gcs_utils.is_hierarchical_namespace_enabled = lambda path: False
  gcs_utils.rmtree = lambda path: fake.rmtree(os.fspath(path))
  return fake


if __name__ == "__main__":
  install(sys.argv[1])
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, repo)
  sys.argv = [os.path.join(repo, "train.py"), *sys.argv[2:]]
  runpy.run_path(sys.argv[0], run_name="__main__")
