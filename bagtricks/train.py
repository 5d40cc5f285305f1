"""The one training loop: ``train_and_evaluate(config, workdir)``.

init (or restore) → data-parallel train steps with progress lines → periodic evaluation →
metrics (TensorBoard events and ``metrics.jsonl``) → Orbax checkpoints (every K steps, at the
end, and on SIGTERM) → ``summary.json``.
"""

from __future__ import annotations

import json
import logging as pylogging
import os
import signal
import time
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import metric_writers

import models
from bagtricks import augment as augment_lib
from bagtricks import checkpoint, data, distill, explain, optim, precision, steps, tasks
from bagtricks import validate
from bagtricks.parallel import AXIS_NAME, DataParallel
from bagtricks.state import init_train_state


class _DropLibraryInfo(pylogging.Filter):
  """Keeps Orbax's per-save INFO chatter out of the progress log; its warnings still show."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return record.levelno >= pylogging.WARNING or "/orbax/" not in record.pathname


def configure_logging() -> None:
  """INFO progress lines for the command-line tools, without Orbax's per-save messages."""
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_DropLibraryInfo())


class Preempted(Exception):
  """Training stopped on SIGTERM after saving a checkpoint; rerun the command to resume."""


def maybe_initialize_distributed(config) -> None:
  """``jax.distributed.initialize`` when ``config.distributed.enabled`` (multi-host)."""
  dist = config.distributed
  if not dist.enabled or jax.distributed.is_initialized():
    return
  # Collectives between CPU processes need a transport (GPUs and TPUs bring their own).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  # None lets JAX detect the cluster (Cloud TPU, SLURM, ...).
  jax.distributed.initialize(coordinator_address=dist.coordinator_address,
                             num_processes=dist.num_processes, process_id=dist.process_id)


def select_devices(config) -> list:
  return jax.local_devices()[:config.num_devices] if config.num_devices else jax.local_devices()


def build_model(config, num_classes: int, policy: precision.Policy):
  return models.create_model(config.model.name, num_classes=num_classes, axis_name=AXIS_NAME,
                             dtype=policy.compute_dtype, **validate.build_model_kwargs(config))


def uses_leaf_update(config) -> bool:
  """Whether the model is a neural decision forest whose leaves learn by the fixed point."""
  return (config.model.name.lower() == "ndf"
          and config.model.get("leaf_learning", "fixed_point") == "fixed_point")


def leaf_update_batch(config, builder, num_devices: int) -> Dict[str, np.ndarray]:
  """The training examples the forest's leaf update routes: unaugmented, padded, masked.

  Up to ``config.forest.leaf_update_batches`` eval-sized batches of the train split (0 = the
  whole split), concatenated into one ``[devices, examples, ...]`` batch.
  """
  limit = config.forest.leaf_update_batches
  batches = []
  for batch in data.eval_batches(config, builder, num_devices,
                                 split=config.dataset.train_split):
    batches.append(batch)
    if limit and len(batches) >= limit:
      break
  return {k: np.concatenate([b[k] for b in batches], axis=1) for k in batches[0]}


class _JsonlWriter(metric_writers.MetricWriter):
  """Appends one JSON object per line to ``metrics.jsonl`` (easy to read with pandas or jq).

  Only scalars are recorded; images, texts and the like go to TensorBoard alone.
  """

  def __init__(self, path: str):
    self._path = path

  def write_scalars(self, step: int, scalars) -> None:
    with open(self._path, "a") as f:
      f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}})
              + "\n")

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    pass

  def close(self):
    pass


def _metric_writer(workdir: str, is_main: bool) -> metric_writers.MetricWriter:
  # Only process 0 writes; the progress line is logged by the loop itself.
  if not is_main:
    return metric_writers.MultiWriter([])
  return metric_writers.AsyncWriter(metric_writers.MultiWriter([
      metric_writers.SummaryWriter(workdir),
      _JsonlWriter(os.path.join(workdir, "metrics.jsonl")),
  ]))


class _SigtermFlag:
  """Turns SIGTERM into a flag the loop polls, so a preempted run saves and exits cleanly."""

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread: leave signals alone.
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.received = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def evaluate(eval_step, dp: DataParallel, p_state, eval_data,
             prefix: str = "") -> Dict[str, float]:
  """Accuracy and cross-entropy over the whole eval split (padding masked out).

  Keys are ``test_accuracy``, ``test_loss``, ``test_examples``, each after ``prefix``, and
  ``test_accuracy_<head>`` for a model's other prediction heads (``tasks.prediction_heads``).
  """
  totals = None
  for batch in eval_data:
    sums = eval_step(p_state, dp.shard_batch(batch))
    totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
  totals = dp.metrics_to_host(totals)
  count = max(totals["count"], 1.0)
  results = {prefix + "test_loss": totals["loss"] / count,
             prefix + "test_examples": int(totals["count"])}
  # "correct" is the main prediction; "correct_<name>" another head of the same model.
  results.update({prefix + "test_accuracy" + k[len("correct"):]: v / count
                  for k, v in totals.items() if k.startswith("correct")})
  return results


def evaluate_all(eval_steps: Dict[str, Any], dp: DataParallel, p_state,
                 eval_data) -> Dict[str, float]:
  """``evaluate`` for each weight set (raw, and ``ema_`` when the run keeps an EMA)."""
  results = {}
  for prefix, eval_step in eval_steps.items():
    results.update(evaluate(eval_step, dp, p_state, eval_data, prefix))
  return results


def train_and_evaluate(config, workdir: str) -> Dict[str, Any]:
  """Trains and evaluates the model ``config`` describes, writing everything to ``workdir``.

  Resumes from the latest checkpoint in ``workdir/checkpoints`` if there is one.

  Args:
    config: an ``ml_collections.ConfigDict`` (see ``configs/default.py``).
    workdir: output directory (checkpoints, metrics, summary).

  Returns:
    The summary dict also written to ``workdir/summary.json``.

  Raises:
    validate.ConfigError: invalid config (before anything is compiled).
    data.DataError: missing or unknown dataset.
    checkpoint.CheckpointError: the workdir holds an incompatible or damaged checkpoint.
    Preempted: SIGTERM arrived; a checkpoint was saved.
  """
  maybe_initialize_distributed(config)
  devices = select_devices(config)
  validate.validate_config(config, len(devices))
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)

  builder = data.get_builder(config.dataset)
  info = data.dataset_info(config, builder)
  validate.validate_for_data(config, info)
  policy = precision.get_policy(config.precision)
  model = build_model(config, info.num_classes, policy)
  steps_per_epoch = info.steps_per_epoch
  total_steps = int(round(config.num_epochs * steps_per_epoch))
  schedule = optim.build_schedule(config, steps_per_epoch, config.batch_size)
  tx = precision.wrap_optimizer(optim.build_optimizer(config, schedule), policy,
                                config.loss_scale.to_dict())
  task = tasks.task_from_config(config, info.num_classes)
  batch_augment = augment_lib.batch_augment_from_config(config.augment, steps_per_epoch,
                                                        total_steps)
  teacher, teacher_variables = None, None
  if config.distill.enabled:
    teacher, teacher_variables = distill.load_teacher(
        config.distill, info.num_classes, info.input_shape, policy.compute_dtype)
  drop_block_rate = None
  if config.model.get("drop_block_rate", 0.0) > 0:
    # DropBlock paper: keep_prob decreases linearly from 1 to its target over training.
    drop_block_rate = optax.linear_schedule(0.0, config.model.drop_block_rate, total_steps)
  ema_decay = None
  if config.ema.decay > 0:
    ema_decay = optim.ema_decay_schedule(config.ema.decay, config.ema.warmup)

  host_state = init_train_state(model, tx, info.input_shape, config.seed,
                                ema=ema_decay is not None)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 config.checkpoint_every_steps, config.keep_checkpoints)
  restored = ckpt.restore(host_state)
  if restored is not None:
    host_state = restored
    logging.info("Resumed from %s at step %d.", ckpt.directory, int(host_state.step))
  start_step = int(host_state.step)
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  dp = DataParallel(config.parallel, devices)
  p_state = dp.replicate(host_state)
  train_step = dp.compile(
      steps.make_train_step(model, tx, task, policy, schedule,
                            augment=batch_augment if batch_augment.active else None,
                            teacher=teacher, drop_block_rate=drop_block_rate,
                            ema_decay=ema_decay, input_key=info.input_key),
      donate_state=True, replicated_args=1 if teacher is not None else 0)
  # The teacher's variables are a step argument, not part of the (checkpointed) state.
  step_args = (dp.replicate(teacher_variables),) if teacher is not None else ()
  eval_steps = {"": dp.compile(steps.make_eval_step(model, task, policy,
                                                    input_key=info.input_key))}
  if ema_decay is not None:
    eval_steps["ema_"] = dp.compile(steps.make_eval_step(model, task, policy, use_ema=True,
                                                         input_key=info.input_key))
  eval_data = data.eval_batches(config, builder, dp.num_local_devices)
  leaf_step = leaf_batch = None
  if uses_leaf_update(config):
    # Deep Neural Decision Forests: π is refit by the fixed point before the first step and
    # after every epoch (before that step's checkpoint, so a resumed run has the same π).
    leaf_step = dp.compile(steps.make_leaf_update_step(
        model, policy, config.forest.leaf_iterations, input_key=info.input_key),
        donate_state=True)
    leaf_batch = dp.shard_batch(leaf_update_batch(config, builder, dp.num_local_devices))
    if start_step == 0:
      p_state = leaf_step(p_state, leaf_batch)
  train_iter = data.train_batches(config, builder, start_step, dp.num_local_devices)

  writer = _metric_writer(workdir, is_main)
  if start_step == 0:
    writer.write_hparams(_flat_config(config))
  logging.info("%s: %d train / %d eval examples, %d steps/epoch, %d steps, %d devices (%s), "
               "%s, %d parameters.", info.name, info.num_train_examples,
               info.num_eval_examples, steps_per_epoch, total_steps, dp.num_devices,
               dp.backend, config.precision, _count(host_state.params))

  eval_every = int(round(config.eval_every_epochs * steps_per_epoch))
  pending = []  # Device metrics since the last log line; fetched together to avoid syncs.
  loop_start = time.time()
  first_step_seconds = None
  window_start, window_steps = loop_start, 0
  eval_seconds = 0.0
  metrics_summary: Dict[str, Any] = {}
  step = start_step
  with _SigtermFlag() as sigterm:
    while step < total_steps:
      batch = dp.shard_batch(next(train_iter))
      p_state, metrics = train_step(p_state, batch, *step_args)
      step += 1
      if leaf_step is not None and step % steps_per_epoch == 0:
        p_state = leaf_step(p_state, leaf_batch)
      pending.append(metrics)
      if first_step_seconds is None:
        jax.block_until_ready(metrics)
        first_step_seconds = time.time() - loop_start
        window_start, window_steps = time.time(), 0
        pending.clear()
      else:
        window_steps += 1

      if pending and (step % config.log_every_steps == 0 or step == total_steps):
        now = time.time()
        logged = _mean_metrics(dp, pending)
        pending.clear()
        images_per_second = window_steps * config.batch_size / max(now - window_start, 1e-9)
        logged.update(images_per_second=images_per_second, epoch=step / steps_per_epoch)
        writer.write_scalars(step, logged)
        eta = (total_steps - step) * config.batch_size / max(images_per_second, 1e-9)
        logging.info(
            "step %d/%d (epoch %.1f) loss %.4f acc %.3f lr %.4g | %.0f img/s | ETA %s", step,
            total_steps, step / steps_per_epoch, logged["loss"], logged["accuracy"],
            logged["learning_rate"], images_per_second, _format_eta(eta))
        metrics_summary["train_loss"] = logged["loss"]
        metrics_summary["skipped_steps"] = int(logged["skipped_steps"])
        window_start, window_steps = now, 0

      if eval_every and step % eval_every == 0 and step < total_steps:
        eval_start = time.time()
        results = evaluate_all(eval_steps, dp, p_state, eval_data)
        writer.write_scalars(step, results)
        logging.info("step %d: test accuracy %.4f, loss %.4f%s", step, results["test_accuracy"],
                     results["test_loss"], f" (EMA: accuracy {results['ema_test_accuracy']:.4f})"
                     if "ema_test_accuracy" in results else "")
        # Evaluation time is not training time: keep it out of img/s and train_seconds.
        eval_seconds += time.time() - eval_start
        window_start += time.time() - eval_start

      preempted = sigterm.received if jax.process_count() == 1 else ckpt.reached_preemption(
          step)
      if preempted or ckpt.should_save(step) or step == total_steps:
        ckpt.save(step, dp.unreplicate(p_state), force=preempted or step == total_steps)
      if preempted:
        ckpt.wait()
        writer.flush()
        raise Preempted(f"SIGTERM at step {step}: checkpoint saved to {ckpt.directory}; run "
                        "the same command again to resume.")

  train_seconds = time.time() - loop_start - eval_seconds
  results = evaluate_all(eval_steps, dp, p_state, eval_data)
  ckpt.wait()
  ckpt.close()
  report = {}
  if is_main:
    report = explain.write_model_report(config, dp.unreplicate(p_state.params), builder, info,
                                        workdir)
  steps_run = step - start_step
  timed_steps = max(steps_run - 1, 0)
  timed_seconds = train_seconds - (first_step_seconds or 0.0)
  summary = {
      "config": config.get("name", config.model.name + "_" + info.name),
      "test_accuracy": results["test_accuracy"],
      "test_loss": results["test_loss"],
      "test_examples": results["test_examples"],
      **{k: v for k, v in results.items()
         if k.startswith(("ema_test_", "test_accuracy_")) and k != "ema_test_examples"},
      "eval_split": config.dataset.eval_split,
      "steps": step,
      "steps_this_run": steps_run,
      "resumed_from_step": start_step,
      "train_seconds": round(train_seconds, 3),
      "first_step_seconds": round(first_step_seconds or 0.0, 3),
      "images_per_second": round(timed_steps * config.batch_size / timed_seconds, 1)
                           if timed_steps and timed_seconds > 0 else None,
      "devices": dp.num_devices,
      "precision": config.precision,
      **metrics_summary,
      **report,
  }
  writer.write_scalars(step, results)
  writer.flush()
  writer.close()
  if is_main:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  return summary


class WorkdirError(ValueError):
  """The workdir already holds a finished run of a different config."""


def train_or_reuse(config, workdir: str) -> Dict[str, Any]:
  """``train_and_evaluate`` unless ``workdir`` already holds a finished run of ``config``.

  Lets a command that trains many runs (an ablation, a comparison table) be rerun after an
  interruption: finished runs are read back, an interrupted one resumes from its checkpoint.

  Raises:
    WorkdirError: ``workdir`` holds a finished run whose config differs.
  """
  summary_path = os.path.join(workdir, "summary.json")
  if os.path.exists(summary_path):
    with open(os.path.join(workdir, "config.json")) as f:
      if f.read() == config.to_json_best_effort(indent=2):
        logging.info("Reusing the finished run in %s.", workdir)
        with open(summary_path) as g:
          return json.load(g)
    raise WorkdirError(f"{workdir} holds a finished run of another config; use a new "
                       "--workdir or delete that folder.")
  return train_and_evaluate(config, workdir)


def _mean_metrics(dp: DataParallel, pending: list) -> Dict[str, float]:
  # Means over the logging window; counters and the loss scale are reported as their latest
  # value.
  host = [dp.metrics_to_host(m) for m in pending]
  latest = ("skipped_steps", "loss_scale")
  return {k: float(host[-1][k] if k in latest else np.mean([h[k] for h in host]))
          for k in host[0]}


def _count(params: Any) -> int:
  return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))


def _flat_config(config, prefix: str = "") -> Dict[str, Any]:
  flat = {}
  for key, value in config.items():
    name = prefix + key
    if hasattr(value, "items"):
      flat.update(_flat_config(value, name + "."))
    elif isinstance(value, (int, float, str, bool)):
      flat[name] = value
    else:
      flat[name] = str(value)
  return flat

