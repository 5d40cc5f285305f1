"""DNDT forest on wine: 13 features, so the paper's random-subspace forest (> 12 features).

10 trees, each on 10 random features with one cut point (2^10 = 1,024 leaves per tree); the
trees' class probabilities are averaged.
"""

from configs import dndt_iris


def get_config():
  config = dndt_iris.get_config()
  config.dataset.name = "sklearn_wine"
  config.model.num_trees = 10
  config.model.features_per_tree = 10
  return config
