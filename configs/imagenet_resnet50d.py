"""The paper's full recipe (Table 6, last row): ResNet-50-D on ImageNet with every refinement.

Batch 1024, lr 0.1·b/256, 5 warm-up epochs, cosine decay, Nesterov, no bias decay, zero-γ,
bf16; label smoothing ε = 0.1 (§5.2); mixup α = 0.2 with 200 instead of 120 epochs (§5.4);
distillation with T = 20 from a ResNet-152-D teacher trained with the same recipe (§5.3).

Train the teacher first (configs/imagenet_resnet152d.py, default workdir
runs/imagenet_resnet152d), then this config; set --config.distill.enabled=False to train
without it.
"""

import os

from configs import default as default_lib


def get_config():
  config = default_lib.get_config()
  config.dataset.name = "imagenet2012"
  config.dataset.train_split = "train"
  config.dataset.eval_split = "validation"
  config.dataset.image_size = 224
  config.dataset.channels = 3
  # §2.1 and §5: random-resized crop (8-100 % area, 3/4-4/3 aspect), flip, brightness /
  # saturation / hue in [0.6, 1.4], PCA lighting N(0, 0.1), normalize; eval: short side to
  # 256, centre crop 224.
  config.dataset.train_pp = (
      "random_resized_crop(224)|flip_lr|color_jitter(0.4, 0.4, 0.4)|lighting(0.1)|normalize")
  config.dataset.eval_pp = "resize_short_center_crop(224, crop_fraction=0.875)|normalize"
  config.dataset.shuffle_buffer = 16_384
  config.dataset.cache = False

  config.model.name = "resnet50d"
  config.model.width_multiplier = 1.0
  config.model.small_stem = False
  config.model.zero_init_last = True
  config.model.kernel_init = "xavier_uniform"  # The paper's baseline initialization.

  config.optimizer.name = "sgd"
  config.optimizer.base_lr = 0.1  # × 1024/256 = 0.4.
  config.optimizer.base_batch_size = 256
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.weight_decay = 1e-4

  config.schedule.name = "cosine"
  config.schedule.warmup_epochs = 5.0
  config.num_epochs = 200  # §5.4: mixup needs longer training (120 without it).
  config.batch_size = 1024
  config.eval_batch_size = 1024

  config.precision = "bf16"
  config.label_smoothing = 0.1  # §5.2.
  config.label_smoothing_mode = "paper"
  config.augment.mixup_alpha = 0.2  # §5.4.

  config.distill.enabled = True  # §5.3.
  config.distill.teacher_workdir = "runs/imagenet_resnet152d"
  config.distill.teacher_config = os.path.join(os.path.dirname(__file__),
                                               "imagenet_resnet152d.py")
  config.distill.temperature = 20.0
  config.distill.soft_weight = 0.5

  config.log_every_steps = 100
  config.eval_every_epochs = 5.0
  config.checkpoint_every_steps = 2000
  config.keep_checkpoints = 3
  return config
