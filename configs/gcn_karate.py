"""A two-layer GCN on Zachary's karate club (Kipf & Welling 2017's recipe).

Semi-supervised node classification: 34 members, one-hot node features, one labelled member
per faction (the instructor and the administrator); the test split is every other member.
The recipe is the paper's: 16 hidden units, dropout 0.5, Adam at 0.01, L2 weight decay 5e-4,
full-batch steps (one step per epoch), 200 epochs. ``graph_config`` is the shared base of the
graph configs (``gnn_digits``, ``ggnn_babi``, ``gnn_atlas``).
"""

import ml_collections
from ml_collections import config_dict

from configs import default as default_lib


def graph_config(dataset: str, model: str) -> ml_collections.ConfigDict:
  """The default turned into a graph run: no image fields, Adam, constant learning rate."""
  config = default_lib.get_config()
  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = dataset
  config.dataset.data_dir = config_dict.placeholder(str)
  config.dataset.train_split = "train"
  config.dataset.eval_split = "test"
  config.model = ml_collections.ConfigDict()
  config.model.name = model
  config.task = "graph"
  config.optimizer.name = "adam"
  config.optimizer.base_lr = 0.01
  config.optimizer.weight_decay = 5e-4
  config.schedule.name = "constant"
  config.schedule.warmup_epochs = 0.0
  config.batch_size = 8
  config.eval_batch_size = 8
  config.num_epochs = 200
  config.log_every_steps = 50
  config.eval_every_epochs = 0.0
  config.checkpoint_every_steps = 1000
  config.optimizer.base_batch_size = config.batch_size  # The learning rate is not scaled.
  return config


def on_one_graph(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` set for node classification on one graph: the batch is ``batch_size`` copies
  of the graph, the labelled nodes dealt out among them, so one step is one full-batch step.
  Every copy costs a whole forward pass and devices would only repeat it: one copy on one
  device. (``batch_size=n`` with ``num_devices=n`` takes the same full-batch step on n
  devices, each copy with its own dropout.)"""
  config.batch_size = config.eval_batch_size = config.optimizer.base_batch_size = 1
  config.num_devices = 1
  return config


def get_config() -> ml_collections.ConfigDict:
  config = on_one_graph(graph_config("karate_club", "gcn"))
  config.model.hidden = (16,)
  config.model.dropout_rate = 0.5
  return config
