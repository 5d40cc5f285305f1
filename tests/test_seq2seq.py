"""The sequence-to-sequence task, the Transformer schedule and the token loss, against closed
forms and NumPy."""

import os

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bagtricks import losses, optim
from bagtricks.tasks import Seq2SeqTask


@pytest.mark.parametrize("step_num", [1, 2, 100, 3999, 4000, 4001, 10000, 100000])
def test_noam_schedule_matches_the_papers_formula(step_num):
  # Vaswani et al. §5.3: d^-0.5 · min(step^-0.5, step · warmup^-1.5), step counted from 1.
  expected = 512**-0.5 * min(step_num**-0.5, step_num * 4000**-1.5)
  schedule = optim.noam_schedule(512, 4000)
  np.testing.assert_allclose(float(schedule(step_num - 1)), expected, rtol=1e-6)


def test_noam_schedule_peaks_at_the_end_of_warmup():
  schedule = optim.noam_schedule(512, 4000, scale=2.0)
  values = np.array([float(schedule(i)) for i in range(3990, 4010)])
  assert np.argmax(values) == 3999 - 3990
  np.testing.assert_allclose(values.max(), 2.0 * (512 * 4000)**-0.5, rtol=1e-6)


def test_adam_from_config_uses_the_papers_betas():
  from configs import transformer_reverse
  config = transformer_reverse.get_config()
  tx = optim.build_optimizer(config, 1e-3)
  params = {"w": jnp.ones(3)}
  grads = {"w": jnp.array([1.0, -2.0, 0.5])}
  updates, _ = tx.update(grads, tx.init(params), params)
  reference, _ = optax.adam(1e-3, b1=0.9, b2=0.98, eps=1e-9).update(
      grads, optax.adam(1e-3).init(params), params)
  np.testing.assert_allclose(updates["w"], reference["w"], rtol=1e-6)


def test_bad_sequence_settings_are_named_before_anything_is_built():
  from bagtricks import validate
  from configs import default, transformer_reverse
  config = transformer_reverse.get_config()
  config.schedule.warmup_steps = 0
  config.seq2seq.beam_size = 0
  with pytest.raises(validate.ConfigError) as error:
    validate.validate_config(config, num_local_devices=1)
  assert "config.schedule.warmup_steps=0" in str(error.value)
  assert "config.seq2seq.beam_size=0" in str(error.value)
  config = default.get_config()
  config.schedule.name = "noam"
  with pytest.raises(validate.ConfigError, match="config.schedule.model_dim is missing"):
    validate.validate_config(config, num_local_devices=1)


def _numpy_smoothed_token_loss(logits, tokens, epsilon):
  logits = logits.astype(np.float64)
  log_p = logits - logits.max(-1, keepdims=True)
  log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
  vocab = logits.shape[-1]
  q = np.full(logits.shape, epsilon / vocab)
  np.put_along_axis(q, tokens[..., None], 1.0 - epsilon + epsilon / vocab, axis=-1)
  return -(q * log_p).sum(-1)


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_token_cross_entropy_against_numpy(epsilon):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
  tokens = rng.integers(0, 11, size=(3, 5))
  np.testing.assert_allclose(losses.token_cross_entropy(logits, tokens, epsilon),
                             _numpy_smoothed_token_loss(logits, tokens, epsilon), rtol=1e-5)


def test_loss_is_the_per_token_mean_over_the_global_batch():
  # Devices hold very different numbers of real tokens; the mean over devices of each
  # device's loss (and of its gradient) must be the mean over all real tokens.
  devices, per_device, length, vocab = 8, 2, 6, 7
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(devices, per_device, length, vocab)).astype(np.float32)
  targets = rng.integers(3, vocab, size=(devices, per_device, length)).astype(np.int32)
  lengths = rng.integers(1, length + 1, size=(devices, per_device))
  lengths[0] = length  # One device full, one nearly empty.
  lengths[1] = 1
  targets[np.arange(length)[None, None, :] >= lengths[..., None]] = 0
  task = Seq2SeqTask(vocab, label_smoothing=0.1)

  def device_loss(logits, targets):
    loss, _, metrics = task.loss(logits, {"targets": targets}, {}, None, "batch")
    return loss, metrics

  def mean_loss(logits, targets):
    return jnp.mean(jax.pmap(device_loss, axis_name="batch")(logits, targets)[0])

  real = targets != 0
  expected = _numpy_smoothed_token_loss(logits, targets, 0.1)[real].mean()
  np.testing.assert_allclose(mean_loss(logits, targets), expected, rtol=1e-5)
  _, metrics = jax.pmap(device_loss, axis_name="batch")(logits, targets)
  accuracy = (logits.argmax(-1) == targets)[real].mean()
  np.testing.assert_allclose(np.mean(metrics["token_accuracy"]), accuracy, rtol=1e-5)

  def global_mean(flat_logits):
    per_token = losses.token_cross_entropy(flat_logits, targets, 0.1)
    return jnp.sum(per_token * real) / real.sum()

  np.testing.assert_allclose(jax.grad(lambda x: mean_loss(x, targets))(logits),
                             jax.grad(global_mean)(logits), rtol=1e-4, atol=1e-7)


def test_eval_sums_exact_match_and_padding_mask():
  task = Seq2SeqTask(6)
  targets = jnp.array([[3, 4, 2, 0], [5, 2, 0, 0], [3, 3, 3, 2]])
  decoded = jnp.array([[3, 4, 2, 0], [5, 3, 2, 0], [3, 3, 3, 2]])
  logits = jax.nn.one_hot(targets, 6) * 5.0
  mask = jnp.array([1.0, 1.0, 0.0])  # The third is padding of the eval split.
  sums = task.eval_sums({"logits": logits, "decoded": decoded},
                        {"targets": targets, "mask": mask}, {})
  assert float(sums["exact_match"]) == 1.0
  assert float(sums["count"]) == 2.0
  assert float(sums["tokens"]) == 5.0  # 3 + 2 real target tokens; padding is not counted.
  assert float(sums["token_accuracy"]) == 5.0
  results = task.summary({k: float(v) for k, v in sums.items()})
  assert results["exact_match"] == 0.5 and results["examples"] == 2


# ------------------------------------------------------------------------------------------
# Through the train loop.


class RecordingSeq2SeqTask(Seq2SeqTask):
  """Hands the eval targets it sees to the host, to check what the loop gathers."""

  seen = []

  def eval_examples(self, outputs, batch):
    return {"targets": batch["targets"], "decoded": outputs["decoded"]}

  def examples_summary(self, examples):
    RecordingSeq2SeqTask.seen.append(examples)
    return {"gathered": len(examples["targets"])}


def _shrink_model(config):
  """A 1 + 1-layer Transformer of width 32 (and its schedule's d_model)."""
  config.model.d_model = 32
  config.model.num_heads = 2
  config.model.d_ff = 64
  config.model.num_encoder_layers = 1
  config.model.num_decoder_layers = 1
  config.schedule.model_dim = 32


def _tiny_seq_config(name="seq_copy"):
  from configs import transformer_reverse
  config = transformer_reverse.seq_task_config(name)
  config.dataset.num_train_examples = 512
  config.dataset.num_eval_examples = 60  # Not a multiple of the eval batch: padding.
  config.dataset.max_train_length = 4
  config.dataset.max_length = 6
  _shrink_model(config)
  config.model.dropout_rate = 0.0  # Dropout masks differ per device; 1 vs 8 must agree.
  config.schedule.warmup_steps = 10
  config.batch_size = 64
  config.eval_batch_size = 32
  config.num_epochs = 1
  config.log_every_steps = 4
  config.eval_every_epochs = 0.0
  config.checkpoint_every_steps = 100
  return config


@pytest.mark.slow
def test_one_and_eight_devices_train_the_same_and_eval_gathers_every_example(tmp_path):
  from bagtricks import data, train
  summaries = {}
  RecordingSeq2SeqTask.seen.clear()
  for devices in (1, 8):
    config = _tiny_seq_config()
    config.task = "test_seq2seq:RecordingSeq2SeqTask"
    config.num_devices = devices
    summaries[devices] = train.train_and_evaluate(config, str(tmp_path / str(devices)))
  one, eight = summaries[1], summaries[8]
  assert one["steps"] == eight["steps"] == 8
  for key in ("train_loss", "test_loss", "test_token_accuracy", "test_exact_match"):
    np.testing.assert_allclose(one[key], eight[key], rtol=2e-4, atol=1e-6)
  # The host-side summary saw the eval split's real examples exactly once, in order.
  expected = data.get_source(_tiny_seq_config()).splits["test"]["targets"]
  assert one["test_gathered"] == eight["test_gathered"] == 60
  for seen in RecordingSeq2SeqTask.seen:
    np.testing.assert_array_equal(seen["targets"], expected)
  # exact_match is the fraction of decoded rows equal to their targets.
  last = RecordingSeq2SeqTask.seen[-1]
  np.testing.assert_allclose(eight["test_exact_match"],
                             np.mean(np.all(last["decoded"] == expected, axis=1)))


def _write_mock_wmt_metadata(root, train_examples, test_examples):
  """TFDS metadata (split sizes) for wmt14_translate/de-en, so ``tfds.testing.mock_data``
  serves it with no files."""
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core import splits as splits_lib
  builder = tfds.builder("wmt14_translate/de-en", data_dir=str(root))
  builder.info.set_splits(splits_lib.SplitDict([
      splits_lib.SplitInfo(name=name, shard_lengths=[n], num_bytes=0, filename_template=None)
      for name, n in (("train", train_examples), ("test", test_examples))]))
  os.makedirs(builder.data_dir)
  builder.info.write_to_directory(builder.data_dir)


@pytest.mark.slow
def test_translation_trains_and_reports_bleu_on_mock_data(tmp_path):
  import tensorflow_datasets as tfds
  from bagtricks import train
  from configs import wmt_transformer_base
  pytest.importorskip("sacrebleu", reason="BLEU needs sacrebleu (pip install 'bagtricks[text]')")
  _write_mock_wmt_metadata(tmp_path / "meta", train_examples=48, test_examples=48)
  config = wmt_transformer_base.get_config()
  config.dataset.data_dir = str(tmp_path / "meta")
  config.dataset.tokenizer = "bytes"
  config.dataset.max_length = 64
  config.model.name = "transformer_tiny"
  _shrink_model(config)
  config.seq2seq.beam_size = 2
  config.precision = "fp32"
  config.batch_size = 8
  config.eval_batch_size = 8
  config.num_epochs = 1
  config.log_every_steps = 1
  with tfds.testing.mock_data(num_examples=48, policy=tfds.testing.MockPolicy.USE_FILES,
                              data_dir=str(tmp_path / "meta")):
    summary = train.train_and_evaluate(config, str(tmp_path / "work"))
  assert summary["steps"] >= 1
  assert summary["test_examples"] == 48  # mock_data serves num_examples per split.
  assert 0.0 <= summary["test_bleu"] <= 100.0
  assert np.isfinite(summary["test_loss"])


@pytest.mark.parametrize("bad_id", [13, 18, -3])
def test_token_ids_outside_the_vocabulary_are_refused_naming_where(bad_id):
  from bagtricks import data  # pylint: disable=import-outside-toplevel
  task = Seq2SeqTask(13)
  good = np.array([[3, 4, 2, 0]], np.int32)
  bad = good.copy()
  bad[0, 1] = bad_id
  task.check_batch({"inputs": good, "targets": good}, "batch 0")  # in range: nothing
  with pytest.raises(data.DataError, match=rf"'inputs' of batch 0 holds token id {bad_id}, "
                     r"outside the vocabulary \[0, 13\)"):
    task.check_batch({"inputs": bad, "targets": good}, "batch 0")
  # Called outside jit, the loss refuses a target id as well (under jit it cannot look).
  logits = jnp.zeros((1, 4, 13))
  with pytest.raises(ValueError, match=f"holds token id {bad_id}"):
    task.loss(logits, {"targets": bad}, {}, None, None)
  loss, _, _ = jax.jit(lambda l, t: task.loss(l, {"targets": t}, {}, None, None))(logits, good)
  np.testing.assert_allclose(loss, -np.log(1 / 13) * 0.9 + 0.1 * -np.log(1 / 13), rtol=1e-5)


def test_the_loop_refuses_a_source_with_ids_outside_the_vocabulary(tmp_path):
  from bagtricks import data, train  # pylint: disable=import-outside-toplevel

  def out_of_vocabulary(config):
    source = data.get_source(ml_collections.ConfigDict({**config.to_dict(), "dataset": {
        **config.dataset.to_dict(), "name": "seq_copy"}}))
    batches = source.train_batches

    def train_batches(start_step, num_devices):
      for batch in batches(start_step, num_devices):
        batch["inputs"][..., 0] = source.info().vocab_size + 5
        yield batch

    source.train_batches = train_batches
    return source

  data.register_source("seq_copy_out_of_vocabulary", out_of_vocabulary)
  config = _tiny_seq_config("seq_copy_out_of_vocabulary")
  with pytest.raises(data.DataError, match=r"'inputs' of config.dataset.name="
                     r"'seq_copy_out_of_vocabulary' \(split 'train', the batch of step 1\) "
                     r"holds token id \d+, outside the vocabulary"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints" / "1")
