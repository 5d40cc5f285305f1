"""Multi-label digit mosaics with hidden labels, trained with partial-BCE (Durand et al. 2019).

16×16 mosaics of 2–4 digits (``digits_mosaic``: 2,000 train, 1,000 test, in memory), 70 % of
each training mosaic's 10 labels hidden (3 known per mosaic); the default recipe's
ResNet-18-D at width 1/8 (four times the pixels of a digit) with 10 sigmoid outputs, 20 epochs
at a base learning rate of 0.8 per 256 (0.4 at the batch of 128: the recipe's 0.1 leaves the
oracle at 0.64 mAP after 15 epochs). ``multilabel.loss`` is ``'partial_bce'``,
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
  config.dataset.num_train = 2000
  config.dataset.num_test = 1000
  config.multilabel = ml_collections.ConfigDict()
  config.multilabel.loss = "partial_bce"
  config.model.width_multiplier = 0.125
  config.optimizer.base_lr = 0.8
  config.num_epochs = 20
  config.schedule.warmup_epochs = 2.0
  config.eval_every_epochs = 0.0
  return config
