"""What the command-line tools share: quiet logs, readable flag errors, exit statuses.

* ``quiet_native_logs()`` keeps TensorFlow's C++ notices (oneDNN, CPU features) out of the
  log; it must run before TensorFlow is imported, so the commands call it first.
* ``configure_logging()`` shows the run's own INFO lines (progress, evaluation, checkpoints)
  and, from other libraries, errors only: no backend probing, no dataset-writing chatter, no
  progress bars, no library warnings. ``--verbosity`` (``-v``) on the command line turns the
  libraries' messages back on.
* ``parse_flags`` turns a bad command line (a missing or broken config file, an override of
  a field the config does not have, a value of the wrong type) into one line on stderr and
  exit status 2 (a usage error), instead of a traceback.
"""

from __future__ import annotations

import difflib
import errno
import importlib.util
import inspect
import logging as pylogging
import os
import sys
import tempfile
import threading
import warnings
from typing import Any, Callable, List, Optional, Sequence

USAGE_ERROR = 2
# Python packages whose INFO lines are the run's own.
_OWN_PACKAGES = ("/bagtricks/", "/models/", "/configs/")


def verbosity_requested(argv: Sequence[str]) -> bool:
  """Whether the command line sets absl's ``--verbosity`` / ``-v``."""
  return any(a in ("-v", "--v", "--verbosity") or a.startswith(("-v=", "--v=", "--verbosity="))
             for a in argv[1:])


# TensorFlow's C++ start-up notices: absl's pre-initialization warning, the oneDNN notice and
# the CPU-feature ones. TF_CPP_MIN_LOG_LEVEL does not reach them (they are logged before
# TensorFlow's logging is set up).
_STARTUP_NOISE = ("All log messages before absl::InitializeLog()", "oneDNN custom operations",
                  "cpu_feature_guard", "This TensorFlow binary is optimized",
                  "To enable the following instructions")


def quiet_native_logs(argv: Optional[Sequence[str]] = None) -> None:
  """Imports TensorFlow with its C++ start-up notices dropped, unless ``--verbosity`` is given.

  Call before anything imports TensorFlow: its notices are written to the process's stderr
  while it loads, so they are caught there (file descriptor 2) and every other line is passed
  on. ``TF_CPP_MIN_LOG_LEVEL`` (unless already set) quiets its later INFO and WARNING lines.
  """
  if verbosity_requested(sys.argv if argv is None else argv) or "tensorflow" in sys.modules:
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    finally:
      os.dup2(saved, 2)
      os.close(saved)
    captured.seek(0)
    for line in captured.read().decode(errors="replace").splitlines(keepends=True):
      if not any(noise in line for noise in _STARTUP_NOISE):
        sys.stderr.write(line)


class _OwnLinesAndErrors(pylogging.Filter):
  """Passes the run's own records at any level and other libraries' errors."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    path = record.pathname.replace(os.sep, "/")
    if "/orbax/" in path:  # Its failures reach the run as exceptions, reported in one line.
      return False
    if record.levelno >= pylogging.ERROR:
      return True
    own = any(p in path for p in _OWN_PACKAGES) or path.endswith("/train.py")
    return own and "/orbax/" not in path


def configure_logging(verbose: Optional[bool] = None) -> None:
  """INFO progress lines for the commands; third-party noise only when ``verbose``.

  Args:
    verbose: show other libraries' INFO and WARNING lines, progress bars and warnings; None:
      whether ``--verbosity`` is on the command line (then absl's level is the user's).
  """
  from absl import logging  # pylint: disable=import-outside-toplevel
  if verbose is None:
    verbose = verbosity_requested(sys.argv)
  if verbose:
    if not verbosity_requested(sys.argv):
      logging.set_verbosity(logging.INFO)
    return
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_OwnLinesAndErrors())
  warnings.filterwarnings("ignore")
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  tfds.disable_progress_bar()


def _flag_value(argv: Sequence[str], name: str) -> Optional[str]:
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


class _ArgumentNotTaken(Exception):
  """The config file's get_config() takes no argument, but the flag gives one."""


def _load_config(path: str):
  file, _, arg = path.partition(":")
  spec = importlib.util.spec_from_file_location("_checked_config", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not arg:
    return module.get_config()
  try:
    inspect.signature(module.get_config).bind(arg)
  except TypeError as e:
    raise _ArgumentNotTaken(str(e)) from e
  return module.get_config(arg)


def _override_problem(config, argv: Sequence[str], flag: str) -> Optional[str]:
  """An override ``--<flag>.a.b=...`` of a field the config does not have, if any."""
  for arg in argv[1:]:
    if not arg.startswith(f"--{flag}."):
      continue
    dotted = arg[len(flag) + 3:].split("=", 1)[0]
    node, walked = config, flag
    for part in dotted.split("."):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if part not in keys:
        close = difflib.get_close_matches(part, keys, n=1)
        hint = f" Did you mean {walked}.{close[0]}?" if close else ""
        where = f"{walked} has the fields {sorted(keys)}." if keys else f"{walked} has no fields."
        return (f"{arg.split('=', 1)[0]}: the config has no field {walked}.{part}.{hint} "
                f"{where}")
      node, walked = node[part], f"{walked}.{part}"
  return None


def config_file_problem(argv: Sequence[str], flag: str = "config",
                        default: Optional[str] = None) -> Optional[str]:
  """What is wrong with the ``--<flag>`` config file and its overrides, or None.

  Checks that the file exists, compiles, that its ``get_config()`` runs, and that every
  ``--<flag>.field=value`` names a field the config has.
  """
  path = _flag_value(argv, flag) or default
  if path is None:
    return None
  file = path.partition(":")[0]
  shipped = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "configs")
  if not os.path.isfile(file):
    return (f"--{flag}={path}: no such file. Give the path of a get_config() file, e.g. one "
            f"of the shipped configs in {shipped}.")
  try:
    with open(file) as f:
      compile(f.read(), file, "exec")
  except SyntaxError as e:
    return f"--{flag}={path}: {e.msg} at line {e.lineno} of {file}; fix the file."
  try:
    config = _load_config(path)
  except _ArgumentNotTaken:
    arg = path.partition(":")[2]
    return (f"--{flag}={path}: get_config() in {file} takes no argument, so ':{arg}' cannot "
            f"be passed to it; drop ':{arg}' (or give get_config a parameter).")
  except Exception as e:  # Anything the user's file raises: report it in one line.
    return (f"--{flag}={path}: get_config() failed ({type(e).__name__}: {e}); fix the "
            "file.")
  return _override_problem(config, argv, flag)


def exit_on_bad_config_flag(argv: Sequence[str], flag: str = "config",
                            default: Optional[str] = None) -> None:
  """Exit status 2 with one line if ``config_file_problem`` finds something.

  Call before ``config_flags.DEFINE_config_file``, which reads the file and the overrides on
  the command line as soon as it is defined.
  """
  problem = config_file_problem(argv, flag, default)
  if problem is not None:
    print(f"error: {problem}", file=sys.stderr, flush=True)
    sys.exit(USAGE_ERROR)


def exit_on_positional_arguments(argv: Sequence[str]) -> None:
  """Exit status 2 with one line if the command line has arguments that are not flags."""
  if len(argv) > 1:
    print(f"error: unexpected arguments {list(argv[1:])}; every setting is a flag, e.g. "
          "--config.num_epochs=10 (see --helpshort).", file=sys.stderr, flush=True)
    sys.exit(USAGE_ERROR)


def parse_flags(argv: List[str]) -> List[str]:
  """absl's flag parsing, with a bad value reported in one line and exit status 2."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    problem = str(e)
  except Exception as e:  # A value the config cannot take.
    problem = f"{type(e).__name__}: {e}"
  print(f"error: {problem}", file=sys.stderr, flush=True)
  sys.exit(USAGE_ERROR)


DIVERGED = 1
WRITE_FAILED = 74  # sysexits' EX_IOERR
WORKDIR_BUSY = 75  # sysexits' EX_TEMPFAIL: try again once the other run has ended.
PREEMPTED = 143


def run_reporting_errors(fn: Callable[..., Any], *args, usage_errors: tuple = (), **kwargs):
  """``fn(*args, **kwargs)``, with a known failure reported in one line and an exit status.

  Bad config, workdir, data or checkpoint (and ``usage_errors``): ``error: ...`` and status 2.
  Divergence: ``error: training diverged ...`` and status 1. A file that cannot be written
  (a full disk, a read-only directory): the path and status 74. A workdir another run holds:
  status 75. SIGTERM: the resume hint and status 143 (the checkpoint is saved).
  """
  # pylint: disable=import-outside-toplevel
  from bagtricks import checkpoint, data, divergence, paths, records, train, validate
  from bagtricks import workdir_lock
  _drop_closed_event_loop_tracebacks()
  try:
    return fn(*args, **kwargs)
  except (validate.ConfigError, records.WorkdirError, data.DataError,
          checkpoint.CheckpointError, *usage_errors) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(USAGE_ERROR)
  except divergence.Diverged as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(DIVERGED)
  except train.Preempted as e:
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(PREEMPTED)
  except workdir_lock.WorkdirBusyError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(WORKDIR_BUSY)
  except paths.WriteError as e:
    _exit_now(f"error: {e}", WRITE_FAILED)
  except OSError as e:
    if e.errno not in _WRITE_ERRNOS:
      raise
    _exit_now(f"error: could not write {e.filename or 'a file of the run'} ({e.strerror}); "
              "free space or make it writable, then run the same command again to resume "
              "from the latest checkpoint.", WRITE_FAILED)


def _exit_now(message: str, status: int) -> None:
  # After a failed save, Orbax's signalling threads wait minutes for the save's other parts
  # (which never start) and the interpreter would wait for them at exit. Everything of the
  # run is written or discarded by now, so the process ends at once.
  print(message, file=sys.stderr, flush=True)
  sys.stdout.flush()
  pylogging.shutdown()
  os._exit(status)  # pylint: disable=protected-access


_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS,
                 errno.EFBIG)


def _drop_closed_event_loop_tracebacks() -> None:
  """Keeps TensorStore's callbacks into Orbax's finished event loops off stderr.

  After a failed checkpoint write, TensorStore completes its outstanding futures on an
  asyncio loop Orbax has already closed, and prints a ``RuntimeError: Event loop is closed``
  traceback for each (dozens, around the run's one-line error) straight to ``sys.stderr``.
  Those tracebacks are dropped; every other line passes unchanged.
  """
  if not isinstance(sys.stderr, _TracebackFilter):
    sys.stderr = _TracebackFilter(sys.stderr, "RuntimeError: Event loop is closed")


class _TracebackFilter:
  """A text stream that drops the tracebacks whose exception line is ``last_line``.

  Threads print their tracebacks a piece at a time, interleaved with each other's, so each
  thread's partial line and traceback are kept apart.
  """

  def __init__(self, stream, last_line: str):
    self._stream = stream
    self._last_line = last_line
    self._threads = threading.local()  # .partial: str; .block: the traceback read, or None
    self._lock = threading.Lock()

  def _state(self):
    if not hasattr(self._threads, "partial"):
      self._threads.partial, self._threads.block = "", None
    return self._threads

  def write(self, text: str) -> int:
    state = self._state()
    lines = (state.partial + text).split("\n")
    state.partial = lines.pop()
    out = "".join(self._line(state, line + "\n") for line in lines)
    if out:
      with self._lock:
        self._stream.write(out)
    return len(text)

  def _line(self, state, line: str) -> str:
    # What to write of ``line``: itself, nothing (inside a traceback), or a whole traceback.
    if state.block is None:
      if line.startswith("Traceback (most recent call last):"):
        state.block = [line]
        return ""
      return line
    state.block.append(line)
    if line[:1].isspace():
      return ""
    block, state.block = state.block, None  # The exception line ends a traceback.
    return "" if line.strip() == self._last_line else "".join(block)

  def flush(self) -> None:
    state = self._state()
    if state.block is None and state.partial:
      with self._lock:
        self._stream.write(state.partial)
      state.partial = ""
    self._stream.flush()

  def __getattr__(self, name):
    return getattr(self._stream, name)
