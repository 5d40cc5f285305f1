"""A small Vision-Transformer-style classifier on the bundled digits, with the image tricks.

The encoder-only use of the Transformer's blocks (``models.PatchTransformerClassifier``): each
8×8 digit is cut into 16 patches of 2×2 pixels, embedded linearly, given learned positions and
passed through 3 pre-LN encoder blocks (d_model 64, 4 heads, d_ff 128), then mean-pooled and
classified. It trains on the same data, pipeline and refinements as the ResNet-18-D default:
label smoothing 0.1, mixup α = 0.2, linear warm-up then cosine decay; the optimizer is AdamW
with weight decay on the kernels only, as Transformers are usually trained.
"""

import ml_collections

from configs import default as default_lib


def get_config() -> ml_collections.ConfigDict:
  config = default_lib.get_config()
  config.model = ml_collections.ConfigDict()
  config.model.name = "patch_transformer"
  config.model.patch_size = 2
  config.model.d_model = 64
  config.model.num_heads = 4
  config.model.d_ff = 128
  config.model.num_layers = 3
  config.model.dropout_rate = 0.1
  config.model.position_encoding = "learned"
  config.model.pre_layer_norm = True

  config.label_smoothing = 0.1
  config.augment.mixup_alpha = 0.2
  config.optimizer.name = "adamw"
  config.optimizer.base_lr = 4e-3  # For 256 examples; scaled linearly with batch_size.
  config.optimizer.weight_decay = 0.05
  config.schedule.name = "cosine"
  config.schedule.warmup_epochs = 5.0
  # A Transformer has no convolution's locality prior and needs longer training than the
  # ResNet's 40 epochs.
  config.num_epochs = 200
  config.eval_every_epochs = 50.0
  return config
