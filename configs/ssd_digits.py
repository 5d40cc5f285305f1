"""A small SSD (Liu et al. 2016) on canvases of digits to detect.

``detection_digits``: 16,000 training and 500 test canvases of 64×64 with 1–4 MNIST digits
each, 16–32 px frames (their ink boxes 6–25 px), overlapping by at most 0.2 IoU. The
detector (``ssd``): a ResNet-18-D trunk at width 1/4, its four stages (16², 8², 4², 2²) and
one extra 1×1 map as feature maps, 4 default boxes per cell (ratios 1, 2, ½ and the extra
box) at scales 0.1…0.7: 1,364 boxes. SSD's loss (matching at IoU 0.5, 3:1 hard negatives,
smooth-L1 boxes); Adam, cosine schedule; mAP on the whole test split.
"""

import ml_collections
from ml_collections import config_dict

from configs import default as default_lib


def get_config() -> ml_collections.ConfigDict:
  config = default_lib.get_config()
  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "detection_digits"
  config.dataset.data_dir = config_dict.placeholder(str)
  config.dataset.train_split = "train"
  config.dataset.eval_split = "test"
  config.dataset.digits = "mnist_5k"
  config.dataset.canvas = 64
  config.dataset.objects = (1, 4)
  config.dataset.digit_size = (16, 32)
  config.dataset.max_overlap = 0.2
  config.dataset.num_train = 16000
  config.dataset.num_test = 500
  config.dataset.generator_seed = 0
  config.model = ml_collections.ConfigDict()
  config.model.name = "ssd"
  config.model.stage_sizes = (2, 2, 2, 2)
  config.model.source_stages = (1, 2, 3, 4)
  config.model.extra_layers = 1
  config.model.extra_width = 64
  config.model.aspect_ratios = (1.0, 2.0, 0.5)
  config.model.width_multiplier = 0.25
  config.model.conv_algorithm = "auto"
  config.task = "detection"
  config.detection = ml_collections.ConfigDict()
  config.detection.iou_threshold = 0.5
  config.detection.negative_ratio = 3.0
  config.detection.box_weight = 1.0
  config.detection.anchor_scales = (0.1, 0.7)
  config.detection.score_threshold = 0.05
  config.detection.nms_iou = 0.45
  config.detection.max_detections = 100
  config.batch_size = 32
  config.optimizer.name = "adam"
  config.optimizer.base_lr = 2e-3
  config.optimizer.base_batch_size = 32
  config.optimizer.weight_decay = 0.0
  config.schedule.warmup_epochs = 0.5
  with config.ignore_type():
    config.num_epochs = 10.0
  config.eval_batch_size = 96
  config.log_every_steps = 25
  config.eval_every_epochs = 0.0
  config.checkpoint_every_steps = 500
  return config
