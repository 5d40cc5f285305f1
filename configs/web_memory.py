"""Learning from web data with a self-organizing memory (Tu et al., CVPR 2020), on web digits.

``web_digits``: 300 scenes per web label, 48×48, the 5,000 MNIST digits scaled to 14–20 px
among fainter clutter, 40 % label noise (half another digit, half none); each scene's regions
are a 3×3 grid of 24×24 crops and the whole image, resized to 16×16. Batches of 16 bags × 4
scenes × 10 regions, 60 epochs (2,760 steps). A ResNet-18-D (width 1/16, small stem) with a
64-wide feature layer embeds every region (``region_encoder``); the ``web_bags`` task weighs
them by an 8×8 memory after 5 epochs of uniform weights, and learns from the bags.
``--config.web_bags.pooling`` = ``mean`` or ``max`` are the memory-less multi-instance
baselines, ``whole_image`` (with ``--config.dataset.regions=whole
--config.dataset.region_side=48``) plain cross-entropy on whole images.
"""

import ml_collections
from ml_collections import config_dict

from configs import default as default_lib


def get_config() -> ml_collections.ConfigDict:
  config = default_lib.get_config()
  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "web_digits"
  config.dataset.data_dir = config_dict.placeholder(str)
  config.dataset.train_split = "train"
  config.dataset.eval_split = "test"
  config.dataset.digits = "mnist_5k"
  config.dataset.per_class = 300
  config.dataset.noise_fraction = 0.4
  config.dataset.canvas = 48
  config.dataset.digit_size = (14, 20)
  config.dataset.regions = "grid3_whole"
  config.dataset.region_side = 16
  config.dataset.test_digit_size = 17
  config.dataset.bag_size = 4
  config.dataset.generator_seed = 0
  config.model = ml_collections.ConfigDict()
  config.model.name = "region_encoder"
  config.model.backbone = ml_collections.ConfigDict()
  config.model.backbone.name = "resnet18d"
  config.model.backbone.width_multiplier = 0.0625
  config.model.backbone.small_stem = True
  config.model.backbone.feature_dim = 64
  config.model.backbone.conv_algorithm = "auto"
  config.task = "web_bags"
  config.web_bags = ml_collections.ConfigDict()
  config.web_bags.pooling = "memory"
  config.web_bags.scores = "both"
  config.web_bags.grid = 8
  config.web_bags.learning_rate = (0.5, 0.01)  # η, decaying as σ does.
  config.web_bags.width = (4.0, 0.5)
  config.web_bags.warmup_epochs = 5.0
  config.batch_size = 16  # Bags.
  config.optimizer.base_batch_size = 16
  config.optimizer.base_lr = 0.1
  config.optimizer.weight_decay = 5e-4
  config.schedule.warmup_epochs = 1.0
  with config.ignore_type():
    config.num_epochs = 60.0
  config.eval_batch_size = 256
  config.log_every_steps = 20
  config.eval_every_epochs = 0.0
  config.checkpoint_every_steps = 500
  return config
