r"""The training command: flags → ``train.train_and_evaluate(config, workdir)``.

  python train.py                                    # configs/default.py, the embedded default
  python train.py --config=configs/cifar10_resnet18d.py --config.num_epochs=10
  bagtricks-train --config=path/to/my_config.py      # the same command, installed

--workdir defaults to runs/<config file name>; rerunning the same command resumes from the
latest checkpoint there. The final metrics are written to <workdir>/summary.json and printed as
the last line.
"""

import json
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

import configs
from bagtricks import checkpoint, data, train, validate

_CONFIG = config_flags.DEFINE_config_file(
    "config", configs.config_path("default"),
    "Training config file (a get_config() module); fields overridable as --config.field=value.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory; default runs/<config name>.")


def _default_workdir() -> str:
  config_file = config_flags.get_config_filename(flags.FLAGS["config"])
  name = os.path.splitext(os.path.basename(config_file.split(":")[0]))[0]
  return os.path.join("runs", name)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  train.configure_logging()
  workdir = _WORKDIR.value or _default_workdir()
  try:
    summary = train.train_and_evaluate(_CONFIG.value, workdir)
  except (validate.ConfigError, data.DataError, checkpoint.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except train.Preempted as e:
    print(str(e), file=sys.stderr)
    sys.exit(143)
  print(json.dumps(summary), flush=True)


def run() -> None:
  """The ``bagtricks-train`` console command."""
  app.run(main)


if __name__ == "__main__":
  run()
