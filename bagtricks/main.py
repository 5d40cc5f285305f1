r"""The training command: flags → ``train.train_and_evaluate(config, workdir)``.

  python train.py                                    # configs/default.py, the embedded default
  python train.py --config=configs/cifar10_resnet18d.py --config.num_epochs=10
  bagtricks-train --config=path/to/my_config.py      # the same command, installed

--workdir defaults to runs/<config file name>; rerunning the same command resumes from the
latest checkpoint there (a finished run is reported and left as it is; --evaluate_again
evaluates it again). The final metrics are written to <workdir>/summary.json and printed as the
last line. A bad command line, config, workdir, dataset or checkpoint stops the run before
anything is compiled or written, with one line on stderr and exit status 2; a diverging run
stops with exit status 1, its latest checkpoint the last finite one; a file that cannot be
written (a full disk) stops it with 74, the last finished checkpoint intact; a workdir another
run is writing is refused with 75; SIGTERM saves and exits with 143. A damaged checkpoint is
refused (status 2); --skip_damaged_checkpoints moves it aside and resumes from the newest
intact one. --verbosity (-v) shows the libraries' own log lines too.
"""

import json
import os
import sys

from bagtricks import cli

cli.quiet_native_logs()  # Before TensorFlow is imported.

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import configs  # noqa: E402
from bagtricks import train  # noqa: E402

_DEFAULT_CONFIG = configs.config_path("default")
cli.exit_on_bad_config_flag(sys.argv, "config", _DEFAULT_CONFIG)
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG,
    "Training config file (a get_config() module); fields overridable as --config.field=value.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory; default runs/<config name>.")
_EVALUATE_AGAIN = flags.DEFINE_bool(
    "evaluate_again", False, "For a finished run: evaluate it again and add the results to its "
    "records (without it, a finished run is reported and left as it is).")
_SKIP_DAMAGED = flags.DEFINE_bool(
    "skip_damaged_checkpoints", False, "Move a damaged latest checkpoint aside (to "
    "<workdir>/checkpoints_damaged) and resume from the newest intact one; without it, a "
    "damaged checkpoint stops the run.")


def _default_workdir() -> str:
  config_file = config_flags.get_config_filename(flags.FLAGS["config"])
  name = os.path.splitext(os.path.basename(config_file.split(":")[0]))[0]
  return os.path.join("runs", name)


def main(argv):
  cli.exit_on_positional_arguments(argv)
  cli.configure_logging()
  workdir = _WORKDIR.value or _default_workdir()
  summary = cli.run_reporting_errors(train.train_and_evaluate, _CONFIG.value, workdir,
                                     evaluate_again=_EVALUATE_AGAIN.value,
                                     skip_damaged_checkpoints=_SKIP_DAMAGED.value)
  print(json.dumps(summary), flush=True)


def run() -> None:
  """The ``bagtricks-train`` console command."""
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
