"""Deep Neural Decision Forest head on the default ResNet-18-D trunk, on the digits.

Kontschieder et al. (2015): the trunk's last fully connected layer gives 128 decision
functions; 10 trees of depth 5 (32 leaves) each draw 31 of them at random. The leaf
distributions π are refit by the paper's fixed-point update (20 iterations over the whole
train split) before training and after every epoch, with the network fixed; everything else
is the default recipe and budget, so ``runs/default`` is the softmax-head baseline.
"""

import ml_collections

from configs import default as default_lib


def get_config() -> ml_collections.ConfigDict:
  config = default_lib.get_config()
  trunk = config.model  # The default ResNet-18-D, now producing decision functions.
  config.model = ml_collections.ConfigDict()
  config.model.name = "ndf"
  config.model.trunk = trunk
  config.model.num_decision_units = 128
  config.model.num_trees = 10
  config.model.depth = 5
  config.model.leaf_learning = "fixed_point"  # Or 'gradient': π = softmax(φ), learned jointly.
  config.model.feature_seed = 0
  config.forest = ml_collections.ConfigDict()
  config.forest.leaf_iterations = 20
  config.forest.leaf_update_batches = 0  # 0: the whole train split.
  return config
