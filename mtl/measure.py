"""Conflicts of a saved model: probe-step Gramians on fresh batches, without training."""
import jax
import jax.numpy as jnp
import numpy as np

from mtl import checkpoints, sharding
from mtl.data import pipeline
from mtl.models import ipt
from mtl import run_folder
from mtl.run_state import build
from mtl.step import make_step


def measure_conflicts(config, checkpoint, num_batches=8, first_step=10**7):
  """Per-leaf Gramians of a saved model on `num_batches` fresh batches, without training.

  Batches are those of steps first_step, first_step + 1, ... (far past any training step, so
  unseen crops and degradations). Returns (steps, half-split gramians (N, L, 2T, 2T), layer
  names in network order, task names, the checkpoint's step).
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
    state = run_folder.state_from_params(run, params, first_step)
    probe = jax.jit(make_step(run.model, config, run.optimizer, run.model.task_names, run.plan,
                               probe=True))
    images = sources.open_images(config.data, "train")
    pairs = pipeline.load_pairs(config.data.get("pairs", ""), run.model.specs, config.data.cache_mb)
    layer_names, order = ipt.body_layer_order(params["body"])
    steps, grams = [], []
    for step in range(first_step, first_step + num_batches):
      batch = pipeline.batch_for_step(images, run.model.specs, config.model.patch_size,
                                      config.data.batch_size, config.seed, step,
                                      jax.process_index(), jax.process_count(), pairs=pairs)
      _, _, g = probe(state.replace(step=jnp.asarray(step, jnp.int32)),
                      sharding.to_global(batch, run.mesh))
      steps.append(step)
      grams.append(np.asarray(jax.device_get(g))[np.asarray(order)])
  return (np.asarray(steps, np.int64), np.stack(grams).astype(np.float32),
          layer_names, list(run.model.task_names), int(ckpt_step))
