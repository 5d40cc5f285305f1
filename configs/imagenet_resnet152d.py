"""The distillation teacher of the paper's §5.3: ResNet-152-D with the full recipe, not distilled.

Same data, schedule, label smoothing and mixup as configs/imagenet_resnet50d.py (the paper's
teacher is trained with the refinements the student uses).
"""

from configs import imagenet_resnet50d


def get_config():
  config = imagenet_resnet50d.get_config()
  config.model.name = "resnet152d"
  config.distill.enabled = False
  config.distill.teacher_workdir = ""
  config.distill.teacher_config = ""
  return config
