"""Tests for models/transformer.py, each against a reference computed another way.

Models are tiny (d_model 16-32, two layers) and seeded. A tiny Transformer trained for a few
seconds to reverse sequences gives the decoding tests varied outputs and early EOS, which a
random model (it repeats one token) does not.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax import lax

import models
from bagtricks.state import run_once
from models import transformer
from models.transformer import BOS_ID, EOS_ID, PAD_ID

_VOCAB = 11  # PAD, BOS, EOS and 8 symbols.
_MAX_SYMBOLS = 6
_SEQ_LEN = _MAX_SYMBOLS + 1  # Up to 6 symbols and EOS, then PAD.


def _tiny(**overrides) -> transformer.Transformer:
  fields = dict(vocab_size=_VOCAB, d_model=16, num_heads=2, d_ff=32, num_encoder_layers=2,
                num_decoder_layers=2, dropout_rate=0.0, max_len=16)
  return transformer.Transformer(**{**fields, **overrides})


@pytest.fixture(autouse=True)
def _float32_matmuls():
  """Full float32 matmuls on every backend (GPUs may default to TF32): the comparisons below
  allow 1e-5."""
  with jax.default_matmul_precision("float32"):
    yield


def _init(model, *args, seed=0, **kwargs):
  return run_once(lambda key: model.init(key, *args, **kwargs), jax.random.key(seed))


def _reversal_batch(rs: np.random.RandomState, size: int):
  """Random symbol sequences (ids 3..10) and their reversals, each + EOS, then PAD."""
  inputs = np.zeros((size, _SEQ_LEN), np.int32)
  targets = np.zeros((size, _SEQ_LEN), np.int32)
  for row, length in enumerate(rs.randint(1, _MAX_SYMBOLS + 1, size)):
    symbols = rs.randint(3, _VOCAB, length)
    inputs[row, :length], inputs[row, length] = symbols, EOS_ID
    targets[row, :length], targets[row, length] = symbols[::-1], EOS_ID
  return inputs, targets


@pytest.fixture(scope="module")
def reversal_model():
  """A tiny post-LN Transformer trained for 150 Adam steps to reverse sequences."""
  model = _tiny(d_model=32, num_heads=4, d_ff=64)
  rs = np.random.RandomState(0)
  inputs, targets = _reversal_batch(rs, 64)
  params = _init(model, inputs=inputs, targets=targets)["params"]
  optimizer = optax.adam(3e-3)

  @jax.jit
  def train_step(params, opt_state, inputs, targets):
    def loss_fn(params):
      logits = model.apply({"params": params}, inputs=inputs, targets=targets, train=True)
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
      weights = targets != PAD_ID
      return jnp.sum(losses * weights) / jnp.sum(weights)

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  opt_state = optimizer.init(params)
  for _ in range(150):
    params, opt_state = train_step(params, opt_state, *_reversal_batch(rs, 64))
  test_inputs, test_targets = _reversal_batch(np.random.RandomState(1), 12)
  return model, {"params": params}, jnp.asarray(test_inputs), test_targets


# ------------------------------------------------------------------------------------------
# Attention, masks, positions.


def _numpy_attention(q, k, v, mask):
  """softmax(QKᵀ/√d)V per head in float64; a row with no allowed key averages all values."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  batch, q_len, heads, head_dim = q.shape
  mask = np.broadcast_to(np.asarray(mask, bool), (batch, heads, q_len, k.shape[1]))
  out = np.zeros(q.shape)
  for b in range(batch):
    for h in range(heads):
      for i in range(q_len):
        allowed = mask[b, h, i]
        if not allowed.any():
          out[b, i, h] = v[b, :, h].mean(axis=0)
          continue
        logits = k[b, :, h] @ q[b, i, h] / math.sqrt(head_dim)
        weights = np.where(allowed, np.exp(logits - logits[allowed].max()), 0.0)
        out[b, i, h] = weights / weights.sum() @ v[b, :, h]
  return out


@pytest.mark.parametrize("mask_kind", ["padding", "causal"])
def test_attention_matches_numpy(mask_kind):
  rs = np.random.RandomState(0)
  q, k, v = (rs.randn(2, 5, 3, 4).astype(np.float32) for _ in range(3))
  if mask_kind == "padding":
    # Row 1's queries are all padding, so every one of its rows is fully masked.
    valid = np.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], bool)
    mask = transformer.padding_mask(jnp.asarray(valid), jnp.asarray(valid))
  else:
    mask = transformer.causal_mask(5).at[:, :, 2, :].set(False)  # Row 2 fully masked.
  out = transformer.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask)
  assert out.shape == (2, 5, 3, 4) and out.dtype == jnp.float32
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out, _numpy_attention(q, k, v, mask), atol=1e-5)


def test_attention_computes_logits_in_float32_and_returns_dtype():
  rs = np.random.RandomState(0)
  q, k, v = (jnp.asarray(rs.randn(1, 3, 2, 4), jnp.bfloat16) for _ in range(3))
  out = transformer.attention(q, k, v)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32),
                             _numpy_attention(q.astype(jnp.float32), k.astype(jnp.float32),
                                              v.astype(jnp.float32), True), atol=3e-2)
  dropped = transformer.attention(q, k, v, dropout_rng=jax.random.key(0), dropout_rate=0.5,
                                  deterministic=False, dtype=jnp.float32)
  assert dropped.dtype == jnp.float32 and not np.allclose(dropped, out.astype(jnp.float32))


def test_mask_helpers():
  tokens = jnp.array([[5, 6, 2, 0, 7], [4, 2, 0, 0, 0]])
  # Everything from the first PAD on is padding, even a stray token after it.
  np.testing.assert_array_equal(transformer.non_padding(tokens),
                                [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
  mask = transformer.padding_mask(tokens, tokens)
  assert mask.shape == (2, 1, 5, 5)
  assert mask[0, 0, 1, 2] and not mask[0, 0, 1, 4] and not mask[0, 0, 4, 0]
  assert transformer.padding_mask(None, tokens).shape == (2, 1, 1, 5)
  np.testing.assert_array_equal(transformer.causal_mask(3)[0, 0],
                                [[1, 0, 0], [1, 1, 0], [1, 1, 1]])
  np.testing.assert_array_equal(transformer.shift_right(tokens),
                                [[BOS_ID, 5, 6, 2, 0], [BOS_ID, 4, 2, 0, 0]])


def test_sinusoidal_encoding_matches_closed_form():
  d_model = 10
  positions = np.array([0, 1, 2, 7, 50])
  encoding = transformer.sinusoidal_position_encoding(positions, d_model)
  assert encoding.shape == (5, d_model) and encoding.dtype == jnp.float32
  for p_index, pos in enumerate(positions):
    for i in range(d_model // 2):
      angle = pos / 10000.0**(2 * i / d_model)
      np.testing.assert_allclose(encoding[p_index, 2 * i], math.sin(angle), atol=1e-5)
      np.testing.assert_allclose(encoding[p_index, 2 * i + 1], math.cos(angle), atol=1e-5)


# ------------------------------------------------------------------------------------------
# What the logits may depend on.


def test_decoder_logits_do_not_see_future_targets():
  model = _tiny()
  inputs = jnp.array([[5, 6, 7, 2, 0, 0], [8, 2, 0, 0, 0, 0]], jnp.int32)
  targets = jnp.array([[7, 6, 5, 2, 0], [8, 2, 0, 0, 0]], jnp.int32)
  variables = _init(model, inputs=inputs, targets=targets)
  logits, changed = run_once(
      lambda variables, *all_targets: [model.apply(variables, inputs=inputs, targets=t)
                                       for t in all_targets],
      variables, targets, targets.at[:, 2:].set(9))
  # Logits at position t read targets[:t]; targets[2:] first matter at position 3.
  np.testing.assert_allclose(changed[:, :3], logits[:, :3], atol=1e-6)
  assert not np.allclose(changed[:, 3:], logits[:, 3:], atol=1e-3)


def test_language_model_logits_do_not_see_future_tokens():
  model = transformer.TransformerLanguageModel(
      vocab_size=_VOCAB, d_model=16, num_heads=2, d_ff=32, num_layers=2, dropout_rate=0.0)
  tokens = jnp.array([[5, 6, 7, 8, 9, 2], [4, 4, 2, 0, 0, 0]], jnp.int32)
  variables = _init(model, tokens)
  logits, changed = run_once(
      lambda variables, *all_tokens: [model.apply(variables, t) for t in all_tokens],
      variables, tokens, tokens.at[:, 3:].set(10))
  assert logits.shape == (2, 6, _VOCAB) and logits.dtype == jnp.float32
  np.testing.assert_allclose(changed[:, :4], logits[:, :4], atol=1e-6)
  assert not np.allclose(changed[:, 4:], logits[:, 4:], atol=1e-3)


@pytest.mark.slow
def test_padding_content_and_extra_padding_do_not_change_logits():
  model = _tiny()
  inputs = jnp.array([[5, 6, 7, 2, 0, 0, 0], [8, 2, 0, 0, 0, 0, 0]], jnp.int32)
  targets = jnp.array([[7, 6, 5, 2, 0], [8, 2, 0, 0, 0]], jnp.int32)
  variables = _init(model, inputs=inputs, targets=targets, seed=1)
  # Tokens after a row's first PAD are padding whatever they are.
  garbage = inputs.at[0, 5:].set(9).at[1, 3:].set(4)
  # Less source padding, more target padding.
  shorter_inputs, longer_targets = inputs[:, :5], jnp.pad(targets, ((0, 0), (0, 3)))
  logits, with_garbage, longer = run_once(
      lambda variables, *pairs: [model.apply(variables, inputs=i, targets=t)
                                 for i, t in zip(pairs[::2], pairs[1::2])],
      variables, inputs, targets, garbage, targets, shorter_inputs, longer_targets)
  np.testing.assert_allclose(with_garbage, logits, atol=1e-5)
  # The real positions' logits stay.
  np.testing.assert_allclose(longer[0, :4], logits[0, :4], atol=1e-5)
  np.testing.assert_allclose(longer[1, :2], logits[1, :2], atol=1e-5)


# ------------------------------------------------------------------------------------------
# Decoding.


def _cached_and_full(model, variables, inputs, decoder_inputs):
  """Per-step logits with the cache (one token per call) and of one full-sequence call;
  ``greedy_decode`` and ``full_sequence_greedy_decode`` tokens."""
  encoded = model.apply(variables, inputs, method="encode")
  full = model.apply(variables, encoded, inputs, decoder_inputs, method="decode")
  # The cache as flax's examples/wmt creates it: one decode=True call on a full-length input.
  _, created = model.apply(variables, encoded, inputs, decoder_inputs, decode=True,
                           method="decode", mutable=["cache"])

  def step(cache, tokens):
    logits, mutated = model.apply({**variables, "cache": cache}, encoded, inputs,
                                  tokens[:, None], decode=True, method="decode",
                                  mutable=["cache"])
    return mutated["cache"], logits[:, 0]

  _, cached = lax.scan(step, created["cache"], decoder_inputs.T)
  length = decoder_inputs.shape[1]
  return (cached.transpose(1, 0, 2), full,
          transformer.greedy_decode(model, variables, inputs, length),
          transformer.full_sequence_greedy_decode(model, variables, inputs, length))


@pytest.mark.parametrize("pre_layer_norm", [False, True])
@pytest.mark.parametrize("position_encoding", ["sinusoidal", "learned"])
@pytest.mark.slow
def test_cached_decoding_equals_full_sequence(pre_layer_norm, position_encoding):
  model = _tiny(pre_layer_norm=pre_layer_norm, position_encoding=position_encoding,
                share_embeddings=False)
  rs = np.random.RandomState(0)
  inputs = jnp.asarray(_reversal_batch(rs, 3)[0])
  decoder_inputs = jnp.asarray(rs.randint(0, _VOCAB, (3, 8)), jnp.int32).at[:, 0].set(BOS_ID)
  variables = _init(model, inputs=inputs, targets=decoder_inputs, seed=2)
  cached, full, greedy, full_greedy = run_once(functools.partial(_cached_and_full, model),
                                                variables, inputs, decoder_inputs)
  np.testing.assert_allclose(cached, full, atol=1e-5)
  np.testing.assert_array_equal(greedy, full_greedy)


def test_language_model_cached_decoding_equals_full_sequence():
  model = transformer.TransformerLanguageModel(
      vocab_size=_VOCAB, d_model=16, num_heads=2, d_ff=32, num_layers=2, dropout_rate=0.0,
      position_encoding="learned", max_len=8)
  tokens = jnp.asarray(np.random.RandomState(0).randint(0, _VOCAB, (2, 8)), jnp.int32)
  variables = _init(model, tokens)

  def cached_and_full(variables, tokens):
    decoder_inputs = transformer.shift_right(tokens)
    _, created = model.apply(variables, decoder_inputs, decode=True, method="decode",
                             mutable=["cache"])

    def step(cache, last_tokens):
      logits, mutated = model.apply({**variables, "cache": cache}, last_tokens[:, None],
                                    decode=True, method="decode", mutable=["cache"])
      return mutated["cache"], logits[:, 0]

    _, cached = lax.scan(step, created["cache"], decoder_inputs.T)
    return cached.transpose(1, 0, 2), model.apply(variables, tokens)

  cached, full = run_once(cached_and_full, variables, tokens)
  np.testing.assert_allclose(cached, full, atol=1e-5)


@pytest.mark.slow
def test_trained_model_greedy_decoding(reversal_model):
  model, variables, inputs, targets = reversal_model
  greedy, full = run_once(
      lambda variables, inputs: (
          transformer.greedy_decode(model, variables, inputs, _SEQ_LEN),
          transformer.full_sequence_greedy_decode(model, variables, inputs, _SEQ_LEN)),
      variables, inputs)
  np.testing.assert_array_equal(greedy, full)
  assert greedy.dtype == jnp.int32 and greedy.shape == targets.shape
  # Rows end with EOS, then only PAD; most are already the reversal.
  for row in np.asarray(greedy):
    eos = np.flatnonzero(row == EOS_ID)
    if eos.size:
      assert np.all(row[eos[0] + 1:] == PAD_ID)
  assert np.mean(np.all(np.asarray(greedy) == targets, axis=1)) >= 0.5


def _sequence_scores(model, variables, inputs, tokens, alpha):
  """log P(tokens | inputs) / lp(|tokens|) by one full-sequence pass, |tokens| counting EOS
  (all positions when there is none)."""
  logits = model.apply(variables, inputs=inputs, targets=tokens)
  log_probs = np.asarray(jax.nn.log_softmax(logits), np.float64)
  scores = []
  for row, sequence in enumerate(np.asarray(tokens)):
    eos = np.flatnonzero(sequence == EOS_ID)
    length = eos[0] + 1 if eos.size else len(sequence)
    total = sum(log_probs[row, t, sequence[t]] for t in range(length))
    scores.append(total / ((5.0 + length) / 6.0)**alpha)
  return np.array(scores)


@pytest.mark.slow
def test_beam_search_scores_match_full_sequence_rescoring(reversal_model):
  model, variables, inputs, _ = reversal_model
  tokens, scores = run_once(
      lambda variables, inputs: transformer.beam_search(model, variables, inputs, 3, _SEQ_LEN),
      variables, inputs)
  assert tokens.shape == (12, 3, _SEQ_LEN) and tokens.dtype == jnp.int32
  assert scores.shape == (12, 3) and scores.dtype == jnp.float32
  assert np.all(np.diff(np.asarray(scores), axis=1) <= 1e-6)  # Best first.
  for k in range(3):
    expected = _sequence_scores(model, variables, inputs, tokens[:, k], 0.6)
    np.testing.assert_allclose(scores[:, k], expected, atol=1e-4)
  # The three hypotheses of a row differ.
  assert all(len({tuple(h) for h in row}) == 3 for row in np.asarray(tokens))


def test_beam_size_one_equals_greedy(reversal_model):
  model, variables, inputs, _ = reversal_model
  (tokens, scores), greedy = run_once(
      lambda variables, inputs: (
          transformer.beam_search(model, variables, inputs, 1, _SEQ_LEN),
          transformer.greedy_decode(model, variables, inputs, _SEQ_LEN)),
      variables, inputs)
  np.testing.assert_array_equal(tokens[:, 0], greedy)
  np.testing.assert_allclose(scores[:, 0],
                             _sequence_scores(model, variables, inputs, greedy, 0.6),
                             atol=1e-4)


# A bigram model over PAD, BOS, EOS, A, B: greedy takes A (0.55) then EOS (0.4), P = 0.22;
# B (0.45) then EOS (0.9), P = 0.405, is better, and a beam of two finds it.
_A, _B = 3, 4
_BIGRAM = np.full((5, 5), 1e-6)
_BIGRAM[BOS_ID, [_A, _B]] = [0.55, 0.45]
_BIGRAM[_A, [EOS_ID, _A, _B]] = [0.4, 0.3, 0.3]
_BIGRAM[_B, [EOS_ID, _A, _B]] = [0.9, 0.05, 0.05]
_BIGRAM[[PAD_ID, EOS_ID], EOS_ID] = 1.0
_BIGRAM /= _BIGRAM.sum(axis=1, keepdims=True)


class _BigramModel(nn.Module):
  """``encode``/``decode`` of a hand-made bigram model: the next token depends on the last."""

  def encode(self, inputs, train=False):
    del train
    return jnp.zeros(inputs.shape + (1,))

  def decode(self, encoded, inputs, decoder_inputs, train=False, decode=False):
    del encoded, inputs, train, decode
    return jnp.log(jnp.asarray(_BIGRAM, jnp.float32))[decoder_inputs]


@pytest.mark.slow
def test_beam_search_finds_a_better_sequence_than_greedy():
  model, inputs, alpha = _BigramModel(), jnp.zeros((1, 3), jnp.int32), 0.6
  penalty = ((5.0 + 2) / 6.0)**alpha
  greedy = transformer.greedy_decode(model, {}, inputs, 4)
  np.testing.assert_array_equal(greedy, [[_A, EOS_ID, PAD_ID, PAD_ID]])
  one, one_scores = transformer.beam_search(model, {}, inputs, 1, 4, alpha)
  np.testing.assert_array_equal(one[:, 0], greedy)
  tokens, scores = transformer.beam_search(model, {}, inputs, 2, 4, alpha)
  np.testing.assert_array_equal(tokens[0], [[_B, EOS_ID, 0, 0], [_A, EOS_ID, 0, 0]])
  greedy_score = math.log(_BIGRAM[BOS_ID, _A] * _BIGRAM[_A, EOS_ID]) / penalty
  np.testing.assert_allclose(one_scores[0, 0], greedy_score, rtol=1e-5)
  np.testing.assert_allclose(
      scores[0], [math.log(_BIGRAM[BOS_ID, _B] * _BIGRAM[_B, EOS_ID]) / penalty,
                  greedy_score], rtol=1e-5)
  assert scores[0, 0] > greedy_score


# ------------------------------------------------------------------------------------------
# Sizes, dtypes and the registry.


def test_transformer_base_parameter_count():
  vocab, d, d_ff, layers = 37000, 512, 2048, 6
  attention = 4 * (d * d + d)  # query, key, value and out projections, each with a bias.
  feed_forward = d * d_ff + d_ff + d_ff * d + d
  layer_norm = 2 * d
  encoder_layer = attention + feed_forward + 2 * layer_norm
  decoder_layer = 2 * attention + feed_forward + 3 * layer_norm
  # One shared embedding, which is also the output projection (no bias); sinusoidal
  # positions and post-LN add no parameters.
  expected = layers * encoder_layer + layers * decoder_layer + vocab * d
  assert expected == 63_082_496
  model = models.create_model("transformer_base", num_classes=vocab)
  tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  shapes = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), inputs=x, targets=x), tokens)
  assert sum(math.prod(s.shape) for s in jax.tree.leaves(shapes)) == expected
  assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(shapes))


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_and_logits():
  tokens = jnp.array([[5, 6, 2, 0]], jnp.int32)
  image = jnp.asarray(np.random.RandomState(0).rand(2, 8, 8, 1), jnp.float32)
  one_layer = dict(num_encoder_layers=1, num_decoder_layers=1)
  cases = [
      (_tiny(dtype=jnp.bfloat16, pre_layer_norm=True, **one_layer),
       dict(inputs=tokens, targets=tokens), (1, 4, _VOCAB)),
      (_tiny(dtype=jnp.bfloat16, share_embeddings=False, target_vocab_size=7, **one_layer),
       dict(inputs=tokens, targets=tokens), (1, 4, 7)),
      (transformer.TransformerLanguageModel(vocab_size=_VOCAB, d_model=16, num_heads=2,
                                            d_ff=32, num_layers=1, dtype=jnp.bfloat16),
       dict(tokens=tokens), (1, 4, _VOCAB)),
      (transformer.PatchTransformerClassifier(num_classes=10, d_model=16, num_heads=2,
                                              d_ff=32, num_layers=1, dtype=jnp.bfloat16),
       dict(image=image), (2, 10)),
  ]
  for model, args, shape in cases:
    variables = _init(model, **args)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables)), model
    logits = run_once(lambda variables, args, model=model: model.apply(
        variables, **args, train=True, rngs={"dropout": jax.random.key(1)}), variables, args)
    assert logits.shape == shape and logits.dtype == jnp.float32, model
    assert np.all(np.isfinite(logits))


@pytest.mark.slow
def test_patch_classifier_shapes_and_patch_size_check():
  model = transformer.PatchTransformerClassifier(num_classes=3, patch_size=2, d_model=16,
                                                 num_heads=2, d_ff=32, num_layers=1,
                                                 position_encoding="sinusoidal")
  image = jnp.ones((4, 8, 8, 1))
  variables = _init(model, image)
  assert "embedding" not in str(jax.tree_util.tree_structure(variables["params"]["encoder"]))
  assert variables["params"]["patch_embedding"]["kernel"].shape == (4, 16)  # 2 × 2 × 1.
  assert model.apply(variables, image).shape == (4, 3)
  with pytest.raises(ValueError, match="patch_size=3"):
    transformer.PatchTransformerClassifier(num_classes=3, patch_size=3).init(
        jax.random.key(0), image)


def test_registry_names_and_checks():
  for name, d_model in [("transformer", 512), ("transformer_base", 512),
                        ("transformer_tiny", 128)]:
    spec = models.get_spec(name)
    assert spec.default_task({}) == "seq2seq" and spec.input_key is None
    model = spec.build({"num_heads": 2}, num_outputs=13, dtype=jnp.bfloat16)
    assert isinstance(model, models.Transformer)
    assert (model.vocab_size, model.d_model, model.num_heads, model.dtype) == (
        13, d_model, 2, jnp.bfloat16)
  tiny = models.create_model("transformer_tiny", num_classes=13)
  assert (tiny.num_encoder_layers, tiny.num_decoder_layers, tiny.d_ff) == (2, 2, 512)
  patch = models.create_model("patch_transformer", num_classes=10)
  assert isinstance(patch, models.PatchTransformerClassifier) and patch.num_classes == 10
  assert models.get_spec("patch_transformer").default_task({}) == "classification"

  def problems(**fields):
    return models.config_problems(ml_collections.ConfigDict(fields))

  assert problems(name="transformer_tiny") == []
  assert problems(name="patch_transformer") == []
  assert any("config.model.num_heads=3" in p for p in problems(name="transformer_tiny",
                                                               num_heads=3))
  assert any("config.model.d_ff=0" in p for p in problems(name="transformer", d_ff=0))
  assert any("config.model.dropout_rate=1.0" in p
             for p in problems(name="transformer_base", dropout_rate=1.0))
  assert any("position_encoding" in p for p in problems(name="patch_transformer",
                                                        position_encoding="rotary"))
  assert any("share_embeddings" in p for p in problems(name="transformer",
                                                       target_vocab_size=5))
  with pytest.raises(ValueError, match="share_embeddings"):
    transformer.Transformer(vocab_size=10, target_vocab_size=12)


@pytest.mark.parametrize("length", [0, -1])
def test_decoding_refuses_an_empty_output_length(length):
  model = _tiny()
  inputs = jnp.asarray(_reversal_batch(np.random.RandomState(0), 2)[0])
  variables = _init(model, inputs, inputs)
  with pytest.raises(ValueError, match=f"max_decode_len={length} must be an integer >= 1"):
    transformer.greedy_decode(model, variables, inputs, length)
  with pytest.raises(ValueError, match=f"max_decode_len={length} must be an integer >= 1"):
    transformer.beam_search(model, variables, inputs, 2, length)
