"""A tiny Transformer learns to reverse sequences: the offline sequence-to-sequence default.

Vaswani et al. 2017's recipe — Adam (β1 0.9, β2 0.98, ε 1e-9), the inverse-square-root
schedule with linear warm-up (§5.3), label smoothing 0.1 (§5.4), post-LN blocks with dropout
0.1 — scaled to a 2+2-layer model and a synthetic task generated from the seed
(``bagtricks/data/sequences.py``): training sequences mostly up to 16 symbols with a fifth
longer ones, and held-out test sequences of every length up to 24, none of them seen in
training. The result is the greedy decoding's whole-sequence ``exact_match``.

``seq_task_config`` is the shared base of the synthetic sequence configs: pass
``--config.dataset.name=seq_copy`` (``seq_sort``, ``seq_add``) for the other tasks.
"""

import ml_collections

from configs import default as default_lib


def seq_task_config(dataset: str) -> ml_collections.ConfigDict:
  """The digits default turned into a synthetic sequence-to-sequence run."""
  config = default_lib.get_config()
  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = dataset
  config.dataset.train_split = "train"
  config.dataset.eval_split = "test"
  config.dataset.num_symbols = 10
  config.dataset.num_train_examples = 20000
  config.dataset.num_eval_examples = 1000
  config.dataset.min_length = 1
  config.dataset.max_train_length = 16  # Most training sequences are at most this long...
  config.dataset.long_fraction = 0.2    # ...this fraction is longer, up to max_length,
  config.dataset.max_length = 24        # and the test lengths are uniform up to max_length.

  config.model = ml_collections.ConfigDict()
  config.model.name = "transformer_tiny"  # d_model 128, 4 heads, d_ff 512, 2 + 2 layers.
  config.model.dropout_rate = 0.1
  config.model.attention_dropout_rate = 0.0
  config.model.pre_layer_norm = False
  config.model.position_encoding = "sinusoidal"

  config.task = "seq2seq"
  config.label_smoothing = 0.1
  config.seq2seq = ml_collections.ConfigDict()
  config.seq2seq.beam_size = 1  # Greedy decoding for exact_match.
  config.seq2seq.length_penalty = 0.6
  config.seq2seq.bleu = False

  config.optimizer.name = "adam"
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.98
  config.optimizer.eps = 1e-9
  config.optimizer.weight_decay = 0.0
  config.schedule = ml_collections.ConfigDict()
  config.schedule.name = "noam"
  config.schedule.model_dim = 128  # transformer_tiny's d_model.
  config.schedule.warmup_steps = 400
  config.schedule.scale = 1.0  # Peak (d_model · warmup)^−0.5 = 0.0044 at step 400.
  config.schedule.warmup_epochs = 0.0  # Unused by noam.

  config.num_epochs = 20
  config.batch_size = 128
  config.eval_batch_size = 200
  config.log_every_steps = 100
  config.eval_every_epochs = 10.0
  config.checkpoint_every_steps = 500
  return config


def get_config() -> ml_collections.ConfigDict:
  return seq_task_config("seq_reverse")
