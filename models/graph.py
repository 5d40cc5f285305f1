"""Graph neural networks on dense padded batches (Zhou et al., "Graph Neural Networks: A Review
of Methods and Applications", 2020): GCN, GAT, GraphSAGE and GGNN.

Every model reads the same three arrays, so a batch of graphs of different sizes has one shape
and nothing recompiles per graph:

* ``nodes`` ``[batch, N, F]``: node features (zeros at padded nodes);
* ``adjacency`` ``[batch, E, N, N]``: ``adjacency[b, e, i, j] = 1`` for an edge of type e
  from node i to node j (an undirected graph has both directions and E = 1);
* ``node_mask`` ``[batch, N]``: 1 for the graph's nodes, 0 for padding.

Padded nodes send nothing and their outputs are zero, so a real node's output is the same
whatever the padded size; every layer is permutation-equivariant (permuting the nodes
permutes the outputs). ``readout`` chooses the output: ``'node'`` gives logits
``[batch, N, num_classes]``, ``'graph'`` ``[batch, num_classes]`` pooled over the real nodes,
and ``'select'`` (GGNN's node selection) one score per node ``[batch, N]``, −10⁹ at padding
(``num_classes`` is then unused).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

READOUTS = ("node", "graph", "select")
NEG_INF = -1e9


def real_edges(adjacency: jnp.ndarray, node_mask: jnp.ndarray) -> jnp.ndarray:
  """``adjacency`` ``[batch, E, N, N]`` with every edge that touches a padded node removed."""
  pair = node_mask[:, :, None] * node_mask[:, None, :]
  return adjacency * pair[:, None].astype(adjacency.dtype)


def gcn_adjacency(adjacency: jnp.ndarray, node_mask: jnp.ndarray) -> jnp.ndarray:
  """Kipf & Welling's renormalized adjacency Â = D̃^−½ (A + I) D̃^−½, D̃_ii = Σ_j (A + I)_ij.

  Edge types are merged (A = Σ_e A_e, clipped at 1). Padded nodes get no self-loop, so their
  rows and columns of Â are zero.

  Args:
    adjacency: ``[batch, E, N, N]``.
    node_mask: ``[batch, N]``.

  Returns:
    Â ``[batch, N, N]``.
  """
  merged = jnp.minimum(jnp.sum(real_edges(adjacency, node_mask), axis=1), 1.0)
  with_self = merged + jax.vmap(jnp.diag)(node_mask.astype(merged.dtype))
  degree = jnp.sum(with_self, axis=-1)
  inv_sqrt = jnp.where(degree > 0, jax.lax.rsqrt(jnp.maximum(degree, 1e-12)), 0.0)
  return inv_sqrt[:, :, None] * with_self * inv_sqrt[:, None, :]


def masked_mean_pool(h: jnp.ndarray, node_mask: jnp.ndarray) -> jnp.ndarray:
  """``[batch, N, F]`` → ``[batch, F]``: the mean over each graph's real nodes."""
  mask = node_mask[..., None].astype(h.dtype)
  return jnp.sum(h * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)


def _mask_nodes(h: jnp.ndarray, node_mask: jnp.ndarray) -> jnp.ndarray:
  return h * node_mask[..., None].astype(h.dtype)


class GCNLayer(nn.Module):
  """One graph convolution H' = Â H W (Kipf & Welling 2017, eq. 2; the nonlinearity is the
  caller's).

  Attributes:
    features: output width.
    dtype: computation dtype.
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: jnp.ndarray, a_hat: jnp.ndarray) -> jnp.ndarray:
    """``h`` ``[batch, N, F]``, ``a_hat`` ``[batch, N, N]`` → ``[batch, N, features]``."""
    hw = nn.Dense(self.features, use_bias=False, dtype=self.dtype)(h)
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    return jnp.einsum("bij,bjf->bif", a_hat.astype(hw.dtype), hw) + bias


class GATLayer(nn.Module):
  """Graph attention (Veličković et al. 2018, eqs. 1–4), K heads over each node's neighbours
  and itself:

      e_ij = LeakyReLU(aᵀ [W h_i ‖ W h_j]),  α_ij = softmax_{j ∈ N(i) ∪ {i}} e_ij,
      h'_i = ‖_k Σ_j α^k_ij W^k h_j   (concatenated; averaged when ``concat`` is False).

  Attributes:
    features: width per head.
    num_heads: K.
    concat: concatenate the heads (hidden layers) or average them (the output layer).
    attention_dropout: dropout on α in training (the paper: 0.6).
    negative_slope: of the LeakyReLU (0.2).
    dtype: computation dtype.
  """
  features: int
  num_heads: int = 8
  concat: bool = True
  attention_dropout: float = 0.0
  negative_slope: float = 0.2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h, adjacency, node_mask, train: bool = False):
    """``h`` ``[batch, N, F]`` → ``[batch, N, num_heads · features]`` (or ``features``)."""
    z = nn.DenseGeneral((self.num_heads, self.features), use_bias=False, dtype=self.dtype)(h)
    attend_source = self.param("attention_source", nn.initializers.lecun_normal(),
                               (self.num_heads, self.features))
    attend_target = self.param("attention_target", nn.initializers.lecun_normal(),
                               (self.num_heads, self.features))
    score_i = jnp.einsum("bnkf,kf->bkn", z, attend_source.astype(z.dtype))
    score_j = jnp.einsum("bnkf,kf->bkn", z, attend_target.astype(z.dtype))
    logits = nn.leaky_relu(score_i[..., :, None] + score_j[..., None, :], self.negative_slope)
    merged = jnp.sum(real_edges(adjacency, node_mask), axis=1)
    # Undirected neighbourhoods: an edge in either direction, and the node itself.
    allowed = (merged + jnp.swapaxes(merged, 1, 2) + jnp.eye(h.shape[1])) > 0
    allowed = allowed & (node_mask[:, None, :] > 0)
    logits = jnp.where(allowed[:, None], logits.astype(jnp.float32), NEG_INF)
    alpha = jax.nn.softmax(logits, axis=-1).astype(z.dtype)
    alpha = nn.Dropout(self.attention_dropout, deterministic=not train)(alpha)
    out = jnp.einsum("bkij,bjkf->bikf", alpha, z)
    bias = self.param("bias", nn.initializers.zeros, (self.num_heads, self.features))
    out = out + bias
    if self.concat:
      return out.reshape(out.shape[:2] + (-1,))
    return jnp.mean(out, axis=2)


class SAGELayer(nn.Module):
  """GraphSAGE with the mean aggregator (Hamilton et al. 2017, Algorithm 1, lines 4–5 and 7):

      h'_v = W · [h_v ‖ mean_{u ∈ N(v)} h_u],  then h'_v / ‖h'_v‖₂ when ``normalize``.

  N(v) are v's neighbours along any edge type and either direction; a node without
  neighbours aggregates zeros. The nonlinearity σ is the caller's (before the normalization
  in the paper; here ``activation`` is applied first for that reason).

  Attributes:
    features: output width.
    normalize: divide each output by its L2 norm.
    activation: σ; None for the output layer.
    dtype: computation dtype.
  """
  features: int
  normalize: bool = False
  activation: Any = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h, adjacency, node_mask):
    merged = jnp.sum(real_edges(adjacency, node_mask), axis=1)
    neighbours = ((merged + jnp.swapaxes(merged, 1, 2)) > 0).astype(h.dtype)
    count = jnp.sum(neighbours, axis=-1, keepdims=True)
    mean = jnp.einsum("bij,bjf->bif", neighbours, h) / jnp.maximum(count, 1.0)
    out = nn.Dense(self.features, dtype=self.dtype)(jnp.concatenate([h, mean], axis=-1))
    if self.activation is not None:
      out = self.activation(out)
    if self.normalize:
      out = out * jax.lax.rsqrt(jnp.maximum(jnp.sum(out * out, -1, keepdims=True), 1e-12))
    return out


class _Readout(nn.Module):
  """Node logits, pooled graph logits or one node-selection score, from node states."""
  num_classes: int
  readout: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h, node_mask):
    if self.readout == "graph":
      return nn.Dense(self.num_classes, dtype=self.dtype)(masked_mean_pool(h, node_mask))
    if self.readout == "select":
      score = nn.Dense(1, dtype=self.dtype)(h)[..., 0]
      return jnp.where(node_mask > 0, score, NEG_INF)
    return _mask_nodes(nn.Dense(self.num_classes, dtype=self.dtype)(h), node_mask)


class GCN(nn.Module):
  """A graph convolutional network (Kipf & Welling 2017, eq. 9 for two layers):
  Z = Â ReLU(Â X W⁰) W¹, with dropout before each layer.

  With ``readout='node'`` the last graph convolution gives the logits (the paper's model);
  otherwise every graph convolution is hidden and a dense readout follows.

  Attributes:
    num_classes: output classes.
    hidden: widths of the hidden graph convolutions (the paper: (16,)).
    dropout_rate: before every layer (the paper: 0.5).
    readout: one of ``READOUTS``.
    dtype: computation dtype.
  """
  num_classes: int = 1
  hidden: Sequence[int] = (16,)
  dropout_rate: float = 0.5
  readout: str = "node"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, nodes, adjacency, node_mask, train: bool = False):
    a_hat = gcn_adjacency(adjacency.astype(jnp.float32), node_mask.astype(jnp.float32))
    h = nodes.astype(self.dtype)
    widths = tuple(self.hidden) + ((self.num_classes,) if self.readout == "node" else ())
    for i, width in enumerate(widths):
      h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
      h = GCNLayer(width, dtype=self.dtype)(h, a_hat)
      if i < len(widths) - 1 or self.readout != "node":
        h = nn.relu(h)
    if self.readout == "node":
      return _mask_nodes(h, node_mask)
    return _Readout(self.num_classes, self.readout, self.dtype)(h, node_mask)


class GAT(nn.Module):
  """A graph attention network (Veličković et al. 2018, the transductive model): dropout,
  a K-head GAT layer with ELU, dropout, and a one-head output layer (``output_heads`` heads
  averaged).

  Attributes:
    num_classes: output classes.
    hidden: width per head of each hidden layer (the paper: (8,) with 8 heads).
    num_heads: heads of the hidden layers.
    output_heads: heads of the output layer, averaged.
    dropout_rate: on the inputs of every layer and on the attention coefficients.
    readout: one of ``READOUTS``.
    dtype: computation dtype.
  """
  num_classes: int = 1
  hidden: Sequence[int] = (8,)
  num_heads: int = 8
  output_heads: int = 1
  dropout_rate: float = 0.6
  readout: str = "node"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, nodes, adjacency, node_mask, train: bool = False):
    h = nodes.astype(self.dtype)
    for width in self.hidden:
      h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
      h = nn.elu(GATLayer(width, self.num_heads, attention_dropout=self.dropout_rate,
                          dtype=self.dtype)(h, adjacency, node_mask, train))
    h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    if self.readout == "node":
      out = GATLayer(self.num_classes, self.output_heads, concat=False,
                     attention_dropout=self.dropout_rate, dtype=self.dtype)(
                         h, adjacency, node_mask, train)
      return _mask_nodes(out, node_mask)
    return _Readout(self.num_classes, self.readout, self.dtype)(_mask_nodes(h, node_mask),
                                                                node_mask)


class GraphSAGE(nn.Module):
  """GraphSAGE-mean (Hamilton et al. 2017) over the whole graph: ``SAGELayer`` with ReLU and
  L2 normalization for each hidden width, then a readout.

  Attributes:
    num_classes: output classes.
    hidden: widths of the SAGE layers.
    dropout_rate: before every layer.
    normalize: L2-normalize the hidden layers' outputs (the paper's line 7).
    readout: one of ``READOUTS``.
    dtype: computation dtype.
  """
  num_classes: int = 1
  hidden: Sequence[int] = (64,)
  dropout_rate: float = 0.5
  normalize: bool = True
  readout: str = "node"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, nodes, adjacency, node_mask, train: bool = False):
    h = nodes.astype(self.dtype)
    for width in self.hidden:
      h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
      h = SAGELayer(width, self.normalize, nn.relu, self.dtype)(h, adjacency, node_mask)
    h = nn.Dropout(self.dropout_rate, deterministic=not train)(_mask_nodes(h, node_mask))
    if self.readout == "node":
      out = SAGELayer(self.num_classes, dtype=self.dtype)(h, adjacency, node_mask)
      return _mask_nodes(out, node_mask)
    return _Readout(self.num_classes, self.readout, self.dtype)(h, node_mask)


class GGNNPropagation(nn.Module):
  """T steps of gated graph propagation (Li et al. 2016, eqs. 1–6).

      h⁽¹⁾_v = [x_vᵀ, 0]ᵀ
      a⁽ᵗ⁾_v = Σ_e Σ_u (A_e[u, v] W_e^in h_u + A_e[v, u] W_e^out h_u) + b
      z = σ(W^z a + U^z h),  r = σ(W^r a + U^r h)
      h̃ = tanh(W a + U (r ⊙ h)),  h⁽ᵗ⁾ = (1 − z) ⊙ h⁽ᵗ⁻¹⁾ + z ⊙ h̃

  Messages run along each edge type in both directions with their own weights. The weights
  are shared over the T steps.

  Attributes:
    hidden: the state width D (≥ the annotation width).
    steps: T.
    dtype: computation dtype.
  """
  hidden: int
  steps: int = 5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, annotations, adjacency, node_mask):
    """``annotations`` ``[batch, N, F]`` → final states ``[batch, N, hidden]``."""
    batch, n, width = annotations.shape
    if width > self.hidden:
      raise ValueError(f"GGNN hidden={self.hidden} must be at least the annotation width "
                       f"{width}.")
    edges = real_edges(adjacency, node_mask).astype(self.dtype)
    num_types = edges.shape[1]
    h = jnp.concatenate([annotations.astype(self.dtype),
                         jnp.zeros((batch, n, self.hidden - width), self.dtype)], -1)
    message_in = nn.DenseGeneral((num_types, self.hidden), use_bias=False, dtype=self.dtype,
                                 name="message_in")
    message_out = nn.DenseGeneral((num_types, self.hidden), use_bias=False, dtype=self.dtype,
                                  name="message_out")
    message_bias = self.param("message_bias", nn.initializers.zeros, (self.hidden,))
    gate_a = nn.Dense(3 * self.hidden, dtype=self.dtype, name="gates_from_messages")
    gate_h = nn.Dense(2 * self.hidden, use_bias=False, dtype=self.dtype, name="gates_from_state")
    candidate_h = nn.Dense(self.hidden, use_bias=False, dtype=self.dtype, name="candidate")
    mask = node_mask[..., None].astype(self.dtype)
    for _ in range(self.steps):
      incoming = jnp.einsum("beuv,buef->bvf", edges, message_in(h))
      outgoing = jnp.einsum("bevu,buef->bvf", edges, message_out(h))
      a = incoming + outgoing + message_bias
      za, ra, ca = jnp.split(gate_a(a), 3, axis=-1)
      zh, rh = jnp.split(gate_h(h), 2, axis=-1)
      z, r = nn.sigmoid(za + zh), nn.sigmoid(ra + rh)
      h_tilde = jnp.tanh(ca + candidate_h(r * h))
      h = ((1 - z) * h + z * h_tilde) * mask
    return h


class GGNN(nn.Module):
  """A gated graph neural network (Li et al. 2016) with its two outputs.

  * node selection (``readout='select'``): o_v = g(h⁽ᵀ⁾_v, x_v), softmax over the nodes
    (section 3.3);
  * graph level (``readout='graph'``, eq. 7): h_G = tanh(Σ_v σ(i(h⁽ᵀ⁾_v, x_v)) ⊙
    tanh(j(h⁽ᵀ⁾_v, x_v))), then a linear layer to the classes;
  * per-node classes (``readout='node'``): a linear layer of [h⁽ᵀ⁾_v, x_v].

  i, j and g are single dense layers (the paper: neural networks).

  Attributes:
    num_classes: classes of the graph or node outputs.
    hidden: state width D.
    steps: propagation steps T.
    readout: one of ``READOUTS``.
    dtype: computation dtype.
  """
  num_classes: int = 1
  hidden: int = 16
  steps: int = 5
  readout: str = "select"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, nodes, adjacency, node_mask, train: bool = False):
    del train
    h = GGNNPropagation(self.hidden, self.steps, self.dtype)(nodes, adjacency, node_mask)
    hx = jnp.concatenate([h, nodes.astype(self.dtype)], axis=-1)
    if self.readout == "select":
      score = nn.Dense(1, dtype=self.dtype, name="select")(hx)[..., 0]
      return jnp.where(node_mask > 0, score, NEG_INF)
    if self.readout == "node":
      return _mask_nodes(nn.Dense(self.num_classes, dtype=self.dtype)(hx), node_mask)
    gate = nn.sigmoid(nn.Dense(self.hidden, dtype=self.dtype, name="gate")(hx))
    value = jnp.tanh(nn.Dense(self.hidden, dtype=self.dtype, name="value")(hx))
    h_graph = jnp.tanh(jnp.sum(gate * value * node_mask[..., None].astype(self.dtype), axis=1))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="classes")(h_graph)


class NodeMLP(nn.Module):
  """The graph-blind baseline: the same layers applied to every node alone (the adjacency is
  read and ignored), with dropout before each layer; ``readout`` as for the GNNs.

  Attributes:
    num_classes: output classes.
    hidden: widths of the hidden layers.
    dropout_rate: before every layer.
    readout: one of ``READOUTS``.
    dtype: computation dtype.
  """
  num_classes: int = 1
  hidden: Sequence[int] = (16,)
  dropout_rate: float = 0.5
  readout: str = "node"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, nodes, adjacency, node_mask, train: bool = False):
    del adjacency
    h = nodes.astype(self.dtype)
    for width in self.hidden:
      h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
      h = nn.relu(nn.Dense(width, dtype=self.dtype)(h))
    h = nn.Dropout(self.dropout_rate, deterministic=not train)(_mask_nodes(h, node_mask))
    return _Readout(self.num_classes, self.readout, self.dtype)(h, node_mask)


GRAPH_MODELS = {"gcn": GCN, "gat": GAT, "graphsage": GraphSAGE, "ggnn": GGNN,
                "node_mlp": NodeMLP}
