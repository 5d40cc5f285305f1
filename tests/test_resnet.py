"""Tests for models/resnet.py.

Named networks are only traced (`jax.eval_shape`), never compiled. Numeric
checks use two-stage networks (one block per stage) on 7x7/8x8 inputs,
compiled with XLA's backend optimizations turned off: on CPU, compile time
dominates for graphs this small.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from bagtricks.state import run_once
from models import convnet
from models import resnet

def _param_count(params) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


# Tracing is the cost of the shape-only tests, and several tests look at the
# same model, hence the caches. Models are keyed by `create_model` arguments.


@functools.lru_cache(maxsize=None)
def _abstract_variables(name, input_shape, **options):
  """Variable shapes/dtypes of a named model, without compiling.

  Args:
    name: A `MODEL_NAMES` entry.
    input_shape: [batch, height, width, channels].
    **options: Passed to `create_model`.

  Returns:
    The variables as a tree of `jax.ShapeDtypeStruct`.
  """
  model = models.create_model(name, **options)
  x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
  return jax.eval_shape(
      lambda key, x: model.init(key, x, train=False), jax.random.key(0), x)


@functools.lru_cache(maxsize=None)
def _abstract_forward(name, input_shape, **options):
  """Shapes/dtypes of a named model's variables, logits and intermediates.

  Args:
    name: A `MODEL_NAMES` entry.
    input_shape: [batch, height, width, channels].
    **options: Passed to `create_model`.

  Returns:
    (variables, logits, intermediates) as trees of `jax.ShapeDtypeStruct`,
    from a forward pass in train mode.
  """
  model = models.create_model(name, **options)
  x = jax.ShapeDtypeStruct(input_shape, jnp.float32)

  def init_and_forward(key, x):
    variables = model.init(key, x, train=False)
    logits, state = model.apply(
        variables, x, train=True, capture_intermediates=True,
        mutable=['intermediates', 'batch_stats'])
    return variables, logits, state['intermediates']

  return jax.eval_shape(init_and_forward, jax.random.key(0), x)


def _tiny_forward(name, **options):
  """`_abstract_forward` of a width-1/8, small-stem, 10-class model on 8x8."""
  return _abstract_forward(name, (2, 8, 8, 3), num_classes=10,
                           width_multiplier=0.125, small_stem=True, **options)


def _captured(intermediates, path):
  """Output of the submodule at `path` ('a/b/c') from capture_intermediates."""
  node = intermediates
  for key in path.split('/'):
    node = node[key]
  return np.asarray(node['__call__'][0])


@functools.lru_cache(maxsize=None)
def _initialized_small_resnet(block='basic', variant='D', **kwargs):
  """A two-stage small-stem ResNet and its initial variables.

  Stage 1 has stride 1, stage 2 downsamples; one block each. Full width and
  1000 classes give the initializer tests enough samples, yet the network is
  cheap on 8x8 inputs. Cached because compiling dominates the test time.

  Args:
    block: 'basic' or 'bottleneck'.
    variant: 'v1', 'B', 'C' or 'D'.
    **kwargs: Other `ResNet` attributes, overriding the defaults above.

  Returns:
    (model, variables) with variables as NumPy arrays.
  """
  options = dict(stage_sizes=(1, 1), block=block, num_classes=1000,
                 variant=variant, small_stem=True, width_multiplier=1.0)
  options.update(kwargs)
  model = resnet.ResNet(**options)
  variables = run_once(
      lambda key: model.init(key, jnp.zeros((1, 8, 8, 3)), train=False),
      jax.random.key(0))
  return model, jax.tree.map(np.asarray, variables)


def _images(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _block_names(params):
  return [name for name in params if name.startswith('stage')]


# Parameter counts (params collection only) at 1000 classes, 224x224x3:
# torchvision for v1, timm for C/D (same counts as v1/B plus the deep stem).
@pytest.mark.parametrize('name, expected', [
    ('resnet18', 11_689_512),
    ('resnet18d', 11_708_744),
    ('resnet34', 21_797_672),
    ('resnet50', 25_557_032),
    ('resnet50b', 25_557_032),
    ('resnet50c', 25_576_264),
    ('resnet50d', 25_576_264),
    ('resnet101', 44_549_160),
    ('resnet152', 60_192_808),
])
def test_parameter_count_matches_reference(name, expected):
  variables = _abstract_variables(name, (1, 224, 224, 3), num_classes=1000)
  assert _param_count(variables['params']) == expected


def test_feature_map_shapes_at_224():
  _, logits, intermediates = _abstract_forward('resnet50d', (2, 224, 224, 3))
  assert logits.shape == (2, 1000)
  assert logits.dtype == jnp.float32
  # Stem (stride 2) and max pool (stride 2) give 56x56 at stage 1.
  expected = {'stage1_block3': (2, 56, 56, 256),
              'stage2_block4': (2, 28, 28, 512),
              'stage3_block6': (2, 14, 14, 1024),
              'stage4_block3': (2, 7, 7, 2048)}
  for path, shape in expected.items():
    assert intermediates[path]['__call__'][0].shape == shape, path


@pytest.mark.parametrize('variant', ['v1', 'B', 'C', 'D'])
@pytest.mark.parametrize('depth', [18, 50])
def test_small_stem_on_8x8_input(depth, variant):
  suffix = '' if variant == 'v1' else variant.lower()
  _, logits, intermediates = _tiny_forward(f'resnet{depth}{suffix}')
  assert logits.shape == (2, 10)
  assert logits.dtype == jnp.float32
  expansion = 4 if depth == 50 else 1
  # No stem downsampling: stage 1 keeps 8x8, stages 2-4 halve it to 1x1.
  assert intermediates['stage1_block1']['__call__'][0].shape == (
      2, 8, 8, 8 * expansion)
  assert intermediates['stage4_block1']['__call__'][0].shape == (
      2, 1, 1, 64 * expansion)


@pytest.mark.parametrize('name, dtype', [('resnet50d', jnp.bfloat16),
                                         ('resnet18', jnp.float16)])
def test_mixed_precision_keeps_params_and_logits_float32(name, dtype):
  variables, logits, intermediates = _tiny_forward(name, dtype=dtype)
  assert set(variables) == {'params', 'batch_stats'}
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == jnp.float32
  assert logits.dtype == jnp.float32
  # The trunk really computes in the low-precision dtype.
  assert intermediates['stage2_block1']['conv2']['__call__'][0].dtype == dtype
  assert intermediates['stage4_block1']['__call__'][0].dtype == dtype


@pytest.mark.parametrize('variant, conv1_size, conv2_size', [
    ('v1', 4, 4),  # Stride 2 on the first 1x1 conv.
    ('B', 8, 4),  # Stride 2 on the 3x3 conv.
    ('C', 8, 4),
    ('D', 8, 4),
])
def test_bottleneck_stride_placement(variant, conv1_size, conv2_size):
  suffix = '' if variant == 'v1' else variant.lower()
  _, _, intermediates = _tiny_forward(f'resnet50{suffix}')
  block = intermediates['stage2_block1']
  assert block['conv1']['__call__'][0].shape[1:3] == (conv1_size, conv1_size)
  assert block['conv2']['__call__'][0].shape[1:3] == (conv2_size, conv2_size)
  assert block['conv3']['__call__'][0].shape[1:3] == (4, 4)
  # Non-downsampling blocks keep the resolution everywhere.
  assert block['__call__'][0].shape[1:3] == (4, 4)
  assert intermediates['stage2_block2']['conv1']['__call__'][0].shape[1:3] == (
      4, 4)


def test_basic_block_strides_first_3x3():
  _, _, intermediates = _tiny_forward('resnet18')
  block = intermediates['stage2_block1']
  assert block['conv1']['__call__'][0].shape == (2, 4, 4, 16)
  assert block['conv2']['__call__'][0].shape == (2, 4, 4, 16)


@pytest.mark.parametrize('variant', ['C', 'D'])
def test_deep_stem_widths(variant):
  params = _abstract_variables(f'resnet50{variant.lower()}', (1, 224, 224, 3),
                               num_classes=1000)['params']
  assert 'stem_conv' not in params
  assert params['stem_conv1']['kernel'].shape == (3, 3, 3, 32)
  assert params['stem_conv2']['kernel'].shape == (3, 3, 32, 32)
  assert params['stem_conv3']['kernel'].shape == (3, 3, 32, 64)
  for i, width in zip((1, 2, 3), (32, 32, 64)):
    assert params[f'stem_norm{i}']['scale'].shape == (width,)
  half = _abstract_variables(f'resnet18{variant.lower()}', (1, 32, 32, 3),
                             width_multiplier=0.5)['params']
  assert half['stem_conv3']['kernel'].shape == (3, 3, 16, 32)


@pytest.mark.parametrize('variant', ['v1', 'B'])
def test_standard_stem(variant):
  suffix = '' if variant == 'v1' else variant.lower()
  params = _abstract_variables(f'resnet50{suffix}', (1, 224, 224, 3),
                               num_classes=1000)['params']
  assert params['stem_conv']['kernel'].shape == (7, 7, 3, 64)
  assert 'stem_conv1' not in params
  small = _abstract_variables(f'resnet18{suffix}', (1, 32, 32, 3),
                              small_stem=True)['params']
  assert small['stem_conv']['kernel'].shape == (3, 3, 3, 64)


def _numpy_avg_pool_2x2_ceil(x):
  """PyTorch AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False).

  Args:
    x: [batch, height, width, channels].

  Returns:
    [batch, ceil(height / 2), ceil(width / 2), channels].
  """
  batch, height, width, channels = x.shape
  out = np.zeros((batch, -(-height // 2), -(-width // 2), channels))
  for i in range(out.shape[1]):
    for j in range(out.shape[2]):
      window = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2, :]  # Clipped at edges.
      out[:, i, j, :] = window.mean(axis=(1, 2))
  return out


def _numpy_batch_norm_inference(x, norm_params, norm_stats, epsilon=1e-5):
  return ((x - norm_stats['mean']) / np.sqrt(norm_stats['var'] + epsilon)
          * norm_params['scale'] + norm_params['bias'])


# A GroupNorm network that also covers zero_init_last=False. Width 0.625
# makes stage 1 40 channels wide, so GroupNorm uses 20 groups of 2 there.
_GROUP_NORM_OPTIONS = dict(norm='group', width_multiplier=0.625,
                           num_classes=10, zero_init_last=False)

# The v1 network also covers the Xavier-uniform initializer.
_V1_OPTIONS = dict(kernel_init='xavier_uniform')


@functools.lru_cache(maxsize=None)
def _inference_intermediates(block, variant):
  """Runs a small initialized ResNet in inference mode on a 7x7 batch.

  The norm of stage 2's projection shortcut gets random scale, bias and
  running statistics, so checks of the shortcut cover the whole
  (pool ->) conv -> norm chain. The 7x7 input is odd-sized, so the last D
  pooling window in each dimension is partial.

  Args:
    block: 'basic' or 'bottleneck'.
    variant: 'v1', 'B', 'C' or 'D'.

  Returns:
    (variables, intermediates), both as NumPy arrays.
  """
  options = _V1_OPTIONS if variant == 'v1' else {}
  model, variables = _initialized_small_resnet(block, variant, **options)
  rng = np.random.default_rng(1)
  variables = jax.tree.map(np.array, variables)  # Writable copies.
  features = variables['params']['stage2_block1']['shortcut']['norm'][
      'scale'].shape
  variables['params']['stage2_block1']['shortcut']['norm'] = {
      'scale': rng.uniform(0.5, 1.5, features).astype(np.float32),
      'bias': rng.normal(size=features).astype(np.float32)}
  variables['batch_stats']['stage2_block1']['shortcut']['norm'] = {
      'mean': rng.normal(size=features).astype(np.float32),
      'var': rng.uniform(0.5, 2.0, features).astype(np.float32)}
  _, state = run_once(
      lambda v, x: model.apply(v, x, train=False, capture_intermediates=True,
                               mutable=['intermediates']),
      variables, _images((2, 7, 7, 3)))
  return variables, jax.tree.map(np.asarray, state['intermediates'])


@pytest.mark.parametrize('block, variant', [('basic', 'D'), ('bottleneck', 'D'),
                                            ('basic', 'v1')])
def test_downsampling_shortcut_matches_numpy(block, variant):
  variables, intermediates = _inference_intermediates(block, variant)
  block_input = _captured(intermediates, 'stage1_block1')
  shortcut = _captured(intermediates, 'stage2_block1/shortcut')

  if variant == 'D':
    downsampled = _numpy_avg_pool_2x2_ceil(block_input)
  else:
    # A stride-2 1x1 conv without padding samples every other pixel.
    downsampled = block_input[:, ::2, ::2, :]
  shortcut_params = variables['params']['stage2_block1']['shortcut']
  kernel = shortcut_params['conv']['kernel']
  assert kernel.shape[:2] == (1, 1)
  projected = np.einsum('bhwc,cd->bhwd', downsampled, kernel[0, 0])
  expected = _numpy_batch_norm_inference(
      projected, shortcut_params['norm'],
      variables['batch_stats']['stage2_block1']['shortcut']['norm'])
  assert shortcut.shape == (2, 4, 4, kernel.shape[-1])
  np.testing.assert_allclose(shortcut, expected, rtol=1e-4, atol=1e-4)


def test_d_average_pool_differs_from_strided_conv():
  # Guards the test above against passing by accident: averaging and
  # subsampling give different shortcuts for the same block input.
  x = _images((1, 7, 7, 2))
  assert not np.allclose(_numpy_avg_pool_2x2_ceil(x), x[:, ::2, ::2, :])


def test_d_first_bottleneck_stage_projects_without_pool():
  # Stage 1 of a bottleneck net changes channels at stride 1: the projection
  # is a plain 1x1 conv + norm, with no pooling, keeping the resolution.
  _, _, intermediates = _tiny_forward('resnet50d')
  shortcut = intermediates['stage1_block1']['shortcut']
  assert shortcut['conv']['__call__'][0].shape == (2, 8, 8, 32)
  assert 'shortcut' not in intermediates['stage1_block2']


@pytest.mark.parametrize('block, last_norm, options', [
    ('basic', 'norm2', {}),
    ('bottleneck', 'norm3', {}),
    ('basic', 'norm2', _GROUP_NORM_OPTIONS),
], ids=['basic', 'bottleneck', 'group_norm_without_zero_init'])
def test_zero_init_last_scales(block, last_norm, options):
  _, variables = _initialized_small_resnet(block, 'D', **options)
  zero_init_last = options.get('zero_init_last', True)
  params = variables['params']
  blocks = _block_names(params)
  assert blocks == ['stage1_block1', 'stage2_block1']
  for block_name in blocks:
    norm_names = [name for name in params[block_name]
                  if name.startswith('norm')]
    assert last_norm in norm_names
    for norm_name in norm_names:
      expected = 0.0 if zero_init_last and norm_name == last_norm else 1.0
      np.testing.assert_array_equal(
          params[block_name][norm_name]['scale'], expected)
  # The shortcut's norm is never zero-initialized.
  np.testing.assert_array_equal(
      params['stage2_block1']['shortcut']['norm']['scale'], 1.0)
  for i in (1, 2, 3):
    np.testing.assert_array_equal(params[f'stem_norm{i}']['scale'], 1.0)


@pytest.mark.parametrize('block', ['basic', 'bottleneck'])
def test_zero_init_blocks_start_as_relu_of_shortcut(block):
  # With gamma = 0 and beta = 0 the residual branch outputs exactly zero,
  # whatever the normalization statistics.
  _, intermediates = _inference_intermediates(block, 'D')
  stem_output = np.maximum(_captured(intermediates, 'stem_norm3'), 0.0)
  stage1_output = _captured(intermediates, 'stage1_block1')
  if block == 'basic':
    # Identity shortcut: relu(input) is the input itself.
    np.testing.assert_allclose(stage1_output, stem_output, atol=1e-6)
  else:
    np.testing.assert_allclose(
        stage1_output,
        np.maximum(_captured(intermediates, 'stage1_block1/shortcut'), 0.0),
        atol=1e-6)
  stage2_output = _captured(intermediates, 'stage2_block1')
  np.testing.assert_allclose(
      stage2_output,
      np.maximum(_captured(intermediates, 'stage2_block1/shortcut'), 0.0),
      atol=1e-6)
  assert stage2_output.max() > 0  # Not trivially all zeros.


@pytest.mark.parametrize('num_channels, expected_groups', [
    (64, 32), (2048, 32), (96, 32), (48, 24), (40, 20), (80, 20), (8, 8),
    (7, 7), (1, 1)])
def test_group_norm_num_groups(num_channels, expected_groups):
  assert convnet.group_norm_num_groups(num_channels) == expected_groups


def test_group_norm_variant():
  model, variables = _initialized_small_resnet('basic', 'D',
                                               **_GROUP_NORM_OPTIONS)
  assert 'batch_stats' not in variables
  x = _images((2, 8, 8, 3))
  # Train mode needs no mutable collection: nothing to update.
  logits, state = run_once(
      lambda v, x: model.apply(v, x, train=True, capture_intermediates=True,
                               mutable=['intermediates']), variables, x)
  assert logits.shape == (2, 10)
  assert np.all(np.isfinite(logits))
  conv_output = _captured(state['intermediates'], 'stage1_block1/conv1')
  norm_output = _captured(state['intermediates'], 'stage1_block1/norm1')
  assert conv_output.shape[-1] == 40
  grouped = conv_output.reshape(2, 8, 8, 20, 2)
  mean = grouped.mean(axis=(1, 2, 4), keepdims=True)
  var = grouped.var(axis=(1, 2, 4), keepdims=True)
  expected = ((grouped - mean) / np.sqrt(var + 1e-5)).reshape(conv_output.shape)
  np.testing.assert_allclose(norm_output, expected, rtol=1e-4, atol=1e-4)


def test_group_norm_full_depth_tiny_width():
  variables, logits, _ = _tiny_forward('resnet18d', norm='group')
  assert logits.shape == (2, 10)
  assert set(variables) == {'params'}
  assert variables['params']['stage4_block2']['norm2']['scale'].shape == (
      64,)


def test_axis_name_averages_batch_statistics_across_devices():
  model, variables = _initialized_small_resnet('basic', 'D')
  synced_model = model.clone(axis_name='devices')
  x = _images((4, 8, 8, 3))

  def full_batch(v, x):
    return model.apply(v, x, train=True, mutable=['batch_stats'])

  def sharded(v, x):
    per_device = functools.partial(synced_model.apply, train=True,
                                   mutable=['batch_stats'])
    return jax.vmap(per_device, in_axes=(None, 0), axis_name='devices')(v, x)

  logits, state = run_once(full_batch, variables, x)
  sharded_logits, sharded_state = run_once(sharded, variables,
                                            x.reshape(2, 2, 8, 8, 3))
  # Batch statistics over 2 devices x 2 images equal those over 4 images.
  np.testing.assert_allclose(sharded_logits.reshape(logits.shape), logits,
                             rtol=1e-4, atol=1e-5)
  for device in range(2):
    np.testing.assert_allclose(
        sharded_state['batch_stats']['stem_norm1']['mean'][device],
        state['batch_stats']['stem_norm1']['mean'], rtol=1e-5, atol=1e-6)


def _conv_kernels(params):
  """All conv kernels [k, k, in, out] of a params tree, by path."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat
          if path[-1].key == 'kernel' and leaf.ndim == 4}


def test_xavier_uniform_init():
  _, variables = _initialized_small_resnet('basic', 'v1', **_V1_OPTIONS)
  params = variables['params']
  kernels = _conv_kernels(params)
  assert len(kernels) == 1 + 2 * 2 + 1  # Stem, 2 blocks, 1 projection.
  for path, kernel in kernels.items():
    receptive_field = kernel.shape[0] * kernel.shape[1]
    fan_in = receptive_field * kernel.shape[2]
    fan_out = receptive_field * kernel.shape[3]
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    assert np.abs(kernel).max() <= bound, path
  # Largest conv: stage 2's 3x3, 128 -> 128 (147,456 samples).
  kernel = params['stage2_block1']['conv2']['kernel']
  assert kernel.shape == (3, 3, 128, 128)
  bound = math.sqrt(6.0 / (9 * 128 + 9 * 128))
  np.testing.assert_allclose(kernel.var(), bound**2 / 3, rtol=0.02)
  assert np.abs(kernel).max() > 0.99 * bound  # Uses the whole range.

  head = params['head']['kernel']
  assert head.shape == (128, 1000)
  head_bound = math.sqrt(6.0 / (128 + 1000))
  assert np.abs(head).max() <= head_bound
  np.testing.assert_allclose(head.var(), head_bound**2 / 3, rtol=0.02)
  np.testing.assert_array_equal(params['head']['bias'], 0.0)


def test_he_normal_init():
  _, variables = _initialized_small_resnet('bottleneck', 'D')
  params = variables['params']
  kernel = params['stage2_block1']['conv2']['kernel']
  # variance_scaling(2.0, 'fan_out', 'normal'): std = sqrt(2 / (9 * 128)).
  np.testing.assert_allclose(kernel.std(), math.sqrt(2.0 / (9 * 128)),
                             rtol=0.02)
  np.testing.assert_allclose(kernel.mean(), 0.0, atol=1e-3)
  # Classifier: PyTorch's default Linear init, uniform(+-1/sqrt(fan_in)).
  head = params['head']['kernel']
  assert np.abs(head).max() <= 1.0 / math.sqrt(512)
  np.testing.assert_allclose(head.var(), 1.0 / (3 * 512), rtol=0.02)
  np.testing.assert_array_equal(params['head']['bias'], 0.0)


def test_width_multiplier_rounds_and_clamps():
  assert resnet.scale_width(64, 0.125) == 8
  assert resnet.scale_width(32, 0.1) == 3
  assert resnet.scale_width(32, 0.001) == 1
  params = _abstract_variables('resnet18d', (1, 8, 8, 3),
                               width_multiplier=0.01)['params']
  assert params['stem_conv1']['kernel'].shape == (3, 3, 3, 1)
  assert params['stage4_block2']['conv2']['kernel'].shape == (3, 3, 5, 5)


def test_model_names_and_constructors():
  assert len(models.resnet.MODEL_NAMES) == 20
  assert models.MODEL_NAMES[20:38] == models.regnet.MODEL_NAMES
  assert models.MODEL_NAMES[20] == 'regnetx_002'
  assert models.MODEL_NAMES[38:] == ('regnet', 'dndt', 'sdt', 'ndf', 'mlp', 'latent_truth',
                                     'gcn', 'gat', 'graphsage', 'ggnn', 'node_mlp',
                                     'region_encoder', 'gaitset', 'ssd', 'transformer',
                                     'transformer_base', 'transformer_tiny',
                                     'patch_transformer')
  assert models.MODEL_NAMES[:4] == ('resnet18', 'resnet18b', 'resnet18c',
                                    'resnet18d')
  assert 'resnet152d' in models.MODEL_NAMES
  model = models.create_model('resnet101b', num_classes=7)
  assert (model.variant, model.block, tuple(model.stage_sizes),
          model.num_classes) == ('B', 'bottleneck', (3, 4, 23, 3), 7)
  assert models.ResNet50().variant == 'v1'  # Plain names: the baseline.
  assert models.ResNet50().num_classes == 1000
  assert models.ResNet34D(10, small_stem=True).small_stem
  assert models.create_model('ResNet50D').variant == 'D'
  assert models.ResNet152C.__name__ == 'ResNet152C'


def test_unknown_model_name_lists_known_names():
  with pytest.raises(ValueError, match='resnet50d') as error:
    models.create_model('resnet51')
  assert 'resnet51' in str(error.value)
  assert 'resnet18' in str(error.value)


@pytest.mark.parametrize('field, value, allowed', [
    ('variant', 'E', "'v1', 'B', 'C', 'D'"),
    ('block', 'preact', "'basic', 'bottleneck'"),
    ('norm', 'layer', "'batch', 'group'"),
    ('kernel_init', 'he_uniform', "'he_normal', 'xavier_uniform'"),
])
def test_invalid_option_raises(field, value, allowed):
  options = dict(stage_sizes=(1,), block='basic', num_classes=10)
  options[field] = value
  with pytest.raises(ValueError) as error:
    resnet.ResNet(**options)
  message = str(error.value)
  assert field in message and repr(value) in message and allowed in message


@pytest.mark.parametrize('options', [
    dict(stage_sizes=()), dict(stage_sizes=(2, 0)), dict(num_classes=0),
    dict(width_multiplier=0.0)])
def test_invalid_sizes_raise(options):
  all_options = dict(stage_sizes=(1,), block='basic', num_classes=10)
  all_options.update(options)
  with pytest.raises(ValueError):
    resnet.ResNet(**all_options)


def test_variant_of_named_constructor_cannot_be_overridden():
  with pytest.raises(TypeError):
    models.ResNet50D(variant='B')


def test_models_import_nothing_from_training_code():
  with open(resnet.__file__) as f:
    import_lines = [line for line in f
                    if line.startswith(('import ', 'from '))]
  assert import_lines
  for line in import_lines:
    assert 'bagtricks' not in line and 'tensorflow' not in line, line
