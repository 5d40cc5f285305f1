"""The Transformer base model on WMT 2014 English→German (Vaswani et al. 2017, Table 3 "base").

The paper's recipe: a 37,000-token shared source/target subword vocabulary with tied
embeddings (§3.4, §5.1); d_model 512, 8 heads, d_ff 2048, 6+6 post-LN layers, dropout 0.1
(§5.4); Adam β1 0.9, β2 0.98, ε 1e-9 with lrate = d_model^−0.5 · min(step^−0.5,
step · 4000^−1.5) (§5.3); label smoothing 0.1; 100,000 steps; beam search with beam 4 and
length penalty α = 0.6 for the test BLEU (§6.1).

Differences, stated: the paper's batches hold about 25,000 source and 25,000 target tokens;
here a batch is ``batch_size`` sentence pairs bucketed by length (768 pairs of about 27
subwords each come close); the vocabulary is a SentencePiece model trained from the training
split (the paper used byte-pair encoding); the paper averages the last 5 checkpoints, which
this recipe does not. The data must be prepared beforehand (nothing is downloaded at run time):
``tfds build wmt14_translate/de-en --data_dir=...``, then
``--config.dataset.data_dir=...``. The language direction follows the dataset's
``supervised_keys`` unless ``dataset.source_language``/``target_language`` say otherwise.
"""

import ml_collections

from configs import transformer_reverse


def get_config() -> ml_collections.ConfigDict:
  config = transformer_reverse.seq_task_config("wmt14_translate/de-en")
  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "wmt14_translate/de-en"
  config.dataset.data_dir = ""
  config.dataset.train_split = "train"
  config.dataset.eval_split = "test"  # newstest2014.
  config.dataset.source_language = "en"
  config.dataset.target_language = "de"
  config.dataset.tokenizer = "sentencepiece"
  config.dataset.vocab_size = 37000
  config.dataset.tokenizer_sentences = 2_000_000
  config.dataset.max_length = 256

  config.model = ml_collections.ConfigDict()
  config.model.name = "transformer_base"
  config.model.share_embeddings = True

  config.label_smoothing = 0.1
  config.seq2seq.beam_size = 4
  config.seq2seq.length_penalty = 0.6
  config.seq2seq.bleu = True

  config.schedule.model_dim = 512
  config.schedule.warmup_steps = 4000
  config.schedule.scale = 1.0

  config.batch_size = 768
  config.eval_batch_size = 256
  # 4.5M sentence pairs / 768 ≈ 5,900 steps per epoch: 17 epochs ≈ the paper's 100k steps.
  config.num_epochs = 17
  config.eval_every_epochs = 0.0
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  config.precision = "bf16"
  return config
