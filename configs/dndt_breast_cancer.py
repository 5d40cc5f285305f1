"""DNDT forest on breast cancer Wisconsin (Yang et al. 2018, Table 2: 94.9 %).

30 features: a single tree would have 2^30 leaves, so the paper's forest of 10 trees × 10
random features (1,024 leaves each), probabilities averaged.
"""

from configs import dndt_iris


def get_config():
  config = dndt_iris.get_config()
  config.dataset.name = "sklearn_breast_cancer"
  config.model.num_trees = 10
  config.model.features_per_tree = 10
  return config
