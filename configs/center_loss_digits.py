"""Git loss (Calefati et al. 2018) on the digits with a 2-D feature layer, for pictures.

The default recipe's ResNet-18-D (width 1/4) with a linear feature layer of width 2 before the
classifier, as the papers' MNIST figures; the loss is softmax cross-entropy + λ_c·center loss
+ λ_g·push term with the Git loss paper's λ_c = 0.01 and λ_g = 0.1 (``push_weight=0`` is the
center loss of Wen et al. 2016 alone; both 0 is softmax alone). The centers (α = 0.5) are the
task state. Batch augmentations (mixup, CutMix) stay off: the centers follow the labels.
"""

import ml_collections

from configs import default as default_lib


def get_config() -> ml_collections.ConfigDict:
  config = default_lib.get_config()
  config.task = "center_loss"
  config.model.feature_dim = 2
  config.center_loss = ml_collections.ConfigDict()
  config.center_loss.center_weight = 0.01  # λ_c (Calefati et al. 2018).
  config.center_loss.push_weight = 0.1     # λ_g; 0 = center loss alone.
  config.center_loss.center_alpha = 0.5    # α of the center update (Wen et al. 2016).
  config.eval_every_epochs = 0.0
  return config
