"""Flax models: ResNets, differentiable trees and forests, an MLP; ``create_model`` by name."""

from typing import Any, Optional

from models import resnet
from models.forest import decision_unit_subsets
from models.forest import fixed_point_leaf_update
from models.forest import NeuralDecisionForest
from models.layers import DropBlock
from models.mlp import MLP
from models.resnet import ResNet
from models.resnet import ResNet101
from models.resnet import ResNet101B
from models.resnet import ResNet101C
from models.resnet import ResNet101D
from models.resnet import ResNet152
from models.resnet import ResNet152B
from models.resnet import ResNet152C
from models.resnet import ResNet152D
from models.resnet import ResNet18
from models.resnet import ResNet18B
from models.resnet import ResNet18C
from models.resnet import ResNet18D
from models.resnet import ResNet34
from models.resnet import ResNet34B
from models.resnet import ResNet34C
from models.resnet import ResNet34D
from models.resnet import ResNet50
from models.resnet import ResNet50B
from models.resnet import ResNet50C
from models.resnet import ResNet50D
from models.trees import DNDT
from models.trees import SoftDecisionTree

# Models that are not ResNets, by config name.
_OTHER_MODELS = {"dndt": DNDT, "sdt": SoftDecisionTree, "ndf": NeuralDecisionForest,
                 "mlp": MLP}
MODEL_NAMES = resnet.MODEL_NAMES + tuple(_OTHER_MODELS)
# Models with cross-device state (BatchNorm statistics, a soft tree's running α), which take
# the data-parallel axis name.
_TAKE_AXIS_NAME = set(resnet.MODEL_NAMES) | {"sdt"}


def create_model(name: str, *, axis_name: Optional[str] = None, **kwargs: Any):
  """Builds a model by name.

  Args:
    name: one of ``MODEL_NAMES`` (case-insensitive): a ResNet such as ``'resnet50d'``,
      ``'dndt'``, ``'sdt'`` (soft decision tree), ``'ndf'`` (neural decision forest) or
      ``'mlp'``.
    axis_name: the data-parallel axis, given to the models that reduce across devices.
    **kwargs: constructor arguments, e.g. ``num_classes``, ``width_multiplier``. For
      ``'ndf'``, ``trunk`` is a dict with the trunk's ``name`` and arguments; the trunk is
      built with ``num_decision_units`` outputs.

  Returns:
    The Flax module.

  Raises:
    ValueError: ``name`` is unknown (the message lists the known names), or bad arguments.
  """
  name = name.lower()
  if name == "ndf":
    trunk = dict(kwargs.pop("trunk", None) or {"name": "mlp", "hidden": ()})
    trunk_name = trunk.pop("name")
    if trunk_name.lower() == "ndf":
      raise ValueError("an ndf trunk cannot itself be an ndf.")
    if "dtype" in kwargs:
      trunk.setdefault("dtype", kwargs["dtype"])
    kwargs["trunk"] = create_model(trunk_name, axis_name=axis_name,
                                   num_classes=kwargs.get("num_decision_units", 0), **trunk)
    return NeuralDecisionForest(**kwargs)
  if name in _TAKE_AXIS_NAME:
    kwargs["axis_name"] = axis_name
  if name in _OTHER_MODELS:
    return _OTHER_MODELS[name](**kwargs)
  return resnet.create_model(name, **kwargs)


__all__ = [
    'create_model',
    'decision_unit_subsets',
    'DNDT',
    'DropBlock',
    'fixed_point_leaf_update',
    'MLP',
    'MODEL_NAMES',
    'NeuralDecisionForest',
    'SoftDecisionTree',
    'ResNet',
    'ResNet18', 'ResNet18B', 'ResNet18C', 'ResNet18D',
    'ResNet34', 'ResNet34B', 'ResNet34C', 'ResNet34D',
    'ResNet50', 'ResNet50B', 'ResNet50C', 'ResNet50D',
    'ResNet101', 'ResNet101B', 'ResNet101C', 'ResNet101D',
    'ResNet152', 'ResNet152B', 'ResNet152C', 'ResNet152D',
]
