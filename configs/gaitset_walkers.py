"""GaitSet (Chao et al., AAAI 2019) on the generated walkers, by CASIA-B's protocol.

124 walkers (``gait_walkers``): the first 74 train, the last 50 are the test people, every
one in NM 1–6, BG 1–2 and CL 1–2 at the 11 views, 16 frames of 32×22 per sequence (CASIA-B:
64×44). The paper's model at half width (channels 16, 32, 64; CASIA-B: 32, 64, 128), max set
pooling, MGP and HPM at scales 1, 2, 4, 8 (64-row silhouettes add 16): 30 strips of 128
(CASIA-B: 62 of 256). The paper's training: the batch-all triplet loss per strip, margin 0.2,
P×K = 8 people × 8 sequences (CASIA-B: 8 × 16), training sets of random frames (8 here, 30
there), Adam without weight decay. Its 1e-4 for 80,000 steps is 1e-3 for 6 epochs (762 steps) with a
cosine decay here, for a CPU budget. The test sets hold every frame of a sequence.
"""

import ml_collections
from ml_collections import config_dict

from configs import gcn_karate


def get_config() -> ml_collections.ConfigDict:
  config = gcn_karate.graph_config("gait_walkers", "gaitset", batch_size=64,
                                   eval_batch_size=128, num_epochs=24)
  config.task = "gait"
  with config.ignore_type():
    config.num_epochs = 6.0
  config.dataset.identities = 124
  config.dataset.test_identities = 50
  config.dataset.frames = 16
  config.dataset.height = 32
  config.dataset.width = 22
  config.dataset.generator_seed = 0
  config.dataset.views = tuple(range(0, 181, 18))
  config.dataset.set_size = 8
  config.dataset.eval_frames = 0  # Every frame.
  config.dataset.classes_per_batch = 8  # P; K = batch_size / P.
  config.model.embedding_dim = 128
  config.model.channels = (16, 32, 64)
  config.model.scales = (1, 2, 4, 8)
  config.model.set_pooling = "max"
  config.triplet = ml_collections.ConfigDict()
  config.triplet.margin = 0.2
  config.optimizer.base_lr = 1e-3
  config.schedule.name = "cosine"
  config.schedule.warmup_epochs = 0.5
  config.log_every_steps = 50
  config.eval_every_epochs = 0.0
  config.checkpoint_every_steps = 500
  config.dataset.data_dir = config_dict.placeholder(str)
  return config
