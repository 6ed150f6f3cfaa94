"""The one-line progress log of a run: steps, rate, ETA and the given metrics.

`Progress(total_steps, start_step, every)` logs, via absl logging,
  step 250/1000 (25.0%) | 3.21 steps/s | ETA 3m54s | loss/total 0.0123
with the rate over the last `window` updates (so compile time falls out of it).
"""
import collections
import time

import numpy as np
from absl import logging

from mtl import io


class Progress:
  """Logs step/total, steps/s over the recent window, ETA and given metrics every `every` steps.

  update(step, metrics) takes the number of steps done; it logs when at least `every`
  steps passed since the last line, or at the last step, and returns the line (else None).
  """

  def __init__(self, total_steps, start_step=0, every=100, window=20, clock=time.monotonic):
    self.total_steps = int(total_steps)
    self.every = max(1, int(every))
    self._clock = clock
    self._history = collections.deque([(clock(), int(start_step))], maxlen=max(2, window + 1))
    self._last_logged = int(start_step)

  def rate(self):
    """Steps per second over the recent window; NaN before two updates."""
    (t0, s0), (t1, s1) = self._history[0], self._history[-1]
    return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else float("nan")

  def eta(self):
    """Seconds left at the recent rate; NaN if unknown."""
    rate = self.rate()
    step = self._history[-1][1]
    return max(0, self.total_steps - step) / rate if rate > 0 else float("nan")

  def update(self, step, metrics=None):
    step = int(step)
    self._history.append((self._clock(), step))
    if step - self._last_logged < self.every and step < self.total_steps:
      return None
    self._last_logged = step
    parts = [f"step {step}/{self.total_steps} ({100 * step / max(1, self.total_steps):.1f}%)",
             f"{self.rate():.3g} steps/s", f"ETA {io.format_duration(self.eta())}"]
    parts += [f"{k} {v:.4g}" if isinstance(v, (int, float, np.floating, np.integer))
              else f"{k} {v}" for k, v in (metrics or {}).items()]
    line = " | ".join(parts)
    logging.info("%s", line)
    return line
