r"""Transformer throughput: training and cached decoding, beside PyTorch, in one process.

  python benchmarks/transformer.py                       # transformer_tiny, batch 64
  python benchmarks/transformer.py --model=transformer_base --batch=32 --length=64   # a GPU
  python benchmarks/transformer.py --json=/tmp/transformer.json

Training: the trainer's own step (``steps.make_train_step`` with the ``seq2seq`` task, Adam
and the Noam schedule, under ``DataParallel`` on one device) against PyTorch's
``torch.nn.Transformer`` of the same size (tied, √d-scaled embeddings and sinusoidal positions
around it; Adam; cross-entropy with label smoothing 0.1 and padding ignored) on the same
batch of random tokens. The two run alternately, ``--rounds`` times ``--steps`` steps each,
after warm-up and compilation, and the ratio is taken from their total times. Throughput is
target tokens per second (``batch × length``).

Decoding: greedy decoding of ``--decode_length`` tokens with the key/value cache
(``models.transformer.greedy_decode``) against re-running the whole decoder for every new
token (``full_sequence_greedy_decode``), and PyTorch's ``nn.Transformer`` decoded the same way
(it has no cache). Decoding runs its full length (no EOS in random models is assumed: tokens
are counted as ``batch × decode_length``).

PyTorch (CPU build) is optional: without it the PyTorch columns are left out.
"""

import argparse
import json
import math
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import models  # noqa: E402
from bagtricks import optim, precision, steps  # noqa: E402
from bagtricks.parallel import DataParallel  # noqa: E402
from bagtricks.state import init_train_state  # noqa: E402
from bagtricks.tasks import Seq2SeqTask  # noqa: E402
from configs import transformer_reverse  # noqa: E402
from models import transformer  # noqa: E402


def random_batch(rng: np.random.Generator, batch: int, length: int, vocab: int) -> dict:
  """Tokens ``[batch, length]`` ending in EOS, with a quarter of each row's tail padded in
  half of the rows (so padding masks are exercised, as in real batches)."""
  inputs = rng.integers(3, vocab, size=(batch, length)).astype(np.int32)
  targets = rng.integers(3, vocab, size=(batch, length)).astype(np.int32)
  for tokens in (inputs, targets):
    tokens[:, -1] = transformer.EOS_ID
    tokens[: batch // 2, -(length // 4):] = transformer.PAD_ID
  return {"inputs": inputs, "targets": targets}


class JaxTraining:
  """The trainer's seq2seq train step on one device."""

  def __init__(self, model, batch: dict, vocab: int):
    config = transformer_reverse.get_config()
    policy = precision.get_policy("fp32")
    schedule = optim.noam_schedule(model.d_model, 4000)
    tx = precision.wrap_optimizer(optim.build_optimizer(config, schedule), policy)
    task = Seq2SeqTask(vocab, label_smoothing=0.1)
    example = {k: v[:1] for k, v in batch.items()}
    state = init_train_state(model, tx, task, example, seed=0)
    self.dp = DataParallel("pmap", jax.local_devices()[:1])
    step = self.dp.compile(steps.make_train_step(model, task, tx, policy), donate_state=True)
    self.batch = self.dp.shard_batch({k: v[None] for k, v in batch.items()})
    self.state = self.dp.replicate(state)
    self.step = step.lower(self.state, self.batch).compile()
    self.num_params = sum(np.size(x) for x in jax.tree_util.tree_leaves(state.params))

  def run(self, n: int) -> float:
    for _ in range(n):
      self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready(metrics)
    return float(np.asarray(self.dp.metrics_to_host(metrics)["loss"]))


def torch_model(vocab: int, model):
  """``torch.nn.Transformer`` with the same sizes, tied embeddings and sinusoidal positions."""
  import torch  # pylint: disable=import-outside-toplevel
  from torch import nn  # pylint: disable=import-outside-toplevel

  class TorchSeq2Seq(nn.Module):

    def __init__(self):
      super().__init__()
      d = model.d_model
      self.d_model = d
      self.embed = nn.Embedding(vocab, d)
      self.transformer = nn.Transformer(
          d_model=d, nhead=model.num_heads, num_encoder_layers=model.num_encoder_layers,
          num_decoder_layers=model.num_decoder_layers, dim_feedforward=model.d_ff,
          dropout=model.dropout_rate, batch_first=True, norm_first=model.pre_layer_norm)
      position = np.arange(4096)[:, None]
      rate = np.exp(-math.log(10000.0) * np.arange(0, d, 2) / d)
      table = np.zeros((4096, d), np.float32)
      table[:, 0::2], table[:, 1::2] = np.sin(position * rate), np.cos(position * rate)
      self.register_buffer("positions", torch.from_numpy(table))

    def embed_tokens(self, tokens):
      return self.embed(tokens) * math.sqrt(self.d_model) + self.positions[:tokens.shape[1]]

    def forward(self, inputs, decoder_inputs):
      length = decoder_inputs.shape[1]
      causal = nn.Transformer.generate_square_subsequent_mask(length)
      source_padding = inputs == transformer.PAD_ID
      out = self.transformer(self.embed_tokens(inputs), self.embed_tokens(decoder_inputs),
                             tgt_mask=causal, tgt_is_causal=True,
                             src_key_padding_mask=source_padding,
                             memory_key_padding_mask=source_padding)
      return out @ self.embed.weight.T

  return TorchSeq2Seq()


class TorchTraining:
  """PyTorch's train step on the same batch: forward, label-smoothed CE, backward, Adam."""

  def __init__(self, model, batch: dict, vocab: int):
    import torch  # pylint: disable=import-outside-toplevel
    self.torch = torch
    torch.manual_seed(0)
    self.net = torch_model(vocab, model).train()
    self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    self.loss = torch.nn.CrossEntropyLoss(ignore_index=transformer.PAD_ID,
                                          label_smoothing=0.1)
    self.inputs = torch.from_numpy(batch["inputs"]).long()
    targets = torch.from_numpy(batch["targets"]).long()
    self.targets = targets
    bos = torch.full((targets.shape[0], 1), transformer.BOS_ID, dtype=torch.long)
    self.decoder_inputs = torch.cat([bos, targets[:, :-1]], dim=1)
    self.num_params = sum(p.numel() for p in self.net.parameters())

  def run(self, n: int) -> float:
    for _ in range(n):
      self.opt.zero_grad(set_to_none=True)
      logits = self.net(self.inputs, self.decoder_inputs)
      loss = self.loss(logits.reshape(-1, logits.shape[-1]), self.targets.reshape(-1))
      loss.backward()
      self.opt.step()
    return float(loss)


def torch_greedy_decode(net, inputs, length: int):
  """PyTorch greedy decoding: the whole decoder again for every new token (no cache)."""
  import torch  # pylint: disable=import-outside-toplevel
  with torch.inference_mode():
    net.eval()
    source_padding = inputs == transformer.PAD_ID
    memory = net.transformer.encoder(net.embed_tokens(inputs),
                                     src_key_padding_mask=source_padding)
    tokens = torch.full((inputs.shape[0], 1), transformer.BOS_ID, dtype=torch.long)
    for _ in range(length):
      causal = torch.nn.Transformer.generate_square_subsequent_mask(tokens.shape[1])
      out = net.transformer.decoder(net.embed_tokens(tokens), memory, tgt_mask=causal,
                                    tgt_is_causal=True, memory_key_padding_mask=source_padding)
      next_token = (out[:, -1] @ net.embed.weight.T).argmax(-1, keepdim=True)
      tokens = torch.cat([tokens, next_token], dim=1)
  return tokens[:, 1:]


def alternate(runners: dict, rounds: int, steps_per_round: int) -> dict:
  """Seconds per step of each runner, measured in alternation (after one warm-up round)."""
  for run in runners.values():
    run(1)
  totals = {name: 0.0 for name in runners}
  for _ in range(rounds):
    for name, run in runners.items():
      start = time.perf_counter()
      run(steps_per_round)
      totals[name] += time.perf_counter() - start
  return {name: total / (rounds * steps_per_round) for name, total in totals.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="transformer_tiny")
  parser.add_argument("--vocab", type=int, default=1000)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--length", type=int, default=32, help="source and target length")
  parser.add_argument("--decode_length", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=5, help="train steps per round")
  parser.add_argument("--no_torch", action="store_true")
  parser.add_argument("--json", help="also write the figures to this file")
  args = parser.parse_args()

  have_torch = not args.no_torch
  if have_torch:
    try:
      import torch  # pylint: disable=import-outside-toplevel
      torch.set_num_threads(os.cpu_count() or 1)
    except ImportError:
      print("PyTorch is not installed: its columns are left out (pip install torch, CPU).")
      have_torch = False

  model = models.create_model(args.model, num_classes=args.vocab)
  rng = np.random.default_rng(0)
  batch = random_batch(rng, args.batch, args.length, args.vocab)
  tokens = args.batch * args.length
  results = {"model": args.model, "device": jax.local_devices()[0].device_kind,
             "batch": args.batch, "length": args.length, "vocab": args.vocab}

  runners = {"bagtricks": JaxTraining(model, batch, args.vocab)}
  results["parameters"] = int(runners["bagtricks"].num_params)
  if have_torch:
    runners["torch"] = TorchTraining(model, batch, args.vocab)
    results["torch_parameters"] = int(runners["torch"].num_params)
  seconds = alternate({k: v.run for k, v in runners.items()}, args.rounds, args.steps)
  for name, step_seconds in seconds.items():
    results[f"{name}_train_tokens_per_second"] = tokens / step_seconds
    results[f"{name}_train_step_ms"] = 1000 * step_seconds
  if have_torch:
    results["train_ratio"] = seconds["torch"] / seconds["bagtricks"]

  # Decoding: the trained-for-a-few-steps JAX weights (values do not matter for speed).
  variables = {"params": runners["bagtricks"].dp.unreplicate(runners["bagtricks"].state).params}
  source = jnp.asarray(random_batch(rng, args.batch, args.length, args.vocab)["inputs"])
  length = args.decode_length
  cached = jax.jit(lambda v, x: transformer.greedy_decode(model, v, x, length))
  full = jax.jit(lambda v, x: transformer.full_sequence_greedy_decode(model, v, x, length))
  decoders = {"cached": lambda n: [jax.block_until_ready(cached(variables, source))
                                   for _ in range(n)],
              "full": lambda n: [jax.block_until_ready(full(variables, source))
                                 for _ in range(n)]}
  if have_torch:
    net = runners["torch"].net
    torch_source = torch.from_numpy(np.array(source)).long()
    decoders["torch_full"] = lambda n: [torch_greedy_decode(net, torch_source, length)
                                        for _ in range(n)]
  decode_seconds = alternate(decoders, max(args.rounds // 2, 1), 1)
  for name, s in decode_seconds.items():
    results[f"decode_{name}_tokens_per_second"] = args.batch * length / s
  results["cache_speedup"] = decode_seconds["full"] / decode_seconds["cached"]

  print(f"{args.model} ({results['parameters']:,} parameters), batch {args.batch}, length "
        f"{args.length}, vocab {args.vocab}, on {results['device']}")
  print(f"train tokens/s: bagtricks {results['bagtricks_train_tokens_per_second']:,.0f}", end="")
  if have_torch:
    print(f", torch.nn.Transformer {results['torch_train_tokens_per_second']:,.0f} "
          f"-> ratio {results['train_ratio']:.2f}x")
  else:
    print()
  print(f"greedy decoding of {length} tokens, tokens/s: cached "
        f"{results['decode_cached_tokens_per_second']:,.0f}, full decoder per token "
        f"{results['decode_full_tokens_per_second']:,.0f} -> cache speed-up "
        f"{results['cache_speedup']:.1f}x", end="")
  if have_torch:
    print(f"; torch (full decoder per token) "
          f"{results['decode_torch_full_tokens_per_second']:,.0f}")
  else:
    print()
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
