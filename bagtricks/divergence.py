"""Stops a run that diverges, before it writes a checkpoint of non-finite numbers.

The train loop hands every step's metrics (fetched where it syncs anyway: at log lines and
before checkpoints) to ``DivergenceGuard.check``, which raises ``Diverged`` on

* a non-finite training loss, unless dynamic loss scaling skipped that very step (an fp16
  overflow the scaler handles);
* under dynamic loss scaling, more than ``max_skipped_fraction`` of the last ``window_steps``
  steps skipped, or a skipped step at the scale's floor (scaling has nothing left to try);

and ``check_finite_state`` refuses to let a state with a non-finite parameter be saved.
Both name the latest checkpoint in their message; given a function, they call it only when
they stop the run (the loop's waits for the saves in progress to end first, so the named
checkpoint is one that exists).
"""

from __future__ import annotations

import collections
import math
from typing import Any, Callable, Dict, List, Optional, Union

import jax
import numpy as np

from bagtricks import config_fields


class Diverged(RuntimeError):
  """Training diverged; the latest checkpoint holds the last finite state."""


LatestCheckpoint = Union[None, int, Callable[[], Optional[int]]]


def _kept_checkpoint(latest_checkpoint: LatestCheckpoint) -> str:
  latest = latest_checkpoint() if callable(latest_checkpoint) else latest_checkpoint
  if latest is None:
    return "no checkpoint was written, so a rerun starts over"
  return f"checkpoint {latest}, the last with finite parameters, stays the latest"


class DivergenceGuard:
  """Checks each step's metrics, in step order (see the module docstring).

  Args:
    config: the run config (reads ``divergence.*``, ``precision``, ``optimizer.base_lr``,
      ``schedule.warmup_epochs`` and ``loss_scale``) for the thresholds and the advice.
    loss_scaling: whether the optimizer has a dynamic loss scale.
    min_scale: the loss scale's floor.
  """

  def __init__(self, config, loss_scaling: bool, min_scale: float = 1.0):
    self.config = config
    self.loss_scaling = loss_scaling
    self.min_scale = min_scale
    self.window = int(config.divergence.window_steps)
    self.max_fraction = float(config.divergence.max_skipped_fraction)
    self._skipped = collections.deque(maxlen=self.window + 1)  # cumulative counts

  def _advice(self) -> str:
    c = self.config
    advice = [f"a lower --config.optimizer.base_lr (now {c.optimizer.base_lr:g})",
              f"a longer warm-up (--config.schedule.warmup_epochs, now "
              f"{c.schedule.warmup_epochs:g})"]
    if not c.optimizer.grad_clip_norm:
      advice.append("gradient clipping (--config.optimizer.grad_clip_norm=1.0)")
    if c.precision == "fp16":
      advice.append("--config.precision=bf16 or fp32")
    return "Try " + ", ".join(advice[:-1]) + " or " + advice[-1] + "."

  def _stop(self, step: int, metrics: Dict[str, float], what: str, latest_checkpoint) -> None:
    raise Diverged(f"training diverged at step {step}: {what} (learning rate "
                   f"{metrics.get('learning_rate', float('nan')):.4g}); "
                   f"{_kept_checkpoint(latest_checkpoint)}. "
                   + self._advice())

  def check(self, step: int, metrics: Dict[str, float],
            latest_checkpoint: LatestCheckpoint = None) -> None:
    """Raises ``Diverged`` if step ``step`` (with its host ``metrics``) shows divergence."""
    loss = metrics["loss"]
    skipped_total = int(metrics.get("skipped_steps", 0))
    skipped_now = bool(self._skipped) and skipped_total > self._skipped[-1]
    self._skipped.append(skipped_total)
    if not math.isfinite(loss) and not (self.loss_scaling and skipped_now):
      self._stop(step, metrics, f"the training loss is {loss}", latest_checkpoint)
    if not self.loss_scaling:
      return
    if skipped_now and metrics.get("loss_scale", math.inf) <= self.min_scale:
      self._stop(step, metrics, f"the loss scale fell to its floor ({self.min_scale:g}) and "
                 "the gradients are still not finite", latest_checkpoint)
    if len(self._skipped) > self.window:
      recent = self._skipped[-1] - self._skipped[0]
      if recent > self.max_fraction * self.window:
        self._stop(step, metrics, f"{recent} of the last {self.window} steps were skipped "
                   "for non-finite gradients", latest_checkpoint)


def check_finite_state(state: Any, step: int, latest_checkpoint: LatestCheckpoint = None
                       ) -> None:
  """Raises ``Diverged`` if any floating array of the (host) state is not finite."""
  for path, array in jax.tree_util.tree_flatten_with_path(state)[0]:
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
      raise Diverged(f"training diverged by step {step}: {jax.tree_util.keystr(path)} holds "
                     f"non-finite values, so it is not saved; "
                     f"{_kept_checkpoint(latest_checkpoint)}. Try a lower "
                     "--config.optimizer.base_lr or gradient clipping "
                     "(--config.optimizer.grad_clip_norm=1.0).")


def _divergence_problems(config) -> List[str]:
  return (config_fields.positive(config, "divergence.window_steps", integer=True)
          + config_fields.in_range(config, "divergence.max_skipped_fraction", 0.0, 1.0))


# The thresholds of `DivergenceGuard`.
DIVERGENCE_FIELDS = config_fields.ConfigFields(
    "divergence",
    defaults={"divergence.window_steps": 100, "divergence.max_skipped_fraction": 0.5},
    check=_divergence_problems)
