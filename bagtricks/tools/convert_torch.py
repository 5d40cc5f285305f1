r"""PyTorch weights (timm or torchvision names) → a bagtricks checkpoint of ResNets and RegNets.

  python -m bagtricks.tools.convert_torch --input=resnet50d.safetensors --model=resnet50d \
      --out_dir=runs/resnet50d_timm

reads a PyTorch ``state_dict`` (``.safetensors`` through the safetensors package, which needs no
torch; ``.pth``/``.pt``/``.bin`` through ``torch.load``), renames every tensor to the Flax
variable it belongs to, transposes conv kernels from [out, in / groups, kh, kw] to
[kh, kw, in / groups, out] and linear kernels from [out, in] to [in, out], puts BatchNorm's
running mean and variance into ``batch_stats``, and writes step 0 of an Orbax checkpoint in
``<out_dir>/checkpoints`` holding ``{'step': 0, 'params': ..., 'batch_stats': ...}`` (float32
NumPy arrays in the Flax variable structure), which ``config.init_from=<out_dir>`` fine-tunes
from and ``Checkpointer.restore_variables`` reads.

Naming: timm's ResNets (``conv1``/``bn1`` or the deep stem ``conv1.{0,1,3,4,6}``,
``layer{s}.{b}.conv{i}``/``bn{i}``, ``downsample.{0,1}`` or, for ResNet-D, ``downsample.{1,2}``
after the average pool, ``fc``) are also torchvision's; timm's RegNets (``stem.conv``,
``s{s}.b{b}.conv{i}.conv``/``.bn``, ``se.fc{1,2}``, ``downsample.conv``/``.bn``,
``head.fc``), and torchvision's RegNet names (``trunk_output.block{s}.block{s}-{b}.f.a.0`` ...),
which are renamed to timm's first. timm's and torchvision's ``resnet50`` put the stride on the
3x3 conv ("ResNet-B"): convert them with ``--model=resnet50b``; ``resnet50`` here is the
original ResNet with the stride on the first 1x1 conv (same shapes, other outputs).

The number of classes and input channels are read from the head and stem tensors. Any tensor
without a place in the model, any variable of the model without a tensor, and any shape that
differs are reported together in one ``ConversionError``, before anything is written.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

import models
from bagtricks import cli
from models import regnet as regnet_lib
from models import resnet as resnet_lib

# BatchNorm's step counter: PyTorch bookkeeping with no Flax counterpart.
_IGNORED_SUFFIXES = ('num_batches_tracked',)


class ConversionError(ValueError):
  """The state dict does not fit the model; the message names every offending tensor."""


def _one_line(error: Exception, limit: int = 200) -> str:
  text = ' '.join(str(error).split())
  return f'{type(error).__name__}: {text[:limit]}'


def load_state_dict(path: str) -> Dict[str, np.ndarray]:
  """Reads a PyTorch state dict as float32 NumPy arrays.

  Args:
    path: A ``.safetensors`` file (read with the safetensors package, no torch needed) or a
      ``.pth``/``.pt``/``.bin`` file (read with ``torch.load(weights_only=True)``); a
      checkpoint holding its weights under ``'state_dict'`` or ``'model'`` is unwrapped.

  Returns:
    {tensor name: array}; integer tensors (BatchNorm's step counters) keep their dtype.

  Raises:
    ConversionError: the file is missing, or its reader is not installed.
  """
  if not os.path.isfile(path):
    raise ConversionError(f'--input={path!r} is not a file.')
  if path.endswith('.safetensors'):
    try:
      from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ConversionError('Reading .safetensors needs the safetensors package: '
                            'pip install safetensors.') from e
    try:
      tensors = load_file(path)
    except Exception as e:  # safetensors raises its own error types for a damaged file.
      raise ConversionError(f'--input={path!r} is not a readable .safetensors file '
                            f'({_one_line(e)}); give a complete safetensors file.') from e
  else:
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ConversionError(f'Reading {os.path.basename(path)!r} needs torch (CPU build is '
                            'enough); or convert it to .safetensors elsewhere.') from e
    try:
      loaded = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # pickle, zip and torch errors for a damaged or foreign file.
      raise ConversionError(f'--input={path!r} is not a readable PyTorch file '
                            f'({_one_line(e)}); give a state dict saved by torch.save.') from e
    for key in ('state_dict', 'model'):
      if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
        loaded = loaded[key]
    tensors = {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
               for k, v in loaded.items() if hasattr(v, 'numpy')}
  return {k: (v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v)
          for k, v in tensors.items()}


def torchvision_regnet_to_timm(name: str) -> str:
  """Renames one tensor of torchvision's RegNet to timm's name for it.

  Args:
    name: e.g. ``'trunk_output.block2.block2-0.f.b.0.weight'``.

  Returns:
    e.g. ``'s2.b1.conv2.conv.weight'``; names that are not torchvision's come back unchanged.
  """
  name = re.sub(r'^stem\.0\.', 'stem.conv.', name)
  name = re.sub(r'^stem\.1\.', 'stem.bn.', name)
  name = re.sub(r'^trunk_output\.block(\d+)\.block\d+-(\d+)\.',
                lambda m: f's{int(m.group(1))}.b{int(m.group(2)) + 1}.', name)
  for old, new in (('.f.a.0.', '.conv1.conv.'), ('.f.a.1.', '.conv1.bn.'),
                   ('.f.b.0.', '.conv2.conv.'), ('.f.b.1.', '.conv2.bn.'),
                   ('.f.se.', '.se.'), ('.f.c.0.', '.conv3.conv.'), ('.f.c.1.', '.conv3.bn.'),
                   ('.proj.0.', '.downsample.conv.'), ('.proj.1.', '.downsample.bn.')):
    name = name.replace(old, new)
  return re.sub(r'^fc\.', 'head.fc.', name)


def _resnet_module_name(path: Tuple[str, ...], variant: str) -> str:
  """The torch module of a ResNet's Flax module path, e.g. ('stage1_block1', 'norm2')."""
  first = path[0]
  if first == 'head':
    return 'fc'
  if first in ('stem_conv', 'stem_norm'):
    return {'stem_conv': 'conv1', 'stem_norm': 'bn1'}[first]
  match = re.fullmatch(r'stem_(conv|norm)([123])', first)
  if match:  # The deep stem: Sequential(conv, bn, act, conv, bn, act, conv), then bn1.
    kind, index = match.group(1), int(match.group(2))
    if kind == 'norm' and index == 3:
      return 'bn1'
    return f'conv1.{3 * (index - 1) + (kind == "norm")}'
  stage, block = re.fullmatch(r'stage(\d+)_block(\d+)', first).groups()
  prefix = f'layer{stage}.{int(block) - 1}'
  if path[1] == 'shortcut':
    # ResNet-D's shortcut is Sequential(avg_pool, conv, bn): the parameters move up by one.
    offset = 1 if variant == 'D' else 0
    return f'{prefix}.downsample.{offset + (path[2] == "norm")}'
  return f'{prefix}.' + re.sub(r'^norm', 'bn', path[1])


def _regnet_module_name(path: Tuple[str, ...], variant: str) -> str:
  """The timm module of a RegNet's Flax module path, e.g. ('stage2_block1', 'se', 'fc1')."""
  del variant
  first = path[0]
  if first == 'head':
    return 'head.fc'
  if first in ('stem_conv', 'stem_norm'):
    return 'stem.' + ('conv' if first == 'stem_conv' else 'bn')
  stage, block = re.fullmatch(r'stage(\d+)_block(\d+)', first).groups()
  prefix = f's{stage}.b{block}'
  if path[1] == 'shortcut':
    return f'{prefix}.downsample.' + ('conv' if path[2] == 'conv' else 'bn')
  if path[1] == 'se':
    return f'{prefix}.se.{path[2]}'
  layer, index = re.fullmatch(r'(conv|norm)(\d)', path[1]).groups()
  return f'{prefix}.conv{index}.' + ('conv' if layer == 'conv' else 'bn')


# Flax leaf name → torch tensor name, per collection.
_LEAF_NAMES = {('params', 'kernel'): 'weight', ('params', 'bias'): 'bias',
               ('params', 'scale'): 'weight', ('batch_stats', 'mean'): 'running_mean',
               ('batch_stats', 'var'): 'running_var'}


def _to_flax_layout(tensor: np.ndarray, target_shape: Tuple[int, ...]) -> np.ndarray:
  """A torch tensor in the layout of the Flax variable of `target_shape`."""
  if tensor.ndim == 4 and len(target_shape) == 4:  # Conv [out, in/g, kh, kw] → [kh, kw, in/g, out]
    return np.transpose(tensor, (2, 3, 1, 0))
  if tensor.ndim == 4 and len(target_shape) == 2 and tensor.shape[2:] == (1, 1):
    return tensor[:, :, 0, 0].T  # A 1x1 conv on pooled features (SE) as a Dense kernel.
  if tensor.ndim == 2 and len(target_shape) == 2:  # Linear [out, in] → [in, out].
    return tensor.T
  return tensor


def _model_family(model_name: str):
  name = model_name.lower()
  if name in regnet_lib.MODEL_NAMES:
    return _regnet_module_name, ''
  if name in resnet_lib.MODEL_NAMES:
    return _resnet_module_name, resnet_lib.create_model(name).variant
  raise ConversionError(
      f'--model={model_name!r} cannot be converted to; use a ResNet or RegNet name: '
      f'{", ".join(resnet_lib.MODEL_NAMES + regnet_lib.MODEL_NAMES)}.')


def _head_and_stem_shapes(state_dict: Mapping[str, np.ndarray]) -> Tuple[Optional[int], int]:
  head = state_dict.get('fc.weight', state_dict.get('head.fc.weight'))
  stem = next((state_dict[k] for k in ('conv1.weight', 'conv1.0.weight', 'stem.conv.weight')
               if k in state_dict), None)
  return (None if head is None else head.shape[0]), (3 if stem is None else stem.shape[1])


def convert_state_dict(state_dict: Mapping[str, np.ndarray], model_name: str,
                       **model_kwargs: Any) -> Dict[str, Dict[str, Any]]:
  """Maps a PyTorch state dict onto the variables of a bagtricks ResNet or RegNet.

  Args:
    state_dict: {tensor name: array} with timm's or torchvision's names.
    model_name: A ResNet or RegNet name of `models.create_model` (e.g. 'resnet50d',
      'regnety_032').
    **model_kwargs: Further model options (e.g. ``norm='group'``); ``num_classes`` defaults
      to the head's width in the state dict.

  Returns:
    ``{'params': ..., 'batch_stats': ...}``: nested dicts of float32 NumPy arrays shaped as
    the model's variables.

  Raises:
    ConversionError: tensors without a variable, variables without a tensor or shapes that
      differ; every one of them is named.
  """
  module_name_of, variant = _model_family(model_name)
  if module_name_of is _regnet_module_name:
    state_dict = {torchvision_regnet_to_timm(k): v for k, v in state_dict.items()}
  num_classes, in_channels = _head_and_stem_shapes(state_dict)
  if num_classes is not None:
    model_kwargs.setdefault('num_classes', num_classes)
  model = models.create_model(model_name, **model_kwargs)
  images = jax.ShapeDtypeStruct((1, 64, 64, in_channels), jnp.float32)
  template = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)

  used, problems = set(), []
  variables: Dict[str, Dict[str, Any]] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
    keys = tuple(p.key for p in path)
    collection, module_path, leaf_name = keys[0], keys[1:-1], keys[-1]
    flax_name = '/'.join(keys)
    torch_leaf = _LEAF_NAMES.get((collection, leaf_name))
    if torch_leaf is None:
      problems.append(f'{flax_name}: no PyTorch counterpart is known')
      continue
    torch_name = f'{module_name_of(module_path, variant)}.{torch_leaf}'
    tensor = state_dict.get(torch_name)
    if tensor is None:
      problems.append(f'missing {torch_name} (for {flax_name} {tuple(leaf.shape)})')
      continue
    used.add(torch_name)
    value = _to_flax_layout(np.asarray(tensor, np.float32), leaf.shape)
    if value.shape != tuple(leaf.shape):
      problems.append(f'{torch_name} has shape {tuple(tensor.shape)}, {flax_name} needs '
                      f'{tuple(leaf.shape)} (from {tuple(value.shape)} after transposing)')
      continue
    node = variables
    for key in keys[:-1]:
      node = node.setdefault(key, {})
    node[leaf_name] = value
  unexpected = sorted(k for k in state_dict if k not in used
                      and not k.endswith(_IGNORED_SUFFIXES))
  problems += [f'unexpected {k} {tuple(state_dict[k].shape)}' for k in unexpected]
  if problems:
    raise ConversionError(
        f'The state dict does not fit {model_name} ({len(problems)} problems): '
        + '; '.join(problems) + '.')
  variables.setdefault('batch_stats', {})
  return variables


def check_out_dir(out_dir: str, overwrite: bool = False) -> None:
  """Raises ``ConversionError`` unless ``out_dir`` can take a conversion: a directory that can
  be written (checked for a local one), without a conversion already unless ``overwrite``.
  Writes nothing."""
  # pylint: disable=import-outside-toplevel
  from bagtricks import checkpoint, paths, records
  if not paths.is_remote(out_dir):
    try:
      records.check_local_directory(out_dir, probe_writes=True, flag='--out_dir')
    except records.WorkdirError as e:
      raise ConversionError(str(e)) from e
  directory = paths.join(out_dir, 'checkpoints')
  if checkpoint.has_checkpoint(directory) and not overwrite:
    raise ConversionError(f'--out_dir={out_dir} already holds a checkpoint ({directory}); give '
                          'another --out_dir, or --overwrite to replace it.')


def save_checkpoint(variables: Mapping[str, Any], out_dir: str, overwrite: bool = False
                    ) -> str:
  """Writes converted variables as step 0 of a checkpoint that ``config.init_from`` reads.

  Args:
    variables: ``{'params': ..., 'batch_stats': ...}`` from `convert_state_dict`.
    out_dir: the run-like directory; the checkpoint goes to ``<out_dir>/checkpoints``.
    overwrite: replace a checkpoint ``out_dir`` holds already.

  Returns:
    The checkpoint directory.

  Raises:
    ConversionError: see ``check_out_dir``.
    paths.WriteError: the checkpoint could not be written.
  """
  from bagtricks import checkpoint, paths  # pylint: disable=import-outside-toplevel
  check_out_dir(out_dir, overwrite)
  directory = paths.join(out_dir, 'checkpoints')  # Local or gs://.
  checkpoint.write_weights(variables, directory)
  return directory


def main(argv: List[str]) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  cli.exit_on_positional_arguments(argv)
  cli.configure_logging()
  flag_values = flags.FLAGS

  def convert_and_save():
    check_out_dir(flag_values.out_dir, flag_values.overwrite)  # Before the slow part.
    variables = convert_state_dict(load_state_dict(flag_values.input), flag_values.model)
    return variables, save_checkpoint(variables, flag_values.out_dir, flag_values.overwrite)

  variables, directory = cli.run_reporting_errors(convert_and_save,
                                                  usage_errors=(ConversionError,))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables['params']))
  print(f'Wrote {flag_values.model} ({count:,} parameters) to {directory} (step 0).',
        flush=True)


if __name__ == '__main__':
  cli.quiet_native_logs()  # Before the logging set-up imports TensorFlow.
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('input', None, 'PyTorch state dict: .safetensors, .pth, .pt or .bin.')
  flags.DEFINE_string('model', None, 'bagtricks model name, e.g. resnet50d or regnety_032.')
  flags.DEFINE_string('out_dir', None, 'Output directory; the checkpoint goes to '
                      '<out_dir>/checkpoints.')
  flags.DEFINE_bool('overwrite', False, 'Replace the checkpoint --out_dir holds already.')
  flags.mark_flags_as_required(['input', 'model', 'out_dir'])
  app.run(main, flags_parser=cli.parse_flags)
