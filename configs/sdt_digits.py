"""Soft Decision Tree on the digits, trained on the hard labels (Frosst & Hinton 2017).

The paper's MNIST tree has depth 8 (94.45 % trained directly); the 8x8 digits use the same
depth. Inner nodes are σ(β(x·w + b)) over the 64 normalized pixels, leaves softmax
distributions; the loss is the path-weighted leaf cross-entropy plus the balancing penalty
(λ = 0.1, halved per level, α a running average over 2^depth-proportional windows).
"""

import ml_collections

from configs import default as default_lib


def get_config() -> ml_collections.ConfigDict:
  config = default_lib.get_config()
  config.task = "soft_tree"
  config.dataset.train_pp = "normalize"  # The paper trains on plain images.
  config.model = ml_collections.ConfigDict()
  config.model.name = "sdt"
  config.model.depth = 8
  config.model.inverse_temperature = 1.0
  config.soft_tree = ml_collections.ConfigDict()  # The task's balancing penalty.
  config.soft_tree.penalty_strength = 0.1
  config.soft_tree.penalty_window = 1.0
  config.optimizer.name = "adamw"
  config.optimizer.base_lr = 0.01
  config.optimizer.base_batch_size = 64
  config.optimizer.weight_decay = 0.0
  config.schedule.warmup_epochs = 0.0
  config.batch_size = 64
  config.num_epochs = 60
  config.log_every_steps = 100
  config.eval_every_epochs = 0.0
  config.checkpoint_every_steps = 500
  return config
