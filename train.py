r"""Trains and evaluates a bagtricks config (see ``bagtricks/main.py``).

  python train.py                                    # configs/default.py, the embedded default
  python train.py --config=configs/cifar10_resnet18d.py --config.num_epochs=10
  python train.py --config=configs/imagenet_resnet50d.py --config.dataset.data_dir=gs://bucket/tfds
"""

from bagtricks import main

if __name__ == "__main__":
  main.run()
