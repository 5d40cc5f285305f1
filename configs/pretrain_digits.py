"""The digits recipe sized for the pre-training study (``python -m bagtricks.studies.pretrain_study``).

The default ResNet-18-D (width 1/4) with batch 32, so that 10 % of the digits 5–9 (about 70
images) still make two batches per epoch; the learning rate is the default's 0.1 per 256
images scaled up fourfold (0.05 at batch 32), since the study's schedules are short. The study
sets the classes, the train split, the epochs and ``init_from`` per run.
"""

from configs import default as default_lib


def get_config():
  config = default_lib.get_config()
  config.batch_size = 32
  config.eval_batch_size = 64
  config.optimizer.base_lr = 0.4
  config.log_every_steps = 10
  return config
