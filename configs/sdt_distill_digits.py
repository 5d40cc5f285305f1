"""The soft decision tree of ``sdt_digits`` trained on a network's soft targets (Frosst & Hinton).

The teacher is the default run (ResNet-18-D, ``python train.py`` → ``runs/default``), restored
from its checkpoint; the tree's targets are softmax(teacher logits / T) alone (w = 1). The
paper: MNIST depth 8, 94.45 % on hard labels → 96.76 % distilled.
"""

from configs import sdt_digits


def get_config():
  config = sdt_digits.get_config()
  config.distill.enabled = True
  config.distill.teacher_workdir = "runs/default"
  config.distill.teacher_config = ""  # The teacher run's own config.json.
  config.distill.temperature = 2.0
  config.distill.soft_weight = 1.0
  return config
