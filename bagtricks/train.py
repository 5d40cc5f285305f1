"""The one training loop: ``train_and_evaluate(config, workdir)``.

Its phases, each a function: ``build_run`` (config → data, task, model, optimizer, hooks;
nothing written) → ``restore_or_initialize`` (the latest checkpoint, ``init_from`` or fresh
weights) → ``write_run_records`` (``config.json``; a resumed run's later records dropped) →
``compile_steps`` (data-parallel train, eval and refit steps) → ``train_loop`` (steps with
progress lines, periodic evaluation, metrics to TensorBoard and ``metrics.jsonl``, Orbax
checkpoints every K steps, at the end and on SIGTERM) → ``finish_run`` (final evaluation and
``summary.json``). ``evaluate_finished_run`` evaluates a finished run's weights again.
Every file goes through ``bagtricks.paths``, so the workdir may be a ``gs://`` bucket.

The loop names no model, task or dataset: the data source (``data.get_source``), the model
(``models.create_model_from_config`` and its ``ModelSpec``), the task (``tasks.create_task``)
and the step hooks (``hooks.build_step_hooks``) all come from the config, and what is specific
to one of them (a task's between-epoch refit, a model's end-of-run report) is declared by it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import time
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers

import models
from models.xla_cpu import host_memory
from bagtricks import checkpoint, data, distill, events, finetune, hooks, optim, paths
from bagtricks import precision, records, steps, tasks, validate, workdir_lock
from bagtricks.progress import Progress
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
  # Only process 0 writes; the progress line is logged by the loop itself. Written in the
  # loop's thread (a record per logging step is cheap), so a write that fails (a full disk)
  # stops the run at that step with the OSError that names the file.
  if not is_main:
    return metric_writers.MultiWriter([])
  return metric_writers.MultiWriter([
      events.EventFileWriter(workdir),
      records.JsonlWriter(paths.join(workdir, "metrics.jsonl")),
  ])


class _SigtermFlag:
  """Turns SIGTERM into a flag the loop polls, so a preempted run saves and exits cleanly.

  Held from the first step to the summary: a SIGTERM after the final checkpoint lets the
  final evaluation and ``summary.json`` finish first.
  """

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


def evaluate(eval_step, dp: DataParallel, p_state, eval_data, task,
             prefix: str = "") -> Dict[str, float]:
  """The task's results over the whole eval split (padding masked out).

  Keys are ``test_<name>`` for every entry of ``task.summary`` (``test_accuracy``,
  ``test_loss``, ``test_examples``, ... for classification) and of ``task.examples_summary``
  (a sequence task's BLEU), each after ``prefix``.
  """
  totals = None
  examples = []
  for i, batch in enumerate(eval_data):
    task.check_batch(batch, f"eval batch {i}")
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


@dataclasses.dataclass
class Run:
  """What a config builds before any state exists (``build_run``)."""
  config: Any
  workdir: str
  devices: list
  is_main: bool
  source: Any
  info: Any
  task: Any
  policy: precision.Policy
  model_spec: Any
  model: Any
  steps_per_epoch: int
  total_steps: int
  tx: Any
  step_hooks: tuple
  init_plan: Optional[finetune.InitPlan]


@dataclasses.dataclass
class CompiledSteps:
  """The run's data-parallel steps and what they take besides state and batch."""
  dp: DataParallel
  train_step: Any
  step_args: tuple
  eval_steps: Dict[str, Any]
  eval_data: Any
  refit_step: Any = None
  refit_data: Any = None
  refit_every: int = 0


def train_and_evaluate(config, workdir: str, evaluate_again: bool = False,
                       skip_damaged_checkpoints: bool = False) -> Dict[str, Any]:
  """Trains and evaluates the model ``config`` describes, writing everything to ``workdir``.

  Resumes from the latest checkpoint in ``workdir/checkpoints`` if there is one; a run that
  already finished is reported as it is, its records untouched. Nothing is written before
  the config, the workdir, the data and the model have passed their checks.

  Args:
    config: an ``ml_collections.ConfigDict`` (see ``configs/default.py``).
    workdir: output directory (checkpoints, metrics, summary), local or ``gs://``.
    evaluate_again: for a finished run, evaluate its final weights again and add the results
      to its records (a ``metrics.jsonl`` line, the summary's test results) instead of only
      reporting it.
    skip_damaged_checkpoints: move a damaged latest checkpoint aside and resume from the
      newest intact one (without it, a damaged checkpoint stops the run).

  Returns:
    The summary dict also written to ``workdir/summary.json``.

  Raises:
    validate.ConfigError: invalid config (before anything is compiled).
    records.WorkdirError: the workdir is unusable or holds a run of another config.
    workdir_lock.WorkdirBusyError: another run is writing the workdir.
    data.DataError: missing or unknown dataset.
    checkpoint.CheckpointError: the workdir holds an incompatible or damaged checkpoint.
    Diverged: the training loss became non-finite (or fp16 loss scaling gave up); the
      latest checkpoint holds the last finite state.
    Preempted: SIGTERM arrived; a checkpoint was saved.
    paths.WriteError, OSError: a checkpoint or record could not be written (the last
      finished checkpoint stays the latest).
  """
  config = validate.complete_config(config)  # Every component's defaults, as config.json shows.
  devices = prepare_process(config)
  is_main = jax.process_index() == 0
  records.check_workdir(workdir, config, probe_writes=is_main)
  # Only a finished run writes its summary, and check_workdir has ruled out another config's.
  summary_path = paths.join(workdir, "summary.json")
  if paths.exists(summary_path) and not evaluate_again:
    logging.info("The run in %s has finished; its records are left as they are "
                 "(evaluate_again evaluates it again).", workdir)
    return json.loads(paths.read_text(summary_path))
  run = build_run(config, workdir, devices)
  # Other processes of a multi-process run share the first one's lock.
  with workdir_lock.WorkdirLock(workdir) if is_main else contextlib.nullcontext():
    if paths.exists(summary_path):  # Finished (evaluate_again), or by a run that just ended.
      return (evaluate_finished_run(run) if evaluate_again
              else json.loads(paths.read_text(summary_path)))
    ckpt = open_checkpoints(run)
    try:
      return _train_and_finish(run, ckpt, skip_damaged_checkpoints)
    except BaseException:
      ckpt.abort()  # Lets a save in progress finish (or removes it) and stops Orbax's threads.
      raise


def _train_and_finish(run: Run, ckpt: checkpoint.Checkpointer,
                      skip_damaged_checkpoints: bool) -> Dict[str, Any]:
  host_state = restore_or_initialize(run, ckpt, skip_damaged_checkpoints)
  start_step = int(host_state.step)
  write_run_records(run, start_step)
  compiled = compile_steps(run)
  writer = _metric_writer(run.workdir, run.is_main)
  if start_step == 0:
    writer.write_hparams(_flat_config(run.config))
  _log_run(run, compiled.dp, host_state)
  with _SigtermFlag() as sigterm:
    p_state, progress, train_summary = train_loop(run, compiled, ckpt, writer, host_state,
                                                  sigterm)
    summary = finish_run(run, compiled, ckpt, writer, p_state, progress,
                         {"resumed_from_step": start_step, **train_summary})
  if sigterm.received:
    raise Preempted(f"SIGTERM after the final checkpoint: the run has finished and "
                    f"{paths.join(run.workdir, 'summary.json')} is written.")
  return summary


def prepare_process(config) -> list:
  """Process-wide set-up before JAX computes anything; the devices of the run.

  Raises:
    validate.ConfigError: the config is invalid (checked before anything else).
  """
  if config.host_memory == "retain":  # Before JAX starts its CPU client.
    host_memory.retain_freed_memory()
  maybe_initialize_distributed(config)
  devices = select_devices(config)
  validate.validate_config(config, len(devices))
  return devices


def build_run(config, workdir: str, devices: list) -> Run:
  """Data source, task, model, schedule, optimizer and step hooks of ``config``.

  Reads the dataset's description and (for fine-tuning or distillation) the checkpoints the
  config names; writes nothing.

  Raises:
    validate.ConfigError, data.DataError, finetune.InitFromError,
    checkpoint.CheckpointError: see ``train_and_evaluate``.
  """
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
    teacher = distill.load_teacher(
        config.distill, info, policy.compute_dtype,
        validate.complete_config(distill.teacher_config(config.distill)))
  step_hooks = hooks.build_step_hooks(
      config, task, model_spec.step_kwargs(models.registry.model_kwargs(config.model),
                                           total_steps),
      schedule, steps_per_epoch, total_steps, teacher=teacher)
  init_plan = _check_variables(config, model, task, info, workdir)
  return Run(config, workdir, devices, jax.process_index() == 0, source, info, task, policy,
             model_spec, model, steps_per_epoch, total_steps, tx, tuple(step_hooks),
             init_plan)


def open_checkpoints(run: Run) -> checkpoint.Checkpointer:
  config = run.config
  paths.makedirs(run.workdir)
  return checkpoint.Checkpointer(paths.join(run.workdir, "checkpoints"),
                                 config.checkpoint_every_steps, config.keep_checkpoints)


def restore_or_initialize(run: Run, ckpt: checkpoint.Checkpointer,
                          skip_damaged_checkpoints: bool = False) -> Any:
  """The host train state: the latest checkpoint's, else ``init_from``'s weights, else fresh.

  ``skip_damaged_checkpoints`` moves damaged checkpoints aside and takes the newest intact one.

  Raises:
    checkpoint.CheckpointError: the latest checkpoint is damaged or does not fit.
  """
  host_state = init_train_state(run.model, run.tx, run.task, run.info.example_batch(),
                                run.config.seed, ema=run.config.ema.decay > 0)
  restored = ckpt.restore(host_state, fall_back=skip_damaged_checkpoints)
  if restored is not None:
    logging.info("Resumed from %s at step %d.", ckpt.directory, int(restored.step))
    return restored
  if run.init_plan is not None:
    host_state = finetune.apply_plan(host_state, run.init_plan)
    finetune.log_plan(run.init_plan, run.workdir if run.is_main else None)
  return host_state


def write_run_records(run: Run, start_step: int) -> None:
  """``config.json``; a resumed run logs the steps after its checkpoint again, so their old
  metrics and TensorBoard events are dropped."""
  if not run.is_main:
    return
  records.write_json(paths.join(run.workdir, "config.json"),
                     json.loads(run.config.to_json_best_effort()))
  records.keep_steps_up_to(paths.join(run.workdir, "metrics.jsonl"), start_step)
  events.keep_steps_up_to(run.workdir, start_step)


def compile_steps(run: Run, train: bool = True) -> CompiledSteps:
  """The data-parallel steps (jit-compiled at their first call) and their extra arguments.

  ``train=False`` builds the eval steps only (re-evaluating a finished run).
  """
  dp = DataParallel(run.config.parallel, run.devices)
  model, task, policy = run.model, run.task, run.policy
  eval_steps = {"": dp.compile(steps.make_eval_step(model, task, policy))}
  if run.config.ema.decay > 0:
    eval_steps["ema_"] = dp.compile(steps.make_eval_step(model, task, policy, use_ema=True))
  compiled = CompiledSteps(dp, None, (), eval_steps, run.source.eval_batches(
      dp.num_local_devices))
  if not train:
    return compiled
  hook_variables = tuple(h.variables() for h in run.step_hooks)
  # Arrays the hooks need (a teacher's weights) are a step argument, placed on the devices
  # once; they are not part of the (checkpointed) state.
  if jax.tree_util.tree_leaves(hook_variables):
    compiled.step_args = (dp.replicate(hook_variables),)
  compiled.train_step = dp.compile(
      steps.make_train_step(model, task, run.tx, policy, run.step_hooks), donate_state=True,
      replicated_args=len(compiled.step_args))
  if task.refit is not None:
    # The task's between-steps update of its state: before the first step and after every
    # `every_epochs` epochs, before that step's checkpoint, so a resumed run has the same
    # task state.
    compiled.refit_step = dp.compile(steps.make_refit_step(model, task, policy),
                                     donate_state=True)
    compiled.refit_data = dp.shard_batch(refit_batch(
        run.source, run.config.dataset.train_split, task.refit.max_batches,
        dp.num_local_devices))
    compiled.refit_every = task.refit.every_epochs * run.steps_per_epoch
  return compiled


def train_loop(run: Run, compiled: CompiledSteps, ckpt: checkpoint.Checkpointer, writer,
               host_state: Any, sigterm: _SigtermFlag) -> Tuple[Any, Progress, Dict[str, Any]]:
  """Trains from ``host_state``'s step to the last, saving and checking as it goes.

  Returns:
    ``(replicated state, progress, {train_loss, skipped_steps, steps_this_run})``.

  Raises:
    Diverged, Preempted: see ``train_and_evaluate``.
  """
  config, dp = run.config, compiled.dp
  start_step = step = int(host_state.step)
  p_state = dp.replicate(host_state)
  if compiled.refit_step is not None and start_step == 0:
    p_state = compiled.refit_step(p_state, compiled.refit_data)
  train_iter = run.source.train_batches(start_step, dp.num_local_devices)
  progress = Progress(run.task.throughput, config.batch_size, run.total_steps)
  guard = DivergenceGuard(config, run.policy.loss_scaling,
                          config.loss_scale.min_scale)
  pending, unchecked = [], []  # Device metrics since the last line / the last guard check.
  eval_every = int(round(config.eval_every_epochs * run.steps_per_epoch))
  train_summary: Dict[str, Any] = {}
  while step < run.total_steps:
    batch = next(train_iter)
    run.task.check_batch(batch, f"config.dataset.name={config.dataset.name!r} (split "
                         f"{config.dataset.train_split!r}, the batch of step {step + 1})")
    p_state, metrics = compiled.train_step(p_state, dp.shard_batch(batch),
                                           *compiled.step_args)
    step += 1
    if compiled.refit_step is not None and step % compiled.refit_every == 0:
      p_state = compiled.refit_step(p_state, compiled.refit_data)
    unchecked.append((step, metrics))
    pending.append(metrics)  # The first step is logged too; its time (compilation) is not.
    if progress.first_step_seconds is None:
      jax.block_until_ready(metrics)
      progress.first_step_done()
    else:
      progress.step_done()
    if step % config.log_every_steps == 0 or step == run.total_steps:
      _check_divergence(guard, dp, unchecked, ckpt)
      train_summary.update(_log_progress(run, writer, progress, step, dp, pending,
                                         steps_this_run=step - start_step))
    if eval_every and step % eval_every == 0 and step < run.total_steps:
      _evaluate_during_training(run, compiled, writer, progress, p_state, step)
    preempted = sigterm.received if jax.process_count() == 1 else ckpt.reached_preemption(
        step)
    if preempted or ckpt.should_save(step) or step == run.total_steps:
      _check_divergence(guard, dp, unchecked, ckpt)
      host_state = dp.unreplicate(p_state)
      check_finite_state(host_state, step, ckpt.latest_finished_step)
      ckpt.save(step, host_state, force=preempted or step == run.total_steps)
    if preempted and step < run.total_steps:
      ckpt.wait()
      writer.flush()
      raise Preempted(f"SIGTERM at step {step}: checkpoint saved to {ckpt.directory}; run "
                      "the same command again to resume.")
  train_summary["steps_this_run"] = step - start_step
  return p_state, progress, train_summary


def _log_progress(run: Run, writer, progress: Progress, step: int, dp: DataParallel,
                  pending: list, steps_this_run: int) -> Dict[str, Any]:
  # One progress line and metrics record for the steps since the last; clears `pending`.
  # The last step's record also holds the run's training figures (`run_*`), from which a
  # rerun that finds the final checkpoint (a run stopped before its summary) writes them.
  logged = _mean_metrics(dp, pending)
  pending.clear()
  rate = progress.window(step, logged)
  logged.update({progress.throughput.key: rate[progress.throughput.key],
                 "epoch": step / run.steps_per_epoch})
  train_figures = {"train_loss": logged["loss"], "skipped_steps": int(logged["skipped_steps"])}
  record = dict(logged)
  if step == run.total_steps:
    train_figures["timing"] = progress.timing_summary()
    record.update({f"run_{k}": v for k, v in train_figures["timing"].items()
                   if v is not None})
    record["run_steps"] = steps_this_run
  writer.write_scalars(step, record)
  logging.info("%s", progress.line(step, run.steps_per_epoch, logged,
                                   run.task.progress_metrics, rate))
  return train_figures


def _evaluate_during_training(run: Run, compiled: CompiledSteps, writer, progress: Progress,
                              p_state, step: int) -> None:
  start = time.time()
  results = evaluate_all(compiled.eval_steps, compiled.dp, p_state, compiled.eval_data,
                         run.task)
  writer.write_scalars(step, results)
  logging.info("step %d: %s", step, _results_line(results))
  # Evaluation time is not training time: kept out of the rate and train_seconds.
  progress.paused(time.time() - start)


def finish_run(run: Run, compiled: CompiledSteps, ckpt: checkpoint.Checkpointer, writer,
               p_state, progress: Progress, train_summary: Dict[str, Any]) -> Dict[str, Any]:
  """Evaluates the final weights, writes ``summary.json`` and returns the summary.

  A run that found its final checkpoint (stopped between that and its summary) trained no
  step: its training figures come from the last step's record, as that run logged them.
  """
  # The training figures as the last step's record holds them.
  timing = train_summary.pop("timing", None) or progress.timing_summary()
  if train_summary["steps_this_run"] == 0:
    recorded = _recorded_training(run)
    timing.update(recorded.pop("timing"))
    train_summary.update(recorded)
  results = evaluate_all(compiled.eval_steps, compiled.dp, p_state, compiled.eval_data,
                         run.task)
  ckpt.wait()
  ckpt.close()
  report = {}
  if run.is_main and run.model_spec.report is not None:
    report = run.model_spec.report(run.config, compiled.dp.unreplicate(p_state.params),
                                   run.source, run.workdir)
  config = run.config
  summary = {
      "config": config.get("name", config.model.name + "_" + run.info.name),
      **{k: v for k, v in results.items() if k != "ema_test_examples"},
      "eval_split": config.dataset.eval_split,
      "steps": run.total_steps,
      "steps_this_run": train_summary.pop("steps_this_run"),
      "resumed_from_step": train_summary.pop("resumed_from_step"),
      **timing,
      "devices": compiled.dp.num_devices,
      "precision": config.precision,
      **train_summary,
      **report,
  }
  writer.write_scalars(run.total_steps, results)
  writer.close()
  if run.is_main:
    records.write_json(paths.join(run.workdir, "summary.json"), summary)
  return records.strict_json(summary)


def _recorded_training(run: Run) -> Dict[str, Any]:
  # The training figures the last step's metrics record holds (see `_log_progress`).
  path = paths.join(run.workdir, "metrics.jsonl")
  last = [r for r in (records.read_metrics(run.workdir) if paths.exists(path) else [])
          if r["step"] == run.total_steps and "run_steps" in r]
  if not last:
    return {"timing": {}}
  record = last[-1]
  return {"timing": {k[len("run_"):]: record[k] for k in record
                     if k.startswith("run_") and k != "run_steps"},
          "train_loss": record["loss"], "skipped_steps": int(record["skipped_steps"]),
          "steps_this_run": record["run_steps"],
          "resumed_from_step": run.total_steps - record["run_steps"]}


def evaluate_finished_run(run: Run) -> Dict[str, Any]:
  """Evaluates a finished run's final weights again and adds the results to its records.

  A ``metrics.jsonl`` line (and TensorBoard event) at the last step with an ``evaluation``
  count, and the summary's test results replaced; its training records stay.
  """
  ckpt = open_checkpoints(run)
  template = init_train_state(run.model, run.tx, run.task, run.info.example_batch(),
                              run.config.seed, ema=run.config.ema.decay > 0)
  try:
    host_state = ckpt.restore(template)
  finally:
    ckpt.close()
  if host_state is None:
    raise checkpoint.CheckpointError(
        f"{ckpt.directory} holds no checkpoint to evaluate; run without evaluate_again to "
        "train again.")
  compiled = compile_steps(run, train=False)
  results = evaluate_all(compiled.eval_steps, compiled.dp, compiled.dp.replicate(host_state),
                         compiled.eval_data, run.task)
  summary_path = paths.join(run.workdir, "summary.json")
  summary = json.loads(paths.read_text(summary_path))
  summary.update({k: v for k, v in results.items() if k != "ema_test_examples"})
  summary["evaluations"] = summary.get("evaluations", 1) + 1
  writer = _metric_writer(run.workdir, run.is_main)
  writer.write_scalars(int(host_state.step), {**results, "evaluation": summary["evaluations"]})
  writer.close()
  if run.is_main:
    records.write_json(summary_path, summary)
  return summary


def _log_run(run: Run, dp: DataParallel, host_state: Any) -> None:
  info = run.info
  logging.info("%s: %d train / %d eval examples, %d steps/epoch, %d steps, %d devices (%s), "
               "%s, %d parameters.", info.name, info.num_train_examples,
               info.num_eval_examples, run.steps_per_epoch, run.total_steps, dp.num_devices,
               dp.backend, run.config.precision, _count(host_state.params))


def _check_variables(config, model, task, info, workdir: str):
  """Checks of parameter names and shapes, traced (not compiled) before anything else runs.

  Returns the ``finetune.InitPlan`` of ``config.init_from`` when the run starts from it (a
  run with its own checkpoint resumes from that instead), else None.

  Raises:
    validate.ConfigError: a parameter group matches no parameter.
    finetune.InitFromError: ``init_from`` names no checkpoint or one that does not fit.
  """
  groups = optim.param_groups_from_config(config)
  init_from = config.init_from
  resuming = checkpoint.has_checkpoint(paths.join(workdir, "checkpoints"))
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
                            reinit_pattern=config.init_reinit)


def _check_divergence(guard: DivergenceGuard, dp: DataParallel, unchecked: list,
                      ckpt: checkpoint.Checkpointer) -> None:
  # Every step since the last check, in order; raises Diverged naming the latest checkpoint
  # once the saves in progress have ended.
  for step, metrics in unchecked:
    guard.check(step, dp.metrics_to_host(metrics), ckpt.latest_finished_step)
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

