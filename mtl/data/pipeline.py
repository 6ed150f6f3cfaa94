"""The training input pipeline, host side: clean uint8 HR crops for every task of a step.

Data is a pure function of (seed, step, task, global sample index). Sample i of task t at step s
draws, from numpy's `default_rng([seed, step, task_id(t, 32 bits), i, 1])`, in this order: its image
index, crop top and left, a horizontal flip and a number of 90-degree rotations (then, for derain
tasks given real streak layers, a streak layer, its crop, flip and rotation). So:
  - any process count and any resume point give identical global batches: process p of P builds
    only global samples [p * B / P, (p + 1) * B / P) of each task;
  - tasks are keyed by name, not by position: a task's crops are the same in a scratch run, a
    joint run and under any task order;
  - the step is the data step, the run's step + data.step_offset (`train_batches`): a fine-tune
    started after P pre-training steps (offset P) draws at its step k a scratch run's step
    k + P samples, never the pre-training's again.
(The trailing 1 tags the stream: numpy's SeedSequence ignores trailing zeros, so [.., i] and
[.., i, 0] would collide with other streams.) Images are drawn uniformly and windows uniformly
within them, over whole images whatever the storage: a tiled folder (`data.folder_tile`) serves
each crop from the tiles that hold it (`folder.TiledImage`), so tiling changes no crop.

Tasks with real degraded / clean pairs (`load_pairs`, config `data.pairs`) draw a pair instead of
a clean image, and one window, flip and rotation cut both (only the window is copied from each):
the clean crop is the task's entry and the aligned degraded crop its '<task>:input' entry, which
the train step uses as the input instead of synthesizing one (scale-1 tasks only).

Crop side per task is `spec.hr_crop(patch_size)` (SR x2: 96, x3: 144, x4: 192; others 48).
Images smaller than a crop are reflect-padded (mirror including the edge pixel) up to the crop
side, with a warning: nothing is skipped, so the sampling stays a pure function of the key.

`train_batches` builds the steps ahead in background threads with grain (ordered, deterministic).
"""
import functools
import os
import sys
import threading
import time

import grain
import numpy as np
from absl import logging

from mtl import tasks as tasks_lib
from mtl.data import folder as folder_lib

TASK_SCHEDULES = ("all", "one")
_SAMPLE_STREAM, _TASK_STREAM = 1, 2   # last seed word: keeps the two kinds of draws apart
# The probe batch's entries (conflicts.batch_size): PROBE_PREFIX + the training entry's key.
PROBE_PREFIX = "probe:"


def step_offset(data_config):
  """A run's data.step_offset: its step k draws the samples of step k + offset (0 in configs
  saved before the field)."""
  return data_config.get("step_offset", 0)


def split_probe(batch):
  """(training batch, probe batch) of a step's batch: the PROBE_PREFIX entries, unprefixed."""
  n = len(PROBE_PREFIX)
  return ({k: v for k, v in batch.items() if not k.startswith(PROBE_PREFIX)},
          {k[n:]: v for k, v in batch.items() if k.startswith(PROBE_PREFIX)})


def task_for_step(seed, step, num_tasks):
  """Index of the task trained at `step` under schedule 'one' (IPT): uniform, from (seed, step)."""
  if num_tasks < 1:
    raise ValueError(f"num_tasks={num_tasks} must be >= 1")
  return int(np.random.default_rng([seed, step, _TASK_STREAM]).integers(num_tasks))


def local_samples(batch_size, process_index=0, process_count=1):
  """The global sample indices process `process_index` of `process_count` builds."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(f"data.batch_size={batch_size} must be a positive multiple of the "
                     f"process count {process_count}")
  per_process = batch_size // process_count
  return range(process_index * per_process, (process_index + 1) * per_process)


def _pad_to(window, side):
  """Reflect-pad (symmetric: mirror including the edge pixel) so both sides are >= `side`."""
  h, w = window.shape[:2]
  if h >= side and w >= side:
    return window
  pad = [(0, max(0, side - h)), (0, max(0, side - w))] + [(0, 0)] * (window.ndim - 2)
  return np.pad(window, pad, mode="symmetric")


def _draw_window(rng, shape, side):
  """(top, left, flip, rotations) of a random side x side window of an image of `shape`, drawn
  as if it were reflect-padded up to `side` first."""
  h, w = shape[:2]
  if h < side or w < side:
    logging.log_first_n(logging.WARNING, "image of %dx%d is smaller than the %d crop; "
                        "reflect-padding it (further warnings suppressed)", 1, h, w, side)
  top = int(rng.integers(max(h, side) - side + 1))
  left = int(rng.integers(max(w, side) - side + 1))
  return top, left, int(rng.integers(2)), int(rng.integers(4))


def _cut(image, window, side):
  """The crop `window` (`_draw_window`) of `image`: only its pixels are read (a view, unless padded
  or read from several tiles). Padding the cut equals cutting the padded image."""
  top, left, flip, rotations = window
  crop = _pad_to(image[top:top + side, left:left + side], side)
  return np.rot90(crop[:, ::-1] if flip else crop, rotations)


def _random_window(rng, image, side):
  """A random side x side window of `image`, flipped and rotated at random."""
  return _cut(image, _draw_window(rng, image.shape, side), side)


def sample_crop(images, seed, step, task_name, index, side, streaks=None):
  """Global sample `index` of task `task_name` at `step`: (crop uint8 (side, side, 3), streak crop
  uint8 (side, side) or None). A pure function of its arguments."""
  rng = np.random.default_rng([seed, step, tasks_lib.task_id(task_name, bits=32), index,
                               _SAMPLE_STREAM])
  crop = _random_window(rng, images[int(rng.integers(len(images)))], side)
  streak = None
  if streaks is not None:
    streak = _random_window(rng, streaks[int(rng.integers(len(streaks)))], side)
  return crop, streak


class PairedImages:
  """Random access to a paired folder's (degraded, clean) uint8 HWC pairs, read on demand; pairs
  are kept in memory while their total stays within `cache_bytes`. Safe from several threads."""

  def __init__(self, path, cache_bytes=0):
    from mtl.data import benchmarks   # (benchmarks imports sources, which the pipeline need not)
    self.path = path
    self.triples = benchmarks.find_pairs(path)
    self._read = benchmarks.read_pair
    self.cache_bytes = int(cache_bytes)
    self._cache, self._cached_bytes, self._lock = {}, 0, threading.Lock()

  def __len__(self):
    return len(self.triples)

  def __getitem__(self, index):
    pair = self._cache.get(index)
    if pair is None:
      pair = self._read(*self.triples[index][1:])
      for image in pair:
        image.setflags(write=False)
      size = pair[0].nbytes + pair[1].nbytes
      with self._lock:
        if index not in self._cache and self._cached_bytes + size <= self.cache_bytes:
          self._cache[index], self._cached_bytes = pair, self._cached_bytes + size
    return pair

  def __repr__(self):
    return f"PairedImages({self.path}, {len(self)} pairs)"


def parse_pairs(spec):
  """'derain=/d/RainTrainL,dehaze=/d/OTS' -> [(task name or kind, path)]."""
  entries = []
  for entry in filter(None, (e.strip() for e in str(spec).split(","))):
    selector, sep, path = entry.partition("=")
    if not sep or not selector or not path:
      raise ValueError(f"data.pairs entry {entry!r} is not valid; use TASK=PATH (a task name or "
                       "kind, e.g. dehaze=/data/RESIDE/OTS), comma-separated")
    entries.append((selector, path))
  return entries


def load_pairs(spec, specs, cache_mb=1024):
  """{task name: PairedImages} for `data.pairs` (empty: none); each task takes the first entry
  naming it or its kind. ValueError for an entry that names no task or an SR task."""
  specs = _as_specs(specs)
  pairs = {}
  for selector, path in parse_pairs(spec):
    chosen = [s for s in specs if tasks_lib.selects(selector, s)]
    if not chosen:
      raise ValueError(f"data.pairs entry {selector}={path}: {selector!r} names none of the tasks "
                       f"{', '.join(s.name for s in specs)}")
    for s in chosen:
      if s.scale != 1:
        raise ValueError(f"data.pairs: task {s.name!r} changes the image size; paired training "
                         "serves scale-1 tasks only")
      if s.name not in pairs:
        pairs[s.name] = PairedImages(path, cache_mb * 2**20)
  return pairs


def sample_pair(pairs, seed, step, task_name, index, side):
  """Global sample `index` of a paired task at `step`: aligned (clean, degraded) uint8
  (side, side, 3) crops, one window, flip and rotation for both. A pure function of its
  arguments."""
  rng = np.random.default_rng([seed, step, tasks_lib.task_id(task_name, bits=32), index,
                               _SAMPLE_STREAM])
  degraded, clean = pairs[int(rng.integers(len(pairs)))]
  # The draws of a window of the two stacked channel-wise, without copying them: the same crops.
  window = _draw_window(rng, clean.shape, side)
  return _cut(clean, window, side), _cut(degraded, window, side)


def _as_specs(specs):
  return tuple(tasks_lib.get(s) if isinstance(s, str) else s for s in specs)


def _check(images, specs, schedule, seed, streaks):
  if schedule not in TASK_SCHEDULES:
    raise ValueError(f"schedule={schedule!r}; valid: {', '.join(TASK_SCHEDULES)}")
  if not specs:
    raise ValueError("no tasks given")
  if not len(images):
    raise ValueError("no training images")
  if seed < 0:
    raise ValueError(f"seed={seed} must be >= 0")
  if streaks is not None and not len(streaks):
    raise ValueError("streaks is empty; pass None to use procedural rain")


def batch_for_step(images, specs, patch_size, batch_size, seed, step, process_index=0,
                   process_count=1, schedule="all", streaks=None, pairs=None, probe_size=0,
                   first_sample=0):
  """This process's part of the global batch of `step`: {task name: uint8 (B_local, h, w, 3)}.

  `specs`: TaskSpecs (or task names) in config order. schedule 'all' gives every task; 'one'
  only task `task_for_step(seed, step, len(specs))`. With real `streaks` (uint8 (H, W) layers),
  derain tasks also get '<task>:streaks', uint8 (B_local, h, w) crops of them. Tasks in `pairs`
  ({task name: PairedImages}) get clean crops of their pairs and '<task>:input', the degraded ones.
  probe_size > 0 adds the probe batch (conflicts.batch_size): the global samples batch_size,
  batch_size + 1, ... of the same step (fresh crops, never trained on), under the same keys
  prefixed by `PROBE_PREFIX`. Samples are numbered from `first_sample`.
  """
  specs = _as_specs(specs)
  _check(images, specs, schedule, seed, streaks)
  indices = [first_sample + i for i in local_samples(batch_size, process_index, process_count)]
  if schedule == "one":
    specs = (specs[task_for_step(seed, step, len(specs))],)
  batch = {}
  for spec in specs:
    side = spec.hr_crop(patch_size)
    if pairs and spec.name in pairs:
      samples = [sample_pair(pairs[spec.name], seed, step, spec.name, i, side) for i in indices]
      batch[spec.name] = np.stack([clean for clean, _ in samples])
      batch[f"{spec.name}:input"] = np.stack([degraded for _, degraded in samples])
      continue
    task_streaks = streaks if spec.kind == "derain" else None
    samples = [sample_crop(images, seed, step, spec.name, i, side, task_streaks) for i in indices]
    batch[spec.name] = np.stack([crop for crop, _ in samples])
    if task_streaks is not None:
      batch[f"{spec.name}:streaks"] = np.stack([streak for _, streak in samples])
  if probe_size:
    probe = batch_for_step(images, specs, patch_size, probe_size, seed, step, process_index,
                           process_count, schedule, streaks, pairs,
                           first_sample=first_sample + batch_size)
    batch.update({PROBE_PREFIX + k: v for k, v in probe.items()})
  return batch


def load_streak_layers(folder):
  """RainTrainL-style real rain streak layers: every `rainstreak*` image under `folder`, as
  read-only uint8 (H, W) grey arrays (mean of the channels), sorted by path."""
  paths = [p for p in folder_lib.list_images(folder)
           if os.path.basename(p).lower().startswith("rainstreak")]
  if not paths:
    raise ValueError(f"no rain streak layers (rainstreak*.png ...) under {folder}")
  layers = []
  for path in paths:
    layer = np.round(folder_lib.read_rgb(path).mean(axis=-1)).astype(np.uint8)
    layer.setflags(write=False)
    layers.append(layer)
  return layers


def default_threads():
  return max(1, min(8, os.cpu_count() or 1))


def train_batches(images, specs, patch_size, batch_size, seed, start_step=0, num_steps=None,
                  process_index=0, process_count=1, schedule="all", streaks=None,
                  num_threads=None, prefetch=None, pairs=None, probe_size=None, step_offset=0):
  """Iterator of (step, batch) for steps start_step, start_step + 1, ... (num_steps of them, or
  forever), each batch as `batch_for_step` makes it for step + `step_offset` (data.step_offset:
  a fine-tune's data continues after its pre-training's steps); `step` is the run's own.

  Steps are built ahead by `num_threads` background threads (default: cores, at most 8) into a
  buffer of `prefetch` steps (default 2 x threads), in order; num_threads=0 builds them in the
  calling thread. Bad arguments raise here, not in a worker. `probe_size(step)`: the probe
  batch's images per task at `step` (the run's ProbePlan.probe_size; None: no probe batches).
  """
  specs = _as_specs(specs)
  _check(images, specs, schedule, seed, streaks)
  local_samples(batch_size, process_index, process_count)
  if step_offset < 0:
    raise ValueError(f"step_offset={step_offset} must be >= 0")
  build = functools.partial(batch_for_step, images, specs, patch_size, batch_size, seed,
                            process_index=process_index, process_count=process_count,
                            schedule=schedule, streaks=streaks, pairs=pairs)
  # The probe schedule is the run's (its steps); what a step draws is the data step's.
  make = lambda step: build(step=step + step_offset,
                            probe_size=probe_size(step) if probe_size else 0)
  stop = sys.maxsize if num_steps is None else start_step + num_steps
  num_threads = default_threads() if num_threads is None else num_threads
  if num_threads == 0:
    return ((step, make(step=step)) for step in range(start_step, stop))
  prefetch = 2 * num_threads if prefetch is None else prefetch
  dataset = grain.MapDataset.range(start_step, stop).map(lambda step: (int(step), make(step=step)))
  return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                        prefetch_buffer_size=prefetch)))


def measure_throughput(images, specs, patch_size=48, batch_size=8, seed=0, num_steps=50,
                       warmup_steps=5, **kwargs):
  """Crops per second (summed over tasks, streak crops not counted) that `train_batches` delivers
  to a consumer that does nothing else. `kwargs` go to `train_batches`."""
  batches = train_batches(images, specs, patch_size, batch_size, seed,
                          num_steps=warmup_steps + num_steps, **kwargs)
  for _ in range(warmup_steps):
    next(batches)
  count, start = 0, time.perf_counter()
  for _, batch in batches:
    count += sum(len(v) for k, v in batch.items() if ":" not in k)
  return count / (time.perf_counter() - start)
