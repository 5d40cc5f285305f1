"""The digits default distilled from a finished run (Bag of Tricks §5.3, T = 20).

  python train.py                                         # the teacher, in runs/default
  python train.py --config=configs/default_distill.py     # the student, in runs/default_distill

Any model of models/ trained on the digits can teach: point --config.distill.teacher_workdir at
its workdir (its config.json says which model it is).
"""

from configs import default as default_lib


def get_config():
  config = default_lib.get_config()
  config.distill.enabled = True
  config.distill.teacher_workdir = "runs/default"
  config.distill.temperature = 20.0
  config.distill.soft_weight = 0.5
  return config
