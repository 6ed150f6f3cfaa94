"""A run: its config checked, its state built (fresh, resumed or fine-tuned), and the loop that
trains, checkpoints, probes conflicts, logs and evaluates it (`train_and_evaluate`).

The step itself is mtl.step; the optimizer mtl.optim.
"""
import dataclasses
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mtl import aggregators, checkpoints, conflicts, io, optim, sharding, tasks
from mtl.data import pipeline
from mtl.models import ipt
from mtl.step import TrainState, make_step

RUN_REGIMES = ("scratch", "joint", "finetune")


# ----------------------------------------------------------------------------- set-up


def validate(config):
  """Check a config before anything is built or written; one clear line per problem."""
  specs = tasks.get_all(config.tasks)
  if config.regime not in RUN_REGIMES:
    raise ValueError(f"regime={config.regime!r}; valid: {', '.join(RUN_REGIMES)}")
  if config.schedule not in pipeline.TASK_SCHEDULES:
    raise ValueError(f"schedule={config.schedule!r}; valid: {', '.join(pipeline.TASK_SCHEDULES)}")
  if config.regime in ("scratch", "finetune") and len(specs) != 1:
    raise ValueError(f"regime={config.regime!r} trains one task, got tasks={list(config.tasks)}; "
                     "use regime='joint' for several tasks")
  if config.regime == "finetune" and not config.init_from:
    raise ValueError("regime='finetune' needs init_from=<workdir of a joint run>")
  if config.total_steps < 1:
    raise ValueError(f"total_steps={config.total_steps} must be >= 1")
  if config.optim.schedule not in optim.LR_SCHEDULES:
    raise ValueError(f"optim.schedule={config.optim.schedule!r}; valid: {', '.join(optim.LR_SCHEDULES)}")
  ipt.ModelConfig.from_config(config.model, config.precision)
  aggregators.check_config(config.get("mtl"), len(specs), config.schedule)
  return specs


def probing_enabled(config):
  """Conflicts are measured only where tasks share parameters within one step."""
  if config.conflicts.every <= 0:
    return False
  if config.regime == "scratch" or len(config.tasks) < 2:
    logging.warning("conflicts.every=%d ignored: a single-task run has no task pairs to compare; "
                    "nothing is measured", config.conflicts.every)
    return False
  if config.schedule == "one":
    logging.warning("conflicts.every=%d ignored: with schedule='one' each step sees one task, so "
                    "no two task gradients are taken at the same parameters; use schedule='all' "
                    "to measure conflicts", config.conflicts.every)
    return False
  return True


# ----------------------------------------------------------------------------- state


@dataclasses.dataclass
class Run:
  """Everything the loop needs, built once from a config."""
  config: Any
  model: ipt.IPT
  mesh: Any
  optimizer: Any
  schedule: Any
  state_shardings: Any

  @property
  def abstract_state(self):
    abstract = jax.eval_shape(lambda: self._fresh_state(jax.random.key(0)))
    return jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
        self.state_shardings)

  def _fresh_state(self, key):
    params = self.model.init(key)
    extra, mtl_state = aggregators.init_step_state(  # config.mtl's trained params, carried state
        self.config.get("mtl"), len(self.model.task_names),
        len(jax.tree_util.tree_leaves(params["body"])))
    params = dict(params, loss_weighting=extra) if extra else params
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.optimizer.init(params), mtl_state=mtl_state or None)

  def init_state(self):
    """Fresh state, created directly with its shardings (never whole on one device)."""
    init = jax.jit(self._fresh_state, out_shardings=self.state_shardings)
    return init(jax.random.key(self.config.seed))


def build(config):
  specs = validate(config)
  model_cfg = ipt.ModelConfig.from_config(config.model, config.precision)
  model = ipt.IPT(model_cfg, specs)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch(mesh, config.data.batch_size)
  optimizer, schedule = optim.make_optimizer(config.optim, config.total_steps)
  run = Run(config, model, mesh, optimizer, schedule, None)
  abstract = jax.eval_shape(lambda: run._fresh_state(jax.random.key(0)))
  run.state_shardings = jax.tree_util.tree_map(
      lambda x: sharding.leaf_sharding(mesh, x.shape), abstract)
  return run


def finetune_params(run, init_from):
  """Params for a fine-tune: body (and the target's head, tail, query) from a joint run."""
  import json
  init_from = os.path.abspath(init_from)
  config_path = os.path.join(init_from, checkpoints.CONFIG_FILE)
  if not os.path.exists(config_path):
    raise ValueError(f"init_from={init_from} holds no {checkpoints.CONFIG_FILE}; "
                     "point it to the workdir of a joint run")
  with open(config_path) as f:
    source_cfg = json.load(f)
  target = run.model.task_names[0]
  source_model = ipt.IPT(ipt.ModelConfig.from_config(source_cfg["model"], run.config.precision),
                         tasks.get_all(source_cfg["tasks"]))
  if dataclasses.replace(source_model.cfg, compute_dtype="float32") != dataclasses.replace(
      run.model.cfg, compute_dtype="float32"):
    raise ValueError(f"init_from={init_from} has a different model size than this config; "
                     "fine-tune with the same model fields")
  abstract = jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding.replicated(run.mesh)),
      source_model.abstract_params())
  source, step = checkpoints.restore_params(checkpoints.checkpoint_dir_of(init_from), abstract)
  fresh = run.init_state()
  params = dict(fresh.params, body=source["body"])
  if target in source_model.task_names:  # keep the target task's own head, query and tail
    for group in ("heads", "queries", "tails"):
      params[group] = {target: source[group][target]}
  else:
    logging.warning("task %s was not in the joint run (tasks %s): its head and tail start fresh",
                    target, source_model.task_names)
  logging.info("fine-tuning %s from %s (step %d)", target, init_from, step)
  params = jax.device_put(params, run.state_shardings.params)
  return fresh.replace(params=params, opt_state=jax.jit(
      run.optimizer.init, out_shardings=run.state_shardings.opt_state)(params))


# ----------------------------------------------------------------------------- the loop


class _Preemption:
  """SIGTERM (preemption notice) -> checkpoint at the next step boundary, then exit.

  With several processes all must stop after the same step (saving is collective), so the
  notice goes through jax's preemption sync, whose SIGTERM handler jax.distributed installs:
  a SIGTERM to any process stops every process after one agreed step.
  """

  def __init__(self):
    self.requested = False
    self.synced = jax.process_count() > 1

  def __enter__(self):
    if not self.synced:  # a Python handler would replace jax's
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint and stopping")
    self.requested = True

  def check(self, step):
    """Whether to stop after `step`; every process calls it once per step, in order."""
    if self.synced and not self.requested:
      from jax.experimental import multihost_utils
      if multihost_utils.reached_preemption_sync_point(step):
        logging.warning("preemption notice: saving a checkpoint at step %d and stopping", step)
        self.requested = True
    return self.requested

  def __exit__(self, *exc):
    if not self.synced:
      signal.signal(signal.SIGTERM, self._previous)


class NonFiniteLoss(RuntimeError):
  pass


def train_and_evaluate(config, workdir):
  """Train (or resume) the run in `workdir`, evaluate it, and return its results dict."""
  from mtl import evaluate, events, progress as progress_lib  # the loop's host-side company
  from mtl.data import sources

  run = build(config)
  probe_every = config.conflicts.every if probing_enabled(config) else 0
  is_writer = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  if is_writer:
    checkpoints.check_or_write_config(workdir, config.to_dict())
  images = sources.open_images(config.data, "train")
  streaks = (pipeline.load_streak_layers(config.degrade.rain.streak_dir)
             if config.degrade.rain.streak_dir else None)
  testsets = evaluate.load_testsets(config)
  pairs = pipeline.load_pairs(config.data.get("pairs", ""), run.model.specs, config.data.cache_mb)

  mngr = checkpoints.manager(workdir, config.keep_checkpoints)
  with jax.set_mesh(run.mesh):
    if mngr.latest_step() is not None:
      state = checkpoints.restore(mngr, run.abstract_state)
      print(f"resumed {workdir} at step {int(state.step)}", flush=True)
    elif config.regime == "finetune":
      state = finetune_params(run, config.init_from)
    else:
      state = run.init_state()
    start = int(state.step)
    names = run.model.task_names
    layer_names, order = ipt.body_layer_order(state.params["body"])
    if is_writer and probe_every:
      conflicts.truncate_after(workdir, start - 1)  # steps >= start will be probed again
    affinity_every, affinity_fn, affinity_buffer = _affinity_setup(run, config, workdir, start,
                                                                   is_writer)

    shardings = (run.state_shardings, None)
    plain = {}
    def plain_step(task_names):
      if task_names not in plain:
        plain[task_names] = jax.jit(make_step(run.model, config, run.optimizer, task_names),
                                    out_shardings=shardings, donate_argnums=0)
      return plain[task_names]
    probe = jax.jit(make_step(run.model, config, run.optimizer, names, probe=True),
                    out_shardings=shardings + (None,), donate_argnums=0)

    writer = events.Writer(os.path.join(workdir, "events"), enabled=is_writer)
    progress = progress_lib.Progress(config.total_steps, start, every=config.log_every)
    batches = pipeline.train_batches(
        images, run.model.specs, config.model.patch_size, config.data.batch_size, config.seed,
        start_step=start, num_steps=config.total_steps - start,
        process_index=jax.process_index(), process_count=jax.process_count(),
        schedule=config.schedule, streaks=streaks, pairs=pairs)
    probe_buffer, pending = [], []
    step, started = start, time.time()
    try:
      with _Preemption() as preemption:
        for step, local_batch in batches:
          batch = sharding.to_global(local_batch, run.mesh)
          task_names = tuple(n for n in names if n in local_batch)
          if affinity_every and step % affinity_every == 0:  # before the step donates `state`
            affinity_buffer.append((step, affinity_fn(state.params, batch, state.step,
                                                      _affinity_lr(config, run.schedule, step))))
          if probe_every and step % probe_every == 0:
            state, metrics, grams = probe(state, batch)
            probe_buffer.append((step, grams[np.asarray(order)]))
          else:
            state, metrics = plain_step(task_names)(state, batch)
          pending.append((step, metrics))
          done = step + 1
          stop = preemption.check(done)  # on every step: all processes must ask in step
          checkpoint_now = (done % config.checkpoint_every == 0 or done == config.total_steps
                            or stop)
          if done % config.log_every == 0 or checkpoint_now:
            _log_metrics(pending, writer, progress, run.schedule, done)
            pending = []
          if checkpoint_now:
            if not bool(_all_finite(state.params)):
              raise NonFiniteLoss(f"non-finite parameters after step {step}: training stopped; "
                                  "the last good checkpoint is kept. Lower optim.lr or set "
                                  "optim.grad_clip")
            _flush_probes(workdir, probe_buffer, layer_names, names, is_writer)
            probe_buffer = []
            _flush_affinity(workdir, affinity_buffer, names, is_writer)
            affinity_buffer = []
            checkpoints.save(mngr, done, state, force=True)
          if config.eval_every and done % config.eval_every == 0 and done < config.total_steps:
            evaluate.evaluate(run.model, state.params, config, testsets, workdir, done, writer)
          if preemption.requested:
            break
    finally:  # a save in flight completes even when training stops on an error
      mngr.wait_until_finished()
      mngr.close()
    final_step = int(state.step)
    if is_writer:
      _record_compute(workdir, run, config, state, probe if probe_every else plain_step(names),
                      final_step, time.time() - started)
    if preemption.requested and final_step < config.total_steps:
      writer.close()
      raise SystemExit(f"preempted: checkpoint saved at step {final_step} in {workdir}; "
                       "run the same command to resume")
    results = evaluate.evaluate(run.model, state.params, config, testsets, workdir, final_step,
                                writer, final=True)
    if is_writer and probe_every:
      from mtl import plots
      plots.draw_and_log(conflicts.load(workdir), os.path.join(workdir, "conflicts"), writer,
                         ema_beta=config.conflicts.ema_beta)
    writer.close()
  return results


@jax.jit
def _all_finite(tree):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def _record_compute(workdir, run, config, state, step_fn, final_step, seconds):
  """<workdir>/compute.json: steps, images seen, XLA-counted training FLOPs, wall time."""
  import json
  path = os.path.join(workdir, "compute.json")
  previous = json.load(open(path)) if os.path.exists(path) else {"wall_seconds": 0.0}
  per_step_images = config.data.batch_size * (len(config.tasks) if config.schedule == "all" else 1)
  specs = run.model.specs if config.schedule == "all" else run.model.specs[:1]
  abstract_batch = {s.name: jax.ShapeDtypeStruct(
      (config.data.batch_size,) + (s.hr_crop(config.model.patch_size),) * 2 + (3,), jnp.uint8,
      sharding=sharding.batch_sharding(run.mesh)) for s in specs}
  cost = step_fn.lower(run.abstract_state, abstract_batch).cost_analysis() or {}
  flops = float(cost.get("flops", float("nan")))
  io.write_json(path, {
      "steps": final_step, "images_seen": final_step * per_step_images,
      "flops_per_step": flops, "train_flops": flops * final_step,
      "wall_seconds": previous["wall_seconds"] + seconds})


def _log_metrics(pending, writer, progress, schedule, done):
  """Fetch pending step metrics, stop on a non-finite loss, write TensorBoard and progress."""
  if not pending:
    return
  fetched = jax.device_get([m for _, m in pending])
  for (step, _), metrics in zip(pending, fetched):
    total = float(metrics["loss/total"])
    if not np.isfinite(total) or not np.isfinite(float(metrics["grad_norm"])):
      raise NonFiniteLoss(f"non-finite loss ({total}) at step {step}: training stopped; the last "
                          "good checkpoint is kept. Lower optim.lr or set optim.grad_clip")
  last = {k: float(v) for k, v in fetched[-1].items()}
  mean = {k: float(np.mean([m[k] for m in fetched if k in m]))
          for k in set().union(*fetched)}
  mean["lr"] = float(schedule(done - 1))
  line = progress.update(done, {"loss": last["loss/total"]})
  if line and jax.process_index() == 0:
    print(line, flush=True)
  mean["steps_per_sec"] = progress.rate()
  writer.scalars(done, {f"train/{k}": v for k, v in mean.items()})


def _flush_probes(workdir, probe_buffer, layer_names, task_names, is_writer):
  if not probe_buffer or not is_writer:
    return
  steps = np.array([s for s, _ in probe_buffer], np.int64)
  grams = np.stack(jax.device_get([g for _, g in probe_buffer])).astype(np.float32)
  conflicts.append(workdir, steps, grams, layer_names, list(task_names))


def _affinity_setup(run, config, workdir, start, is_writer):
  """config.mtl.affinity_every: (every, jitted TAG affinity, buffer); (0, None, []) when off."""
  from mtl.conflicts import affinity
  every = config.get("mtl", {}).get("affinity_every", 0)
  if every <= 0 or len(config.tasks) < 2 or config.schedule != "all":
    return 0, None, []
  if is_writer:
    affinity.truncate_after(workdir, start - 1)  # steps >= start will be measured again
  return every, jax.jit(affinity.make_affinity(run.model, config, run.model.task_names)), []


def _affinity_lr(config, schedule, step):
  lr = config.mtl.get("affinity_lr", 0.0)
  return jnp.asarray(lr if lr > 0 else schedule(step), jnp.float32)


def _flush_affinity(workdir, buffer, task_names, is_writer):
  from mtl.conflicts import affinity
  if not buffer or not is_writer:
    return
  steps = np.array([s for s, _ in buffer], np.int64)
  affinity.append(workdir, steps, np.stack(jax.device_get([z for _, z in buffer])),
                  list(task_names))


# ----------------------------------------------------------------------------- analysis


def measure_conflicts(config, checkpoint, num_batches=8, first_step=10**7):
  """Per-leaf Gramians of a saved model on `num_batches` fresh batches, without training.

  Batches are those of steps first_step, first_step + 1, ... (far past any training step, so
  unseen crops and degradations). Returns (steps, gramians (N, L, T, T), layer names in
  network order, task names, the checkpoint's step).
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
    state = TrainState(step=jnp.asarray(first_step, jnp.int32), params=params,
                       opt_state=jax.jit(run.optimizer.init,
                                         out_shardings=run.state_shardings.opt_state)(params))
    probe = jax.jit(make_step(run.model, config, run.optimizer, run.model.task_names, probe=True))
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
