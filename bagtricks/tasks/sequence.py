"""Sequence-to-sequence: token cross-entropy under teacher forcing, decoded exact match, BLEU.

A batch holds ``inputs`` int32 ``[batch, src_len]`` and ``targets`` int32 ``[batch, tgt_len]``
(token ids; ``targets`` end with EOS, then padding). The model is called as
``model(inputs=..., targets=..., train=...)`` and returns the next-token logits
``[batch, tgt_len, V]`` of teacher forcing (``models.Transformer``); for evaluation it is also
decoded from the inputs alone, greedily or with beam search (``models.transformer``'s
``greedy_decode`` and ``beam_search``, which any module with the same ``encode``/``decode``
methods can use).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bagtricks import losses
from bagtricks.tasks.base import TOKENS, TaskBase
from bagtricks.tasks.classification import logits_of
from models import transformer as decoding

PAD_ID = decoding.PAD_ID


def _global_sum(x: jnp.ndarray, axis_name: Optional[str]) -> jnp.ndarray:
  return lax.psum(x, axis_name) if axis_name else x


class Seq2SeqTask(TaskBase):
  """Sequence-to-sequence training and evaluation (Vaswani et al. 2017).

  Training loss: per-token cross-entropy with label smoothing ε_ls (§5.4,
  ``losses.token_cross_entropy``), summed over the real (non-padding) target tokens of the
  whole global batch and divided by their number: every token weighs the same, however the
  tokens fall on the devices. Each device's loss is its token sum times devices / global
  tokens, so the step's average of gradients over devices is the gradient of the global
  per-token mean.

  Evaluation: per-token loss (without smoothing) and accuracy; ``exact_match``, the fraction
  of examples whose decoded sequence (up to and including EOS) equals the target; with
  ``bleu``, corpus BLEU (sacrebleu) of the detokenized decoded outputs against the
  detokenized targets.

  Args:
    vocab_size: V, the output vocabulary (PAD, BOS and EOS included).
    label_smoothing: ε_ls (the paper: 0.1).
    beam_size: 1 decodes greedily; more uses beam search (the paper: 4).
    length_penalty: α of beam search's length penalty ((5 + |Y|)/6)^α (the paper: 0.6).
    tokenizer: turns ids into text for BLEU (``decode(ids) -> str``); None: no BLEU.
    bleu: compute BLEU on the eval split (needs ``tokenizer`` and the sacrebleu package).
  """

  input_keys = ("inputs", "targets")
  progress_metrics = {"token_accuracy": "tok_acc"}
  throughput = TOKENS

  def __init__(self, vocab_size: int, label_smoothing: float = 0.1, beam_size: int = 1,
               length_penalty: float = 0.6, tokenizer: Any = None, bleu: bool = False):
    self.num_outputs = vocab_size
    self.label_smoothing = label_smoothing
    self.beam_size = beam_size
    self.length_penalty = length_penalty
    self.tokenizer = tokenizer
    self.bleu = bleu

  # Greedy decoding and no BLEU unless the config asks (the paper: beam 4, α = 0.6).
  config_defaults = {"label_smoothing": 0.0, "seq2seq.beam_size": 1,
                     "seq2seq.length_penalty": 0.6, "seq2seq.bleu": False}

  @classmethod
  def from_config(cls, config, dataset_info) -> "Seq2SeqTask":
    seq = config.seq2seq
    return cls(dataset_info.vocab_size, label_smoothing=config.label_smoothing,
               beam_size=seq.beam_size, length_penalty=seq.length_penalty,
               tokenizer=dataset_info.tokenizer, bleu=seq.bleu)

  @classmethod
  def check_config(cls, config) -> List[str]:
    problems = []
    if not isinstance(config.label_smoothing, (int, float)) or not (
        0.0 <= config.label_smoothing < 1.0):
      problems.append(f"config.label_smoothing={config.label_smoothing} must be in [0, 1).")
    seq = config.seq2seq
    beam = seq.beam_size
    if not isinstance(beam, int) or isinstance(beam, bool) or beam < 1:
      problems.append(f"config.seq2seq.beam_size={beam!r} must be a positive integer "
                      "(1 = greedy).")
    alpha = seq.length_penalty
    if not isinstance(alpha, (int, float)) or alpha < 0:
      problems.append(f"config.seq2seq.length_penalty={alpha!r} must be >= 0.")
    if seq.bleu:
      try:
        import sacrebleu  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
      except ImportError:
        problems.append("config.seq2seq.bleu=True needs the sacrebleu package: pip install "
                        "'bagtricks[text]', or set it to False.")
    return problems

  @classmethod
  def check_for_data(cls, config, dataset_info) -> List[str]:
    missing = [k for k in cls.input_keys if k not in dataset_info.element_spec]
    if missing or dataset_info.vocab_size is None:
      return [f"config.task={config.task or 'seq2seq'!r} needs token 'inputs' and "
              f"'targets' and a vocabulary size, and config.dataset.name={dataset_info.name!r} "
              f"has entries {sorted(dataset_info.element_spec)} (vocab_size "
              f"{dataset_info.vocab_size}); choose a sequence dataset (e.g. 'seq_reverse')."]
    if config.seq2seq.bleu and dataset_info.tokenizer is None:
      return [f"config.seq2seq.bleu=True needs text, and config.dataset.name="
              f"{dataset_info.name!r} has no tokenizer to detokenize with; set it to False."]
    return []

  def check_batch(self, batch, where: str) -> None:
    # Imported here: the task modules import without TensorFlow, the data package does not.
    from bagtricks.data.tokenizers import check_token_ids  # pylint: disable=import-outside-toplevel
    for key in self.input_keys:
      check_token_ids(batch[key], self.num_outputs, f"{key!r} of {where}")

  def loss(self, outputs, batch, task_state, rng, axis_name: Optional[str]):
    """The loss; outside jit (concrete targets) a target id outside the vocabulary raises
    ``ValueError``, under jit it cannot be checked and gives a NaN loss (the loop checks
    every batch on the host first, ``check_batch``)."""
    del rng
    logits = logits_of(outputs)
    targets = batch["targets"]
    if not isinstance(targets, jax.core.Tracer):
      from bagtricks.data.tokenizers import check_token_ids  # pylint: disable=import-outside-toplevel
      check_token_ids(np.asarray(targets), logits.shape[-1], "the targets",
                      error=ValueError)
    weights = (targets != PAD_ID).astype(jnp.float32)
    token_losses = losses.token_cross_entropy(logits, targets, self.label_smoothing)
    devices = _global_sum(jnp.float32(1.0), axis_name)
    # Scaled so that the mean over devices (of the loss, its gradient and the metrics) is
    # the per-token mean over the global batch.
    target_tokens = _global_sum(jnp.sum(weights), axis_name)
    scale = devices / jnp.maximum(target_tokens, 1.0)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    loss = jnp.sum(token_losses * weights) * scale
    # The global batch's real target tokens (the same on every device): the progress line's
    # tokens/s.
    return loss, task_state, {"token_accuracy": jnp.sum(correct * weights) * scale,
                              "target_tokens": target_tokens}

  def decode(self, model, variables, inputs: jnp.ndarray, max_decode_len: int) -> jnp.ndarray:
    """Decoded token ids ``[batch, max_decode_len]`` (EOS included, then padding)."""
    if self.beam_size == 1:
      return decoding.greedy_decode(model, variables, inputs, max_decode_len)
    tokens, _ = decoding.beam_search(model, variables, inputs, self.beam_size, max_decode_len,
                                     length_penalty=self.length_penalty)
    return tokens[:, 0]

  def eval_outputs(self, model, variables, args, kwargs):
    """Teacher-forced ``logits`` and the ``decoded`` sequences, as long as the targets."""
    logits = model.apply(variables, *args, train=False, **kwargs)
    decoded = self.decode(model, variables, kwargs["inputs"], kwargs["targets"].shape[-1])
    return {"logits": logits_of(logits), "decoded": decoded}

  def eval_sums(self, outputs, batch, task_state) -> Dict[str, jnp.ndarray]:
    """Masked sums: token ``loss`` and ``token_accuracy`` over ``tokens``, and
    ``exact_match`` over ``count`` examples."""
    del task_state
    mask = batch["mask"]
    targets = batch["targets"]
    weights = (targets != PAD_ID).astype(jnp.float32) * mask[:, None]
    token_losses = losses.token_cross_entropy(outputs["logits"], targets)
    correct = (jnp.argmax(outputs["logits"], -1) == targets).astype(jnp.float32)
    exact = jnp.all(outputs["decoded"] == targets, axis=-1).astype(jnp.float32)
    return {"loss": jnp.sum(token_losses * weights), "token_accuracy": jnp.sum(correct * weights),
            "tokens": jnp.sum(weights), "exact_match": jnp.sum(exact * mask),
            "count": jnp.sum(mask)}

  def summary(self, sums: Dict[str, float]) -> Dict[str, float]:
    """Per-token ``loss``, ``perplexity`` and ``token_accuracy``; per-example ``exact_match``."""
    tokens = max(sums["tokens"], 1.0)
    loss = sums["loss"] / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
            "token_accuracy": sums["token_accuracy"] / tokens,
            "exact_match": sums["exact_match"] / max(sums["count"], 1.0),
            "examples": int(sums["count"])}

  def eval_examples(self, outputs, batch) -> Dict[str, jnp.ndarray]:
    if not self.bleu:
      return {}
    return {"decoded": outputs["decoded"], "targets": batch["targets"]}

  def examples_summary(self, examples) -> Dict[str, float]:
    """Corpus BLEU (sacrebleu's default 13a tokenization) of the decoded outputs."""
    if not self.bleu:
      return {}
    import sacrebleu  # pylint: disable=import-outside-toplevel
    hypotheses = [self.tokenizer.decode(np.asarray(row).tolist()) for row in examples["decoded"]]
    references = [self.tokenizer.decode(np.asarray(row).tolist()) for row in examples["targets"]]
    return {"bleu": float(sacrebleu.corpus_bleu(hypotheses, [references]).score)}
