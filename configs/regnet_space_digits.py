"""The RegNet design-space study at toy scale: random RegNetX and RegNetY on the digits.

``python -m bagtricks.studies.design_space --config=configs/regnet_space_digits.py`` samples
``design_space.num_models`` networks from each design space (Radosavovic et al. 2020, §3: d,
w_0, w_a, w_m, g, b drawn at random, kept only within the FLOP regime), trains each with the
default digits recipe for a short schedule, and plots each space's error EDF. The ranges are the
paper's scaled to 8x8 images: at most 16 blocks, widths from 8, a 16-channel stride-1 stem,
and a FLOP regime of 0.3-0.6 M multiply-adds per image (the paper's is 360-400 M at 224 px).
"""

import ml_collections

from configs import default as default_lib


def get_config() -> ml_collections.ConfigDict:
  config = default_lib.get_config()
  # The generic RegNet; the runner fills in each sampled design's fields.
  config.model.name = "regnet"
  config.model.width_multiplier = 1.0
  config.model.stem_width = 16
  config.model.depth = 8
  config.model.w0 = 16
  config.model.wa = 16.0
  config.model.wm = 2.0
  config.model.group_width = 8
  config.model.bottleneck_ratio = 1.0
  config.model.se_ratio = 0.0

  config.num_epochs = 20
  config.schedule.warmup_epochs = 2.0
  config.eval_every_epochs = 0.0  # Only the final error counts.
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000

  config.design_space = ml_collections.ConfigDict()
  config.design_space.num_models = 5  # Per space (the paper: 100 to 500).
  config.design_space.seed = 0
  config.design_space.spaces = ("RegNetX", "RegNetY")  # Y: SE with ratio 0.25.
  config.design_space.depth = (4, 16)
  config.design_space.w0 = (8, 48)
  config.design_space.wa = (4.0, 48.0)
  config.design_space.wm = (1.5, 3.0)
  config.design_space.group_widths = (1, 2, 4, 8, 16)
  config.design_space.bottleneck_ratios = (1.0, 2.0, 4.0)
  config.design_space.num_stages = (3, 4)
  config.design_space.flop_range = (0.3e6, 0.6e6)
  config.design_space.num_classes = 10  # For the FLOP count of the head.
  return config
