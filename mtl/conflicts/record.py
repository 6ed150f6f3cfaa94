"""A run's probe steps in memory: the `Record` a conflict store loads (mtl.conflicts.store),
its derived statistics (mtl.gramians, mtl.stats) grouped by layer, module, block or body, and
the probe-step ranges that select parts of it.
"""
import dataclasses
import re

import numpy as np

from mtl.gramians import (conflict_fraction, corrected_cosines, cosines, group, norms,
                          pair_indices, pair_names, pair_values, same_task_agreement,
                          task_gramian, update_cosines)

NO_HALVES = ("not measured: this store has no half-split Gramians (written before format "
             "version 2, or without halves), so there is no noise floor")


@dataclasses.dataclass(frozen=True, eq=False)
class Record:
  """Probe steps as loaded from a store.

  steps (S,) int64 ascending; gramians (S, L, T, T) float32 with leaves in network order: the
  task-level Gramians (from the halves via task_gramian where they are stored), which every
  raw quantity (cosines, norms, conflict_fraction) reads. half_gramians (S, L, 2T, 2T) float32
  or None (a store without halves): the noise floor's input. name: the run's (its workdir's
  basename) for titles.
  """
  steps: np.ndarray
  gramians: np.ndarray
  layer_names: tuple
  task_names: tuple
  half_gramians: np.ndarray = None
  name: str = ""
  # {"size": images per task, "fresh": bool[, "checkpoint": {"run", "step"}]}; None: not recorded
  probe_batch: dict = None

  @classmethod
  def from_halves(cls, steps, half_gramians, layer_names, task_names, name="", probe_batch=None):
    """A Record of half-split Gramians (S, L, 2T, 2T); task Gramians derived."""
    half = np.asarray(half_gramians, np.float32)
    return cls(steps=np.asarray(steps, np.int64), gramians=task_gramian(half).astype(np.float32),
               layer_names=tuple(layer_names), task_names=tuple(task_names), half_gramians=half,
               name=name, probe_batch=probe_batch)

  @property
  def halves(self):
    """Whether the noise floor can be measured (half-split Gramians were stored)."""
    return self.half_gramians is not None

  @property
  def num_steps(self):
    return len(self.steps)

  @property
  def pair_names(self):
    return pair_names(self.task_names)

  def grouped(self, by="body"):
    """(group names, Gramians (S, B, T, T)) for `by` in GROUPINGS."""
    return group(self.gramians, self.layer_names, by)

  def cosines(self, by="body"):
    """(S, B, T, T); by='body' gives (S, 1, T, T)."""
    return cosines(self.grouped(by)[1])

  def norms(self, by="body"):
    """(S, B, T)."""
    return norms(self.grouped(by)[1])

  def conflict_fraction(self, by="body"):
    """(S, B): fraction of task pairs with cos < 0."""
    return conflict_fraction(self.grouped(by)[1])

  def update_cosines(self, by="body"):
    """(S, B, T)."""
    return update_cosines(self.grouped(by)[1])

  # --- noise floor (NaN on a record without halves; `NO_HALVES` says why)

  def grouped_halves(self, by="body"):
    """(group names, half-split Gramians (S, B, 2T, 2T)); ValueError without halves."""
    if not self.halves:
      raise ValueError(f"noise floor {NO_HALVES}")
    return group(self.half_gramians, self.layer_names, by)

  def _nan(self, by, *shape):
    names = group(self.gramians[:1], self.layer_names, by)[0]
    return np.full((self.num_steps, len(names)) + shape, np.nan)

  def same_task_agreement(self, by="body"):
    """(S, B, T): cos(g_t^a, g_t^b) per step, how much of a task's gradient is signal."""
    if not self.halves:
      return self._nan(by, len(self.task_names))
    return same_task_agreement(self.grouped_halves(by)[1])

  def corrected_cosines(self, by="body", window=None):
    """(B, T, T): the noise-corrected cosine pooled over the last `window` probe steps."""
    rec = self.last(window)
    if not rec.halves:
      return rec._nan(by, len(self.task_names), len(self.task_names))[0]
    return corrected_cosines(rec.grouped_halves(by)[1], axis=0)

  @property
  def interval_method(self):
    """How intervals over probes are taken (mtl.stats): probes on fresh batches of their own
    are independent given the parameters ('independent'); the training batch's follow the
    trajectory, so they are batched ('batch_means', autocorrelation-aware)."""
    return "independent" if self.probe_batch and self.probe_batch["fresh"] else "batch_means"

  def corrected_cosine_intervals(self, window=None, level=0.95, method=None):
    """[Interval] per pair (pair order) of the whole body's corrected cosine over the window
    (method None: the record's `interval_method`)."""
    from mtl import stats
    rec = self.last(window)
    method = method or self.interval_method
    if not rec.halves:
      return [stats.Interval(float("nan"), float("nan"), float("nan"), level, rec.num_steps,
                             method=method, note=NO_HALVES)
              for _ in pair_indices(len(self.task_names))]
    return stats.corrected_cosine_intervals(rec.grouped_halves("body")[1][:, 0], level, method)

  def resolved_noise_floors(self, window=None, level=0.95, method=None):
    """(T,) bool per task: its whole-body noise floor resolved over the window (mtl.stats's
    resolved_noise_floors; all False without halves)."""
    from mtl import stats
    rec = self.last(window)
    if not rec.halves or rec.num_steps == 0:
      return np.zeros(len(self.task_names), bool)
    return stats.resolved_noise_floors(rec.grouped_halves("body")[1][:, 0], level,
                                       method or self.interval_method)

  def resolved_pairs(self, window=None):
    """[bool] per pair (pair_indices order): both tasks' noise floors resolved, so its corrected
    cosine's size may be read, not only its sign (Fieller; resolved_noise_floors)."""
    floors = self.resolved_noise_floors(window)
    return [bool(floors[i] and floors[j]) for i, j in pair_indices(len(self.task_names))]

  def cosine_intervals(self, window=None, level=0.95, method=None):
    """[Interval] per pair: the window mean of the whole body's raw cosine (method None: the
    record's `interval_method`)."""
    from mtl import stats
    method = method or self.interval_method
    pcos = pair_values(self.last(window).cosines("body")[:, 0])
    return [stats.window_mean_interval(pcos[:, k], level, method) for k in range(pcos.shape[1])]

  def conflict_fraction_intervals(self, window=None, level=0.95, method=None):
    """[Interval] per pair: the share of probe steps with whole-body raw cos < 0 (method None:
    the record's `interval_method`)."""
    from mtl import stats
    method = method or self.interval_method
    pcos = pair_values(self.last(window).cosines("body")[:, 0])
    return [stats.conflict_fraction_interval(pcos[:, k], level, method)
            for k in range(pcos.shape[1])]

  def layer_intervals(self, by="module", window=None, level=0.95, method=None):
    """Per group of leaves and pair over the window: (group names, [[Interval]] (rows x pairs),
    (rows, P) unresolved). With halves each row's noise-corrected cosine pooled over the probes,
    its own noise floor deciding `unresolved` (a task's floor at that row not resolved, fewer
    than 4 probes included: an interval's sign holds, not its size); without, the raw cosine's
    window mean, nothing unresolved."""
    from mtl import stats
    rec = self.last(window)
    method = method or self.interval_method
    pairs = pair_indices(len(self.task_names))
    if not rec.halves:
      names, grams = rec.grouped(by)
      pcos = pair_values(cosines(grams))  # (S, rows, P)
      cells = [[stats.window_mean_interval(pcos[:, r, k], level, method)
                for k in range(len(pairs))] for r in range(len(names))]
      return names, cells, np.zeros((len(names), len(pairs)), bool)
    names, halves = rec.grouped_halves(by)
    cells, unresolved = [], []
    for r in range(len(names)):
      cells.append(stats.corrected_cosine_intervals(halves[:, r], level, method))
      floor = stats.resolved_noise_floors(halves[:, r], level, method)
      unresolved.append([not (floor[i] and floor[j]) for i, j in pairs])
    return names, cells, np.array(unresolved, bool).reshape(len(names), len(pairs))

  def last(self, window=None):
    """The last `window` probe steps (all for None or 0)."""
    if not window:
      return self
    if window < 0:
      raise ValueError(f"window={window}; valid: a positive number of probe steps, or 0 for all")
    return self._take(slice(max(0, self.num_steps - window), None))

  def select(self, step_range):
    """Probe steps in [start, end) (either may be None); ValueError if none is selected."""
    start, end = _check_range(step_range)
    keep = np.ones(self.num_steps, bool)
    if start is not None:
      keep &= self.steps >= start
    if end is not None:
      keep &= self.steps < end
    if not keep.any():
      raise ValueError(f"step range {format_range(step_range)} selects no probe step; stored: "
                       f"{_describe_steps(self.steps)}")
    return self._take(keep)

  def batch_label(self):
    """'fresh batches of B/task' (or 'training batches ...'); '' where the store did not say."""
    if not self.probe_batch:
      return ""
    kind = "fresh batches" if self.probe_batch["fresh"] else "training batches"
    return f"{kind} of {self.probe_batch['size']}/task"

  @property
  def checkpoint(self):
    """{"run", "step"} when the probes are fresh batches at one saved step (analyze
    --checkpoint), else None: then they are training steps."""
    return (self.probe_batch or {}).get("checkpoint")

  def x_axis(self):
    """(x values, axis label) of the probes: their training steps, or at one checkpoint the
    batches' numbers 1..N (independent batches: no order in time)."""
    if self.checkpoint:
      return np.arange(1, self.num_steps + 1), "fresh probe batch (one checkpoint)"
    return self.steps, "step"

  def window_label(self):
    """'steps a-b (n probes[, fresh batches of B/task])' for titles and texts; at a checkpoint
    'checkpoint step N, n fresh batches of B/task'."""
    if self.num_steps == 0:
      return "no steps"
    if self.checkpoint:
      return (f"checkpoint step {self.checkpoint['step']}, {self.num_steps} fresh "
              f"batch{'es' if self.num_steps != 1 else ''} of {self.probe_batch['size']}/task")
    batch = f", {self.batch_label()}" if self.probe_batch else ""
    return (f"steps {int(self.steps[0])}-{int(self.steps[-1])} "
            f"({self.num_steps} probe{'s' if self.num_steps != 1 else ''}{batch})")

  def _take(self, index):
    return dataclasses.replace(
        self, steps=self.steps[index], gramians=self.gramians[index],
        half_gramians=None if self.half_gramians is None else self.half_gramians[index])


def parse_step_range(text):
  """'START:END' (half-open, either side may be empty) -> (start, end); '' -> None."""
  if text is None or text.strip() in ("", ":"):
    return None
  match = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", text)
  if not match:
    raise ValueError(f"step range {text!r} is not START:END; valid e.g. '100:200', '100:', ':200'")
  start, end = (int(v) if v else None for v in match.groups())
  return _check_range((start, end))


def format_range(step_range):
  if step_range is None:
    return ":"
  start, end = step_range
  return f"{'' if start is None else start}:{'' if end is None else end}"


def _check_range(step_range):
  if step_range is None:
    return None, None
  try:
    start, end = step_range
  except (TypeError, ValueError):
    raise ValueError(f"step range {step_range!r}; valid: (start, end) with ints or None") from None
  if start is not None and end is not None and start >= end:
    raise ValueError(f"step range {format_range(step_range)} is empty; START must be < END")
  return start, end


def _describe_steps(steps):
  if len(steps) == 0:
    return "no probe steps"
  return f"steps {int(steps[0])}..{int(steps[-1])} ({len(steps)} probes)"
