"""The paper's full recipe: ResNet-50-D on ImageNet, batch 1024, lr 0.1·b/256, 5 warm-up epochs, cosine over 120 epochs, Nesterov, no bias decay, zero-γ, bf16."""

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
  config.num_epochs = 120
  config.batch_size = 1024
  config.eval_batch_size = 1024

  config.precision = "bf16"
  config.label_smoothing = 0.0  # §5.2 sets 0.1.
  config.label_smoothing_mode = "paper"

  config.log_every_steps = 100
  config.eval_every_epochs = 5.0
  config.checkpoint_every_steps = 2000
  config.keep_checkpoints = 3
  return config
