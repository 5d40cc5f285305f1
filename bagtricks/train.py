"""The one training loop: ``train_and_evaluate(config, workdir)``.

init (or restore) → data-parallel train steps with progress lines → periodic evaluation →
metrics (TensorBoard events and ``metrics.jsonl``) → Orbax checkpoints (every K steps, at the
end, and on SIGTERM) → ``summary.json``.

The loop names no model, task or dataset: the data source (``data.get_source``), the model
(``models.create_model_from_config`` and its ``ModelSpec``), the task (``tasks.create_task``)
and the step hooks (``hooks.build_step_hooks``) all come from the config, and what is specific
to one of them (a task's between-epoch refit, a model's end-of-run report) is declared by it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers

import models
from bagtricks import checkpoint, data, distill, finetune, hooks, optim, precision, records
from bagtricks import host_memory, steps, tasks, validate
from bagtricks.divergence import Diverged, DivergenceGuard, check_finite_state
from bagtricks.parallel import AXIS_NAME, DataParallel
from bagtricks.state import init_train_state, variable_shapes


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


def refit_batch(source, split: str, max_batches: int, num_devices: int) -> Dict[str, np.ndarray]:
  """The training examples a task's refit routes: unaugmented, padded, masked.

  Up to ``max_batches`` eval-sized batches of ``split`` (0 = the whole split), concatenated
  into one ``[devices, examples, ...]`` batch.
  """
  batches = []
  for batch in source.eval_batches(num_devices, split=split):
    batches.append(batch)
    if max_batches and len(batches) >= max_batches:
      break
  return {k: np.concatenate([b[k] for b in batches], axis=1) for k in batches[0]}


def _metric_writer(workdir: str, is_main: bool) -> metric_writers.MetricWriter:
  # Only process 0 writes; the progress line is logged by the loop itself.
  if not is_main:
    return metric_writers.MultiWriter([])
  return metric_writers.AsyncWriter(metric_writers.MultiWriter([
      metric_writers.SummaryWriter(workdir),
      records.JsonlWriter(os.path.join(workdir, "metrics.jsonl")),
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


def evaluate(eval_step, dp: DataParallel, p_state, eval_data, task,
             prefix: str = "") -> Dict[str, float]:
  """The task's results over the whole eval split (padding masked out).

  Keys are ``test_<name>`` for every entry of ``task.summary`` (``test_accuracy``,
  ``test_loss``, ``test_examples``, ... for classification) and of ``task.examples_summary``
  (a sequence task's BLEU), each after ``prefix``.
  """
  totals = None
  examples = []
  for batch in eval_data:
    sums, batch_examples = eval_step(p_state, dp.shard_batch(batch))
    totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
    if batch_examples:
      examples.append(batch_examples)
  results = task.summary(dp.metrics_to_host(totals))
  if examples:
    results.update(task.examples_summary(_real_examples(dp, examples)))
  return {f"{prefix}test_{k}": v for k, v in results.items()}


def _real_examples(dp: DataParallel, examples: list) -> Dict[str, np.ndarray]:
  # Gathered [devices, per_device, ...] per batch → the split's real examples, in order.
  host = [dp.unreplicate(e) for e in examples]
  flat = {k: np.concatenate([np.reshape(h[k], (-1,) + np.shape(h[k])[2:]) for h in host])
          for k in host[0]}
  real = flat.pop("mask") > 0
  return {k: v[real] for k, v in flat.items()}


def evaluate_all(eval_steps: Dict[str, Any], dp: DataParallel, p_state, eval_data,
                 task) -> Dict[str, float]:
  """``evaluate`` for each weight set (raw, and ``ema_`` when the run keeps an EMA)."""
  results = {}
  for prefix, eval_step in eval_steps.items():
    results.update(evaluate(eval_step, dp, p_state, eval_data, task, prefix))
  return results


def _results_line(results: Dict[str, float]) -> str:
  # "test accuracy 0.9833, test loss 0.0612, ema_test accuracy ..." without the example count.
  return ", ".join(f"{k.replace('test_', 'test ', 1)} {v:.4f}" for k, v in results.items()
                   if not k.endswith("test_examples"))


def train_and_evaluate(config, workdir: str, evaluate_again: bool = False) -> Dict[str, Any]:
  """Trains and evaluates the model ``config`` describes, writing everything to ``workdir``.

  Resumes from the latest checkpoint in ``workdir/checkpoints`` if there is one; a run that
  already finished is reported as it is, its records untouched. Nothing is written before
  the config, the workdir, the data and the model have passed their checks.

  Args:
    config: an ``ml_collections.ConfigDict`` (see ``configs/default.py``).
    workdir: output directory (checkpoints, metrics, summary).
    evaluate_again: for a finished run, evaluate its final weights again and add the results
      to its records (a ``metrics.jsonl`` line, the summary's test results) instead of only
      reporting it.

  Returns:
    The summary dict also written to ``workdir/summary.json``.

  Raises:
    validate.ConfigError: invalid config (before anything is compiled).
    records.WorkdirError: the workdir is unusable or holds a run of another config.
    data.DataError: missing or unknown dataset.
    checkpoint.CheckpointError: the workdir holds an incompatible or damaged checkpoint.
    Diverged: the training loss became non-finite (or fp16 loss scaling gave up); the
      latest checkpoint holds the last finite state.
    Preempted: SIGTERM arrived; a checkpoint was saved.
  """
  if config.get("host_memory") == "retain":  # Before JAX starts its CPU client.
    host_memory.retain_freed_memory()
  maybe_initialize_distributed(config)
  devices = select_devices(config)
  validate.validate_config(config, len(devices))
  is_main = jax.process_index() == 0
  records.check_workdir(workdir, config, probe_writes=is_main)
  # Only a finished run writes its summary, and check_workdir has ruled out another config's.
  summary_path = os.path.join(workdir, "summary.json")
  finished = os.path.exists(summary_path)
  if finished and not evaluate_again:
    logging.info("The run in %s has finished; its records are left as they are "
                 "(evaluate_again evaluates it again).", workdir)
    with open(summary_path) as f:
      return json.load(f)

  source = data.get_source(config)
  info = source.info()
  task = tasks.create_task(config, info)
  validate.validate_for_data(config, info, task)
  policy = precision.get_policy(config.precision)
  model_spec = models.get_spec(config.model.name)
  model = models.create_model_from_config(config, info, num_outputs=task.num_outputs,
                                          dtype=policy.compute_dtype, axis_name=AXIS_NAME)
  steps_per_epoch = info.steps_per_epoch
  total_steps = optim.total_steps(config, steps_per_epoch)
  schedule = optim.build_schedule(config, steps_per_epoch, config.batch_size)
  tx = precision.wrap_optimizer(optim.build_optimizer(config, schedule), policy,
                                config.loss_scale.to_dict())
  teacher = None
  if config.distill.enabled:
    teacher = distill.load_teacher(config.distill, info, policy.compute_dtype)
  step_hooks = hooks.build_step_hooks(
      config, task, model_spec.step_kwargs(models.registry.model_kwargs(config.model),
                                           total_steps),
      schedule, steps_per_epoch, total_steps, teacher=teacher)
  use_ema = config.ema.decay > 0
  init_plan = _check_variables(config, model, task, info, workdir)

  host_state = init_train_state(model, tx, task, info.example_batch(), config.seed,
                                ema=use_ema)
  os.makedirs(workdir, exist_ok=True)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 config.checkpoint_every_steps, config.keep_checkpoints)
  try:
    restored = ckpt.restore(host_state)
  except checkpoint.CheckpointError:
    ckpt.close()  # Stops Orbax's background threads before the error is reported.
    raise
  if restored is not None:
    host_state = restored
    logging.info("Resumed from %s at step %d.", ckpt.directory, int(host_state.step))
  elif init_plan is not None:
    host_state = finetune.apply_plan(host_state, init_plan)
    finetune.log_plan(init_plan, workdir if is_main else None)
  start_step = int(host_state.step)
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    # A resumed run logs the steps after its checkpoint again: drop their old records.
    records.keep_steps_up_to(os.path.join(workdir, "metrics.jsonl"), start_step)

  dp = DataParallel(config.parallel, devices)
  p_state = dp.replicate(host_state)
  hook_variables = tuple(h.variables() for h in step_hooks)
  # Arrays the hooks need (a teacher's weights) are a step argument, placed on the devices
  # once; they are not part of the (checkpointed) state.
  step_args = ((dp.replicate(hook_variables),) if jax.tree_util.tree_leaves(hook_variables)
               else ())
  train_step = dp.compile(steps.make_train_step(model, task, tx, policy, step_hooks),
                          donate_state=True, replicated_args=len(step_args))
  eval_steps = {"": dp.compile(steps.make_eval_step(model, task, policy))}
  if use_ema:
    eval_steps["ema_"] = dp.compile(steps.make_eval_step(model, task, policy, use_ema=True))
  eval_data = source.eval_batches(dp.num_local_devices)
  refit_step = refit_data = None
  refit_every = 0
  if task.refit is not None:
    # The task's between-steps update of its state: before the first step and after
    # every `every_epochs` epochs, before that step's checkpoint, so a resumed run has the
    # same task state.
    refit_step = dp.compile(steps.make_refit_step(model, task, policy), donate_state=True)
    refit_data = dp.shard_batch(refit_batch(source, config.dataset.train_split,
                                            task.refit.max_batches, dp.num_local_devices))
    refit_every = task.refit.every_epochs * steps_per_epoch
    if start_step == 0:
      p_state = refit_step(p_state, refit_data)
  train_iter = source.train_batches(start_step, dp.num_local_devices)

  writer = _metric_writer(workdir, is_main)
  if start_step == 0:
    writer.write_hparams(_flat_config(config))
  logging.info("%s: %d train / %d eval examples, %d steps/epoch, %d steps, %d devices (%s), "
               "%s, %d parameters.", info.name, info.num_train_examples,
               info.num_eval_examples, steps_per_epoch, total_steps, dp.num_devices,
               dp.backend, config.precision, _count(host_state.params))

  eval_every = int(round(config.eval_every_epochs * steps_per_epoch))
  pending = []  # Device metrics since the last log line; fetched together to avoid syncs.
  guard = DivergenceGuard(config, policy.loss_scaling,
                          config.loss_scale.get("min_scale", 1.0))
  unchecked = []  # (step, device metrics) not yet seen by the guard.
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
      if refit_step is not None and step % refit_every == 0:
        p_state = refit_step(p_state, refit_data)
      pending.append(metrics)
      unchecked.append((step, metrics))
      if first_step_seconds is None:
        jax.block_until_ready(metrics)
        first_step_seconds = time.time() - loop_start
        window_start, window_steps = time.time(), 0
        pending.clear()
      else:
        window_steps += 1

      if pending and (step % config.log_every_steps == 0 or step == total_steps):
        _check_divergence(guard, dp, unchecked, ckpt)
        now = time.time()
        logged = _mean_metrics(dp, pending)
        pending.clear()
        images_per_second = window_steps * config.batch_size / max(now - window_start, 1e-9)
        logged.update(images_per_second=images_per_second, epoch=step / steps_per_epoch)
        writer.write_scalars(step, logged)
        eta = (total_steps - step) * config.batch_size / max(images_per_second, 1e-9)
        task_metrics = "".join(f" {label} {logged[name]:.3f}"
                               for name, label in task.progress_metrics.items())
        logging.info(
            "step %d/%d (epoch %.1f) loss %.4f%s lr %.4g | %.0f img/s | ETA %s", step,
            total_steps, step / steps_per_epoch, logged["loss"], task_metrics,
            logged["learning_rate"], images_per_second, _format_eta(eta))
        metrics_summary["train_loss"] = logged["loss"]
        metrics_summary["skipped_steps"] = int(logged["skipped_steps"])
        window_start, window_steps = now, 0

      if eval_every and step % eval_every == 0 and step < total_steps:
        eval_start = time.time()
        results = evaluate_all(eval_steps, dp, p_state, eval_data, task)
        writer.write_scalars(step, results)
        logging.info("step %d: %s", step, _results_line(results))
        # Evaluation time is not training time: keep it out of img/s and train_seconds.
        eval_seconds += time.time() - eval_start
        window_start += time.time() - eval_start

      preempted = sigterm.received if jax.process_count() == 1 else ckpt.reached_preemption(
          step)
      if preempted or ckpt.should_save(step) or step == total_steps:
        _check_divergence(guard, dp, unchecked, ckpt)
        host_state = dp.unreplicate(p_state)
        check_finite_state(host_state, step, ckpt.latest_step())
        ckpt.save(step, host_state, force=preempted or step == total_steps)
      if preempted:
        ckpt.wait()
        writer.flush()
        raise Preempted(f"SIGTERM at step {step}: checkpoint saved to {ckpt.directory}; run "
                        "the same command again to resume.")

  train_seconds = time.time() - loop_start - eval_seconds
  results = evaluate_all(eval_steps, dp, p_state, eval_data, task)
  ckpt.wait()
  ckpt.close()
  report = {}
  if is_main and model_spec.report is not None:
    report = model_spec.report(config, dp.unreplicate(p_state.params), source, workdir)
  steps_run = step - start_step
  timed_steps = max(steps_run - 1, 0)
  timed_seconds = train_seconds - (first_step_seconds or 0.0)
  if finished:  # Evaluated again: the training records stay, the new results are added.
    with open(summary_path) as f:
      summary = json.load(f)
    summary.update({k: v for k, v in results.items() if k != "ema_test_examples"})
    summary["evaluations"] = summary.get("evaluations", 1) + 1
    writer.write_scalars(step, {**results, "evaluation": summary["evaluations"]})
    writer.flush()
    writer.close()
    if is_main:
      records.write_json(summary_path, summary)
    return summary
  summary = {
      "config": config.get("name", config.model.name + "_" + info.name),
      **{k: v for k, v in results.items() if k != "ema_test_examples"},
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
    records.write_json(summary_path, summary)
  return records.strict_json(summary)


def _check_variables(config, model, task, info, workdir: str):
  """Checks of parameter names and shapes, traced (not compiled) before anything else runs.

  Returns the ``finetune.InitPlan`` of ``config.init_from`` when the run starts from it (a
  run with its own checkpoint resumes from that instead), else None.

  Raises:
    validate.ConfigError: a parameter group matches no parameter.
    finetune.InitFromError: ``init_from`` names no checkpoint or one that does not fit.
  """
  groups = optim.param_groups_from_config(config)
  init_from = config.get("init_from", "")
  resuming = finetune.has_checkpoint(os.path.join(workdir, "checkpoints"))
  if not groups and (not init_from or resuming):
    return None
  shapes = variable_shapes(model, task, info.example_batch())
  problems = optim.unmatched_param_groups(shapes["params"], groups)
  if problems:
    raise validate.ConfigError("Invalid config: " + " ".join(problems))
  if not init_from or resuming:
    return None
  where, pretrained = finetune.read_pretrained(init_from)
  num_outputs = task.num_outputs if task.num_outputs is not None else info.num_classes
  return finetune.plan_init(shapes, pretrained, num_outputs, source=where,
                            reinit_pattern=config.get("init_reinit", ""))


def _check_divergence(guard: DivergenceGuard, dp: DataParallel, unchecked: list,
                      ckpt: checkpoint.Checkpointer) -> None:
  # Every step since the last check, in order; raises Diverged (after Orbax's pending saves
  # are done, so the latest checkpoint is complete).
  try:
    for step, metrics in unchecked:
      guard.check(step, dp.metrics_to_host(metrics), ckpt.latest_step())
  except Diverged:
    ckpt.wait()
    ckpt.close()
    raise
  unchecked.clear()


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

