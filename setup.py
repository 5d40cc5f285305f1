"""bagtricks: Bag of Tricks for image classification, and friends, in JAX/Flax."""

import setuptools

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
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": ["pytest>=8", "matplotlib>=3.8", "sentencepiece>=0.2", "sacrebleu>=2.4"],
        # Translation: SentencePiece subword vocabularies and BLEU.
        "text": ["sentencepiece>=0.2", "sacrebleu>=2.4"],
        # The accelerator builds of the same jax: NVIDIA GPUs (CUDA 12) and Cloud TPU VMs.
        "cuda12": ["jax[cuda12]>=0.10,<0.11"],
        "tpu": ["jax[tpu]>=0.10,<0.11"],
    },
)
