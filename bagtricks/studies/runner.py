"""What every study command shares: its start, its flags, its table cells and its outputs.

A study module defines ``define_flags()`` and ``main()`` and ends with
``runner.run_command(main, define_flags, default_config=...)``: the config file and its
overrides are checked first (one line and exit status 2 when wrong), then the flags are defined
(only when the module runs as a command, so that two study modules can be imported side by
side), parsed, and ``main()`` runs with the run's own log lines. Its results go out through
``write_outputs`` (a markdown table, a JSON file and a picture in the workdir), with cells from
``mean_std``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, List, Optional, Sequence

import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

import configs
from bagtricks import cli
from bagtricks import paths


def run_command(main: Callable[[], None], define_flags: Callable[[], None],
                default_config: Optional[str] = None) -> None:
  """Runs a study as a command (``python -m bagtricks.studies.<name>``).

  Args:
    main: The study, called with no arguments once the flags are parsed.
    define_flags: Defines the study's flags.
    default_config: The shipped config ``--config`` defaults to (``configs/<name>.py``), for
      studies that take one.
  """
  if default_config is not None:
    cli.exit_on_bad_config_flag(sys.argv, "config", configs.config_path(default_config))
  define_flags()

  def run(argv):
    cli.exit_on_positional_arguments(argv)
    cli.configure_logging()
    main()

  app.run(run, flags_parser=cli.parse_flags)


def define_config_flag(default_config: str, help_text: str) -> None:
  """``--config``, a ``get_config()`` file defaulting to ``configs/<default_config>.py``."""
  config_flags.DEFINE_config_file("config", configs.config_path(default_config), help_text,
                                  lock_config=True)


def config_name() -> str:
  """The ``--config`` file's name without directory and extension, e.g. 'default'."""
  config_file = config_flags.get_config_filename(flags.FLAGS["config"])
  return os.path.splitext(os.path.basename(config_file.split(":")[0]))[0]


def numbers(flag: str, kind: Callable[[str], Any] = int) -> List[Any]:
  """The values of the list flag ``--<flag>`` as ``kind``; exit status 2 naming it if not."""
  try:
    return [kind(value) for value in flags.FLAGS[flag].value]
  except ValueError as e:
    usage_error(f"--{flag} must be a list of {kind.__name__} values ({e}).")


def names(flag: str, known: Sequence[str]) -> List[str]:
  """The values of the list flag ``--<flag>``, each one of ``known``; exit status 2 naming
  the flag if one is not or the list is empty."""
  chosen = list(flags.FLAGS[flag].value)
  if not chosen or set(chosen) - set(known):
    usage_error(f"--{flag}={','.join(chosen)} must name some of {list(known)}.")
  return chosen


def usage_error(message: str) -> None:
  """Ends the command with the one line ``error: <message>`` and exit status 2."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(cli.USAGE_ERROR)


def mean_std(values: Sequence[Optional[float]], scale: float = 1.0) -> str:
  """A study table's cell: ``mean ± std`` of ``values`` × ``scale`` over seeds, 2 decimals.

  One value is shown alone; ``None`` entries (runs that do not apply) are left out, and a cell
  with none left is ``–``.
  """
  kept = [scale * v for v in values if v is not None]
  if not kept:
    return "–"
  if len(kept) == 1:
    return f"{kept[0]:.2f}"
  return f"{np.mean(kept):.2f} ± {np.std(kept):.2f}"


def write_outputs(workdir: str, name: str, table: str, results: Any, started: float,
                  plot: Optional[Callable[[Any, str], None]] = None,
                  picture: Optional[str] = None) -> None:
  """Writes a study command's results into ``workdir`` (local or ``gs://``) and says so.

  ``<name>.md`` holds the markdown ``table``, ``<name>.json`` the ``results`` and, with
  ``plot``, ``plot(results, path)`` draws ``picture`` (default ``<name>.png``). The table is
  printed, then the files written and the seconds since ``started``.
  """
  paths.makedirs(workdir)
  written = [f"{name}.md", f"{name}.json"]
  paths.write_text(paths.join(workdir, written[0]), table)
  paths.write_text(paths.join(workdir, written[1]), json.dumps(results, indent=2))
  if plot is not None:
    written.append(picture or f"{name}.png")
    with paths.local_copy_for_writing(paths.join(workdir, written[-1])) as local:
      plot(results, local)
  print(table)
  print(f"Wrote {', '.join(paths.join(workdir, w) for w in written)} in "
        f"{time.time() - started:.0f} s.", flush=True)


def restored_run(workdir: str, info, config=None):
  """The finished run in ``workdir`` rebuilt and restored as a distillation teacher is
  (``distill.load_teacher``; ``config`` default its ``config.json``).

  Returns:
    The ``distill.TeacherHook``: ``model``, ``task`` and ``variables()``.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  from bagtricks import distill  # pylint: disable=g-import-not-at-top
  return distill.load_teacher(ml_collections.ConfigDict(
      {"teacher_workdir": workdir, "teacher_config": ""}), info, config=config)


def finished_run_model(config, workdir: str):
  """A finished run's model, restored from its checkpoint (as a distillation teacher's is).

  Returns:
    ``(source, apply, variables)``: the config's data source, ``apply(variables, inputs)``
    (jitted, ``train=False``) and the restored ``{'params', 'batch_stats', 'task_state'}``.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from bagtricks import data  # pylint: disable=g-import-not-at-top
  from bagtricks.steps import model_variables  # pylint: disable=g-import-not-at-top
  source = data.get_source(config)
  restored = restored_run(workdir, source.info())
  apply = jax.jit(lambda v, x: restored.model.apply(
      model_variables(v["params"], v["batch_stats"]), x, train=False))
  return source, apply, restored.variables()


def finished_run_outputs(config, workdir: str, split: Optional[str] = None):
  """A finished run's model (``finished_run_model``) applied to every example of ``split``
  (default the eval split) of ``config``'s dataset, in order.

  Yields:
    ``(outputs, batch, variables)`` per batch: the model's outputs (NumPy), the batch on one
    device (``mask`` > 0 marks its real examples) and the restored ``{'params',
    'batch_stats', 'task_state'}``.
  """
  import jax  # pylint: disable=g-import-not-at-top
  source, apply, variables = finished_run_model(config, workdir)
  input_key = source.info().input_key
  for batch in source.eval_batches(1, split=split):
    batch = {k: v[0] for k, v in batch.items()}
    outputs = jax.tree_util.tree_map(np.asarray, apply(variables, batch[input_key]))
    yield outputs, batch, variables
