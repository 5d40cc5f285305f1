"""The Transformer of "Attention Is All You Need" (Vaswani et al. 2017), and its decoders.

* ``attention``: scaled dot-product attention softmax(QKᵀ/√d_k)V (§3.2.1).
* ``MultiHeadAttention`` (§3.2.2), ``FeedForward`` (§3.3), ``EncoderBlock`` and
  ``DecoderBlock`` (§3.1): post-LN as in the paper, or pre-LN (``pre_layer_norm=True``).
* ``Transformer``: the encoder-decoder of §3, with sinusoidal (§3.5) or learned positions and
  one embedding matrix shared by source, target and the pre-softmax projection (§3.4).
* ``TransformerLanguageModel``: the decoder alone (causal self-attention, no cross-attention).
* ``PatchTransformerClassifier``: the encoder alone over image patches (a small ViT).
* ``greedy_decode``, ``beam_search`` (§6.1: beam 4, length penalty α = 0.6) and
  ``full_sequence_greedy_decode``: jit-compatible decoding of any module with the
  ``encode``/``decode`` methods of ``Transformer``.

Token ids: ``PAD_ID = 0``, ``BOS_ID = 1``, ``EOS_ID = 2``. Sequences are right-padded: a
sequence's real tokens are those before its first PAD; targets end with EOS, then PAD.

Precision: parameters are float32 (``param_dtype``), activations are in ``dtype`` (e.g.
bfloat16); attention logits and softmax, LayerNorm statistics and the output logits are
always float32.

The models map tokens (or images) to logits; they know nothing about training, data or
devices.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2

POSITION_ENCODINGS = ("sinusoidal", "learned")

# The paper's base model (Table 3, row "base"); ``Transformer``'s defaults.
TRANSFORMER_BASE = {
    "d_model": 512, "num_heads": 8, "d_ff": 2048, "num_encoder_layers": 6,
    "num_decoder_layers": 6, "dropout_rate": 0.1,
}
# A 2+2-layer model that learns toy tasks such as sequence reversal in minutes on a CPU.
TRANSFORMER_TINY = {
    "d_model": 128, "num_heads": 4, "d_ff": 512, "num_encoder_layers": 2,
    "num_decoder_layers": 2, "dropout_rate": 0.1,
}
# Registered name -> the ``Transformer`` fields it sets ('transformer': the defaults).
PRESETS = {
    "transformer": {},
    "transformer_base": TRANSFORMER_BASE,
    "transformer_tiny": TRANSFORMER_TINY,
}

# Logit given to masked attention positions: finite, so that a row with every key masked
# gets a uniform softmax instead of NaN (exp(-inf - -inf)).
_MASKED_LOGIT = float(np.finfo(np.float32).min)
# Score of an empty beam-search slot while searching (finite, so arithmetic stays NaN-free).
_NO_SCORE = -1e30
# LayerNorm epsilon (tensor2tensor's and flax's default).
_LAYER_NORM_EPSILON = 1e-6

_dense_kernel_init = nn.initializers.xavier_uniform()


# ------------------------------------------------------------------------------------------
# Attention, masks and positions.


def attention(query: jnp.ndarray, key: jnp.ndarray, value: jnp.ndarray,
              mask: Optional[jnp.ndarray] = None, *, dropout_rng: Optional[jax.Array] = None,
              dropout_rate: float = 0.0, deterministic: bool = True,
              dtype: Any = None) -> jnp.ndarray:
  """Scaled dot-product attention, Attention(Q, K, V) = softmax(QKᵀ/√d_k)V (§3.2.1, Eq. 1).

  Logits and softmax are computed in float32 whatever the input dtype. Masked logits are set
  to the most negative finite float32, so a query whose keys are all masked attends
  uniformly to every key (a finite result, not NaN).

  Args:
    query: [batch, q_len, heads, head_dim].
    key: [batch, kv_len, heads, head_dim].
    value: [batch, kv_len, heads, head_dim].
    mask: broadcastable to [batch, heads, q_len, kv_len]; True (or 1) where the query may
      attend to the key. None: every key.
    dropout_rng: PRNG key of the dropout on the attention weights; needed when dropout is
      active.
    dropout_rate: probability of dropping an attention weight (the kept ones are scaled by
      1 / (1 - rate)).
    deterministic: no dropout.
    dtype: dtype of the result and of the weighted sum of values; None: the query's dtype.

  Returns:
    [batch, q_len, heads, head_dim] in ``dtype``.
  """
  dtype = query.dtype if dtype is None else dtype
  head_dim = query.shape[-1]
  # Products accumulate in float32 even for bfloat16 inputs, and the 1/√d_k scaling is
  # applied to the float32 logits.
  logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
  logits = logits / math.sqrt(head_dim)
  if mask is not None:
    logits = jnp.where(jnp.asarray(mask, bool), logits, _MASKED_LOGIT)
  weights = jax.nn.softmax(logits, axis=-1)
  if not deterministic and dropout_rate > 0.0:
    if dropout_rng is None:
      raise ValueError("attention dropout needs dropout_rng when deterministic=False.")
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
    weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
  return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(dtype), value.astype(dtype))


def non_padding(tokens: jnp.ndarray, pad_id: int = PAD_ID) -> jnp.ndarray:
  """Which positions hold real tokens: those before the row's first ``pad_id``.

  Sequences are right-padded, so everything from the first PAD on is padding whatever it
  holds; for well-formed rows this is simply ``tokens != pad_id``.

  Args:
    tokens: int [batch, length].
    pad_id: the padding id.

  Returns:
    bool [batch, length].
  """
  return jnp.cumprod(tokens != pad_id, axis=-1).astype(bool)


def _valid(tokens_or_valid: jnp.ndarray) -> jnp.ndarray:
  if tokens_or_valid.dtype == jnp.bool_:
    return tokens_or_valid
  return non_padding(tokens_or_valid)


def padding_mask(query_tokens_or_valid: Optional[jnp.ndarray],
                 key_tokens_or_valid: jnp.ndarray) -> jnp.ndarray:
  """Attention mask letting real queries attend to real keys.

  Args:
    query_tokens_or_valid: query tokens int [batch, q_len] (real: before the first PAD, see
      ``non_padding``) or bool [batch, q_len] (True: real); None: every query is real.
    key_tokens_or_valid: key tokens int [batch, kv_len] or bool [batch, kv_len].

  Returns:
    bool [batch, 1, q_len, kv_len], or [batch, 1, 1, kv_len] when the queries are None; True
    where the query may attend to the key.
  """
  key_valid = _valid(key_tokens_or_valid)[:, None, None, :]
  if query_tokens_or_valid is None:
    return key_valid
  return _valid(query_tokens_or_valid)[:, None, :, None] & key_valid


def causal_mask(length: int) -> jnp.ndarray:
  """Mask letting position i attend to positions j <= i only (the decoder's, §3.2.3).

  Args:
    length: the sequence length.

  Returns:
    bool [1, 1, length, length], True on and below the diagonal.
  """
  return jnp.tril(jnp.ones((length, length), bool))[None, None]


def shift_right(tokens: jnp.ndarray, bos_id: int = BOS_ID) -> jnp.ndarray:
  """The decoder input of teacher forcing: ``[BOS, tokens[:-1]]`` on every row.

  Args:
    tokens: int [batch, length].
    bos_id: the id put in front.

  Returns:
    int [batch, length], the same dtype.
  """
  bos = jnp.full(tokens.shape[:-1] + (1,), bos_id, tokens.dtype)
  return jnp.concatenate([bos, tokens[..., :-1]], axis=-1)


def sinusoidal_position_encoding(positions: jnp.ndarray, d_model: int) -> jnp.ndarray:
  """Sinusoidal position encodings (§3.5).

  PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model)):
  sines on even dimensions and cosines on odd ones, wavelengths from 2π to 10000·2π. They are
  computed from the positions (no table), so any position, however large, has one.

  Args:
    positions: int or float [...] positions.
    d_model: the encoding width.

  Returns:
    float32 [..., d_model].
  """
  positions = jnp.asarray(positions, jnp.float32)[..., None]
  two_i = np.arange(0, d_model, 2, dtype=np.float64)
  inverse_wavelengths = jnp.asarray(np.power(10000.0, -two_i / d_model), jnp.float32)
  angles = positions * inverse_wavelengths
  encoding = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)
  return encoding.reshape(encoding.shape[:-2] + (-1,))[..., :d_model]


class AddPositionEncoding(nn.Module):
  """Adds sinusoidal (§3.5) or learned position encodings to embeddings.

  Attributes:
    kind: 'sinusoidal' (no parameters, any length) or 'learned' (an ``embedding``
      parameter [max_len, d_model], initialized N(0, 0.02²); the paper found both to perform
      nearly identically, Table 3 row E).
    max_len: the most positions a learned encoding holds.
  """
  kind: str = "sinusoidal"
  max_len: int = 512

  @nn.compact
  def __call__(self, x: jnp.ndarray, positions: jnp.ndarray) -> jnp.ndarray:
    """Adds the encodings.

    Args:
      x: [batch, length, d_model] embeddings.
      positions: int [length], the position of each of the ``length`` entries.

    Returns:
      float32 [batch, length, d_model].
    """
    d_model = x.shape[-1]
    if self.kind == "sinusoidal":
      encoding = sinusoidal_position_encoding(positions, d_model)
    else:
      if x.shape[1] > self.max_len:
        raise ValueError(f"a sequence of length {x.shape[1]} is longer than max_len="
                         f"{self.max_len} learned positions.")
      table = self.param("embedding", nn.initializers.normal(stddev=0.02),
                         (self.max_len, d_model), jnp.float32)
      encoding = jnp.take(table, positions, axis=0)
    return x.astype(jnp.float32) + encoding[None]


def _check_choice(field: str, value: Any, allowed: Tuple[Any, ...]) -> None:
  if value not in allowed:
    raise ValueError(f"{field}={value!r} is unknown; use one of {allowed}.")


def _check_rate(field: str, value: float) -> None:
  if not 0.0 <= value < 1.0:
    raise ValueError(f"{field}={value!r} must be in [0, 1).")


def _check_heads(d_model: int, num_heads: int) -> None:
  if num_heads < 1 or d_model % num_heads:
    raise ValueError(f"num_heads={num_heads} must divide d_model={d_model} (each head has "
                     "d_model / num_heads dimensions).")


# ------------------------------------------------------------------------------------------
# Layers and blocks.


class MultiHeadAttention(nn.Module):
  """Multi-head attention (§3.2.2): h heads of d_k = d_v = d_model / h dimensions.

  MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O with
  head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V). The per-head projections of all heads are
  one Dense layer each (``query``, ``key``, ``value``: [d_model, d_model] kernels and
  [d_model] biases), as is W^O (``out``): 4 (d_model² + d_model) parameters.

  Incremental decoding (``decode=True``), as flax's examples/wmt: the first call, on a full
  length ``max_decode_len`` input, creates a ``'cache'`` collection (``cached_key``,
  ``cached_value`` [batch, max_decode_len, heads, head_dim], zeros, and ``cache_index`` 0);
  every later call takes one new position, writes its key and value at ``cache_index``,
  attends to the positions cached so far and advances the index.

  Attributes:
    num_heads: h.
    attention_dropout_rate: dropout on the attention weights.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  num_heads: int
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs_q: jnp.ndarray, inputs_kv: jnp.ndarray,
               mask: Optional[jnp.ndarray] = None, *, deterministic: bool = True,
               decode: bool = False) -> jnp.ndarray:
    """Attends from ``inputs_q`` to ``inputs_kv``.

    Args:
      inputs_q: [batch, q_len, d_model].
      inputs_kv: [batch, kv_len, d_model] (self-attention: ``inputs_q``).
      mask: broadcastable to [batch, heads, q_len, kv_len], True where attending is allowed
        (with a filled cache: to [batch, heads, 1, max_decode_len]); None: everywhere.
      deterministic: no attention dropout (else it needs the 'dropout' PRNG stream).
      decode: incremental self-attention with the 'cache' collection (see the class).

    Returns:
      [batch, q_len, d_model] in ``dtype``.
    """
    d_model = inputs_q.shape[-1]
    _check_heads(d_model, self.num_heads)
    head_dim = d_model // self.num_heads
    dense = functools.partial(nn.Dense, d_model, dtype=self.dtype,
                              param_dtype=self.param_dtype, kernel_init=_dense_kernel_init,
                              bias_init=nn.initializers.zeros)

    def split_heads(x):
      return x.reshape(x.shape[:-1] + (self.num_heads, head_dim))

    query = split_heads(dense(name="query")(inputs_q))
    key = split_heads(dense(name="key")(inputs_kv))
    value = split_heads(dense(name="value")(inputs_kv))

    if decode:
      is_initialized = self.has_variable("cache", "cached_key")
      cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
      cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape,
                                   value.dtype)
      cache_index = self.variable("cache", "cache_index",
                                  lambda: jnp.zeros((), jnp.int32))
      if is_initialized:
        max_decode_len = cached_key.value.shape[1]
        if query.shape[1] != 1:
          raise ValueError(f"incremental decoding takes one position per call, got "
                           f"{query.shape[1]}.")
        index = cache_index.value
        key = lax.dynamic_update_slice(cached_key.value, key.astype(cached_key.value.dtype),
                                       (0, index, 0, 0))
        value = lax.dynamic_update_slice(cached_value.value,
                                         value.astype(cached_value.value.dtype),
                                         (0, index, 0, 0))
        cached_key.value = key
        cached_value.value = value
        cache_index.value = index + 1
        # The one query sees the positions written so far, not the zeros beyond them.
        written = (jnp.arange(max_decode_len) <= index)[None, None, None, :]
        mask = written if mask is None else jnp.logical_and(mask, written)

    dropout_rng = None
    if not deterministic and self.attention_dropout_rate > 0.0:
      dropout_rng = self.make_rng("dropout")
    out = attention(query, key, value, mask, dropout_rng=dropout_rng,
                    dropout_rate=self.attention_dropout_rate, deterministic=deterministic,
                    dtype=self.dtype)
    return dense(name="out")(out.reshape(out.shape[:-2] + (d_model,)))


class FeedForward(nn.Module):
  """Position-wise feed-forward network, FFN(x) = max(0, xW1 + b1)W2 + b2 (§3.3, Eq. 2).

  Attributes:
    d_ff: inner width (the paper: 2048 for d_model 512).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  d_ff: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """[batch, length, d_model] → [batch, length, d_model] in ``dtype``."""
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=_dense_kernel_init, bias_init=nn.initializers.zeros)
    hidden = nn.relu(dense(self.d_ff, name="inner")(x))
    return dense(x.shape[-1], name="outer")(hidden)


def _layer_norm(dtype: Any, param_dtype: Any, name: str) -> nn.LayerNorm:
  # flax computes LayerNorm's mean and variance in at least float32 whatever ``dtype`` is
  # (force_float32_reductions); the two-pass variance avoids E[x²] - E[x]² cancellation.
  return nn.LayerNorm(epsilon=_LAYER_NORM_EPSILON, dtype=dtype, param_dtype=param_dtype,
                      use_fast_variance=False, name=name)


class _SublayerBlock(nn.Module):
  """Shared plumbing of the blocks: residual connections around sub-layers (§3.1, §5.4)."""

  def residual(self, x: jnp.ndarray, sublayer: Callable[[jnp.ndarray], jnp.ndarray],
               name: str, deterministic: bool) -> jnp.ndarray:
    """Post-LN: LayerNorm(x + Dropout(Sublayer(x))) (§3.1, P_drop of §5.4).

    Pre-LN: x + Dropout(Sublayer(LayerNorm(x))) (Xiong et al. 2020), which trains without
    warm-up and needs a final LayerNorm after the stack.
    """
    norm = _layer_norm(self.dtype, self.param_dtype, f"{name}_norm")
    dropout = nn.Dropout(self.dropout_rate)
    if self.pre_layer_norm:
      return x + dropout(sublayer(norm(x)), deterministic=deterministic)
    return norm(x + dropout(sublayer(x), deterministic=deterministic))


class EncoderBlock(_SublayerBlock):
  """An encoder layer (§3.1): self-attention, then the feed-forward network.

  Each sub-layer has a residual connection with dropout on its output, and LayerNorm after
  the sum (post-LN, the paper) or before the sub-layer (``pre_layer_norm``).

  Attributes:
    num_heads: h.
    d_ff: the feed-forward inner width.
    dropout_rate: P_drop on each sub-layer's output (§5.4).
    attention_dropout_rate: dropout on the attention weights.
    pre_layer_norm: pre-LN instead of post-LN.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  num_heads: int
  d_ff: int
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  pre_layer_norm: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: Optional[jnp.ndarray] = None, *,
               deterministic: bool = True) -> jnp.ndarray:
    """Applies the layer.

    Args:
      x: [batch, length, d_model].
      mask: self-attention mask broadcastable to [batch, heads, length, length].
      deterministic: no dropout.

    Returns:
      [batch, length, d_model] in ``dtype``.
    """
    self_attention = MultiHeadAttention(self.num_heads, self.attention_dropout_rate,
                                        dtype=self.dtype, param_dtype=self.param_dtype,
                                        name="self_attention")
    x = self.residual(
        x, lambda y: self_attention(y, y, mask, deterministic=deterministic),
        "self_attention", deterministic)
    feed_forward = FeedForward(self.d_ff, dtype=self.dtype, param_dtype=self.param_dtype,
                               name="feed_forward")
    return self.residual(x, feed_forward, "feed_forward", deterministic)


class DecoderBlock(_SublayerBlock):
  """A decoder layer (§3.1): masked self-attention, encoder-decoder attention, feed-forward.

  Residual connections, dropout and LayerNorm as in ``EncoderBlock``. Without
  ``cross_attention`` it is a block of a decoder-only language model.

  Attributes:
    num_heads: h.
    d_ff: the feed-forward inner width.
    dropout_rate: P_drop on each sub-layer's output (§5.4).
    attention_dropout_rate: dropout on the attention weights.
    pre_layer_norm: pre-LN instead of post-LN.
    cross_attention: whether the block attends to an encoder's output.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  num_heads: int
  d_ff: int
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  pre_layer_norm: bool = False
  cross_attention: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, encoded: Optional[jnp.ndarray] = None,
               self_mask: Optional[jnp.ndarray] = None,
               cross_mask: Optional[jnp.ndarray] = None, *, deterministic: bool = True,
               decode: bool = False) -> jnp.ndarray:
    """Applies the layer.

    Args:
      x: [batch, length, d_model] (length 1 when decoding from a filled cache).
      encoded: the encoder's output [batch, src_len, d_model] (with ``cross_attention``).
      self_mask: self-attention mask broadcastable to [batch, heads, length, length]
        (normally causal); None with a filled cache, which masks itself.
      cross_mask: encoder-decoder mask broadcastable to [batch, heads, length, src_len].
      deterministic: no dropout.
      decode: incremental decoding with the 'cache' collection.

    Returns:
      [batch, length, d_model] in ``dtype``.
    """
    attention_layer = functools.partial(
        MultiHeadAttention, self.num_heads, self.attention_dropout_rate, dtype=self.dtype,
        param_dtype=self.param_dtype)
    self_attention = attention_layer(name="self_attention")
    x = self.residual(
        x, lambda y: self_attention(y, y, self_mask, deterministic=deterministic,
                                    decode=decode),
        "self_attention", deterministic)
    if self.cross_attention:
      if encoded is None:
        raise ValueError("a DecoderBlock with cross_attention needs the encoder's output.")
      cross_attention = attention_layer(name="cross_attention")
      x = self.residual(
          x, lambda y: cross_attention(y, encoded, cross_mask, deterministic=deterministic),
          "cross_attention", deterministic)
    feed_forward = FeedForward(self.d_ff, dtype=self.dtype, param_dtype=self.param_dtype,
                               name="feed_forward")
    return self.residual(x, feed_forward, "feed_forward", deterministic)


class Encoder(nn.Module):
  """The encoder stack: positions and dropout on the embeddings, then ``EncoderBlock``s.

  Attributes:
    num_layers: N (the paper: 6).
    num_heads: h.
    d_ff: the feed-forward inner width.
    dropout_rate: P_drop on the sums of embeddings and positions and on every sub-layer's
      output (§5.4).
    attention_dropout_rate: dropout on the attention weights.
    pre_layer_norm: pre-LN blocks.
    final_layer_norm: a LayerNorm after the last block (what pre-LN stacks need; post-LN
      blocks already end with one).
    position_encoding: 'sinusoidal' or 'learned'.
    max_len: positions of a learned encoding.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  num_layers: int
  num_heads: int
  d_ff: int
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  pre_layer_norm: bool = False
  final_layer_norm: bool = False
  position_encoding: str = "sinusoidal"
  max_len: int = 512
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, embedded: jnp.ndarray, mask: Optional[jnp.ndarray] = None, *,
               deterministic: bool = True) -> jnp.ndarray:
    """Encodes.

    Args:
      embedded: [batch, length, d_model] input embeddings (already scaled).
      mask: self-attention mask broadcastable to [batch, heads, length, length].
      deterministic: no dropout.

    Returns:
      [batch, length, d_model] in ``dtype``.
    """
    positions = jnp.arange(embedded.shape[1])
    x = AddPositionEncoding(self.position_encoding, self.max_len,
                            name="position_encoding")(embedded, positions)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic).astype(self.dtype)
    for i in range(self.num_layers):
      x = EncoderBlock(self.num_heads, self.d_ff, self.dropout_rate,
                       self.attention_dropout_rate, self.pre_layer_norm, dtype=self.dtype,
                       param_dtype=self.param_dtype, name=f"layer{i}")(
                           x, mask, deterministic=deterministic)
    if self.final_layer_norm:
      x = _layer_norm(self.dtype, self.param_dtype, "final_norm")(x)
    return x


class Decoder(nn.Module):
  """The decoder stack: positions and dropout on the embeddings, then ``DecoderBlock``s.

  Self-attention is causal: position i attends to positions j <= i only (§3.2.3). Padding
  needs no mask of its own there: targets are right-padded, so every padded key lies after
  every real query, where the causal mask already hides it. Because the mask does not
  depend on the tokens, decoding with the cache gives the same logits as decoding the whole
  sequence, whatever the tokens.

  With ``decode=True`` the first call (length ``max_decode_len``) creates the 'cache'
  collection: the attention layers' keys and values and this stack's ``position`` (0);
  every later call takes one token, at position ``position``, and advances it.

  Attributes:
    num_layers: N (the paper: 6).
    num_heads: h.
    d_ff: the feed-forward inner width.
    dropout_rate: P_drop on embeddings + positions and on every sub-layer's output (§5.4).
    attention_dropout_rate: dropout on the attention weights.
    pre_layer_norm: pre-LN blocks.
    final_layer_norm: a LayerNorm after the last block (what pre-LN stacks need).
    cross_attention: whether the blocks attend to an encoder (False: a language model).
    position_encoding: 'sinusoidal' or 'learned'.
    max_len: positions of a learned encoding.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  num_layers: int
  num_heads: int
  d_ff: int
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  pre_layer_norm: bool = False
  final_layer_norm: bool = False
  cross_attention: bool = True
  position_encoding: str = "sinusoidal"
  max_len: int = 512
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, embedded: jnp.ndarray, encoded: Optional[jnp.ndarray] = None,
               cross_mask: Optional[jnp.ndarray] = None, *, deterministic: bool = True,
               decode: bool = False) -> jnp.ndarray:
    """Decodes.

    Args:
      embedded: [batch, length, d_model] embeddings of the (shifted) decoder inputs,
        already scaled; length 1 when decoding from a filled cache.
      encoded: the encoder's output [batch, src_len, d_model] (with ``cross_attention``).
      cross_mask: encoder-decoder mask broadcastable to [batch, heads, length, src_len].
      deterministic: no dropout.
      decode: incremental decoding with the 'cache' collection.

    Returns:
      [batch, length, d_model] in ``dtype``.
    """
    length = embedded.shape[1]
    positions = jnp.arange(length)
    self_mask = causal_mask(length)
    if decode:
      is_initialized = self.has_variable("cache", "position")
      position = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
      if is_initialized:
        positions = position.value[None]
        position.value = position.value + 1
        self_mask = None  # Each self-attention layer masks the positions not yet cached.
    x = AddPositionEncoding(self.position_encoding, self.max_len,
                            name="position_encoding")(embedded, positions)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic).astype(self.dtype)
    for i in range(self.num_layers):
      x = DecoderBlock(self.num_heads, self.d_ff, self.dropout_rate,
                       self.attention_dropout_rate, self.pre_layer_norm,
                       self.cross_attention, dtype=self.dtype, param_dtype=self.param_dtype,
                       name=f"layer{i}")(
                           x, encoded, self_mask, cross_mask, deterministic=deterministic,
                           decode=decode)
    if self.final_layer_norm:
      x = _layer_norm(self.dtype, self.param_dtype, "final_norm")(x)
    return x


def _embedding(vocab_size: int, d_model: int, param_dtype: Any, name: str) -> nn.Embed:
  # N(0, 1/d_model): scaled by √d_model (§3.4) the input embeddings have unit variance, and
  # as the shared pre-softmax projection of unit-variance LayerNorm outputs the logits too.
  return nn.Embed(vocab_size, d_model, embedding_init=nn.initializers.normal(d_model**-0.5),
                  dtype=jnp.float32, param_dtype=param_dtype, name=name)


def _check_stack_fields(module: nn.Module) -> None:
  _check_heads(module.d_model, module.num_heads)
  _check_choice("position_encoding", module.position_encoding, POSITION_ENCODINGS)
  _check_rate("dropout_rate", module.dropout_rate)
  _check_rate("attention_dropout_rate", module.attention_dropout_rate)


# ------------------------------------------------------------------------------------------
# Models.


class Transformer(nn.Module):
  """The encoder-decoder Transformer (Vaswani et al. 2017, §3), the base model by default.

  Batches hold ``inputs`` int32 [batch, src_len] and ``targets`` int32 [batch, tgt_len]
  (ending with EOS, then PAD). ``__call__`` is teacher forcing: the decoder reads
  ``shift_right(targets)`` = [BOS, targets[:-1]] and its logits predict ``targets``. Source
  padding (every position from a row's first PAD on) is masked in the encoder's
  self-attention and in the encoder-decoder attention; the decoder's self-attention is
  causal.

  Embeddings are multiplied by √d_model (§3.4), then position encodings are added and
  dropout applied (§5.4). With ``share_embeddings`` one matrix E [vocab_size, d_model] embeds
  source and target tokens and is the pre-softmax projection: logits = y Eᵀ, without bias;
  otherwise the source and target have embeddings of their own and the logits come from a
  Dense layer with bias. Logits are float32.

  Token ids must lie in ``[0, vocab_size)`` (``[0, target_vocab_size)`` for the targets);
  the module does not check them, as nothing can be checked on values under jit: like
  ``jnp.take``, an id past the end embeds as NaN (so its logits are NaN) and a negative id
  reads from the end of the table. The train loop refuses such ids on the host before they
  reach the model (``Seq2SeqTask.check_batch``).

  Parameters of ``transformer_base`` with a shared vocabulary of V = 37,000 (sinusoidal
  positions, post-LN, shared embeddings: no position parameters, no final LayerNorm, no
  output bias), d = 512, d_ff = 2048:

  * attention layer: 4 (d² + d) = 1,050,624 (query, key, value, out, each with a bias);
  * feed-forward: d·d_ff + d_ff + d_ff·d + d = 2,099,712;
  * LayerNorm: 2d = 1,024 (scale and bias);
  * encoder layer: attention + feed-forward + 2 LayerNorms = 3,152,384; × 6 = 18,914,304;
  * decoder layer: 2 attentions + feed-forward + 3 LayerNorms = 4,204,032; × 6 = 25,224,192;
  * shared embedding: V·d = 18,944,000;
  * total: 63,082,496 (the paper's Table 3 reports 65M).

  Pre-LN adds the two final LayerNorms (2 · 2d); learned positions add 2 · max_len · d;
  separate embeddings add the target embedding and the output layer (d·V_tgt + V_tgt).

  Attributes:
    vocab_size: the source vocabulary (PAD, BOS and EOS included), and the target one when
      ``target_vocab_size`` is None.
    target_vocab_size: the target vocabulary, if different.
    d_model: model width.
    num_heads: attention heads h; must divide ``d_model``.
    d_ff: feed-forward inner width.
    num_encoder_layers: encoder layers N.
    num_decoder_layers: decoder layers N.
    dropout_rate: P_drop (§5.4) on every sub-layer's output before its residual sum and on
      the sums of embeddings and positions; what the paper regularizes with.
    attention_dropout_rate: dropout on the attention weights (not in the paper; an option).
    max_len: positions of a learned encoding (sinusoidal ones have no limit).
    position_encoding: 'sinusoidal' (§3.5) or 'learned'.
    pre_layer_norm: pre-LN blocks and a final LayerNorm after each stack, instead of the
      paper's post-LN.
    share_embeddings: one embedding matrix for source, target and the pre-softmax
      projection (§3.4); needs equal vocabularies.
    dtype: compute dtype (e.g. bfloat16); logits are always float32.
    param_dtype: parameter dtype.
  """
  vocab_size: int
  target_vocab_size: Optional[int] = None
  d_model: int = 512
  num_heads: int = 8
  d_ff: int = 2048
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  max_len: int = 512
  position_encoding: str = "sinusoidal"
  pre_layer_norm: bool = False
  share_embeddings: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    # Validate on construction, so a bad config fails before any tracing.
    _check_stack_fields(self)
    if (self.share_embeddings and self.target_vocab_size is not None
        and self.target_vocab_size != self.vocab_size):
      raise ValueError(
          f"share_embeddings=True needs one vocabulary, and vocab_size={self.vocab_size} != "
          f"target_vocab_size={self.target_vocab_size}; set share_embeddings=False or make "
          "the vocabularies equal.")
    super().__post_init__()

  @property
  def output_vocab_size(self) -> int:
    """The target vocabulary: the width of the logits."""
    return self.vocab_size if self.target_vocab_size is None else self.target_vocab_size

  def setup(self):
    stack_fields = dict(
        num_heads=self.num_heads, d_ff=self.d_ff, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate,
        pre_layer_norm=self.pre_layer_norm, final_layer_norm=self.pre_layer_norm,
        position_encoding=self.position_encoding, max_len=self.max_len, dtype=self.dtype,
        param_dtype=self.param_dtype)
    self.encoder = Encoder(self.num_encoder_layers, **stack_fields)
    self.decoder = Decoder(self.num_decoder_layers, **stack_fields)
    if self.share_embeddings:
      self.shared_embedding = _embedding(self.vocab_size, self.d_model, self.param_dtype,
                                         "shared_embedding")
    else:
      self.source_embedding = _embedding(self.vocab_size, self.d_model, self.param_dtype,
                                         "source_embedding")
      self.target_embedding = _embedding(self.output_vocab_size, self.d_model,
                                         self.param_dtype, "target_embedding")
      self.output_projection = nn.Dense(
          self.output_vocab_size, dtype=jnp.float32, param_dtype=self.param_dtype,
          kernel_init=_dense_kernel_init, bias_init=nn.initializers.zeros)

  def _embed(self, tokens: jnp.ndarray, target: bool) -> jnp.ndarray:
    if self.share_embeddings:
      table = self.shared_embedding
    else:
      table = self.target_embedding if target else self.source_embedding
    return table(tokens) * math.sqrt(self.d_model)  # §3.4.

  def encode(self, inputs: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """Encodes the source.

    Args:
      inputs: int32 [batch, src_len] source tokens.
      train: dropout on (needs the 'dropout' PRNG stream).

    Returns:
      [batch, src_len, d_model] in ``dtype``.
    """
    return self.encoder(self._embed(inputs, target=False), padding_mask(inputs, inputs),
                        deterministic=not train)

  def decode(self, encoded: jnp.ndarray, inputs: jnp.ndarray, decoder_inputs: jnp.ndarray,
             train: bool = False, decode: bool = False) -> jnp.ndarray:
    """Next-token logits from the encoded source and the (already shifted) decoder inputs.

    Args:
      encoded: ``encode(inputs)`` [batch, src_len, d_model].
      inputs: int32 [batch, src_len] source tokens (for the source padding mask).
      decoder_inputs: int32 [batch, tgt_len], [BOS, y_1, ..., y_{tgt_len-1}]; with
        ``decode=True`` and a filled cache, [batch, 1]: the latest token.
      train: dropout on (needs the 'dropout' PRNG stream).
      decode: incremental decoding with the 'cache' collection (see ``Decoder``); the first
        call, with [batch, max_decode_len] decoder inputs, creates the cache.

    Returns:
      float32 [batch, tgt_len, target vocabulary] logits.
    """
    cross_mask = padding_mask(None, inputs)
    y = self.decoder(self._embed(decoder_inputs, target=True), encoded, cross_mask,
                     deterministic=not train, decode=decode)
    y = y.astype(jnp.float32)
    if self.share_embeddings:
      return self.shared_embedding.attend(y)
    return self.output_projection(y)

  def __call__(self, inputs: jnp.ndarray, targets: jnp.ndarray,
               train: bool = False) -> jnp.ndarray:
    """Teacher-forced next-token logits.

    Args:
      inputs: int32 [batch, src_len] source tokens (then PAD).
      targets: int32 [batch, tgt_len] target tokens, EOS, then PAD.
      train: dropout on (needs the 'dropout' PRNG stream).

    Returns:
      float32 [batch, tgt_len, target vocabulary]: position t predicts ``targets[:, t]``.
    """
    encoded = self.encode(inputs, train=train)
    return self.decode(encoded, inputs, shift_right(targets), train=train)


class TransformerLanguageModel(nn.Module):
  """A decoder-only Transformer language model: causal self-attention blocks.

  The decoder of ``Transformer`` without encoder-decoder attention. ``__call__`` predicts
  every token from those before it (its decoder reads ``shift_right(tokens)``); ``decode``
  takes already shifted inputs and supports incremental decoding with the 'cache'
  collection, one token per call.

  Attributes:
    vocab_size: the vocabulary (PAD, BOS and EOS included).
    d_model: model width.
    num_heads: attention heads; must divide ``d_model``.
    d_ff: feed-forward inner width.
    num_layers: decoder layers.
    dropout_rate: P_drop on sub-layer outputs and on embeddings + positions.
    attention_dropout_rate: dropout on the attention weights.
    max_len: positions of a learned encoding.
    position_encoding: 'sinusoidal' or 'learned'.
    pre_layer_norm: pre-LN blocks and a final LayerNorm.
    share_embeddings: the embedding matrix is also the pre-softmax projection (§3.4);
      otherwise a Dense layer with bias.
    dtype: compute dtype; logits are always float32.
    param_dtype: parameter dtype.
  """
  vocab_size: int
  d_model: int = 512
  num_heads: int = 8
  d_ff: int = 2048
  num_layers: int = 6
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  max_len: int = 512
  position_encoding: str = "sinusoidal"
  pre_layer_norm: bool = False
  share_embeddings: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    _check_stack_fields(self)
    super().__post_init__()

  def setup(self):
    self.embedding = _embedding(self.vocab_size, self.d_model, self.param_dtype, "embedding")
    self.decoder = Decoder(
        self.num_layers, self.num_heads, self.d_ff, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate,
        pre_layer_norm=self.pre_layer_norm, final_layer_norm=self.pre_layer_norm,
        cross_attention=False, position_encoding=self.position_encoding,
        max_len=self.max_len, dtype=self.dtype, param_dtype=self.param_dtype)
    if not self.share_embeddings:
      self.output_projection = nn.Dense(
          self.vocab_size, dtype=jnp.float32, param_dtype=self.param_dtype,
          kernel_init=_dense_kernel_init, bias_init=nn.initializers.zeros)

  def decode(self, decoder_inputs: jnp.ndarray, train: bool = False,
             decode: bool = False) -> jnp.ndarray:
    """Next-token logits of already shifted inputs.

    Args:
      decoder_inputs: int32 [batch, length] ([BOS, x_1, ..., x_{length-1}]); with
        ``decode=True`` and a filled cache, [batch, 1].
      train: dropout on (needs the 'dropout' PRNG stream).
      decode: incremental decoding with the 'cache' collection.

    Returns:
      float32 [batch, length, vocab_size].
    """
    embedded = self.embedding(decoder_inputs) * math.sqrt(self.d_model)
    y = self.decoder(embedded, deterministic=not train, decode=decode).astype(jnp.float32)
    if self.share_embeddings:
      return self.embedding.attend(y)
    return self.output_projection(y)

  def __call__(self, tokens: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """Next-token logits.

    Args:
      tokens: int32 [batch, length].
      train: dropout on (needs the 'dropout' PRNG stream).

    Returns:
      float32 [batch, length, vocab_size]: position t predicts ``tokens[:, t]`` from
      ``tokens[:, :t]``.
    """
    return self.decode(shift_right(tokens), train=train)


class PatchTransformerClassifier(nn.Module):
  """A small Vision Transformer: an encoder over non-overlapping image patches.

  The image is cut into ``patch_size`` × ``patch_size`` patches (row-major), each flattened
  patch is embedded linearly, position encodings are added, ``EncoderBlock``s follow; the
  token outputs are mean-pooled (no CLS token: average pooling classifies as well and needs
  no extra token, Beyer et al. 2022 "Better plain ViT baselines"), normalized by a
  LayerNorm (which is also the final LayerNorm of the pre-LN stack) and classified by a
  Dense layer. An 8×8 digit with ``patch_size`` 2 gives 16 tokens.

  Attributes:
    num_classes: number of output logits.
    patch_size: patch side; must divide the image height and width.
    d_model: model width.
    num_heads: attention heads; must divide ``d_model``.
    d_ff: feed-forward inner width.
    num_layers: encoder layers.
    dropout_rate: P_drop on sub-layer outputs and on patch embeddings + positions.
    attention_dropout_rate: dropout on the attention weights.
    position_encoding: 'learned' (one vector per patch) or 'sinusoidal' (over the row-major
      patch index).
    pre_layer_norm: pre-LN blocks (post-LN when False).
    dtype: compute dtype; logits are always float32.
    param_dtype: parameter dtype.
  """
  num_classes: int
  patch_size: int = 2
  d_model: int = 64
  num_heads: int = 4
  d_ff: int = 128
  num_layers: int = 3
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  position_encoding: str = "learned"
  pre_layer_norm: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    _check_stack_fields(self)
    if self.patch_size < 1:
      raise ValueError(f"patch_size={self.patch_size} must be a positive integer.")
    super().__post_init__()

  @nn.compact
  def __call__(self, image: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """Class logits.

    Args:
      image: float [batch, height, width, channels].
      train: dropout on (needs the 'dropout' PRNG stream).

    Returns:
      float32 [batch, num_classes].
    """
    batch, height, width, channels = image.shape
    p = self.patch_size
    if height % p or width % p:
      raise ValueError(f"patch_size={p} must divide the image height {height} and width "
                       f"{width}.")
    patches = image.reshape(batch, height // p, p, width // p, p, channels)
    patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(batch, -1, p * p * channels)
    embedded = nn.Dense(self.d_model, dtype=self.dtype, param_dtype=self.param_dtype,
                        kernel_init=_dense_kernel_init, bias_init=nn.initializers.zeros,
                        name="patch_embedding")(patches.astype(self.dtype))
    x = Encoder(self.num_layers, self.num_heads, self.d_ff, self.dropout_rate,
                self.attention_dropout_rate, self.pre_layer_norm, final_layer_norm=False,
                position_encoding=self.position_encoding, max_len=patches.shape[1],
                dtype=self.dtype, param_dtype=self.param_dtype, name="encoder")(
                    embedded, deterministic=not train)
    pooled = jnp.mean(x.astype(jnp.float32), axis=1)
    pooled = _layer_norm(jnp.float32, self.param_dtype, "final_norm")(pooled)
    return nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=self.param_dtype,
                    kernel_init=nn.initializers.zeros, name="head")(pooled)


def transformer_base(vocab_size: int, **overrides: Any) -> Transformer:
  """The paper's base model: d_model 512, 8 heads, d_ff 2048, 6 + 6 layers, dropout 0.1.

  Args:
    vocab_size: the (shared) vocabulary.
    **overrides: other ``Transformer`` fields.

  Returns:
    The ``Transformer``.
  """
  return Transformer(vocab_size=vocab_size, **{**TRANSFORMER_BASE, **overrides})


def transformer_tiny(vocab_size: int, **overrides: Any) -> Transformer:
  """A tiny model for toy tasks: d_model 128, 4 heads, d_ff 512, 2 + 2 layers, dropout 0.1.

  Args:
    vocab_size: the (shared) vocabulary.
    **overrides: other ``Transformer`` fields.

  Returns:
    The ``Transformer``.
  """
  return Transformer(vocab_size=vocab_size, **{**TRANSFORMER_TINY, **overrides})


# ------------------------------------------------------------------------------------------
# Decoding: works with any module whose ``encode(inputs)`` and
# ``decode(encoded, inputs, decoder_inputs, decode=...)`` behave as ``Transformer``'s.

Variables = Dict[str, Any]
# ``step(cache, tokens [n]) -> (logits float32 [n, vocab], cache)``.
StepFn = Callable[[Any, jnp.ndarray], Tuple[jnp.ndarray, Any]]


def gnmt_length_penalty(length: Any, alpha: float) -> jnp.ndarray:
  """The length penalty lp(Y) = ((5 + |Y|) / 6)^α of Wu et al. 2016 (GNMT, §7).

  Beam search ranks a finished hypothesis Y by log P(Y|X) / lp(Y); the Transformer paper
  (§6.1) uses α = 0.6.

  Args:
    length: |Y| (tokens, EOS included), a number or an array.
    alpha: α >= 0 (0: no penalty).

  Returns:
    float32, the shape of ``length``.
  """
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _without_cache(variables: Variables) -> Variables:
  return {name: tree for name, tree in variables.items() if name != "cache"}


def _initial_cache(model: nn.Module, variables: Variables, encoded: jnp.ndarray,
                   inputs: jnp.ndarray, max_decode_len: int) -> Any:
  """The empty decoding cache for ``max_decode_len`` positions (all zeros)."""
  dummy = jnp.zeros((inputs.shape[0], max_decode_len), jnp.int32)

  def create(variables, encoded, inputs):
    _, created = model.apply(variables, encoded, inputs, dummy, decode=True, method="decode",
                             mutable=["cache"])
    return created.get("cache", {})

  # Only the shapes are needed: every cache variable starts at zero (keys, values and
  # indices), so nothing is computed.
  shapes = jax.eval_shape(create, variables, encoded, inputs)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _step_fn(model: nn.Module, variables: Variables, encoded: jnp.ndarray,
             inputs: jnp.ndarray) -> StepFn:
  def step(cache, tokens):
    logits, mutated = model.apply({**variables, "cache": cache}, encoded, inputs,
                                  tokens[:, None], decode=True, method="decode",
                                  mutable=["cache"])
    return logits[:, 0].astype(jnp.float32), mutated.get("cache", {})

  return step


def _check_decode_len(max_decode_len: int) -> None:
  if not isinstance(max_decode_len, (int, np.integer)) or max_decode_len < 1:
    raise ValueError(f"max_decode_len={max_decode_len!r} must be an integer >= 1 (the "
                     "output length, EOS included).")


def greedy_decode(model: nn.Module, variables: Variables, inputs: jnp.ndarray,
                  max_decode_len: int, eos_id: int = EOS_ID) -> jnp.ndarray:
  """Greedy decoding with the key/value cache: the most likely token at every step.

  The source is encoded once; a ``lax.while_loop`` then feeds one token per step to the
  cached decoder, starting from BOS, and stops early once every row has produced EOS.

  Args:
    model: a ``Transformer`` (or a module with its ``encode``/``decode`` methods).
    variables: ``{'params': ...}`` (a 'cache' entry is ignored).
    inputs: int32 [batch, src_len] source tokens.
    max_decode_len: output length (static).
    eos_id: the end-of-sequence id.

  Returns:
    int32 [batch, max_decode_len]: the tokens, EOS included, then PAD; comparable with the
    targets padded or cut to ``max_decode_len``.
  """
  _check_decode_len(max_decode_len)
  variables = _without_cache(variables)
  batch = inputs.shape[0]
  encoded = model.apply(variables, inputs, method="encode")
  step = _step_fn(model, variables, encoded, inputs)
  cache = _initial_cache(model, variables, encoded, inputs, max_decode_len)

  def not_done(state):
    index, _, _, finished, _ = state
    return (index < max_decode_len) & ~jnp.all(finished)

  def decode_one(state):
    index, cache, last_tokens, finished, tokens = state
    logits, cache = step(cache, last_tokens)
    next_tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    next_tokens = jnp.where(finished, PAD_ID, next_tokens)
    tokens = lax.dynamic_update_slice(tokens, next_tokens[:, None], (0, index))
    return index + 1, cache, next_tokens, finished | (next_tokens == eos_id), tokens

  state = (jnp.array(0, jnp.int32), cache, jnp.full((batch,), BOS_ID, jnp.int32),
           jnp.zeros((batch,), bool), jnp.full((batch, max_decode_len), PAD_ID, jnp.int32))
  return lax.while_loop(not_done, decode_one, state)[-1]


def full_sequence_greedy_decode(model: nn.Module, variables: Variables, inputs: jnp.ndarray,
                                max_decode_len: int, eos_id: int = EOS_ID) -> jnp.ndarray:
  """Greedy decoding without a cache: the whole decoder runs again for every new token.

  O(max_decode_len²) decoder positions instead of ``greedy_decode``'s O(max_decode_len);
  the reference that the cached decoding must equal, and the baseline of its speed-up.

  Args:
    model: a ``Transformer`` (or a module with its ``encode``/``decode`` methods).
    variables: ``{'params': ...}``.
    inputs: int32 [batch, src_len] source tokens.
    max_decode_len: output length (static).
    eos_id: the end-of-sequence id.

  Returns:
    int32 [batch, max_decode_len], as ``greedy_decode``.
  """
  variables = _without_cache(variables)
  batch = inputs.shape[0]
  encoded = model.apply(variables, inputs, method="encode")

  def not_done(state):
    index, finished, _ = state
    return (index < max_decode_len) & ~jnp.all(finished)

  def decode_one(state):
    index, finished, tokens = state
    # Positions from ``index`` on hold PAD; the causal mask keeps them out of position
    # ``index``'s logits.
    logits = model.apply(variables, encoded, inputs, shift_right(tokens), method="decode")
    logits = lax.dynamic_index_in_dim(logits, index, axis=1, keepdims=False)
    next_tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    next_tokens = jnp.where(finished, PAD_ID, next_tokens)
    tokens = lax.dynamic_update_slice(tokens, next_tokens[:, None], (0, index))
    return index + 1, finished | (next_tokens == eos_id), tokens

  state = (jnp.array(0, jnp.int32), jnp.zeros((batch,), bool),
           jnp.full((batch, max_decode_len), PAD_ID, jnp.int32))
  return lax.while_loop(not_done, decode_one, state)[-1]


def _gather_beams(tree: Any, beam_indices: jnp.ndarray, batch: int, beam_size: int) -> Any:
  """Reorders the [batch * beam, ...] leaves of ``tree`` by ``beam_indices`` [batch, k]."""

  def gather(x):
    if x.ndim == 0:  # A step counter shared by all beams.
      return x
    x = x.reshape((batch, beam_size) + x.shape[1:])
    x = jnp.take_along_axis(x, beam_indices.reshape(beam_indices.shape + (1,) * (x.ndim - 2)),
                            axis=1)
    return x.reshape((batch * beam_size,) + x.shape[2:])

  return jax.tree.map(gather, tree)


def beam_search(model: nn.Module, variables: Variables, inputs: jnp.ndarray, beam_size: int,
                max_decode_len: int, length_penalty: float = 0.6,
                eos_id: int = EOS_ID) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Beam search with the GNMT length penalty (§6.1: beam 4, α = 0.6), on the cache.

  Hypotheses are scored log P(Y|X) / lp(Y), lp(Y) = ((5 + |Y|) / 6)^α (Wu et al. 2016;
  ``gnmt_length_penalty``), |Y| counting EOS. At every step each live hypothesis is extended
  by every token, and the ``beam_size`` best extensions (by log-probability; they all have
  the same length) are kept: those ending in EOS join the finished hypotheses (the
  ``beam_size`` best by score are kept), the others stay live, and the cache is reordered to
  follow them. So with ``beam_size`` 1 the search is greedy decoding exactly.

  The ``lax.while_loop`` stops at ``max_decode_len``, or once no row can improve: a row is
  done when it has no live hypothesis, or when it holds ``beam_size`` finished ones and no
  live one can beat the worst of them. The bound log P(live) / lp(max_decode_len) is exact
  for α >= 0: log-probabilities only fall as a hypothesis grows, and lp is largest at the
  longest length.

  Args:
    model: a ``Transformer`` (or a module with its ``encode``/``decode`` methods).
    variables: ``{'params': ...}`` (a 'cache' entry is ignored).
    inputs: int32 [batch, src_len] source tokens.
    beam_size: hypotheses kept per row (static).
    max_decode_len: output length (static).
    length_penalty: α >= 0.
    eos_id: the end-of-sequence id.

  Returns:
    tokens: int32 [batch, beam_size, max_decode_len], best first, each EOS included, then
      PAD. Finished hypotheses rank before unfinished ones: a row with fewer than
      ``beam_size`` finished hypotheses at ``max_decode_len`` is completed with its live
      ones (no EOS, scored at that length).
    scores: float32 [batch, beam_size], log P(Y|X) / lp(Y); -inf for a slot left without a
      hypothesis.

  Raises:
    ValueError: ``beam_size`` < 1, ``max_decode_len`` < 1 or ``length_penalty`` < 0.
  """
  _check_decode_len(max_decode_len)
  if beam_size < 1:
    raise ValueError(f"beam_size={beam_size} must be a positive integer.")
  if isinstance(length_penalty, (int, float)) and length_penalty < 0:
    raise ValueError(f"length_penalty={length_penalty} must be >= 0 (the search's stopping "
                     "bound assumes lp grows with length).")
  variables = _without_cache(variables)
  batch = inputs.shape[0]
  k = beam_size
  encoded = model.apply(variables, inputs, method="encode")
  # Every row's k hypotheses are consecutive rows of the decoder's batch: row b * k + j.
  flat_inputs = jnp.repeat(inputs, k, axis=0)
  flat_encoded = jnp.repeat(encoded, k, axis=0)
  step = _step_fn(model, variables, flat_encoded, flat_inputs)
  cache = _initial_cache(model, variables, flat_encoded, flat_inputs, max_decode_len)

  def penalty(length):
    return gnmt_length_penalty(length, length_penalty)

  # Sequences carry BOS at position 0, so hypothesis tokens are positions 1..max_decode_len.
  sequences = jnp.full((batch, k, max_decode_len + 1), PAD_ID, jnp.int32)
  sequences = sequences.at[:, :, 0].set(BOS_ID)
  # At the start only the first slot is live: the k identical BOS hypotheses would
  # otherwise fill the beam with copies.
  first_only = jnp.arange(k) == 0
  state = {
      "index": jnp.array(0, jnp.int32),
      "cache": cache,
      "live_sequences": sequences,
      "live_log_probs": jnp.broadcast_to(jnp.where(first_only, 0.0, _NO_SCORE).astype(
          jnp.float32), (batch, k)),
      "live": jnp.broadcast_to(first_only, (batch, k)),
      "finished_sequences": sequences,
      "finished_scores": jnp.full((batch, k), _NO_SCORE, jnp.float32),
      "finished": jnp.zeros((batch, k), bool),
  }

  def not_done(state):
    best_live_bound = jnp.max(
        jnp.where(state["live"], state["live_log_probs"], _NO_SCORE), axis=1
    ) / penalty(max_decode_len)
    worst_finished = jnp.min(state["finished_scores"], axis=1)
    cannot_improve = jnp.all(state["finished"], axis=1) & (best_live_bound <= worst_finished)
    row_done = ~jnp.any(state["live"], axis=1) | cannot_improve
    return (state["index"] < max_decode_len) & ~jnp.all(row_done)

  def extend(state):
    index = state["index"]
    last_tokens = lax.dynamic_index_in_dim(state["live_sequences"], index, axis=2,
                                           keepdims=False)
    logits, cache = step(state["cache"], last_tokens.reshape(batch * k))
    token_log_probs = jax.nn.log_softmax(logits).reshape(batch, k, -1)
    vocab = token_log_probs.shape[-1]
    candidates = jnp.where(state["live"][..., None],
                           state["live_log_probs"][..., None] + token_log_probs, _NO_SCORE)
    top_log_probs, top_indices = lax.top_k(candidates.reshape(batch, k * vocab), k)
    parents = top_indices // vocab
    tokens = (top_indices % vocab).astype(jnp.int32)
    from_live = jnp.take_along_axis(state["live"], parents, axis=1)
    sequences = jnp.take_along_axis(state["live_sequences"], parents[..., None], axis=1)
    sequences = lax.dynamic_update_slice(sequences, tokens[..., None], (0, 0, index + 1))
    ended = from_live & (tokens == eos_id)
    still_live = from_live & (tokens != eos_id)

    # The best k of the finished hypotheses so far and those ending now (length index + 1).
    scores = jnp.concatenate(
        [state["finished_scores"],
         jnp.where(ended, top_log_probs / penalty(index + 1), _NO_SCORE)], axis=1)
    flags = jnp.concatenate([state["finished"], ended], axis=1)
    all_sequences = jnp.concatenate([state["finished_sequences"], sequences], axis=1)
    finished_scores, kept = lax.top_k(scores, k)
    return {
        "index": index + 1,
        "cache": _gather_beams(cache, parents, batch, k),
        "live_sequences": sequences,
        "live_log_probs": jnp.where(still_live, top_log_probs, _NO_SCORE),
        "live": still_live,
        "finished_sequences": jnp.take_along_axis(all_sequences, kept[..., None], axis=1),
        "finished_scores": finished_scores,
        "finished": jnp.take_along_axis(flags, kept, axis=1),
    }

  state = lax.while_loop(not_done, extend, state)

  # Finished hypotheses first (best score first), then live ones, then empty slots.
  live_scores = state["live_log_probs"] / penalty(state["index"])
  scores = jnp.concatenate([state["finished_scores"], live_scores], axis=1)
  tiers = jnp.concatenate([2 * state["finished"], state["live"].astype(jnp.int32)], axis=1)
  sequences = jnp.concatenate([state["finished_sequences"], state["live_sequences"]], axis=1)
  order = jnp.lexsort((-scores, -tiers), axis=-1)[:, :k]
  tiers = jnp.take_along_axis(tiers, order, axis=1)
  scores = jnp.where(tiers > 0, jnp.take_along_axis(scores, order, axis=1), -jnp.inf)
  sequences = jnp.take_along_axis(sequences, order[..., None], axis=1)[:, :, 1:]
  sequences = jnp.where(tiers[..., None] > 0, sequences, PAD_ID)
  return sequences.astype(jnp.int32), scores.astype(jnp.float32)
