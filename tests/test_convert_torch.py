"""Tests for bagtricks/convert_torch.py: PyTorch state dicts → ResNet and RegNet variables.

The comparisons with the real thing build timm models with random weights (nothing is
downloaded), randomize their BatchNorm statistics, convert and compare logits in eval mode.
torch and timm are optional (CPU torch, then ``pip install --no-deps timm``); without them those
tests are skipped. timm imports torchvision at import time for a few helpers the models here do
not use; where torchvision is absent, an import hook stands in for it (see `_import_timm`).
"""

import importlib.abc
import importlib.util
import importlib.machinery
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from bagtricks import checkpoint
from bagtricks.tools import convert_torch
from conftest import REPO


class _TorchvisionStandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Serves empty `torchvision.*` modules whose attributes are inert placeholder classes.

  PyPI's torchvision wheels are built against one torch release each and break beside
  another; timm only needs torchvision's names to exist for the ResNets and RegNets.
  """

  def find_spec(self, name, path=None, target=None):
    del path, target
    if name == 'torchvision' or name.startswith('torchvision.'):
      return importlib.machinery.ModuleSpec(name, self, is_package=True)
    return None

  def create_module(self, spec):
    module = types.ModuleType(spec.name)
    module.__path__ = []
    module.__getattr__ = _placeholder
    return module

  def exec_module(self, module):
    del module


class _PlaceholderType(type):

  def __getattr__(cls, name):
    return _placeholder(name)


def _placeholder(name):
  if name.startswith('__'):
    raise AttributeError(name)
  return _PlaceholderType(name, (), {})


def _import_timm():
  """(torch, timm), or a pytest skip saying what is missing."""
  torch = pytest.importorskip(
      'torch', reason='torch is not installed (optional: CPU torch, then pip install '
      '--no-deps timm)')
  try:
    import torchvision  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
  except ImportError:
    if not any(isinstance(f, _TorchvisionStandIn) for f in sys.meta_path):
      sys.meta_path.append(_TorchvisionStandIn())
  timm = pytest.importorskip(
      'timm', reason='timm is not installed (optional: pip install --no-deps timm)')
  return torch, timm


def _random_timm_model(torch, timm, name, num_classes):
  """A timm model in eval mode with random weights and random BatchNorm statistics.

  Every norm gets random running statistics, γ and β; the last norm of each residual branch
  (the one timm starts at γ = 0) gets a small γ, so that activations stay of order one
  through deep networks and an absolute tolerance on the logits means the same at any depth.
  """
  torch.manual_seed(0)
  model = timm.create_model(name, pretrained=False, num_classes=num_classes)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.normal_(0.0, 0.2)
        module.running_var.uniform_(0.5, 2.0)
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.2)
      elif isinstance(module, torch.nn.Linear):
        module.weight.normal_(0.0, 0.1)
        module.bias.normal_(0.0, 0.1)
    for module in model.modules():
      if hasattr(module, 'zero_init_last'):
        module.zero_init_last()
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d) and not module.weight.any():
        module.weight.uniform_(0.1, 0.3)
  return model.eval()


@pytest.mark.parametrize('timm_name, name, size', [
    ('resnet18d', 'resnet18d', 32),
    ('resnet50d', 'resnet50d', 32),
    ('resnet50', 'resnet50b', 32),  # timm's and torchvision's ResNet-50 stride the 3x3 conv.
    ('regnetx_002', 'regnetx_002', 32),
    ('regnety_004', 'regnety_004', 32),
])
def test_converted_timm_model_gives_timm_logits(timm_name, name, size):
  torch, timm = _import_timm()
  reference = _random_timm_model(torch, timm, timm_name, num_classes=7)
  images = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    expected = reference(torch.from_numpy(images)).numpy()
  state_dict = {k: v.numpy() for k, v in reference.state_dict().items()}
  variables = convert_torch.convert_state_dict(state_dict, name)
  model = models.create_model(name, num_classes=7)
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, jnp.asarray(images.transpose(0, 2, 3, 1)))
  assert np.abs(expected).max() > 0.5  # Logits far from zero, so the tolerance means something.
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=0, atol=1e-4)


def test_converted_flops_hooks_agree_with_the_analytic_count():
  torch, timm = _import_timm()
  from models import regnet  # pylint: disable=import-outside-toplevel
  for name in ('regnetx_002', 'regnety_002'):
    reference = timm.create_model(name, pretrained=False).eval()
    total = []

    def count(module, inputs, output):
      del inputs
      per_example = output.numel() // output.shape[0]
      if isinstance(module, torch.nn.Conv2d):
        total.append(per_example * module.in_channels // module.groups
                     * module.kernel_size[0] * module.kernel_size[1]
                     + (per_example if module.bias is not None else 0))
      elif isinstance(module, torch.nn.Linear):
        total.append(module.in_features * module.out_features
                     + (module.out_features if module.bias is not None else 0))

    hooks = [m.register_forward_hook(count) for m in reference.modules()]
    with torch.no_grad():
      reference(torch.zeros(1, 3, 224, 224))
    for hook in hooks:
      hook.remove()
    assert sum(total) == regnet.flops(regnet.PRESETS[name])


def test_torchvision_regnet_names_are_renamed_as_timm_does():
  _, timm = _import_timm()
  from timm.models import regnet as timm_regnet  # pylint: disable=import-outside-toplevel
  names = ['stem.0.weight', 'stem.1.running_var',
           'trunk_output.block1.block1-0.proj.0.weight',
           'trunk_output.block1.block1-0.proj.1.bias',
           'trunk_output.block3.block3-2.f.a.0.weight',
           'trunk_output.block3.block3-2.f.a.1.weight',
           'trunk_output.block2.block2-1.f.b.0.weight',
           'trunk_output.block2.block2-1.f.b.1.running_mean',
           'trunk_output.block4.block4-6.f.se.fc1.weight',
           'trunk_output.block4.block4-6.f.se.fc2.bias',
           'trunk_output.block4.block4-6.f.c.0.weight',
           'trunk_output.block4.block4-6.f.c.1.bias',
           'fc.weight', 'fc.bias']
  expected = timm_regnet._filter_fn({n: None for n in names})  # pylint: disable=protected-access
  assert [convert_torch.torchvision_regnet_to_timm(n) for n in names] == list(expected)


def _state_dict_of(name, **options):
  """A timm-named state dict with random values for a bagtricks model, built without torch.

  The names come from the converter's own tables, so this exercises everything but the
  naming (which the comparisons with timm check).
  """
  model = models.create_model(name, **options)
  template = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                            jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  module_name_of, variant = convert_torch._model_family(name)  # pylint: disable=protected-access
  leaf_names = convert_torch._LEAF_NAMES  # pylint: disable=protected-access
  rng = np.random.default_rng(0)
  state_dict = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
    keys = tuple(p.key for p in path)
    value = rng.normal(size=leaf.shape).astype(np.float32)
    if len(leaf.shape) == 4:
      value = value.transpose(3, 2, 0, 1)
    elif len(leaf.shape) == 2:
      value = value.T
    torch_name = module_name_of(keys[1:-1], variant) + '.' + leaf_names[(keys[0], keys[-1])]
    state_dict[torch_name] = value
  return state_dict


def test_mismatches_are_all_named_in_one_error():
  state_dict = _state_dict_of('resnet18d', num_classes=10)
  del state_dict['layer2.0.bn1.running_var']
  state_dict['layer3.1.conv2.weight'] = np.zeros((256, 256, 5, 5), np.float32)
  state_dict['layer5.0.conv1.weight'] = np.zeros((8, 8, 3, 3), np.float32)
  state_dict['bn1.num_batches_tracked'] = np.zeros((), np.int64)  # Ignored.
  with pytest.raises(convert_torch.ConversionError) as error:
    convert_torch.convert_state_dict(state_dict, 'resnet18d')
  message = str(error.value)
  assert '3 problems' in message
  assert 'missing layer2.0.bn1.running_var' in message
  assert 'layer3.1.conv2.weight has shape (256, 256, 5, 5)' in message
  assert 'unexpected layer5.0.conv1.weight' in message
  with pytest.raises(convert_torch.ConversionError, match='--model=.*resnet18d'):
    convert_torch.convert_state_dict(state_dict, 'dndt')


def test_written_checkpoint_restores_with_the_checkpointer(tmp_path):
  state_dict = _state_dict_of('regnety_002', num_classes=5)
  variables = convert_torch.convert_state_dict(state_dict, 'regnety_002')
  assert variables['params']['head']['kernel'].shape == (368, 5)  # Classes from the head.
  np.testing.assert_array_equal(variables['params']['head']['kernel'],
                                state_dict['head.fc.weight'].T)
  np.testing.assert_array_equal(variables['batch_stats']['stage2_block1']['norm3']['var'],
                                state_dict['s2.b1.conv3.bn.running_var'])
  convert_torch.save_checkpoint(variables, str(tmp_path))
  model = models.create_model('regnety_002', num_classes=5)
  template = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                            jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  restored = checkpoint.Checkpointer(os.path.join(tmp_path, 'checkpoints'),
                                     read_only=True).restore_variables(template)
  jax.tree.map(np.testing.assert_array_equal, restored, variables)


def test_command_line_converts_a_safetensors_file(tmp_path):
  safetensors_numpy = pytest.importorskip(
      'safetensors.numpy', reason='safetensors is not installed (pip install safetensors)')
  state_dict = _state_dict_of('regnetx_002', num_classes=3)
  path = str(tmp_path / 'weights.safetensors')
  safetensors_numpy.save_file(state_dict, path)
  loaded = convert_torch.load_state_dict(path)
  assert sorted(loaded) == sorted(state_dict)
  out_dir = tmp_path / 'converted'
  command = [sys.executable, '-m', 'bagtricks.tools.convert_torch', f'--input={path}',
             '--model=regnetx_002', f'--out_dir={out_dir}']
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  # 2,684,792 parameters at 1000 classes, minus 368 · 997 + 997 head weights.
  assert 'Wrote regnetx_002 (2,316,899 parameters)' in done.stdout
  assert os.path.isdir(out_dir / 'checkpoints' / '0')
  bad = subprocess.run(command[:-2] + ['--model=resnet18d', f'--out_dir={out_dir}2'],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2
  assert bad.stderr.startswith('error: The state dict does not fit resnet18d')
  assert not os.path.exists(f'{out_dir}2')


def test_pth_files_load_through_torch(tmp_path):
  torch = pytest.importorskip('torch', reason='torch is not installed (optional, CPU build)')
  path = str(tmp_path / 'weights.pth')
  torch.save({'state_dict': {'fc.weight': torch.ones(2, 3, dtype=torch.float16),
                             'bn1.num_batches_tracked': torch.tensor(4)}}, path)
  loaded = convert_torch.load_state_dict(path)
  assert loaded['fc.weight'].dtype == np.float32 and loaded['fc.weight'].shape == (2, 3)
  assert loaded['bn1.num_batches_tracked'] == 4


def test_unreadable_inputs_and_used_out_dirs_are_one_clear_error(tmp_path):
  fake = tmp_path / "notes.safetensors"
  fake.write_text("these are not tensors\n")
  expected = ("is not a readable .safetensors file" if _has("safetensors")
              else "needs the safetensors package")
  with pytest.raises(convert_torch.ConversionError, match=expected):
    convert_torch.load_state_dict(str(fake))
  if _has("torch"):
    pth = tmp_path / "notes.pth"
    pth.write_text("not a pickle\n")
    with pytest.raises(convert_torch.ConversionError, match="is not a readable PyTorch file"):
      convert_torch.load_state_dict(str(pth))
  (tmp_path / "a_file").write_text("")
  with pytest.raises(convert_torch.ConversionError, match="--out_dir=.*a_file is a file"):
    convert_torch.check_out_dir(str(tmp_path / "a_file"))
  variables = {"params": {"w": np.ones((2,), np.float32)}, "batch_stats": {}}
  out = str(tmp_path / "converted")
  convert_torch.save_checkpoint(variables, out)
  with pytest.raises(convert_torch.ConversionError,
                     match="already holds a checkpoint.*--overwrite"):
    convert_torch.save_checkpoint(variables, out)
  variables["params"]["w"] = np.full((2,), 3.0, np.float32)
  convert_torch.save_checkpoint(variables, out, overwrite=True)
  _, tree = checkpoint.Checkpointer(os.path.join(out, "checkpoints"), read_only=True).read()
  np.testing.assert_array_equal(tree["params"]["w"], [3.0, 3.0])


def _has(module):
  return importlib.util.find_spec(module) is not None


def test_the_command_reports_a_used_out_dir_in_one_line(tmp_path):
  out = tmp_path / "out"
  convert_torch.save_checkpoint({"params": {"w": np.ones((2,), np.float32)}}, str(out))
  fake = tmp_path / "notes.safetensors"
  fake.write_text("these are not tensors\n")
  proc = subprocess.run([sys.executable, "-m", "bagtricks.tools.convert_torch",
                         f"--input={fake}", "--model=resnet18d", f"--out_dir={out}"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert lines == [f"error: --out_dir={out} already holds a checkpoint "
                   f"({out / 'checkpoints'}); give another --out_dir, or --overwrite to "
                   "replace it."], proc.stderr[-2000:]
