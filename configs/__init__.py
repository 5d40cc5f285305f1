"""Training configs: ``get_config()`` files, installed with the package.

``config_path('default')`` is the file path of a config shipped here, for commands that take
``--config=<file>`` (it works from any directory, also after a non-editable install).
"""

import os


def config_path(name: str) -> str:
  """The path of ``configs/<name>.py``."""
  return os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".py")
