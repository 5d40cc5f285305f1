"""A two-layer GCN on a k-nearest-neighbour graph of the digits, 10 labelled per class.

Every digit of ``dataset.digits`` (the bundled 1,797 8×8 digits, or the 5,000 MNIST digits
with ``'mnist_5k'``) is a node with its pixels as features, joined to its ``neighbours``
nearest digits; training sees ``labels_per_class`` labels per class, and the test split is
every other node. ``dataset.rewire`` moves that fraction of the same-class edges to digits of
other classes (the graph where neighbours mostly disagree); ``--config.model.name=node_mlp``
is the graph-blind baseline on the same features and labels.
"""

import ml_collections

from configs import gcn_karate


def get_config() -> ml_collections.ConfigDict:
  config = gcn_karate.node_config("digits_knn", "gcn")
  config.dataset.digits = "sklearn_digits"
  config.dataset.neighbours = 10
  config.dataset.labels_per_class = 10
  config.dataset.label_seed = 0
  config.dataset.rewire = 0.0
  config.dataset.rewire_seed = 0
  config.model.hidden = (64,)
  config.model.dropout_rate = 0.5
  return config
