"""One run at a time per workdir: a lock taken before anything is written, released on exit.

Two runs writing one workdir would interleave their metrics and race on every checkpoint. A
local workdir is locked with ``fcntl.flock`` on ``<workdir>/.lock``: the kernel releases it
when the process ends in any way (SIGKILL included), so a crashed run never leaves a stale
lock. Cloud Storage has no locks: there ``.lock`` is an object naming the host and process
that hold it, removed on exit; one left behind by a dead process of the same host is taken
over, one of another host is reported with its holder (delete it once that run is gone).
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Optional

from absl import logging

from bagtricks import paths

LOCK_NAME = ".lock"


class WorkdirBusyError(RuntimeError):
  """Another run holds the workdir."""


def _holder() -> dict:
  return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}


def _describe(holder: dict) -> str:
  since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
  return f"process {holder.get('pid')} on {holder.get('host')} (since {since})"


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's process: alive.
    return True
  return True


class WorkdirLock:
  """A context manager holding ``workdir``'s lock.

  Raises:
    WorkdirBusyError: another run holds it (on entering).
  """

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = paths.join(workdir, LOCK_NAME)
    self._file = None

  def __enter__(self) -> "WorkdirLock":
    paths.makedirs(self.workdir)
    if paths.is_remote(self.workdir):
      self._take_remote()
    else:
      self._take_local()
    return self

  def __exit__(self, *exc) -> None:
    if self._file is not None:
      self._file.close()  # Closing the descriptor releases the flock.
      self._file = None
    elif paths.is_remote(self.workdir):
      paths.remove(self.path)

  def _busy(self, holder: Optional[dict], extra: str = "") -> WorkdirBusyError:
    who = _describe(holder) if holder else "another process"
    return WorkdirBusyError(
        f"--workdir={self.workdir} is in use by {who}: one run at a time writes a workdir. "
        f"Wait for it to end, or give another --workdir.{extra}")

  def _take_local(self) -> None:
    import fcntl  # pylint: disable=import-outside-toplevel  # POSIX only.
    file = open(self.path, "a+")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      file.seek(0)
      try:
        holder = json.loads(file.read() or "null")
      except ValueError:
        holder = None
      file.close()
      raise self._busy(holder) from None
    file.seek(0)
    file.truncate()
    file.write(json.dumps(_holder()))
    file.flush()
    self._file = file

  def _take_remote(self) -> None:
    if paths.exists(self.path):
      try:
        holder = json.loads(paths.read_text(self.path))
      except ValueError:
        holder = {}
      same_host = holder.get("host") == socket.gethostname()
      if not same_host or _alive(int(holder.get("pid", -1))):
        raise self._busy(holder, f" If that run has ended, delete {self.path}.")
      logging.info("Taking over the lock %s of %s, which has ended.", self.path,
                   _describe(holder))
    paths.write_text(self.path, json.dumps(_holder()))
