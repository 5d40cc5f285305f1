"""Greedy channel selection of a detector's trunk by auxiliary losses: DCP and LCP.

Both choose, block by block in network order, which inner channels of a basic block to keep
(the input channels of its ``conv2``, kernel W; ``pruning`` rebuilds the smaller network).

**DCP** (Zhuang et al. 2018, "Discrimination-aware Channel Pruning"): for block b the loss is

  L(W) = M(W) + λ L_A(W),   M(W) = 1/(2Q) ‖O_b − O*_b‖²_F,

the reconstruction M of the block's output O_b from the unpruned network's O*_b on the same
images (the earlier blocks already pruned; Q the images × positions), and L_A the loss of an
auxiliary network on the output of the block's stage. Starting from no channel (W = 0), the
channel j with the largest ‖∂L/∂W_{:,:,j,:}‖²_F joins the kept set, the kept channels' W
(from the unpruned weights) take gradient steps on L, and so on until the block keeps its
count. DCP adds one channel per round; here ``rounds`` rounds add the count in equal parts
(the cheaper form). DCP's auxiliary loss is a classifier's; on a detector, here, the
classification of sampled default boxes from their RoIAlign-pooled features.

**LCP** (Xie et al. 2020, "Localization-aware Channel Pruning for Object Detection") keeps
DCP's greedy selection and changes the auxiliary network so that the kept channels carry
where objects are, not only what they are: the features of each sampled default box d and of
its *contextual* box — the smallest box enclosing d and its ground truth g, so that a default
box that holds part of the object still sees all of it — are pooled by RoIAlign and
concatenated; the loss is classification plus an IoU-based regression of the box,

  L_A = (1/N_pos) (Σ_i CE(c_i, y_i) + Σ_{i ∈ Pos} (1 − GIoU(decode(t_i, d_i), g_i))),

GIoU as in ``boxes.paired_giou``. (The paper's full text could not be read here; this follows
its abstract and DCP's formulation, with GIoU standing for its IoU-based loss.)

The auxiliary networks (one per trunk stage) are trained first on the unpruned, frozen trunk.
Default boxes are sampled per image: up to ``positives`` matched ones (IoU ≥ the task's
threshold, ``boxes.match``) and ``negatives`` unmatched ones, at random from a fixed seed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, List, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from bagtricks import boxes, losses, pruning, state
from models import ssd
from models.resnet import BasicBlock

METHODS = ("dcp", "lcp")


@dataclasses.dataclass(frozen=True)
class SelectionSettings:
  """How the auxiliary networks are trained and the channels chosen (``config.pruning``)."""
  aux_steps: int = 300
  aux_lr: float = 1e-3
  aux_hidden: int = 64
  roi_bins: int = 2
  positives: int = 16
  negatives: int = 48
  rounds: int = 4
  steps_per_round: int = 10
  weight_lr: float = 0.01
  aux_weight: float = 1.0
  iou_threshold: float = 0.5
  seed: int = 0


class AuxiliaryNet(nn.Module):
  """Sampled default boxes of one feature map → ``(class logits [B, K, C + 1], box offsets
  [B, K, 4])``, from RoIAlign of the default box (DCP) and of its contextual box (LCP)."""
  num_classes: int
  context: bool
  bins: int = 2
  hidden: int = 64

  @nn.compact
  def __call__(self, feature_map, default_boxes, context_boxes):
    pool = jax.vmap(lambda f, r: boxes.roi_align(f, r, self.bins))
    batch, count = default_boxes.shape[:2]
    x = pool(feature_map, default_boxes).reshape(batch, count, -1)
    if self.context:
      x = jnp.concatenate([x, pool(feature_map, context_boxes).reshape(batch, count, -1)], -1)
    x = nn.relu(nn.Dense(self.hidden)(x))
    return nn.Dense(self.num_classes + 1)(x), nn.Dense(4)(x)


def image_samples(rng, anchors, gt_boxes, gt_classes, gt_valid, iou_threshold: float,
                  positives: int, negatives: int) -> Dict[str, jnp.ndarray]:
  """One image's sampled default boxes (K = positives + negatives rows).

  Returns:
    ``default`` and ``context`` ``[K, 4]`` boxes (the context of a negative is itself),
    ``truth [K, 4]`` the matched ground truth, ``label [K]`` (0 = background, else class + 1),
    ``positive [K]`` and ``valid [K]`` (a row that found no box of its kind is padding).
  """
  index, positive = boxes.match(anchors, gt_boxes, gt_valid, iou_threshold)
  noise = jax.random.uniform(rng, positive.shape)
  _, pos_rows = lax.top_k(jnp.where(positive, 1.0 + noise, noise - 1.0), positives)
  _, neg_rows = lax.top_k(jnp.where(positive, -1.0, noise), negatives)
  rows = jnp.concatenate([pos_rows, neg_rows])
  is_positive = jnp.concatenate([positive[pos_rows], jnp.zeros(negatives, bool)])
  valid = jnp.concatenate([positive[pos_rows], ~positive[neg_rows]])
  default, truth = anchors[rows], gt_boxes[index[rows]]
  context = jnp.where(is_positive[:, None], boxes.enclosing(default, truth), default)
  label = jnp.where(is_positive, gt_classes[index[rows]] + 1, 0)
  return {"default": default, "context": context, "truth": truth, "label": label,
          "positive": is_positive, "valid": valid}


def sample_boxes(rng, anchors, batch, settings: SelectionSettings) -> Dict[str, jnp.ndarray]:
  """``image_samples`` of every image of ``batch`` (its ``boxes``, ``classes``, ``valid``)."""
  rngs = jax.random.split(rng, batch["boxes"].shape[0])
  return jax.vmap(image_samples, in_axes=(0, None, 0, 0, 0, None, None, None))(
      rngs, anchors, batch["boxes"], batch["classes"], batch["valid"],
      settings.iou_threshold, settings.positives, settings.negatives)


def auxiliary_loss(logits, offsets, samples, localization: bool) -> jnp.ndarray:
  """L_A (module docstring): classification of every valid sampled box, plus 1 − GIoU of the
  positives' decoded boxes with ``localization``; over the positives' count."""
  count = jnp.maximum(jnp.sum(samples["positive"]), 1)
  ce = losses.classification_loss(logits, samples["label"])
  loss = jnp.sum(jnp.where(samples["valid"], ce, 0.0))
  if localization:
    predicted = boxes.decode(offsets, samples["default"])
    giou = boxes.paired_giou(predicted, samples["truth"])
    loss += jnp.sum(jnp.where(samples["positive"], 1.0 - giou, 0.0))
  return loss / count


def reconstruction(output, target) -> jnp.ndarray:
  """M = 1/(2Q) ‖O − O*‖²_F, Q the images × positions of ``[B, H, W, C]`` maps."""
  return 0.5 * jnp.sum(jnp.square(output - target)) / math.prod(output.shape[:3])


def with_conv2_kernels(trunk_params, kernels: Dict[str, jnp.ndarray]) -> Dict:
  """``trunk_params`` with the conv2 kernel of every block of ``kernels`` replaced."""
  params = dict(trunk_params)
  for name, kernel in kernels.items():
    params[name] = {**params[name], "conv2": {**params[name]["conv2"], "kernel": kernel}}
  return params


class Selector:
  """DCP's or LCP's greedy channel selection for one trained SSD (module docstring).

  Args:
    model: the unpruned ``models.ssd.SSD``.
    variables: its ``{'params', 'batch_stats'}``.
    anchors: its default boxes ``[A, 4]``.
    batches: calibration batches (``image``, ``boxes``, ``classes``, ``valid``; NumPy).
    method: ``'dcp'`` or ``'lcp'``.
    settings: ``SelectionSettings``.
  """

  def __init__(self, model: ssd.SSD, variables, anchors, batches: Sequence[Dict],
               method: str, settings: SelectionSettings):
    if method not in METHODS:
      raise ValueError(f"method={method!r} is unknown; use one of {METHODS}.")
    self.settings = settings
    self.localization = method == "lcp"
    self.trunk = ssd.trunk_of(model, conv_algorithm="native", axis_name=None)
    self.params = variables["params"]["trunk"]
    self.batch_stats = variables["batch_stats"]["trunk"]
    self.names = pruning.block_names(self.params)
    self.stages = sorted({pruning.stage_of(name) for name in self.names})
    self.aux = AuxiliaryNet(model.num_classes, context=self.localization,
                            bins=settings.roi_bins, hidden=settings.aux_hidden)
    rng = jax.random.PRNGKey(settings.seed)
    sample = jax.jit(sample_boxes, static_argnums=3)
    self.batches = [dict(b, samples=sample(jax.random.fold_in(rng, i), anchors, b, settings))
                    for i, b in enumerate(batches)]
    self.kernels = {n: jnp.asarray(self.params[n]["conv2"]["kernel"]) for n in self.names}
    self._forward = jax.jit(self.forward)
    # The unpruned trunk's stage maps (the auxiliary nets' inputs) and block outputs (M's
    # targets), from one pass.
    self.stage_maps, self.targets = zip(*(self._forward(self.kernels, b["image"])
                                          for b in self.batches))
    self._value_and_grad = jax.jit(jax.value_and_grad(self.loss))

  def forward(self, kernels, images) -> Tuple[Tuple, Dict]:
    """The trunk with these conv2 kernels → (stage maps, every block's output)."""
    stages, captured = self.trunk.apply(
        {"params": with_conv2_kernels(self.params, kernels), "batch_stats": self.batch_stats},
        images, train=False,
        capture_intermediates=lambda module, _: isinstance(module, BasicBlock))
    found = captured["intermediates"]
    return stages, {n: found[n]["__call__"][0] for n in self.names}

  def aux_losses(self, aux_params, stages, samples) -> jnp.ndarray:
    """``[stages]`` every stage's auxiliary loss."""
    return jnp.stack([auxiliary_loss(*self.aux.apply(aux_params[f"stage{s}"], stages[s - 1],
                                                     samples["default"], samples["context"]),
                                     samples, self.localization) for s in self.stages])

  def loss(self, kernels, aux_params, batch, targets, block_weights, stage_weights):
    """L = M + λ L_A for the block and stage the one-hot weights pick (one compile for all)."""
    stages, outputs = self.forward(kernels, batch["image"])
    rebuilt = sum(w * reconstruction(outputs[n], targets[n])
                  for w, n in zip(block_weights, self.names))
    aux = jnp.sum(stage_weights * self.aux_losses(aux_params, stages, batch["samples"]))
    return rebuilt + self.settings.aux_weight * aux

  def train_auxiliary(self) -> Tuple[Dict, List[float]]:
    """Every stage's auxiliary network trained on the unpruned, frozen trunk (Adam).

    Returns:
      ``(aux_params, the summed auxiliary loss every 50 steps)``.
    """
    first, features = self.batches[0], self.stage_maps
    rng = jax.random.PRNGKey(self.settings.seed + 1)
    aux_params = {f"stage{s}": state.init_variables(self.aux, jax.random.fold_in(rng, s),
                                                    features[0][s - 1],
                                                    first["samples"]["default"],
                                                    first["samples"]["context"])
                  for s in self.stages}
    optimizer = optax.adam(self.settings.aux_lr)
    opt_state = optimizer.init(aux_params)

    @jax.jit
    def step(aux_params, opt_state, stages, samples):
      loss, grads = jax.value_and_grad(
          lambda p: jnp.sum(self.aux_losses(p, stages, samples)))(aux_params)
      updates, opt_state = optimizer.update(grads, opt_state)
      return optax.apply_updates(aux_params, updates), opt_state, loss

    history = []
    for t in range(self.settings.aux_steps):
      k = t % len(self.batches)
      aux_params, opt_state, loss = step(aux_params, opt_state, features[k],
                                         self.batches[k]["samples"])
      if t % 50 == 0 or t == self.settings.aux_steps - 1:
        history.append(float(loss))
    return aux_params, history

  def _gradient(self, aux_params, name: str, batch_index: int):
    block = jnp.asarray([float(n == name) for n in self.names])
    stage = jnp.asarray([float(s == pruning.stage_of(name)) for s in self.stages])
    loss, grads = self._value_and_grad(self.kernels, aux_params, self.batches[batch_index],
                                       self.targets[batch_index], block, stage)
    return loss, grads[name]

  def select_block(self, aux_params, name: str, keep: int) -> np.ndarray:
    """Greedy selection of ``keep`` inner channels of block ``name``; leaves the block's
    kept conv2 weights, updated, in ``self.kernels``.

    Returns:
      The kept channel indices, increasing.
    """
    original = self.kernels[name]
    width = original.shape[2]
    mask = np.zeros(width, bool)
    self.kernels[name] = jnp.zeros_like(original)
    for r in range(self.settings.rounds):
      add = math.ceil((keep - mask.sum()) / (self.settings.rounds - r))
      if add <= 0:
        continue
      grad = sum(self._gradient(aux_params, name, k)[1] for k in range(len(self.batches)))
      importance = np.array(jnp.sum(jnp.square(grad), axis=(0, 1, 3)))
      importance[mask] = -np.inf
      before = mask.copy()
      mask[pruning.top_channels(importance, add)] = True
      keep_mask = jnp.asarray(mask, original.dtype)[None, None, :, None]
      # Newly kept channels start from the unpruned weights; the earlier ones keep theirs.
      new = jnp.asarray(mask & ~before, original.dtype)[None, None, :, None]
      self.kernels[name] = self.kernels[name] + new * original
      for t in range(self.settings.steps_per_round):
        _, grad = self._gradient(aux_params, name, t % len(self.batches))
        self.kernels[name] = self.kernels[name] - self.settings.weight_lr * grad * keep_mask
    return np.flatnonzero(mask)

  def select(self, fraction: float, layers: Sequence[str] = (),
             progress: Callable[[str], None] = lambda _: None):
    """Every block of ``layers`` (default all) pruned by ``fraction`` in network order.

    Returns:
      ``(kept {block: indices}, trunk params with the updated conv2 kernels, aux history)``.
    """
    aux_params, history = self.train_auxiliary()
    progress(f"auxiliary losses {history[0]:.3f} → {history[-1]:.3f}")
    kept = {}
    for name in layers or self.names:
      width = self.kernels[name].shape[2]
      kept[name] = self.select_block(aux_params, name, pruning.kept_channels(width, fraction))
      progress(f"{name}: kept {len(kept[name])} of {width}")
    return kept, with_conv2_kernels(self.params, self.kernels), history
