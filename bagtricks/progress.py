"""The training loop's progress line and timing.

``step 120/440 (epoch 2.7) loss 0.4312 acc 0.871 lr 0.0912 | 1411 img/s | ETA 0:00:14``:
the rate counts the task's unit (``tasks.Throughput``: images, table rows, target tokens)
over the steps since the last line. The first step (compilation) and evaluations are kept
out of the rate and out of ``train_seconds``.
"""

from __future__ import annotations

import time
from typing import Dict, Optional

from bagtricks.tasks.base import Throughput


def format_eta(seconds: float) -> str:
  """``h:mm:ss``."""
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
  """Timing of a run's training steps, and the rate and ETA of its progress lines.

  Args:
    throughput: what the rate counts.
    batch_size: examples per step (the global batch).
    total_steps: the run's last step (for the ETA).
  """

  def __init__(self, throughput: Throughput, batch_size: int, total_steps: int):
    self.throughput = throughput
    self._batch_size = batch_size
    self._total_steps = total_steps
    self._start = time.time()
    self.first_step_seconds: Optional[float] = None
    self._window_start = self._start
    self._window_steps = 0
    self._paused_seconds = 0.0
    self._timed_units = 0.0  # Units of every step after the first.

  def first_step_done(self) -> None:
    """The first step has finished (its results fetched): its time is compilation."""
    now = time.time()
    self.first_step_seconds = now - self._start
    self._window_start, self._window_steps = now, 0

  def step_done(self) -> None:
    self._window_steps += 1

  def paused(self, seconds: float) -> None:
    """``seconds`` of the loop went to something else (an evaluation)."""
    self._paused_seconds += seconds
    self._window_start += seconds

  def window(self, step: int, logged: Dict[str, float]) -> Dict[str, float]:
    """Ends the window of steps since the last line: ``{throughput.key: rate}`` and the ETA.

    Args:
      step: the step just done.
      logged: the window's mean training metrics (``throughput.metric`` among them when the
        task counts its units in a metric).
    """
    now = time.time()
    seconds = max(now - self._window_start, 1e-9)
    per_step = (logged[self.throughput.metric] if self.throughput.metric
                else self._batch_size)
    units = self._window_steps * per_step
    self._timed_units += units
    steps_per_second = self._window_steps / seconds
    eta = (self._total_steps - step) / steps_per_second if steps_per_second else 0.0
    self._window_start, self._window_steps = now, 0
    return {self.throughput.key: units / seconds, "eta_seconds": eta}

  def line(self, step: int, steps_per_epoch: int, logged: Dict[str, float],
           task_metrics: Dict[str, str], rate: Dict[str, float]) -> str:
    """The progress line (see the module docstring)."""
    shown = "".join(f" {label} {logged[name]:.3f}" for name, label in task_metrics.items())
    return (f"step {step}/{self._total_steps} (epoch {step / steps_per_epoch:.1f}) loss "
            f"{logged['loss']:.4f}{shown} lr {logged['learning_rate']:.4g} | "
            f"{rate[self.throughput.key]:.0f} {self.throughput.unit}/s | ETA "
            f"{format_eta(rate['eta_seconds'])}")

  def train_seconds(self) -> float:
    """Seconds of the loop so far, evaluations left out."""
    return time.time() - self._start - self._paused_seconds

  def timing_summary(self) -> Dict[str, Optional[float]]:
    """``train_seconds``, ``first_step_seconds`` and the rate over every step after the
    first (``throughput.key``; None when there were none)."""
    train_seconds = self.train_seconds()
    timed_seconds = train_seconds - (self.first_step_seconds or 0.0)
    rate = (round(self._timed_units / timed_seconds, 1)
            if self._timed_units and timed_seconds > 0 else None)
    return {"train_seconds": round(train_seconds, 3),
            "first_step_seconds": round(self.first_step_seconds or 0.0, 3),
            self.throughput.key: rate}
