"""A run's records in its workdir: checks before anything is written, strict JSON, metrics.

* ``check_workdir``: the workdir can hold this run (a directory that can be created or
  written, and not holding a run of another config), checked before anything is written.
* ``strict_json``: values as strict JSON (a non-finite float becomes ``null`` with the
  reason beside it), so ``json.loads``, ``jq`` and pandas read every file.
* ``JsonlWriter``: ``metrics.jsonl``, one strict-JSON object per logged step;
  ``keep_steps_up_to`` drops the records of steps a resumed run will log again.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any, Dict, List, Tuple

from clu import metric_writers

from bagtricks import paths

# Fields that say how a run is executed, not what it computes: a run may be resumed with
# other values (another data mirror, more frequent logs, another device count or backend).
OPERATIONAL_FIELDS = ("dataset.data_dir", "log_every_steps", "eval_every_epochs",
                      "checkpoint_every_steps", "keep_checkpoints", "num_devices", "parallel",
                      "distributed")


class WorkdirError(ValueError):
  """The workdir cannot hold this run (not a directory, not writable, another config's run)."""


def _flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
  if isinstance(tree, dict):
    flat = {}
    for key, value in tree.items():
      flat.update(_flatten(value, f"{prefix}{key}."))
    return flat
  return {prefix[:-1]: tree}


def config_differences(saved: dict, config) -> List[Tuple[str, Any, Any]]:
  """``(field, saved value, new value)`` for every field the two configs disagree on.

  Fields only one of them has (added to the defaults later, say) and ``OPERATIONAL_FIELDS``
  are not compared.
  """
  old = _flatten(saved)
  new = _flatten(json.loads(config.to_json_best_effort()))
  return [(k, old[k], new[k]) for k in sorted(set(old) & set(new))
          if old[k] != new[k] and not k.startswith(OPERATIONAL_FIELDS)]


def check_workdir(workdir: str, config, probe_writes: bool = True) -> None:
  """Raises ``WorkdirError`` unless ``workdir`` can hold a run of ``config``; writes nothing.

  ``probe_writes`` tries to create a local directory and a file in it (both removed again):
  one process of a multi-process run does it, so that none removes what another is
  probing. A remote workdir (``gs://...``) is checked for another config's run only; its
  permissions show at the first write.
  """
  if not paths.is_remote(workdir):
    check_local_directory(workdir, probe_writes)
  saved = paths.join(workdir, "config.json")
  if paths.exists(saved):
    differences = config_differences(json.loads(paths.read_text(saved)), config)
    if differences:
      shown = "; ".join(f"config.{k} was {old!r} there, {new!r} now"
                        for k, old, new in differences[:5])
      more = f" (and {len(differences) - 5} more)" if len(differences) > 5 else ""
      raise WorkdirError(f"--workdir={workdir} holds a run of another config: {shown}{more}. "
                         "Use a new --workdir, or the config that run used (its "
                         "config.json).")


def check_local_directory(workdir: str, probe_writes: bool, flag: str = "--workdir") -> None:
  """Raises ``WorkdirError`` (naming ``flag``) unless the local directory ``workdir`` exists
  or can be created, and (``probe_writes``) can be written; leaves nothing behind."""
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f"{flag}={workdir} is a file, not a directory; give a directory "
                       "(it is created if missing).")
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise WorkdirError(f"{flag}={workdir} cannot be created: {existing} is a file; give a "
                       "directory path.")
  try:
    if probe_writes:
      _probe_writable(path, existing)
  except OSError as e:
    raise WorkdirError(f"{flag}={workdir} cannot be written ({e.strerror or e}); give a "
                       "directory you can write to.") from e


def _probe_writable(path: str, existing: str) -> None:
  # Creates the missing directories and a temporary file in them, then removes both: raises
  # OSError where the run could not write, leaves nothing behind where it could.
  os.makedirs(path, exist_ok=True)
  try:
    with tempfile.TemporaryFile(dir=path):
      pass
  finally:
    created = path
    while created != existing:
      os.rmdir(created)
      created = os.path.dirname(created)


def strict_json(value: Any) -> Any:
  """``value`` with every non-finite float of a dict replaced by ``None`` and
  ``<key>_nonfinite`` set to ``'nan'``, ``'inf'`` or ``'-inf'`` beside it."""
  if isinstance(value, dict):
    out = {}
    for key, item in value.items():
      if isinstance(item, float) and not math.isfinite(item):
        out[key] = None
        out[f"{key}_nonfinite"] = repr(item)
      else:
        out[key] = strict_json(item)
    return out
  if isinstance(value, (list, tuple)):
    return [None if isinstance(v, float) and not math.isfinite(v) else strict_json(v)
            for v in value]
  return value


def write_json(path: str, value: Any) -> None:
  """Writes ``strict_json(value)``, indented; refuses anything that is not strict JSON."""
  paths.write_text(path, json.dumps(strict_json(value), indent=2, allow_nan=False))


class JsonlWriter(metric_writers.MetricWriter):
  """Appends one JSON object per line to ``metrics.jsonl`` (easy to read with pandas or jq).

  A writer of our own because clu ships none that writes a plain-text file: its writers are
  TensorBoard (``SummaryWriter``), logging and in-memory ones. The ablation runner and users
  read the curves from this file without TensorFlow. Only scalars are recorded; images, texts
  and the like go to TensorBoard alone.
  """

  def __init__(self, path: str):
    self._file = paths.AppendOnlyFile(path)

  def write_scalars(self, step: int, scalars) -> None:
    record = strict_json({"step": int(step), **{k: float(v) for k, v in scalars.items()}})
    self._file.append((json.dumps(record, allow_nan=False) + "\n").encode())

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.flush()


def read_metrics(workdir: str) -> List[Dict[str, float]]:
  """The records of ``workdir/metrics.jsonl``, one dict per logged step, in file order."""
  text = paths.read_text(paths.join(workdir, "metrics.jsonl"))
  return [json.loads(line) for line in text.splitlines() if line.strip()]


def keep_steps_up_to(path: str, last_step: int) -> None:
  """Drops the records after ``last_step`` from a ``metrics.jsonl`` (a resumed run logs them
  again); nothing happens when the file does not exist."""
  if not paths.exists(path):
    return
  lines = paths.read_text(path).splitlines(keepends=True)
  kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= last_step]
  if len(kept) != len(lines):
    paths.write_text(path, "".join(kept))
