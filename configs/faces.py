"""The default recipe (ResNet-18-D, width 1/4, small-image stem) on the generated faces.

The ``faces`` source (``bagtricks.data.faces``): 48×48 grayscale faces of 150 generated people
in the 7 basic expressions, written once offline into a local TFDS dataset; the 30 test
people are never seen in training. Everything else is the default recipe, for a budget that
fits 3,360 training images of 36× the digits' pixels.
"""

import ml_collections

from configs import default as default_lib


def get_config() -> ml_collections.ConfigDict:
  config = default_lib.get_config()
  config.dataset.name = "faces"
  config.update_from_flattened_dict({"num_epochs": 15, "schedule.warmup_epochs": 2.0,
                                     "eval_every_epochs": 5.0, "checkpoint_every_steps": 200})
  return config
