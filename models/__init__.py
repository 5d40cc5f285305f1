"""Flax models and their registry: ResNets, RegNets, differentiable trees and forests, an MLP,
graph neural networks, Transformers.

``create_model_from_config(config, dataset_info)`` builds ``config.model``; ``get_spec(name)``
tells what the training loop needs from a model (``registry.ModelSpec``); ``register_model``
adds one. ``create_model(name, **kwargs)`` builds a module by name from plain arguments.
"""

import dataclasses
from typing import Any, List, Optional

import jax.numpy as jnp
import optax

from models import explain
from models import gaitset
from models import graph
from models import regnet
from models import resnet
from models import transformer
from models.forest import decision_unit_subsets
from models.forest import fixed_point_leaf_update
from models.forest import forest_log_probs
from models.forest import LEAF_LEARNING
from models.forest import NeuralDecisionForest
from models.gaitset import GaitSet
from models.latent_truth import LatentTruthNet
from models.latent_truth import near_identity_logits
from models.layers import DropBlock
from models.mlp import MLP
from models.registry import build_module
from models.registry import config_problems
from models.registry import create_model_from_config
from models.registry import data_problems
from models.registry import get_spec
from models.registry import model_names
from models.registry import ModelSpec
from models.registry import positive
from models.registry import register_model
from models.registry import spec_of_module
from models.regions import RegionEncoder
from models.regnet import RegNet
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
from models.ssd import SSD
from models.resnet import ResNet34
from models.resnet import ResNet34B
from models.resnet import ResNet34C
from models.resnet import ResNet34D
from models.resnet import ResNet50
from models.resnet import ResNet50B
from models.resnet import ResNet50C
from models.resnet import ResNet50D
from models.transformer import PatchTransformerClassifier
from models.transformer import Transformer
from models.transformer import TransformerLanguageModel
from models.trees import DNDT
from models.trees import SoftDecisionTree

# ------------------------------------------------------------------------------------------
# ResNets and RegNets: the same options (norm, zero-γ, DropBlock, dtype) and the same spec.


def _resnet_spec(name: str, create=resnet.create_model, check_config=None) -> ModelSpec:

  def build(kwargs, *, num_outputs=None, dtype=jnp.float32, axis_name=None):
    kwargs = {"dtype": dtype, "axis_name": axis_name, **kwargs}
    if num_outputs is not None:  # Else the constructor's default (1000 ImageNet classes).
      kwargs["num_classes"] = num_outputs
    return create(name, **kwargs)

  def step_kwargs(kwargs, total_steps):
    rate = kwargs.get("drop_block_rate", 0.0)
    if not rate:
      return {}
    # DropBlock paper: keep_prob decreases linearly from 1 to its target over training.
    return {"drop_block_rate": optax.linear_schedule(0.0, rate, total_steps)}

  spec = ModelSpec(build=build, step_kwargs=step_kwargs)
  return spec if check_config is None else dataclasses.replace(spec, check_config=check_config)


def _regnet_design_problems(kwargs) -> List[str]:
  fields = {f.name for f in dataclasses.fields(regnet.RegNetDesign)}
  missing = sorted(f for f in ("depth", "w0", "wa", "wm", "group_width") if f not in kwargs)
  if missing:
    return [f"config.model.{f} is missing: a 'regnet' needs depth, w0, wa, wm and group_width "
            "(or use a named preset such as 'regnetx_002')." for f in missing]
  design = regnet.RegNetDesign(**{k: v for k, v in kwargs.items() if k in fields})
  return ["config.model." + problem for problem in design.problems()]


for _name in resnet.MODEL_NAMES:
  register_model(_name, _resnet_spec(_name))
for _name in regnet.MODEL_NAMES:
  register_model(_name, _resnet_spec(_name, regnet.create_model))
# Any point of the RegNet design space: config.model.{depth, w0, wa, wm, group_width, ...}.
register_model("regnet", _resnet_spec("regnet", lambda name, **kwargs: RegNet(**kwargs),
                                      check_config=_regnet_design_problems))

# ------------------------------------------------------------------------------------------
# Trees, forests and the MLP.


def _dndt_checks(kwargs) -> List[str]:
  return (positive(kwargs, "num_cut", integer=True) + positive(kwargs, "num_trees", integer=True)
          + positive(kwargs, "temperature"))


def _dndt_data_checks(kwargs, info) -> List[str]:
  try:
    DNDT(num_classes=info.num_classes or 1, **kwargs).check_size(info.input_shape[-1])
  except ValueError as e:
    return [f"config.model: {e}"]
  return []


def _inner_model(kwargs, field: str, default=None) -> tuple:
  """``(name, arguments)`` of the model a wrapper builds from ``kwargs[field]`` (a dict with
  the inner model's ``name``): an ndf's trunk, a latent-truth net's backbone."""
  inner = dict(kwargs.get(field) or default or {})
  return str(inner.pop("name", "")), inner


def _build_inner_model(kwargs, field: str, wrapper: str, num_outputs, dtype, axis_name,
                       default=None):
  """The inner model of ``kwargs[field]``, built with ``num_outputs`` outputs."""
  name, inner = _inner_model(kwargs, field, default)
  if name.lower() == wrapper:
    raise ValueError(f"the {field} of a {wrapper!r} model cannot itself be a {wrapper!r}.")
  return get_spec(name).build(inner, num_outputs=num_outputs, dtype=dtype, axis_name=axis_name)


def _inner_model_problems(kwargs, field: str, wrapper: str, default=None) -> List[str]:
  """``config.model.<field>.name`` must name a registered model other than the wrapper."""
  name, _ = _inner_model(kwargs, field, default)
  if name.lower() == wrapper or (name.lower() not in model_names() and ":" not in name):
    return [f"config.model.{field}.name={name!r} is unknown; use one of "
            f"{tuple(n for n in model_names() if n != wrapper)}."]
  return []


# An ndf without a trunk reads the features directly.
_NDF_DEFAULT_TRUNK = {"name": "mlp", "hidden": ()}


def _ndf_build(kwargs, *, num_outputs=None, dtype=jnp.float32, axis_name=None):
  kwargs = dict(kwargs)
  kwargs["trunk"] = _build_inner_model(kwargs, "trunk", "ndf",
                                       kwargs.get("num_decision_units", 0), dtype, axis_name,
                                       default=_NDF_DEFAULT_TRUNK)
  return build_module(NeuralDecisionForest, kwargs, num_outputs=num_outputs, dtype=dtype)


def _ndf_checks(kwargs) -> List[str]:
  problems = positive(kwargs, "depth", integer=True) + positive(kwargs, "num_trees", integer=True)
  leaf_learning = kwargs.get("leaf_learning", "fixed_point")
  if leaf_learning not in LEAF_LEARNING:
    problems.append(f"config.model.leaf_learning={leaf_learning!r} is unknown; use one of "
                    f"{LEAF_LEARNING}.")
  return problems + _inner_model_problems(kwargs, "trunk", "ndf", default=_NDF_DEFAULT_TRUNK)


def _ndf_data_checks(kwargs, info) -> List[str]:
  del info
  try:
    decision_unit_subsets(kwargs["num_decision_units"], kwargs.get("num_trees", 10),
                          kwargs.get("depth", 5), kwargs.get("feature_seed", 0))
  except ValueError as e:
    return [f"config.model: {e}"]
  return []


def _ndf_task(kwargs) -> str:
  # Fixed-point leaves are fitted by the forest task, which holds π in its state.
  return "forest" if kwargs.get("leaf_learning", "fixed_point") == "fixed_point" else (
      "classification")


register_model("dndt", spec_of_module(
    DNDT, input_key="features", report=explain.dndt_report, check_config=_dndt_checks,
    check_for_data=_dndt_data_checks))
register_model("sdt", spec_of_module(
    SoftDecisionTree, default_task=lambda kwargs: "soft_tree", report=explain.soft_tree_report,
    check_config=lambda kwargs: positive(kwargs, "depth", integer=True)))
register_model("ndf", ModelSpec(build=_ndf_build, default_task=_ndf_task,
                                check_config=_ndf_checks, check_for_data=_ndf_data_checks))
register_model("mlp", MLP)

# ------------------------------------------------------------------------------------------
# The Latent Truth Net: any backbone and one transition matrix per annotator.


def _latent_truth_build(kwargs, *, num_outputs=None, dtype=jnp.float32, axis_name=None):
  kwargs = dict(kwargs)
  kwargs["backbone"] = _build_inner_model(kwargs, "backbone", "latent_truth", num_outputs,
                                          dtype, axis_name)
  return build_module(LatentTruthNet, kwargs, num_outputs=num_outputs)


def _latent_truth_step_kwargs(kwargs, total_steps):
  name, backbone = _inner_model(kwargs, "backbone")
  return get_spec(name).step_kwargs(backbone, total_steps)


def _latent_truth_checks(kwargs) -> List[str]:
  problems = positive(kwargs, "num_annotators", integer=True)
  diagonal = kwargs.get("init_diagonal", 0.9)
  if not isinstance(diagonal, (int, float)) or not 0.0 < diagonal < 1.0:
    problems.append(f"config.model.init_diagonal={diagonal!r} must be in (0, 1): the initial "
                    "T_k's diagonal (near 1: near the identity).")
  return problems + _inner_model_problems(kwargs, "backbone", "latent_truth")


def _latent_truth_data_checks(kwargs, info) -> List[str]:
  annotations = info.element_spec.get("annotations")
  if annotations is None or len(annotations.shape) != 1:
    return [f"config.model.name='latent_truth' needs per-annotator labels 'annotations' [K], "
            f"and config.dataset.name={info.name!r} has {sorted(info.element_spec)}; use "
            "dataset.name='digits_annotated'."]
  if annotations.shape[0] != kwargs.get("num_annotators"):
    return [f"config.model.num_annotators={kwargs.get('num_annotators')!r} does not match the "
            f"{annotations.shape[0]} annotators of config.dataset.name={info.name!r}; set it "
            f"to {annotations.shape[0]}."]
  return []


register_model("latent_truth", ModelSpec(
    build=_latent_truth_build, default_task=lambda kwargs: "latent_truth",
    step_kwargs=_latent_truth_step_kwargs, check_config=_latent_truth_checks,
    check_for_data=_latent_truth_data_checks))

# ------------------------------------------------------------------------------------------
# Graph neural networks on padded dense graphs.

# The readout each graph target needs (the keys of ``bagtricks.tasks.graph``).
_READOUT_OF_TARGET = {"node_labels": "node", "label": "graph", "answer": "select"}


def _graph_checks(kwargs) -> List[str]:
  readout = kwargs["readout"]
  problems = [] if readout in graph.READOUTS else [
      f"config.model.readout={readout!r} is unknown; use one of {graph.READOUTS}."]
  hidden = kwargs.get("hidden", ())
  if isinstance(hidden, int):
    problems += positive(kwargs, "hidden", integer=True)
  elif any(not isinstance(w, int) or w < 1 for w in hidden):
    problems.append(f"config.model.hidden={tuple(hidden)!r} must be positive layer widths.")
  return problems + _rate_problems({"dropout_rate": 0.0, **kwargs}, ("dropout_rate",))


def _graph_data_checks(kwargs, info) -> List[str]:
  spec = info.element_spec
  if any(k not in spec for k in ("nodes", "adjacency", "node_mask")):
    return [f"the graph models read padded graphs 'nodes', 'adjacency' and 'node_mask', and "
            f"config.dataset.name={info.name!r} has {sorted(spec)}; use a graph dataset "
            "such as 'karate_club'."]
  n = spec["nodes"].shape[0]
  adjacency = spec["adjacency"].shape
  if len(adjacency) != 3 or adjacency[1:] != (n, n) or spec["node_mask"].shape != (n,):
    return [f"config.dataset.name={info.name!r} gives adjacency {adjacency} and node_mask "
            f"{spec['node_mask'].shape} for nodes {spec['nodes'].shape}; they must be "
            f"[edge_types, {n}, {n}] and [{n}]."]
  target = next((k for k in _READOUT_OF_TARGET if k in spec), None)
  readout = kwargs["readout"]
  if target is not None and _READOUT_OF_TARGET[target] != readout:
    return [f"config.model.readout={readout!r} does not fit the {target!r} targets of "
            f"config.dataset.name={info.name!r}; set it to {_READOUT_OF_TARGET[target]!r}."]
  return []


def _graph_spec(module_class) -> ModelSpec:
  defaults = {"readout": module_class.readout}
  return spec_of_module(
      module_class, default_task=lambda kwargs: "graph",
      check_config=lambda kwargs: _graph_checks({**defaults, **kwargs}),
      check_for_data=lambda kwargs, info: _graph_data_checks({**defaults, **kwargs}, info))


for _name, _module in graph.GRAPH_MODELS.items():
  register_model(_name, _graph_spec(_module))

# ------------------------------------------------------------------------------------------
# Bags of regions: an image model on every region of every image of a bag.


def _region_encoder_build(kwargs, *, num_outputs=None, dtype=jnp.float32, axis_name=None):
  return RegionEncoder(_build_inner_model(kwargs, "backbone", "region_encoder", num_outputs,
                                          dtype, axis_name))


def _region_encoder_checks(kwargs) -> List[str]:
  problems = _inner_model_problems(kwargs, "backbone", "region_encoder")
  _, backbone = _inner_model(kwargs, "backbone")
  width = backbone.get("feature_dim", 0)
  if not problems and (not isinstance(width, int) or width < 1):
    problems.append(f"config.model.backbone.feature_dim={width!r}: the region encoder weighs "
                    "the regions' features; give the backbone a feature layer (e.g. 64).")
  return problems


def _region_encoder_data_checks(kwargs, info) -> List[str]:
  spec = info.element_spec.get("regions")
  if spec is None or len(spec.shape) not in (4, 5):
    return [f"config.model.name='region_encoder' reads bags of regions 'regions' [bag, "
            f"regions, H, W(, C)], and config.dataset.name={info.name!r} has "
            f"{sorted(info.element_spec)}; use dataset.name='web_digits'."]
  return []


register_model("region_encoder", ModelSpec(
    build=_region_encoder_build, default_task=lambda kwargs: "web_bags", input_key="regions",
    check_config=_region_encoder_checks, check_for_data=_region_encoder_data_checks))

# ------------------------------------------------------------------------------------------
# GaitSet: sets of silhouettes → strip embeddings.


def _gaitset_build(kwargs, *, num_outputs=None, dtype=jnp.float32, axis_name=None):
  del num_outputs, axis_name  # An embedding: no class head, no BatchNorm.
  return build_module(GaitSet, kwargs, num_outputs=None, dtype=dtype)


def _gaitset_checks(kwargs) -> List[str]:
  problems = positive(kwargs, "embedding_dim", integer=True)
  pooling = kwargs.get("set_pooling", "max")
  if pooling not in gaitset.SET_POOLINGS:
    problems.append(f"config.model.set_pooling={pooling!r} is unknown; use one of "
                    f"{gaitset.SET_POOLINGS}.")
  for field in ("channels", "scales"):
    values = kwargs.get(field, (1,))
    if (isinstance(values, int) or not values
        or any(not isinstance(v, int) or v < 1 for v in values)):
      problems.append(f"config.model.{field}={values!r} must be a tuple of positive integers.")
  if len(kwargs.get("channels", (1, 1, 1))) != 3:
    problems.append(f"config.model.channels={kwargs['channels']!r} must be the 3 stages' "
                    "widths (the paper: (32, 64, 128)).")
  return problems


def _gaitset_data_checks(kwargs, info) -> List[str]:
  shape = tuple(info.input_shape)
  if len(shape) not in (3, 4):
    return [f"config.model.name='gaitset' reads sets of silhouettes [frames, height, width], "
            f"and config.dataset.name={info.name!r} gives {shape}; use "
            "dataset.name='gait_walkers'."]
  rows = shape[1] // 4  # Two 2×2 poolings.
  bad = [s for s in kwargs.get("scales", GaitSet.scales) if rows % s]
  if shape[1] % 4 or bad:
    return [f"config.model.scales={tuple(kwargs.get('scales', GaitSet.scales))!r}: each must "
            f"divide the feature map's {rows} rows (config.dataset.height={shape[1]} / 4, "
            "height a multiple of 4); e.g. (1, 2, 4, 8) for height 32."]
  return []


register_model("gaitset", ModelSpec(
    build=_gaitset_build, default_task=lambda kwargs: "gait", input_key="frames",
    check_config=_gaitset_checks, check_for_data=_gaitset_data_checks))

# ------------------------------------------------------------------------------------------
# SSD: default boxes on a ResNet trunk's maps → class logits and box offsets.


def _ssd_checks(kwargs) -> List[str]:
  kwargs = {**_field_defaults(SSD), **kwargs}
  stages = tuple(kwargs["source_stages"])
  problems = []
  if not stages or any(not isinstance(s, int) or not 1 <= s <= len(kwargs["stage_sizes"])
                       for s in stages) or list(stages) != sorted(set(stages)):
    problems.append(f"config.model.source_stages={stages!r} must be increasing trunk stages "
                    f"in 1..{len(kwargs['stage_sizes'])}.")
  ratios = tuple(kwargs["aspect_ratios"])
  if not ratios or any(not isinstance(a, (int, float)) or a <= 0 for a in ratios):
    problems.append(f"config.model.aspect_ratios={ratios!r} must be positive numbers.")
  return problems + positive(kwargs, "extra_width", integer=True)


register_model("ssd", spec_of_module(SSD, default_task=lambda kwargs: "detection",
                                     input_key="image", check_config=_ssd_checks))

# ------------------------------------------------------------------------------------------
# Transformers.

_TRANSFORMER_SIZES = ("d_model", "num_heads", "d_ff", "max_len")


def _rate_problems(kwargs, fields) -> List[str]:
  problems = []
  for field in fields:
    value = kwargs.get(field)
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
        or not 0.0 <= value < 1.0):
      problems.append(f"config.model.{field}={value!r} must be in [0, 1).")
  return problems


def _attention_problems(kwargs, integer_fields) -> List[str]:
  """Checks shared by the Transformer models, on ``kwargs`` completed with the defaults."""
  problems = []
  for field in integer_fields:
    problems += positive(kwargs, field, integer=True)
  problems += _rate_problems(kwargs, ("dropout_rate", "attention_dropout_rate"))
  if not problems and kwargs["d_model"] % kwargs["num_heads"]:
    problems.append(f"config.model.num_heads={kwargs['num_heads']!r} must divide "
                    f"config.model.d_model={kwargs['d_model']!r} (each head has d_model / "
                    "num_heads dimensions).")
  if kwargs.get("position_encoding") not in transformer.POSITION_ENCODINGS:
    problems.append(f"config.model.position_encoding={kwargs.get('position_encoding')!r} is "
                    f"unknown; use one of {transformer.POSITION_ENCODINGS}.")
  return problems


def _field_defaults(module_class) -> dict:
  return {f.name: f.default for f in dataclasses.fields(module_class)
          if f.default is not dataclasses.MISSING}


def _transformer_spec(preset_name: str) -> ModelSpec:
  preset = transformer.PRESETS[preset_name]

  def build(kwargs, *, num_outputs=None, dtype=jnp.float32, axis_name=None):
    del axis_name  # LayerNorm needs no cross-device statistics.
    kwargs = {"dtype": dtype, **preset, **kwargs}
    if num_outputs is not None:  # The task's vocabulary.
      kwargs["vocab_size"] = num_outputs
    return Transformer(**kwargs)

  def check_config(kwargs) -> List[str]:
    kwargs = {**_field_defaults(Transformer), **preset, **kwargs}
    problems = _attention_problems(
        kwargs, _TRANSFORMER_SIZES + ("num_encoder_layers", "num_decoder_layers"))
    target_vocab_size = kwargs.get("target_vocab_size")
    if target_vocab_size is not None:
      problems += positive(kwargs, "target_vocab_size", integer=True)
    return problems

  return ModelSpec(build=build, default_task=lambda kwargs: "seq2seq", input_key=None,
                   check_config=check_config)


def _patch_transformer_checks(kwargs) -> List[str]:
  kwargs = {**_field_defaults(PatchTransformerClassifier), **kwargs}
  return _attention_problems(kwargs, ("patch_size", "d_model", "num_heads", "d_ff",
                                      "num_layers"))


for _name in transformer.PRESETS:
  register_model(_name, _transformer_spec(_name))
register_model("patch_transformer", spec_of_module(
    PatchTransformerClassifier, check_config=_patch_transformer_checks))

# The built-in names (``model_names()`` adds any registered later).
MODEL_NAMES = model_names()


def create_model(name: str, *, num_classes: Optional[int] = None, dtype: Any = jnp.float32,
                 axis_name: Optional[str] = None, **kwargs: Any):
  """Builds a registered model by name from plain keyword arguments.

  Args:
    name: a registered name (case-insensitive): a ResNet such as ``'resnet50d'``, a RegNet
      such as ``'regnetx_002'`` or ``'regnety_080'`` (timm's names), ``'dndt'``,
      ``'sdt'`` (soft decision tree), ``'ndf'`` (neural decision forest), ``'mlp'``,
      ``'transformer'`` (encoder-decoder, the paper's base model by default),
      ``'transformer_base'``, ``'transformer_tiny'``, ``'patch_transformer'`` (a small ViT
      image classifier); or an import path ``'module:attribute'``.
    num_classes: the head width; for the sequence-to-sequence Transformers, the vocabulary
      size.
    dtype: compute dtype.
    axis_name: the data-parallel axis, given to the models that reduce across devices.
    **kwargs: constructor arguments, e.g. ``width_multiplier``. For ``'ndf'``, ``trunk`` is a
      dict with the trunk's ``name`` and arguments; the trunk is built with
      ``num_decision_units`` outputs.

  Returns:
    The Flax module.

  Raises:
    ValueError: ``name`` is unknown (the message lists the known names), or bad arguments.
  """
  return get_spec(name).build(kwargs, num_outputs=num_classes, dtype=dtype, axis_name=axis_name)


__all__ = [
    'config_problems',
    'create_model',
    'create_model_from_config',
    'data_problems',
    'decision_unit_subsets',
    'DNDT',
    'DropBlock',
    'fixed_point_leaf_update',
    'LatentTruthNet',
    'near_identity_logits',
    'forest_log_probs',
    'GaitSet',
    'gaitset',
    'get_spec',
    'MLP',
    'MODEL_NAMES',
    'model_names',
    'ModelSpec',
    'NeuralDecisionForest',
    'PatchTransformerClassifier',
    'RegionEncoder',
    'SSD',
    'RegNet',
    'regnet',
    'register_model',
    'SoftDecisionTree',
    'transformer',
    'Transformer',
    'TransformerLanguageModel',
    'ResNet',
    'ResNet18', 'ResNet18B', 'ResNet18C', 'ResNet18D',
    'ResNet34', 'ResNet34B', 'ResNet34C', 'ResNet34D',
    'ResNet50', 'ResNet50B', 'ResNet50C', 'ResNet50D',
    'ResNet101', 'ResNet101B', 'ResNet101C', 'ResNet101D',
    'ResNet152', 'ResNet152B', 'ResNet152C', 'ResNet152D',
]
