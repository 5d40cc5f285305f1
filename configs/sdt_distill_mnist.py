"""The soft decision tree of ``sdt_mnist`` trained on a network's soft targets (Frosst & Hinton).

The teacher is a ResNet-18-D trained with ``configs/mnist_5k.py`` (``python train.py
--config=configs/mnist_5k.py --workdir=runs/mnist_5k``), restored from its checkpoint; the
distillation fields are those of ``sdt_distill_digits`` (soft targets alone, T = 2). The paper:
MNIST depth 8, 94.45 % on hard labels → 96.76 % distilled.
"""

from configs import sdt_distill_digits, sdt_mnist


def get_config():
  config = sdt_mnist.to_mnist(sdt_distill_digits.get_config())
  config.distill.teacher_workdir = "runs/mnist_5k"
  return config
