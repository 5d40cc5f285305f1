"""Channel pruning of the small SSD (``configs/ssd_digits.py``): L1, DCP and LCP.

``python -m bagtricks.studies.pruning_study`` trains the detector of ``ssd_digits`` (the
config without ``pruning``), prunes every basic block's inner channels of its ResNet-18-D
trunk by each fraction with each method (``bagtricks.pruning``,
``bagtricks.channel_selection``), rebuilds the smaller detector and fine-tunes it through the
train loop from the pruned weights (``init_from``) for ``pruning.finetune_epochs``.
"""

import ml_collections

from configs import ssd_digits


def get_config() -> ml_collections.ConfigDict:
  config = ssd_digits.get_config()
  p = config.pruning = ml_collections.ConfigDict()
  p.methods = ("l1", "dcp", "lcp")
  p.fractions = (0.3, 0.5, 0.7)
  p.seeds = (0,)  # Selection and fine-tuning seeds; the detector is trained once.
  p.layers = ()  # Block names (stage{s}_block{b}); () prunes every block.
  p.calibration_images = 256  # Training canvases the selection sees.
  p.calibration_batch = 64
  p.finetune_epochs = 1.5  # 750 steps.
  p.finetune_lr = 5e-4
  # DCP / LCP (channel_selection.SelectionSettings).
  p.aux_steps = 300
  p.aux_lr = 1e-3
  p.aux_hidden = 64
  p.roi_bins = 2
  p.positives = 16
  p.negatives = 48
  p.rounds = 4
  p.steps_per_round = 10
  p.weight_lr = 0.01
  p.aux_weight = 1.0
  return config
