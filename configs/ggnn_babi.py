"""A gated graph neural network on GGNN's bAbI reasoning tasks, 50 training graphs.

Li et al. (2016), section 5.1: the stories of bAbI tasks 4, 15, 16, 18 and 19 as graphs
(``data.babi``, generated from ``dataset.seed``), the question marked in the node
annotations; 50 training examples as in the paper, in batches of 8 (a multiple of the device
count; the 2 left over change from epoch to epoch), 1,000 test examples of another seed.
``--config.dataset.task=`` picks the task; tasks 4, 15 and 16 are node selection, 18 and 19
a class per graph (``--config.model.readout=graph``).
"""

import ml_collections

from configs import gcn_karate


def get_config() -> ml_collections.ConfigDict:
  config = gcn_karate.graph_config("babi", "ggnn", batch_size=8, eval_batch_size=200,
                                   num_epochs=100)
  config.dataset.task = 4
  config.dataset.train_examples = 50
  config.dataset.test_examples = 1000
  config.dataset.seed = 0
  config.model.hidden = 16
  config.model.steps = 5
  config.model.readout = "select"
  return config
