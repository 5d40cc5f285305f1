r"""Bag-of-Tricks training preprocessing on tf.data: images/s on one CPU core.

  python benchmarks/preprocess.py                         # the ImageNet ResNet-50-D recipe
  python benchmarks/preprocess.py --config=configs/cifar10_resnet18d.py --height=32 --width=32

Decodes JPEG images of ``--height``×``--width`` (random pixels, encoded once up front) and
applies the config's ``dataset.train_pp`` spec (for ImageNet: Inception crop to 224, flip,
color jitter, PCA lighting, normalization) through tf.data with one thread
(``private_threadpool_size=1``, ``num_parallel_calls=1``), then batches. The figure is decoded
and augmented images per second per core, after one warm-up pass; the input pipeline keeps up
with a train step of ``N`` images/s when it has ``N / figure`` cores.
"""

import argparse
import importlib.util
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bagtricks.data import preprocess  # noqa: E402


def load_config(path: str):
  spec = importlib.util.spec_from_file_location("benchmark_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default=os.path.join(REPO, "configs/imagenet_resnet50d.py"))
  parser.add_argument("--height", type=int, default=375, help="source JPEG height")
  parser.add_argument("--width", type=int, default=500, help="source JPEG width")
  parser.add_argument("--images", type=int, default=512, help="images per timed pass")
  parser.add_argument("--batch", type=int, default=32)
  args = parser.parse_args()

  config = load_config(args.config)
  spec = config.dataset.train_pp
  rng = np.random.default_rng(0)
  # A few distinct JPEGs (smooth random fields compress like photos more than white noise).
  jpegs = []
  for _ in range(16):
    coarse = rng.integers(0, 256, (args.height // 8 + 1, args.width // 8 + 1, 3), np.uint8)
    image = tf.image.resize(coarse[None], (args.height, args.width))[0]
    jpegs.append(tf.io.encode_jpeg(tf.cast(image, tf.uint8), quality=90).numpy())
  pp = preprocess.get_preprocess_fn(spec)

  def decode_and_augment(index):
    image = tf.io.decode_jpeg(tf.gather(tf.constant(jpegs), index % len(jpegs)), channels=3)
    return pp(image, tf.stack([index, tf.constant(0, tf.int64)]))

  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1
  dataset = (tf.data.Dataset.range(args.images).map(decode_and_augment, num_parallel_calls=1)
             .batch(args.batch).with_options(options))
  for _ in dataset:  # Warm-up: tracing and the first pass.
    pass
  start = time.perf_counter()
  for batch in dataset:
    shape = batch.shape
  seconds = time.perf_counter() - start
  print(f"{spec}\n{args.height}×{args.width} JPEG → {tuple(shape[1:])}: "
        f"{args.images / seconds:.0f} images/s on one core ({args.images} images, "
        f"{seconds:.2f} s)")


if __name__ == "__main__":
  main()
