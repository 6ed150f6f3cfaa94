"""The on-disk record of probe steps: <workdir>/conflicts/store/, and the Record it loads.

  meta.json                          {"format", "version": 2, "halves", "task_names",
                                      "layer_names"[, "probe_batch": {"size", "fresh"[,
                                      "checkpoint": {"run", "step"}]}]}
  chunk-<first:09d>-<last:09d>.npz   steps (S,) int64 ascending, gramians (S, L, K, K) float32

halves: true (what the trainer writes): K = 2T, the Gramians of the per-half gradients in the
order [t0a, t0b, t1a, ...] (mtl.gramians, "noise floor"); false: K = T, per-task
Gramians. task_names are always the T >= 2 tasks, unique. Version 1 stores (no "halves" key,
K = T) still load, as records without halves: their noise-floor quantities are NaN and say so;
a run does not append to one (Store.check refuses it before training). probe_batch
(absent in older stores): the images per task each probe measured, and whether they were a
fresh batch of their own (conflicts.batch_size) or the training batch; titles and texts say it.
checkpoint (launch/analyze.py --checkpoint): the probes are independent fresh batches at one
saved step of a run (its name and step), not training steps: figures and texts count batches.

`load(workdir)` returns a Record (mtl.conflicts.record): the stored steps, their per-leaf task
Gramians in network order, the half Gramians where stored, and the derived statistics.
"""
import collections
import json
import os
import re
import zipfile

import numpy as np
from absl import logging

from mtl import files, run_folder
from mtl.models import ipt
from mtl.conflicts.record import Record, _check_range, _describe_steps, format_range

FORMAT = "mtl.conflicts"
VERSION = 2
READABLE_VERSIONS = (1, 2)
_CHUNK = re.compile(r"^chunk-(\d{9,})-(\d{9,})\.npz$")


def store_dir(workdir):
  return os.path.join(run_folder.conflicts_dir(workdir), "store")


class Store:
  """The probe store of one workdir: <workdir>/conflicts/store/ (format: the module docstring).

  Chunks are written atomically (temporary file + os.replace) and never modified;
  truncation writes a shorter chunk before removing the old one, so a crash at any point
  leaves a loadable store (duplicated steps are dropped on load).
  """

  def __init__(self, workdir):
    self.workdir = workdir
    self.path = store_dir(workdir)
    self.meta_path = os.path.join(self.path, "meta.json")

  def exists(self):
    return os.path.isfile(self.meta_path)

  # --- reading

  def meta(self):
    if not self.exists():
      raise ValueError(f"no conflict store in {self.workdir} (expected {self.meta_path}); "
                       "run training with conflicts.every > 0 and at least two tasks")
    try:
      with open(self.meta_path) as f:
        meta = json.load(f)
    except (OSError, ValueError, RecursionError) as error:
      raise ValueError(f"corrupt conflict store meta {self.meta_path}: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
      raise ValueError(f"{self.meta_path} is not a conflict store meta (format != {FORMAT!r})")
    version = meta.get("version")
    if type(version) is not int or version not in READABLE_VERSIONS:  # true == 1 in Python
      raise ValueError(f"{self.meta_path} has format version {version!r}; "
                       f"this code reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    if meta["version"] == 1:
      meta = dict(meta, halves=False)  # version 1 stored per-task Gramians only
    if not isinstance(meta.get("halves"), bool):
      raise ValueError(f"corrupt conflict store meta {self.meta_path}: halves is not true/false")
    for key in ("task_names", "layer_names"):
      if not isinstance(meta.get(key), list) or not all(isinstance(n, str) for n in meta[key]):
        raise ValueError(f"corrupt conflict store meta {self.meta_path}: {key} is not a list "
                         "of strings")
    problem = _names_problem(meta["task_names"], meta["layer_names"])
    if problem:
      raise ValueError(f"corrupt conflict store meta {self.meta_path}: {problem}")
    batch = meta.get("probe_batch")
    if batch is not None and not (isinstance(batch, dict) and type(batch.get("size")) is int
                                  and batch["size"] > 0 and isinstance(batch.get("fresh"), bool)
                                  and _is_checkpoint(batch.get("checkpoint"))):
      raise ValueError(f"corrupt conflict store meta {self.meta_path}: probe_batch {batch!r} is "
                       'not {"size": <images per task>, "fresh": true|false[, "checkpoint": '
                       '{"run": <name>, "step": <saved step>}]}')
    return meta

  def chunks(self):
    """[(first, last, path)] sorted by (first, last)."""
    if not os.path.isdir(self.path):
      return []
    found = []
    for name in os.listdir(self.path):
      match = _CHUNK.match(name)
      if match:
        found.append((int(match.group(1)), int(match.group(2)), os.path.join(self.path, name)))
    return sorted(found)

  def read_chunk(self, path, meta=None):
    """(steps (S,) int64, gramians (S, L, K, K) float32) of one chunk, validated; K = 2T with
    halves, else T."""
    meta = meta or self.meta()
    k = len(meta["task_names"]) * (2 if meta["halves"] else 1)
    shape = (len(meta["layer_names"]), k, k)
    try:
      steps, grams = files.read_arrays(path, ("steps", "gramians"))
    except ValueError as error:
      raise _corrupt_chunk(path, str(error)) from None
    match = _CHUNK.match(os.path.basename(path))
    problem = None
    if steps.ndim != 1 or not np.issubdtype(steps.dtype, np.integer) or len(steps) == 0:
      problem = f"steps has shape {steps.shape} and dtype {steps.dtype}"
    elif steps.max() > np.iinfo(np.int64).max or steps.min() < 0:  # uint64 would wrap
      problem = f"steps run from {steps.min()} to {steps.max()}, outside [0, 2**63)"
    elif not np.issubdtype(grams.dtype, np.floating):
      problem = f"gramians have dtype {grams.dtype}, not real floating point"
    elif grams.shape != (len(steps),) + shape:
      problem = f"gramians has shape {grams.shape}, expected {(len(steps),) + shape}"
    elif np.any(np.diff(steps) <= 0):
      problem = "steps are not strictly increasing"
    elif match and (steps[0], steps[-1]) != (int(match.group(1)), int(match.group(2))):
      problem = f"holds steps {steps[0]}..{steps[-1]}, not the ones its name says"
    if problem:
      raise _corrupt_chunk(path, problem)
    return steps.astype(np.int64), grams.astype(np.float32)

  def load(self, step_range=None):
    """The stored probe steps in [start, end) as a Record (see module `load`)."""
    start, end = _check_range(step_range)
    meta = self.meta()
    chunks = self.chunks()
    if not chunks:
      raise ValueError(f"conflict store {self.path} holds no probe steps yet")
    lo, hi = chunks[0][0], max(c[1] for c in chunks)
    wanted = [c for c in chunks
              if (start is None or c[1] >= start) and (end is None or c[0] < end)]
    if not wanted:
      raise ValueError(f"step range {format_range(step_range)} is outside the stored steps "
                       f"{lo}..{hi} in {self.path}")
    parts = [self.read_chunk(path, meta) for _, _, path in wanted]
    steps = np.concatenate([s for s, _ in parts])
    grams = np.concatenate([g for _, g in parts])
    # Sort and keep one entry per step (a crash mid-truncation can leave two chunks with it).
    steps, first = np.unique(steps, return_index=True)
    # A probe whose gradients overflowed says nothing about their directions: it is not a probe.
    finite = np.isfinite(grams[first]).all(axis=tuple(range(1, grams.ndim)))
    if not finite.all():
      bad = steps[~finite].tolist()
      logging.warning("conflict store %s: skipping %d of %d probe steps whose Gramians are not "
                      "finite (NaN/inf), at steps %s; they are not counted as probes", self.path,
                      len(bad), len(steps), ", ".join(map(str, bad[:8])) + (
                          " ..." if len(bad) > 8 else ""))
      if not finite.any():
        raise ValueError(f"conflict store {self.path}: every probe step's Gramians are non-finite "
                         "(NaN/inf): the run's gradients overflowed; nothing to analyze")
      steps, first = steps[finite], first[finite]
    grams, layer_names = _in_network_order(grams[first], meta["layer_names"])
    checkpoint = (meta.get("probe_batch") or {}).get("checkpoint")
    name = checkpoint["run"] if checkpoint else os.path.basename(
        os.path.abspath(self.workdir).rstrip(os.sep))
    if meta["halves"]:
      record = Record.from_halves(steps, grams, layer_names, meta["task_names"], name,
                                  meta.get("probe_batch"))
    else:
      record = Record(steps=steps, gramians=grams, layer_names=tuple(layer_names),
                      task_names=tuple(meta["task_names"]), name=name,
                      probe_batch=meta.get("probe_batch"))
    if step_range is None:
      return record
    try:
      return record.select((start, end))
    except ValueError:
      raise ValueError(f"step range {format_range(step_range)} selects no probe step; stored: "
                       f"{_describe_steps(steps)} in {self.path}") from None

  # --- writing

  def append(self, steps, gramians, layer_names, task_names, probe_batch=None):
    """Add probe steps as one new chunk; returns its path (None if `steps` is empty).
    probe_batch: {"size", "fresh"[, "checkpoint"]} of the probes (recorded with the first append).

    steps (S,) strictly increasing ints >= 0 (or one int); gramians (S, L, K, K) (or
    (L, K, K) for one step) with K = 2T (half-split, the probe's; stored with halves: true)
    or K = T (per-task; halves: false). The first append writes meta.json; later ones must
    pass the same layer and task names and the same K. Stored steps >= steps[0] belong to a
    trajectory that was abandoned (a resume from an older checkpoint) and are dropped first.
    """
    steps = np.atleast_1d(np.asarray(steps))
    gramians = np.asarray(gramians)
    if gramians.ndim == 3 and steps.shape == (1,):
      gramians = gramians[None]
    layer_names, task_names = [str(n) for n in layer_names], [str(n) for n in task_names]
    if steps.ndim != 1 or not np.issubdtype(steps.dtype, np.integer):
      raise ValueError(f"steps must be a 1-D integer array; got shape {steps.shape}, "
                       f"dtype {steps.dtype}")
    if len(steps) == 0:
      return None
    if np.any(steps < 0) or np.any(np.diff(steps) <= 0):
      raise ValueError(f"steps must be >= 0 and strictly increasing; got {steps.tolist()[:8]}...")
    t = len(task_names)
    halves = gramians.ndim == 4 and gramians.shape[-1] == 2 * t and t > 0
    k = 2 * t if halves else t
    expected = (len(steps), len(layer_names), k, k)
    if gramians.shape != expected:
      raise ValueError(f"gramians of shape {gramians.shape} do not match {len(steps)} steps, "
                       f"{len(layer_names)} layers, {t} tasks; expected {expected[:2] + (t, t)} "
                       f"or, half-split, {expected[:2] + (2 * t, 2 * t)}")
    problem = _names_problem(task_names, layer_names)
    if problem:
      raise ValueError(f"cannot store conflicts: {problem}")
    os.makedirs(self.path, exist_ok=True)
    if self.exists():
      self._check_meta(task_names, layer_names, halves)
    chunks = self.chunks()
    if chunks and max(c[1] for c in chunks) >= steps[0]:
      logging.warning("conflict store %s: dropping stored probes at steps >= %d, which are "
                      "being re-measured", self.path, int(steps[0]))
      self.truncate_after(int(steps[0]) - 1)
    if not self.exists():  # a new store, or one truncated to nothing: this run's meta
      meta = dict(format=FORMAT, version=VERSION, halves=bool(halves), task_names=task_names,
                  layer_names=layer_names)
      if probe_batch:
        meta["probe_batch"] = {"size": int(probe_batch["size"]),
                               "fresh": bool(probe_batch["fresh"])}
        if probe_batch.get("checkpoint"):
          checkpoint = probe_batch["checkpoint"]
          meta["probe_batch"]["checkpoint"] = {"run": str(checkpoint["run"]),
                                               "step": int(checkpoint["step"])}
      files.write_atomic(self.meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()))
    return self._write_chunk(steps.astype(np.int64), gramians.astype(np.float32))

  def _check_meta(self, task_names, layer_names, halves):
    """The meta, refused (ValueError, one line) unless it holds these task and layer names and
    Gramians of this kind (half-split or per-task) in the current format version."""
    meta = self.meta()
    for key, given in (("task_names", task_names), ("layer_names", layer_names)):
      if meta[key] != given:
        raise ValueError(f"{key} {_diff(meta[key], given)} differ from the ones stored in "
                         f"{self.meta_path}; use a fresh workdir for a different model or "
                         "task set")
    if meta["halves"] != halves or meta["version"] != VERSION:
      raise ValueError(f"{self.meta_path} holds {'half-split' if meta['halves'] else 'per-task'}"
                       f" Gramians (format version {meta['version']}), these are "
                       f"{'half-split' if halves else 'per-task'} (version {VERSION}); move "
                       f"{self.path} away or use a fresh workdir")
    return meta

  def check(self, task_names, layer_names, halves=True):
    """Before a run resumes: the store it will append to holds these names and Gramians of
    this kind (halves: the trainer's half-split ones) in the current format version, and every
    chunk opens with both arrays listed (ValueError, one line, naming what is wrong), so no
    training is spent first. Only each file's zip directory is read, at its end, where a
    truncated file fails; the arrays themselves (a long run's store: gigabytes) are read and
    checked on load."""
    if not self.exists():
      return
    self._check_meta([str(n) for n in task_names], [str(n) for n in layer_names], halves)
    for _, _, path in self.chunks():
      try:
        with zipfile.ZipFile(path) as archive:
          missing = {"steps.npy", "gramians.npy"} - set(archive.namelist())
      except (OSError, zipfile.BadZipFile) as error:
        raise _corrupt_chunk(path, f"{type(error).__name__}: {error}") from None
      if missing:
        raise _corrupt_chunk(path, f"it lacks {', '.join(sorted(missing))}")

  def truncate_after(self, step):
    """Drop every stored probe step > `step` (on resume); a store left without chunks loses
    its meta too, so the next append records its own run's (probe_batch). No store: nothing
    to do."""
    if not os.path.isdir(self.path):
      return
    for name in os.listdir(self.path):  # leftovers of writes that crashed
      if ".tmp-" in name:
        os.remove(os.path.join(self.path, name))
    for first, last, path in self.chunks():
      if last <= step:
        continue
      if first <= step:
        steps, grams = self.read_chunk(path)
        keep = steps <= step
        self._write_chunk(steps[keep], grams[keep])  # the shorter chunk first, then drop the old
      os.remove(path)
    if not self.chunks() and self.exists():  # the next append writes its own run's meta
      os.remove(self.meta_path)
    files.fsync_dir(self.path)

  def _write_chunk(self, steps, gramians):
    path = os.path.join(self.path, f"chunk-{int(steps[0]):09d}-{int(steps[-1]):09d}.npz")
    files.write_atomic(path, lambda f: np.savez(f, steps=steps, gramians=gramians))
    return path


def _in_network_order(gramians, layer_names):
  """(gramians, names) with the leaves (axis 1) sorted by ipt.network_rank: stores keep the
  trainer's block order, within a layer alphabetical."""
  order = sorted(range(len(layer_names)), key=lambda i: ipt.network_rank(layer_names[i]))
  return gramians[:, order], [layer_names[i] for i in order]


def _is_checkpoint(value):
  """probe_batch's optional "checkpoint": absent, or {"run": name, "step": saved step >= 0}."""
  return value is None or (isinstance(value, dict) and isinstance(value.get("run"), str)
                           and type(value.get("step")) is int and value["step"] >= 0)


def _names_problem(task_names, layer_names):
  """What makes these names no conflict store's (None if nothing): pairs need two tasks."""
  if len(task_names) < 2:
    return f"task_names {task_names!r} has fewer than two tasks"
  if not layer_names:
    return "layer_names is empty"
  for key, names in (("task_names", task_names), ("layer_names", layer_names)):
    repeated = sorted(n for n, count in collections.Counter(names).items() if count > 1)
    if repeated:
      return f"{key} repeats {', '.join(map(repr, repeated))}"
  return None


def _corrupt_chunk(path, problem):
  return ValueError(f"corrupt conflict chunk {path}: {problem}; delete it to load the rest")


def _diff(stored, given):
  if len(stored) != len(given):
    return f"(given {len(given)}, stored {len(stored)})"
  i = next(i for i, (a, b) in enumerate(zip(stored, given)) if a != b)
  return f"(at index {i}: given {given[i]!r}, stored {stored[i]!r})"


def append(workdir, steps, gramians, layer_names, task_names, probe_batch=None):
  """Store.append on <workdir>/conflicts/store."""
  return Store(workdir).append(steps, gramians, layer_names, task_names, probe_batch)


def truncate_after(workdir, step):
  """Store.truncate_after: no stored step > `step` remains."""
  Store(workdir).truncate_after(step)


def load(workdir, step_range=None):
  """All stored probe steps in [start, end) as a Record, sorted, one entry per step.

  step_range: None, or (start, end) with either None. ValueError (one line naming the path
  or value and what is valid) for a missing store, a corrupt meta or chunk, or a range that
  selects no stored step.
  """
  return Store(workdir).load(step_range)

