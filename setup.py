"""bagtricks: Bag of Tricks for image classification, and friends, in JAX/Flax."""

import importlib.metadata
import importlib.util
import os

import setuptools
from setuptools.command import build_ext

# The oneDNN convolutions of models/onednn_conv.py link this library's wheel (headers from its
# -devel twin): oneDNN 3.2, CPU-only, threaded with GNU OpenMP.
ONEDNN = "onednn-cpu-gomp==2023.2.0"
ONEDNN_DEVEL = "onednn-devel-cpu-gomp==2023.2.0"
LINUX_X86_64 = "platform_system == 'Linux' and platform_machine == 'x86_64'"

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
    f"{ONEDNN}; {LINUX_X86_64}",
]


def _distribution_file(distribution: str, suffix: str):
  """The installed file of `distribution` whose path ends with `suffix`, or None."""
  try:
    files = importlib.metadata.distribution(distribution).files or ()
  except importlib.metadata.PackageNotFoundError:
    return None
  for file in files:
    if str(file).replace(os.sep, "/").endswith(suffix):
      return str(file.locate())
  return None


class BuildExtensions(build_ext.build_ext):
  """Finds the XLA FFI and oneDNN headers and oneDNN's library in the build environment."""

  def build_extensions(self):
    jaxlib = importlib.util.find_spec("jaxlib")
    header = _distribution_file(ONEDNN_DEVEL.split("==")[0], "include/oneapi/dnnl/dnnl.hpp")
    library = _distribution_file(ONEDNN.split("==")[0], "/libdnnl.so.3")
    missing = [name for name, found in (("jaxlib", jaxlib), (ONEDNN_DEVEL, header),
                                        (ONEDNN, library)) if found is None]
    if missing:
      # The extension is optional: without it models/conv.py uses XLA's convolutions.
      print(f"Not building the oneDNN convolutions (models/onednn_conv.py), missing from the "
            f"build environment: {', '.join(missing)}.")
      return
    include_dirs = [os.path.join(jaxlib.submodule_search_locations[0], "include"),
                    os.path.dirname(os.path.dirname(os.path.dirname(header)))]
    for extension in self.extensions:
      extension.include_dirs.extend(include_dirs)
      # Linking the file records its soname, libdnnl.so.3; models/onednn_conv.py loads that
      # file from the installed wheel before the extension.
      extension.extra_link_args.append(library)
    super().build_extensions()


ONEDNN_CONV = setuptools.Extension(
    "models._onednn_conv",
    sources=["models/csrc/onednn_conv.cc"],
    language="c++",
    extra_compile_args=["-std=c++17", "-O2", "-fvisibility=hidden"],
    optional=True,
)

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
    ext_modules=[ONEDNN_CONV] if os.name == "posix" else [],
    cmdclass={"build_ext": BuildExtensions},
    extras_require={
        "test": ["pytest>=8", "matplotlib>=3.8", "sentencepiece>=0.2", "sacrebleu>=2.4"],
        # Translation: SentencePiece subword vocabularies and BLEU.
        "text": ["sentencepiece>=0.2", "sacrebleu>=2.4"],
        # The accelerator builds of the same jax: NVIDIA GPUs (CUDA 12) and Cloud TPU VMs.
        "cuda12": ["jax[cuda12]>=0.10,<0.11"],
        "tpu": ["jax[tpu]>=0.10,<0.11"],
    },
)
