"""Graph classification on networkx's atlas of the 1,252 graphs of 1 to 7 nodes.

Each graph is labelled by a structural property (``dataset.property``: ``'has_cycle'``,
``'bipartite'``, ``'connected'``, or ``'triangles'``: none, one, more than one), node
features are the degree one-hot, 30 % of each class held out (``split_seed``). The default
model is a GGNN with the paper's graph-level output (eq. 7); ``--config.model.name=gcn`` (or
``gat``, ``graphsage``, ``node_mlp``) with ``--config.model.readout=graph`` compares.
"""

import ml_collections

from configs import gcn_karate


def get_config() -> ml_collections.ConfigDict:
  config = gcn_karate.graph_config("graph_atlas", "ggnn", batch_size=64, eval_batch_size=128,
                                   num_epochs=100)
  config.dataset.property = "has_cycle"
  config.dataset.test_fraction = 0.3
  config.dataset.split_seed = 0
  config.dataset.max_nodes = 0  # The padded size; 0: the largest graph (7 nodes).
  config.model.hidden = 32
  config.model.steps = 5
  config.model.readout = "graph"
  return config
