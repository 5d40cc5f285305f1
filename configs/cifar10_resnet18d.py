"""ResNet-18-D (small-image stem) on TFDS cifar10 with the Bag of Tricks recipe (cosine, warm-up, zero-γ, no bias decay)."""

from configs import default as default_lib


def get_config():
  config = default_lib.get_config()
  config.dataset.name = "cifar10"
  config.dataset.image_size = 32
  config.dataset.channels = 3
  config.dataset.train_pp = (
      "random_resized_crop(32, area_min=0.35)|flip_lr|color_jitter(0.4, 0.4, 0.4)|"
      "lighting(0.1)|normalize")
  config.dataset.eval_pp = "normalize"
  config.dataset.shuffle_buffer = 50_000
  config.dataset.cache = True  # 150 MB of encoded images.

  config.model.name = "resnet18d"
  config.model.width_multiplier = 1.0
  config.model.small_stem = True

  config.optimizer.base_lr = 0.2  # 0.1 at batch 128.
  config.optimizer.weight_decay = 5e-4
  config.num_epochs = 100
  config.batch_size = 128
  config.eval_batch_size = 1000
  config.log_every_steps = 100
  config.eval_every_epochs = 10.0
  config.checkpoint_every_steps = 1000
  return config
