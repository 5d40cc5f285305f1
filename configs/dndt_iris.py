"""Deep Neural Decision Tree on iris (Yang et al. 2018, Table 2: 100 % on Iris).

One tree over the 4 standardized features with one cut point each (2^4 = 16 leaves), τ = 0.1
as in the paper's code, trained with Adam. ``tabular_config`` is the shared base of the
tabular configs (DNDT and the neural decision forest).
"""

import ml_collections
from ml_collections import config_dict

from configs import default as default_lib


def tabular_config(dataset: str) -> ml_collections.ConfigDict:
  """The digits default turned into a small-table run: no image ops, Adam, constant lr."""
  config = default_lib.get_config()
  # A table's own fields only: the image fields of the digits default do not apply.
  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = dataset
  config.dataset.data_dir = config_dict.placeholder(str)
  config.dataset.train_split = "train"
  config.dataset.eval_split = "test"
  config.dataset.test_fraction = 0.2  # Stratified; standardization fitted on train only.
  config.dataset.split_seed = 0
  config.model = ml_collections.ConfigDict()
  config.optimizer.name = "adamw"
  config.optimizer.base_lr = 0.01
  config.optimizer.base_batch_size = 32
  config.optimizer.weight_decay = 0.0
  config.schedule.name = "cosine"
  config.schedule.warmup_epochs = 0.0
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_epochs = 150
  config.log_every_steps = 50
  config.eval_every_epochs = 0.0
  config.checkpoint_every_steps = 500
  return config


def get_config() -> ml_collections.ConfigDict:
  config = tabular_config("sklearn_iris")
  config.model.name = "dndt"
  config.model.num_cut = 1
  config.model.temperature = 0.1
  config.model.num_trees = 1
  config.model.features_per_tree = 0  # 0: every feature.
  config.model.ensemble = "average"
  config.model.feature_seed = 0
  config.model.max_leaves = 16384
  return config
