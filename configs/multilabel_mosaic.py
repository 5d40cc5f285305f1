"""Multi-label digit mosaics with hidden labels, trained with partial-BCE (Durand et al. 2019).

16×16 mosaics of 2–4 digits (``digits_mosaic``: 4,000 train, 1,000 test, in memory), 70 % of
each training mosaic's 10 labels hidden (3 known per mosaic); the default recipe's
ResNet-18-D (width 1/4) with 10 sigmoid outputs. ``multilabel.loss`` is ``'partial_bce'``,
``'known_bce'`` (BCE on the known labels) or ``'full_bce'`` (every label, the oracle); the
metric is the test split's mAP.
"""

import ml_collections

from configs import default as default_lib


def get_config() -> ml_collections.ConfigDict:
  config = default_lib.get_config()
  config.task = "multilabel"
  config.dataset.name = "digits_mosaic"
  config.dataset.image_size = 16
  config.dataset.hidden_fraction = 0.7
  config.dataset.num_train = 4000
  config.dataset.num_test = 1000
  config.multilabel = ml_collections.ConfigDict()
  config.multilabel.loss = "partial_bce"
  config.num_epochs = 20
  config.schedule.warmup_epochs = 2.0
  config.eval_every_epochs = 0.0
  return config
