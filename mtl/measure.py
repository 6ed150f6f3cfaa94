"""Conflicts of a saved model: probe-batch Gramians on fresh batches, without training."""
import functools
import time

import jax
import numpy as np

from mtl import checkpoints, files, gramians, sharding, stats
from mtl.data import pipeline
from mtl.models import ipt
from mtl.run_state import build
from mtl.step import probe_gramians


def widest_halfwidth(G2, task_names, level=0.95):
  """(half-width, pair name) of the widest whole-body corrected-cosine interval over the probe
  batches so far (G2: (N, 2T, 2T), the whole body's half-split Gramians; fresh batches, so
  stats' 'independent' method); inf for a pair that has no interval yet (too few batches, or
  not measurable)."""
  intervals = stats.corrected_cosine_intervals(G2, level, method="independent")
  widths = [(iv.high - iv.low) / 2 if np.isfinite(iv.high - iv.low) else np.inf
            for iv in intervals]
  k = int(np.argmax(widths))
  return float(widths[k]), gramians.pair_names(task_names)[k]


def batches_needed(num_batches, widest, halfwidth):
  """About how many batches bring a half-width `widest` after `num_batches` to `halfwidth`: an
  interval narrows as 1/sqrt(batches). None while there is no interval (widest = inf)."""
  return int(np.ceil(num_batches * (widest / halfwidth) ** 2)) if np.isfinite(widest) else None


def noisy_tasks(G2, task_names):
  """[(task, pooled same-task agreement)] of the tasks whose half-batch gradients are mostly
  noise (agreement < 0.5, the signal's share of their squared norm; NaN counts too) over the
  probe batches (G2: (N, 2T, 2T), whole body). There a larger probe batch narrows the corrected
  cosines faster per image than more batches: it raises the agreement, the denominator."""
  agree = gramians.same_task_agreement(np.asarray(G2, np.float64).sum(0))
  return [(t, float(a)) for t, a in zip(task_names, agree) if not a >= 0.5]


_PROBE_SEED_TAG = 3  # SeedSequence ignores trailing zeros; the tag keeps [seed, step] its own


def probe_seed(seed, step):
  """The data and degradation seed of a checkpoint's fresh probe batches: a pure function of the
  run's seed and the checkpoint's step, so the batches of two checkpoints of a run (and of two
  runs) are independent, and a measurement repeats exactly."""
  return int(np.random.SeedSequence([seed, step, _PROBE_SEED_TAG]).generate_state(1)[0] >> 1)


def measure_conflicts(config, checkpoint, num_batches, batch_size, first_step=10**7,
                      halfwidth=0.0, max_batches=0, log=print, step=None, log_seconds=10.0):
  """Per-leaf Gramians of a saved model (its checkpoint of `step`, default the latest) on fresh
  probe batches of `batch_size` images per task, without training: `num_batches`, then with
  `halfwidth` > 0 more, one at a time, until every pair's whole-body corrected-cosine 95%
  interval is within +-halfwidth or `max_batches` are measured (progress through `log` every
  `log_seconds`, from the second batch: the first compiles; stopping at the first batch whose
  intervals are narrow enough: a fixed-width sequential interval, whose coverage tends to the
  nominal level as the target narrows).

  Batches are those of steps first_step, first_step + 1, ... (far past any training step) under
  the seed `probe_seed(config.seed, checkpoint step)`: unseen crops and degradations, others for
  every checkpoint. Returns (steps, half-split gramians (N, L, 2T, 2T), layer names in network
  order, task names, the checkpoint's step).
  """
  from mtl.data import sources
  if len(config.tasks) < 2:
    raise ValueError(f"tasks={list(config.tasks)}: conflicts need two or more tasks")
  config = config.copy_and_resolve_references()
  config.regime, config.schedule = "joint", "all"
  config.data.batch_size = batch_size  # the run's training batch is not drawn here (nor checked)
  run = build(config)
  with jax.set_mesh(run.mesh):
    abstract = run.abstract_state
    params, ckpt_step = checkpoints.restore_params(checkpoint,
                                                   abstract.params, step)
    config.seed = probe_seed(config.seed, ckpt_step)
    sharding.check_batch(run.mesh, batch_size, "the probe batch size")
    if batch_size % 2:
      raise ValueError(f"probe batch size {batch_size} is odd; it is split into two equal halves")
    probe = jax.jit(functools.partial(probe_gramians, model=run.model, config=config,
                                      names=run.model.task_names))
    images = sources.open_images(config.data, "train")
    pairs = pipeline.load_pairs(config.data.get("pairs", ""), run.model.specs, config.data.cache_mb)
    streaks = (pipeline.load_streak_layers(config.degrade.rain.streak_dir)  # as training had
               if config.degrade.rain.streak_dir else None)
    layer_names, order = ipt.body_layer_order(params["body"])
    names = list(run.model.task_names)
    limit = max(num_batches, max_batches) if halfwidth > 0 else num_batches
    steps, grams, body, shown = [], [], [], time.monotonic()
    started = None  # after the first batch, which compiles: the rate is the batches'
    for step in range(first_step, first_step + limit):
      batch = pipeline.batch_for_step(images, run.model.specs, config.model.patch_size,
                                      batch_size, config.seed, step, jax.process_index(),
                                      jax.process_count(), streaks=streaks, pairs=pairs)
      g = probe(params, sharding.to_global(batch, run.mesh), np.int32(step))
      steps.append(step)
      grams.append(np.asarray(jax.device_get(g))[np.asarray(order)])
      body.append(grams[-1].sum(0, dtype=np.float64))
      need, target = num_batches, ""
      if halfwidth > 0 and len(steps) >= num_batches:
        widest, pair = widest_halfwidth(np.stack(body), names)
        if widest <= halfwidth:
          break
        need = min(limit, batches_needed(len(steps), widest, halfwidth) or limit)
        target = f" | widest +-{widest:.3f} ({pair}), target +-{halfwidth:g}"
      if started is None:
        started = time.monotonic()
      elif time.monotonic() - shown >= log_seconds and len(steps) < limit:  # rate, ETA
        shown, rate = time.monotonic(), (len(steps) - 1) / (time.monotonic() - started)
        log(f"batch {len(steps)}/{need if not target else limit} | {rate:.2f} batches/s"
            f"{target} | ETA {files.format_duration(max(0, need - len(steps)) / rate)}",
            flush=True)
  return (np.asarray(steps, np.int64), np.stack(grams).astype(np.float32),
          layer_names, names, int(ckpt_step))
