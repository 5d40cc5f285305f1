"""One path layer for every file a run or command reads or writes: local paths and `gs://`.

Cloud TPU runs keep their workdirs in Cloud Storage buckets. Every record of a run (config,
metrics, summary, TensorBoard events, rules, pictures), the study outputs, and the paths given
to Orbax (checkpoints, `init_from`, a distillation teacher) go through these functions, which
are `etils.epath` (the layer Orbax and TFDS use: `gs://` through `tf.io.gfile`, local paths
through `os`), so a workdir may be a bucket without a mounted directory. Local paths behave as
they always did.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from typing import Iterator, List, Union

from etils import epath

PathLike = Union[str, os.PathLike]


class WriteError(RuntimeError):
  """A file of the run could not be written (a full disk, a directory made read-only)."""


def path(p: PathLike) -> epath.Path:
  """`p` as an `epath.Path` (local or remote)."""
  return epath.Path(p)


def absolute(p: PathLike) -> str:
  """A local path made absolute (``~`` expanded); a remote one as it is."""
  if is_remote(p):
    return os.fspath(p)
  return os.path.abspath(os.path.expanduser(os.fspath(p)))


def join(*parts: PathLike) -> str:
  """The parts joined, as a string (`gs://bucket/a` + `b` → `gs://bucket/a/b`)."""
  return os.fspath(epath.Path(*parts))


def is_remote(p: PathLike) -> bool:
  """Whether `p` names a remote filesystem (`gs://`, `s3://`, ...)."""
  return "://" in os.fspath(p)


def exists(p: PathLike) -> bool:
  return epath.Path(p).exists()


def isdir(p: PathLike) -> bool:
  return epath.Path(p).is_dir()


def makedirs(p: PathLike) -> None:
  """Creates the directory `p` and its parents (nothing if it exists)."""
  epath.Path(p).mkdir(parents=True, exist_ok=True)


def listdir(p: PathLike) -> List[str]:
  """The names in directory `p`, sorted."""
  return sorted(child.name for child in epath.Path(p).iterdir())


def read_text(p: PathLike) -> str:
  return epath.Path(p).read_text()


def write_text(p: PathLike, text: str) -> None:
  """Writes `text` to `p` whole: a reader sees the old or the new file, never a part."""
  write_bytes(p, text.encode())


def write_bytes(p: PathLike, data: bytes) -> None:
  """Writes `data` to `p` whole: a reader sees the old or the new file, never a part.

  Written beside it and moved over it (a replace is atomic on a local filesystem; on Cloud
  Storage an object is only visible once its upload is complete).
  """
  target = epath.Path(p)
  partial = target.parent / f".{target.name}.partial"
  partial.write_bytes(data)
  partial.replace(target)


def open_file(p: PathLike, mode: str = "r"):
  """`open` for local and remote paths (`mode` as for `open`)."""
  return epath.Path(p).open(mode)


def remove(p: PathLike) -> None:
  """Removes the file `p` if it exists."""
  target = epath.Path(p)
  if target.exists():
    target.unlink()


def remove_tree(p: PathLike) -> None:
  """Removes the directory `p` and everything in it, if it exists."""
  target = epath.Path(p)
  if target.exists():
    target.rmtree()


def move_tree(source: PathLike, destination: PathLike) -> None:
  """Moves the directory `source` to `destination` (its parent is created; an existing
  `destination` is replaced)."""
  src, dst = epath.Path(source), epath.Path(destination)
  dst.parent.mkdir(parents=True, exist_ok=True)
  remove_tree(dst)
  if not is_remote(source):
    os.replace(src, dst)
    return
  for file in src.rglob("*"):  # Object stores have no directory rename: copy, then remove.
    if file.is_file():
      (dst / file.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
      file.copy(dst / file.relative_to(src))
  src.rmtree()


@contextlib.contextmanager
def local_copy_for_writing(p: PathLike) -> Iterator[str]:
  """A local file path to write, copied to `p` (local or remote) when the block ends.

  For libraries that only write local files (matplotlib's `savefig`).
  """
  if not is_remote(p):
    yield os.fspath(p)
    return
  with tempfile.TemporaryDirectory() as directory:
    local = os.path.join(directory, epath.Path(p).name)
    yield local
    epath.Path(p).write_bytes(epath.Path(local).read_bytes())


class AppendOnlyFile:
  """A file a run keeps appending to (metrics, events), local or remote.

  A local file is appended to at every ``append``, so a killed run keeps what it wrote.
  Cloud Storage objects cannot be appended to: a remote file is read once, kept in memory
  and uploaded whole at most every ``upload_every_seconds`` and at ``flush``.
  """

  def __init__(self, p: PathLike, upload_every_seconds: float = 60.0):
    self.path = os.fspath(p)
    self._remote = is_remote(p)
    self._upload_every_seconds = upload_every_seconds
    self._uploaded_at = time.time()
    self._written = (epath.Path(p).read_bytes() if self._remote and exists(p) else b"")
    self._pending: List[bytes] = []

  def append(self, data: bytes) -> None:
    self._pending.append(data)
    if not self._remote or time.time() - self._uploaded_at >= self._upload_every_seconds:
      self.flush()

  def flush(self) -> None:
    """Makes everything appended so far readable."""
    if not self._pending:
      return
    data = b"".join(self._pending)
    self._pending.clear()
    if self._remote:
      self._written += data
      write_bytes(self.path, self._written)
      self._uploaded_at = time.time()
    else:
      with open(self.path, "ab") as f:
        f.write(data)
