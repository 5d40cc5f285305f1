"""Khan (2018)'s landmark pipeline on the generated faces: an MLP on 189 landmark features.

The ``face_landmarks`` source (``bagtricks.data.face_landmarks``, the ``opencv`` extra): the
people of ``data.faces`` drawn at 96×96, each face found by a Haar cascade after a Gaussian
low-pass and CLAHE, its 18 fiducial points located by Sobel edges and Shi–Tomasi corners in
the regions of the eyes, brows, nose and lips, and their pairwise distances and angles in
the eyes' frame taken as a table (extracted once and cached in the data dir). Train and test
are split by identity (30 unseen people). ``--config.model.hidden='()'`` is the linear model
on the same features.
"""

import ml_collections
from ml_collections import config_dict

from configs import dndt_iris


def get_config() -> ml_collections.ConfigDict:
  config = dndt_iris.tabular_config("face_landmarks")
  config.dataset = ml_collections.ConfigDict({
      "name": "face_landmarks", "data_dir": config_dict.placeholder(str),
      "train_split": "train", "eval_split": "test",
      # 150 people (the last 30 the test split), each in each expression 4 times, at 96×96.
      "identities": 150, "test_identities": 30, "per_expression": 4, "image_size": 96,
      "generator_seed": 0})
  config.model.name = "mlp"
  config.model.hidden = (128,)
  config.optimizer.base_lr = 1e-3
  config.optimizer.base_batch_size = 64
  config.optimizer.weight_decay = 1e-4
  config.batch_size = 64
  config.eval_batch_size = 256
  config.num_epochs = 60
  config.eval_every_epochs = 20.0
  return config
