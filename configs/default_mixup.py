"""The digits default with the paper's data-side refinements: label smoothing ε = 0.1, mixup α = 0.2.

Mixing is switched off for the last 4 of the 40 epochs so the network ends on clean images.
"""

from configs import default as default_lib


def get_config():
  config = default_lib.get_config()
  config.label_smoothing = 0.1
  config.augment.mixup_alpha = 0.2
  config.augment.mix_off_epochs = 4.0
  return config
