"""Pair-wise Circle loss (Sun et al. 2020) on the digits with P×K batches, scored by recall@k.

The default recipe's ResNet-18-D (width 1/4) with a 64-wide linear feature layer whose
embeddings are compared by cosine similarity over the whole global batch of P = 8 classes ×
K = 8 examples (``digits_pk``, in memory, no augmentation). m = 0.25, γ = 256 (the paper's
face-recognition setting; 80 is its fine-grained-retrieval setting). Retrieval recall@1 and
@5 on the test split: every test digit queries the others.
"""

import ml_collections

from configs import default as default_lib


def get_config() -> ml_collections.ConfigDict:
  config = default_lib.get_config()
  config.task = "circle_loss"
  config.dataset.name = "digits_pk"
  config.dataset.classes_per_batch = 8  # P; K = batch_size / P.
  config.batch_size = 64
  config.model.feature_dim = 64
  config.circle = ml_collections.ConfigDict()
  config.circle.form = "pair"  # 'class': class-level, needs config.model.cosine_head.
  config.circle.margin = 0.25
  config.circle.gamma = 256.0
  config.eval_every_epochs = 0.0
  return config
