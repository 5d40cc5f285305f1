"""Shallow Neural Decision Forest (sNDF) on a table; iris unless overridden.

Kontschieder et al. (2015)'s sNDF: a single fully connected layer over the standardized
features gives the decision functions of a forest (10 trees of depth 4, each on 15 of 64
units); leaves by the fixed-point update. Run on another table with
``--config.dataset.name=sklearn_wine`` or ``sklearn_breast_cancer``.
"""

import ml_collections

from configs import dndt_iris


def get_config() -> ml_collections.ConfigDict:
  config = dndt_iris.tabular_config("sklearn_iris")
  config.model.name = "ndf"
  config.model.trunk = ml_collections.ConfigDict({"name": "mlp", "hidden": ()})
  config.model.num_decision_units = 64
  config.model.num_trees = 10
  config.model.depth = 4
  config.model.leaf_learning = "fixed_point"
  config.model.feature_seed = 0
  config.forest = ml_collections.ConfigDict()
  config.forest.leaf_iterations = 20
  config.forest.leaf_update_batches = 0
  return config
