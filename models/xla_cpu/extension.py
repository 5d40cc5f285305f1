"""Compiles the oneDNN convolution extension once, on first use, where the `onednn` extra is.

The extension (`csrc/onednn_conv.cc`, XLA FFI handlers calling oneDNN) is not built when the
package is installed: a plain `pip install bagtricks`, or its `[cuda12]` / `[tpu]` installs,
build nothing and fetch no oneDNN wheel. `pip install 'bagtricks[onednn]'` adds oneDNN's
library and headers (the `onednn-cpu-gomp` and `onednn-devel-cpu-gomp` wheels); the first CPU
computation that asks for a oneDNN convolution then compiles the extension with the system's
C++ compiler (`$CXX`, else `g++`; a few seconds) against those and jaxlib's XLA FFI headers,
into a cache directory (`$BAGTRICKS_CACHE_DIR`, else `$XDG_CACHE_HOME/bagtricks` or
`~/.cache/bagtricks`) under a name that hashes everything the build depends on, so that a
new jaxlib, oneDNN or source compiles anew and every later process loads the cached file.
"""

import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from typing import Optional, Tuple

from absl import logging

# oneDNN 3.2, CPU only, threaded with GNU OpenMP: its library and its headers.
ONEDNN = 'onednn-cpu-gomp'
ONEDNN_DEVEL = 'onednn-devel-cpu-gomp'
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc', 'onednn_conv.cc')
_FLAGS = ('-std=c++17', '-O2', '-fvisibility=hidden', '-shared', '-fPIC', '-w')
_INSTALL_HINT = "pip install 'bagtricks[onednn]'"


def _distribution_file(distribution: str, suffix: str) -> Optional[str]:
  """The installed file of `distribution` whose path ends with `suffix`, or None."""
  try:
    files = importlib.metadata.distribution(distribution).files or ()
  except importlib.metadata.PackageNotFoundError:
    return None
  for file in files:
    if str(file).replace(os.sep, '/').endswith(suffix):
      return str(file.locate())
  return None


def onednn_library() -> Optional[str]:
  """libdnnl.so.3 of the installed `ONEDNN` wheel, or None."""
  return _distribution_file(ONEDNN, '/libdnnl.so.3')


def cache_dir() -> str:
  """Where compiled extensions are kept."""
  explicit = os.environ.get('BAGTRICKS_CACHE_DIR')
  if explicit:
    return explicit
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'bagtricks')


def _inputs() -> Tuple[Optional[dict], str]:
  """The build's inputs (include dirs, library, compiler), or None and what is missing."""
  if not (sys.platform.startswith('linux') and platform.machine() == 'x86_64'):
    return None, f'oneDNN convolutions are built on Linux x86-64 only, not {sys.platform} ' \
                 f'{platform.machine()}'
  header = _distribution_file(ONEDNN_DEVEL, 'include/oneapi/dnnl/dnnl.hpp')
  library = onednn_library()
  if header is None or library is None:
    return None, f'the onednn extra is not installed ({_INSTALL_HINT})'
  jaxlib = importlib.util.find_spec('jaxlib')
  ffi_headers = os.path.join(jaxlib.submodule_search_locations[0], 'include')
  compiler = shutil.which(os.environ.get('CXX', 'g++'))
  if compiler is None:
    return None, f"no C++ compiler to build them with ({os.environ.get('CXX', 'g++')} not found)"
  includes = [ffi_headers, os.path.dirname(os.path.dirname(os.path.dirname(header)))]
  return {'compiler': compiler, 'includes': includes, 'library': library}, ''


def _cache_key(inputs: dict) -> str:
  digest = hashlib.sha256()
  with open(SOURCE, 'rb') as f:
    digest.update(f.read())
  versions = [importlib.metadata.version(d) for d in ('jaxlib', ONEDNN, ONEDNN_DEVEL)]
  digest.update(repr((versions, _FLAGS, inputs)).encode())
  return digest.hexdigest()[:16]


def build() -> Tuple[Optional[str], str]:
  """The compiled extension's path, compiling it first if needed.

  Returns:
    (path, '') or (None, why there is none: the extra is missing, no compiler, a failed
    build with the compiler's last lines).
  """
  inputs, missing = _inputs()
  if inputs is None:
    return None, missing
  directory = cache_dir()
  path = os.path.join(directory, f'onednn_conv-{_cache_key(inputs)}.so')
  if os.path.exists(path):
    return path, ''
  os.makedirs(directory, exist_ok=True)
  logging.info('Compiling the oneDNN convolutions into %s (once per jaxlib and oneDNN).', path)
  # Compiled beside its destination and renamed: processes building at once each write their
  # own file, and a reader never sees a partial one.
  handle, partial = tempfile.mkstemp(suffix='.so', dir=directory)
  os.close(handle)
  command = ([inputs['compiler'], *_FLAGS] + [f'-I{d}' for d in inputs['includes']]
             + [SOURCE, inputs['library'], '-o', partial])
  # Linking the library by its path records its soname, libdnnl.so.3, which the loader
  # resolves to the copy `onednn.py` loads first by its full path.
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  if result.returncode != 0:
    os.unlink(partial)
    tail = ' '.join(result.stderr.strip().splitlines()[-3:])
    return None, f'compiling {SOURCE} failed: {tail}'
  os.chmod(partial, 0o755)
  os.replace(partial, path)
  return path, ''
