"""Image classification models and layers (Flax linen)."""

from models.layers import DropBlock
from models.resnet import create_model
from models.resnet import MODEL_NAMES
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

__all__ = [
    'create_model',
    'DropBlock',
    'MODEL_NAMES',
    'ResNet',
    'ResNet18', 'ResNet18B', 'ResNet18C', 'ResNet18D',
    'ResNet34', 'ResNet34B', 'ResNet34C', 'ResNet34D',
    'ResNet50', 'ResNet50B', 'ResNet50C', 'ResNet50D',
    'ResNet101', 'ResNet101B', 'ResNet101C', 'ResNet101D',
    'ResNet152', 'ResNet152B', 'ResNet152C', 'ResNet152D',
]
