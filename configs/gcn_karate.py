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


def graph_config(dataset: str, model: str, *, batch_size: int, eval_batch_size: int,
                 num_epochs: int, weight_decay: float = 0.0) -> ml_collections.ConfigDict:
  """The default turned into a graph run: no image fields, Adam at 0.01, constant, and the
  learning rate not scaled with the batch."""
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
  config.optimizer.weight_decay = weight_decay
  config.schedule.name = "constant"
  config.schedule.warmup_epochs = 0.0
  config.batch_size = config.optimizer.base_batch_size = batch_size
  config.eval_batch_size = eval_batch_size
  config.num_epochs = num_epochs
  config.log_every_steps = 50
  config.eval_every_epochs = 0.0
  config.checkpoint_every_steps = 1000
  return config


def node_config(dataset: str, model: str) -> ml_collections.ConfigDict:
  """Node classification on one graph, Kipf & Welling's recipe (200 full-batch steps, L2
  weight decay 5e-4). The batch is ``batch_size`` copies of the graph, the labelled nodes
  dealt out among them, so one step is one full-batch step. Every copy costs a whole forward
  pass and devices would only repeat it: one copy on one device. (``batch_size=n`` with
  ``num_devices=n`` takes the same full-batch step on n devices, each copy with its own
  dropout.)"""
  config = graph_config(dataset, model, batch_size=1, eval_batch_size=1, num_epochs=200,
                        weight_decay=5e-4)
  config.num_devices = 1
  return config


def get_config() -> ml_collections.ConfigDict:
  config = node_config("karate_club", "gcn")
  config.model.hidden = (16,)
  config.model.dropout_rate = 0.5
  return config
