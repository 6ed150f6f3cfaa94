"""Conflicts of a saved model: probe-batch Gramians on fresh batches, without training."""
import functools

import jax
import numpy as np

from mtl import checkpoints, sharding
from mtl.data import pipeline
from mtl.models import ipt
from mtl.run_state import build
from mtl.step import probe_gramians


def probe_batch_size(config, batch_size=0):
  """The probe batch a measurement uses: `batch_size`, else the config's conflicts.batch_size,
  else its training batch size (images per task)."""
  return batch_size or config.conflicts.get("batch_size", 0) or config.data.batch_size


def measure_conflicts(config, checkpoint, num_batches=16, batch_size=0, first_step=10**7):
  """Per-leaf Gramians of a saved model on `num_batches` fresh probe batches of
  `probe_batch_size(config, batch_size)` images per task, without training.

  Batches are those of steps first_step, first_step + 1, ... (far past any training step, so
  unseen crops and degradations). Returns (steps, half-split gramians (N, L, 2T, 2T), layer
  names in network order, task names, the checkpoint's step, the probe batch size).
  """
  from mtl.data import sources
  if len(config.tasks) < 2:
    raise ValueError(f"tasks={list(config.tasks)}: conflicts need two or more tasks")
  config = config.copy_and_resolve_references()
  config.regime, config.schedule = "joint", "all"
  run = build(config)
  with jax.set_mesh(run.mesh):
    abstract = run.abstract_state
    params, ckpt_step = checkpoints.restore_params(checkpoints.checkpoint_dir_of(checkpoint),
                                                   abstract.params)
    size = probe_batch_size(config, batch_size)
    sharding.check_batch(run.mesh, size, "the probe batch size")
    if size % 2:
      raise ValueError(f"probe batch size {size} is odd; it is split into two equal halves")
    probe = jax.jit(functools.partial(probe_gramians, model=run.model, config=config,
                                      names=run.model.task_names))
    images = sources.open_images(config.data, "train")
    pairs = pipeline.load_pairs(config.data.get("pairs", ""), run.model.specs, config.data.cache_mb)
    layer_names, order = ipt.body_layer_order(params["body"])
    steps, grams = [], []
    for step in range(first_step, first_step + num_batches):
      batch = pipeline.batch_for_step(images, run.model.specs, config.model.patch_size, size,
                                      config.seed, step, jax.process_index(),
                                      jax.process_count(), pairs=pairs)
      g = probe(params, sharding.to_global(batch, run.mesh), np.int32(step))
      steps.append(step)
      grams.append(np.asarray(jax.device_get(g))[np.asarray(order)])
  return (np.asarray(steps, np.int64), np.stack(grams).astype(np.float32),
          layer_names, list(run.model.task_names), int(ckpt_step), size)
