"""ResNet-18-D (width 1/4, small-image stem) with the Bag of Tricks recipe on the bundled digits.

The embedded default: scikit-learn's 1,797 real 8x8 handwritten digits, written once offline
into a local TFDS dataset and read through the same TFDS pipeline as ImageNet. The recipe is the
paper's (§3-§5): linear-scaled lr, 5 warm-up epochs, cosine decay, Nesterov SGD, weight decay on
kernels only, zero-γ, random-resized crops; only the sizes are scaled to 8x8 images and two CPU
cores.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "sklearn_digits"
  config.dataset.data_dir = config_dict.placeholder(str)  # None: TFDS's default directory.
  config.dataset.train_split = "train"
  config.dataset.eval_split = "test"
  # None: the dataset's own size (8 here, 28 for mnist_5k); "{image_size}" in train_pp and
  # eval_pp stands for the size in use.
  config.dataset.image_size = config_dict.placeholder(int)
  config.dataset.channels = 1
  # Digits are not mirror-symmetric and are grey: no flip, no colour or PCA-lighting noise;
  # the crop keeps most of the digit (area ≥ 60 %) since 8x8 images have little to spare.
  config.dataset.train_pp = (
      "random_resized_crop({image_size}, area_min=0.6)|color_jitter(0.4, 0.0, 0.0)|normalize")
  config.dataset.eval_pp = "normalize"
  config.dataset.shuffle_buffer = 2048
  config.dataset.cache = True
  # Keep only these classes, relabelled 0, 1, ... in this order; () = all. A subset of the
  # train split is a TFDS split expression: train_split = "train[:10%]".
  config.dataset.classes = ()

  config.model = ml_collections.ConfigDict()
  config.model.name = "resnet18d"
  config.model.width_multiplier = 0.25
  config.model.small_stem = True
  config.model.zero_init_last = True
  config.model.norm = "batch"
  config.model.kernel_init = "he_normal"
  # DropBlock (Ghiasi et al. 2018) in stages 3-4: target rate 1 - keep_prob (paper 0.1),
  # raised linearly from 0 over training; 0 = off.
  config.model.drop_block_rate = 0.0
  config.model.drop_block_size = 7
  config.model.drop_block_stages = (3, 4)
  # How convolutions are computed (models/xla_cpu): "auto" (the fast XLA:CPU algorithms, with
  # oneDNN's convolutions where the onednn extra is installed, in computations that run on the
  # CPU; XLA's own on GPU/TPU), "native" (XLA's own everywhere, the modules' default),
  # "blocked" or "onednn"; same parameters, results equal up to float rounding.
  config.model.conv_algorithm = "auto"

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"
  config.optimizer.base_lr = 0.1  # For 256 examples; scaled linearly with batch_size.
  config.optimizer.base_batch_size = 256
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.weight_decay = 1e-4
  config.optimizer.decoupled_weight_decay = False
  config.optimizer.grad_clip_norm = 0.0
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-8
  config.optimizer.trust_coefficient = 0.001
  # Parameter groups for fine-tuning: (name, regex on the parameter path, lr multiplier)
  # triples, first match wins, the rest is group 'default' (x1); multiplier 0 freezes.
  # E.g. (("stem", "^stem", 0.0), ("head", "^head/", 10.0)).
  config.optimizer.param_groups = ()

  config.schedule = ml_collections.ConfigDict()
  config.schedule.name = "cosine"
  config.schedule.warmup_epochs = 5.0
  config.schedule.decay_epochs = (30, 60, 90)  # Only for name='step'.
  config.schedule.decay_factor = 0.1
  config.schedule.final_lr = 0.0
  # Stretches warm-up, decay boundaries and the total (epochs) by this factor: the 2x, 3x, 6x
  # schedules of "Rethinking ImageNet Pre-training".
  config.schedule_multiplier = 1.0

  # Start from another run's weights (fine-tuning): its workdir, checkpoints directory or one
  # step's directory; '' = from scratch. Variables whose path matches init_reinit (a regex)
  # keep their fresh initialization; a head of another class count is re-initialized anyway.
  config.init_from = ""
  config.init_reinit = ""

  config.num_epochs = 40
  config.batch_size = 128
  config.eval_batch_size = 128

  config.precision = "fp32"
  config.loss_scale = ml_collections.ConfigDict()
  config.loss_scale.init_scale = 2.0**15
  config.loss_scale.growth_interval = 2000
  config.loss_scale.backoff = 0.5
  config.loss_scale.max_scale = 2.0**24

  # The task (bagtricks/tasks): a registered name such as 'classification', or an import path
  # 'package.module:ClassName'; empty: the model's own default (classification for ResNets).
  config.task = ""
  config.label_smoothing = 0.0
  config.label_smoothing_mode = "paper"

  # Batch augmentations on device (bagtricks/augment.py); all off by default.
  config.augment = ml_collections.ConfigDict()
  config.augment.mixup_alpha = 0.0    # Bag of Tricks: 0.2.
  config.augment.cutmix_alpha = 0.0   # CutMix paper: 1.0.
  config.augment.cutmix_prob = 0.5    # With both on: per-batch probability of CutMix.
  config.augment.mix_off_epochs = 0.0  # mixup/CutMix off for the last N epochs.
  config.augment.cutout = ml_collections.ConfigDict()
  config.augment.cutout.num_holes = 0  # CIFAR-10: 1 hole of 16 px (half the side).
  config.augment.cutout.size = 4
  config.augment.gridmask = ml_collections.ConfigDict()
  config.augment.gridmask.prob = 0.0  # Official ImageNet: 0.8, reached linearly.
  config.augment.gridmask.ramp_epochs = 0.0
  config.augment.gridmask.d_min = 3   # ImageNet [96, 224) of 224 px, scaled to 8 px.
  config.augment.gridmask.d_max = 8
  config.augment.gridmask.ratio = 0.6
  config.augment.gridmask.max_rotation = 0

  # Exponential moving average of the weights, evaluated beside them; 0 = off.
  config.ema = ml_collections.ConfigDict()
  config.ema.decay = 0.0
  config.ema.warmup = True  # decay_t = min(decay, (1 + t) / (10 + t)).

  # Knowledge distillation from a trained run (see bagtricks/distill.py).
  config.distill = ml_collections.ConfigDict()
  config.distill.enabled = False
  config.distill.teacher_workdir = ""
  config.distill.teacher_config = ""  # Empty: teacher_workdir/config.json.
  config.distill.temperature = 20.0   # Bag of Tricks §5.3.
  config.distill.soft_weight = 0.5

  # Divergence: a non-finite loss stops the run; under fp16 loss scaling, so does skipping
  # more than this fraction of the last window_steps steps (or skipping at the scale's floor).
  config.divergence = ml_collections.ConfigDict()
  config.divergence.window_steps = 100
  config.divergence.max_skipped_fraction = 0.5

  config.parallel = "pmap"
  config.num_devices = 0  # 0: all local devices.
  # 'retain': on a CPU backend, reuse XLA's freed step buffers instead of page-faulting them
  # back in every step (models/xla_cpu/host_memory.py); pays off when a step needs hundreds of MB.
  config.host_memory = "system"
  config.distributed = ml_collections.ConfigDict()
  config.distributed.enabled = False
  config.distributed.coordinator_address = config_dict.placeholder(str)
  config.distributed.num_processes = config_dict.placeholder(int)
  config.distributed.process_id = config_dict.placeholder(int)

  config.log_every_steps = 20
  config.eval_every_epochs = 10.0  # 0: only at the end.
  config.checkpoint_every_steps = 100
  config.keep_checkpoints = 2
  return config
