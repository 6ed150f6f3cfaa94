"""A run: its config checked, its state built (fresh, resumed or fine-tuned), and the loop that
trains, checkpoints, probes conflicts, logs and evaluates it (`train_and_evaluate`).

Everything a run needs is checked (`validate`, `prepare`) before anything is written; a run
holds `<workdir>/train.lock` while it works. The step itself is mtl.step; the optimizer mtl.optim.
"""
import dataclasses
import json
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mtl import checkpoints, conflicts, io, optim, sharding, tasks
from mtl.data import pipeline
from mtl.models import ipt
from mtl.step import TrainState, make_step

RUN_REGIMES = ("scratch", "joint", "finetune")
PREEMPTED_EXIT = 75  # EX_TEMPFAIL: stopped on SIGTERM or Ctrl-C after a checkpoint; run again
LOSS_UNITS = "loss: L1 on the [0, 255] scale, per task (total = their sum); /255 for BasicSR's [0, 1]"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"


# ----------------------------------------------------------------------------- set-up


def normalize(config):
  """A copy of `config` whose tuple fields given as 'a,b' on the command line are split.

  ml_collections reads --config.tasks=sr_x2,derain as the one-element tuple ('sr_x2,derain');
  every tuple-of-strings field is split on ',' here (numbers already parse: length=8,24).
  """
  config = config.copy_and_resolve_references()

  def visit(node):
    for key in list(node.keys()):
      value = node[key]
      if hasattr(value, "keys"):
        visit(value)
      elif isinstance(value, tuple) and any(isinstance(v, str) and "," in v for v in value):
        node[key] = tuple(p.strip() for v in value
                          for p in (v.split(",") if isinstance(v, str) else [v])
                          if not isinstance(p, str) or p.strip())
  visit(config)
  return config


def _positive(name, value):
  if not value > 0:
    raise ValueError(f"{name}={value} must be > 0")


def validate(config):
  """Check a config before anything is built or written; one clear line per problem.

  Besides the fields, it checks that the folders the config names exist (data folder, eval
  sets, rain streaks, init_from): a run that would fail there must fail before it starts.
  """
  from mtl import evaluate
  names = list(config.tasks)
  if any(not isinstance(n, str) or not n.strip() for n in names):
    raise ValueError(f"tasks={names} holds an empty name; list task names such as sr_x2,derain")
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise ValueError(f"task(s) listed twice in tasks={names}: {', '.join(map(repr, twice))}")
  specs = tasks.get_all(names)
  if config.regime not in RUN_REGIMES:
    raise ValueError(f"regime={config.regime!r}; valid: {', '.join(RUN_REGIMES)}")
  if config.schedule not in pipeline.TASK_SCHEDULES:
    raise ValueError(f"schedule={config.schedule!r}; valid: {', '.join(pipeline.TASK_SCHEDULES)}")
  if config.regime in ("scratch", "finetune") and len(specs) != 1:
    raise ValueError(f"regime={config.regime!r} trains one task, got tasks={list(config.tasks)}; "
                     "use regime='joint' for several tasks")
  if config.regime == "finetune" and not config.init_from:
    raise ValueError("regime='finetune' needs init_from=<workdir of a joint or scratch run>")
  if config.total_steps < 1:
    raise ValueError(f"total_steps={config.total_steps} must be >= 1")
  for field, value in (("checkpoint_every", config.checkpoint_every),
                       ("log_every", config.log_every), ("keep_checkpoints", config.keep_checkpoints),
                       ("data.batch_size", config.data.batch_size)):
    if value < 1:
      raise ValueError(f"{field}={value} must be >= 1")
  if config.eval_every < 0:
    raise ValueError(f"eval_every={config.eval_every} must be >= 0 (0: at the end only)")
  _positive("optim.lr", config.optim.lr)
  if config.optim.schedule not in optim.LR_SCHEDULES:
    raise ValueError(f"optim.schedule={config.optim.schedule!r}; valid: {', '.join(optim.LR_SCHEDULES)}")
  for name in ("n_feats", "patch_size", "patch_dim", "num_heads", "num_encoder_layers",
               "num_decoder_layers"):
    if config.model[name] < 1:
      raise ValueError(f"model.{name}={config.model[name]} must be >= 1")
  ipt.ModelConfig.from_config(config.model, config.precision)
  overlap, patch = config.eval.tile_overlap, config.model.patch_size
  if not 0 <= overlap < patch:
    raise ValueError(f"eval.tile_overlap={overlap} must be in [0, model.patch_size={patch}) "
                     "(tiles of patch_size pixels overlapping by it)")
  for name in ("tile_batch", "samples"):
    if config.eval[name] < 1:
      raise ValueError(f"eval.{name}={config.eval[name]} must be >= 1")
  if config.data.source == "folder" and config.data.folder and not os.path.isdir(
      config.data.folder):
    raise FileNotFoundError(f"data.folder={config.data.folder} is not a folder")
  for set_name, _, path, _ in evaluate.parse_sets(config.eval.sets):
    if path is not None and not os.path.isdir(path):
      raise FileNotFoundError(f"eval.sets: {set_name}={path} is not a folder")
  streaks = config.degrade.rain.streak_dir
  if streaks and not os.path.isdir(streaks):
    raise FileNotFoundError(f"degrade.rain.streak_dir={streaks} is not a folder")
  if config.regime == "finetune":
    source_run(config.init_from)
  if _probes_pairs(config) and config.data.batch_size % 2:
    raise ValueError(f"data.batch_size={config.data.batch_size} is odd; conflict probes split "
                     "each task's sub-batch into two equal halves (the noise floor): use an even "
                     "batch size, or conflicts.every=0")
  return specs


def _probes_pairs(config):
  return (config.conflicts.every > 0 and config.regime != "scratch" and len(config.tasks) >= 2
          and config.schedule != "one")


def source_run(init_from):
  """The config dict of the run `init_from` names; ValueError unless it is a run with a checkpoint."""
  path = os.path.join(init_from, checkpoints.CONFIG_FILE)
  if not os.path.isdir(init_from):
    raise FileNotFoundError(f"init_from={init_from} is not a folder; point it to a run's workdir")
  if not os.path.exists(path) or checkpoints.latest_saved_step(init_from) is None:
    raise ValueError(f"init_from={init_from} is not a run with a checkpoint (no "
                     f"{checkpoints.CONFIG_FILE} or no saved step); point it to a run's workdir")
  return io.read_json(path)


def probing_enabled(config):
  """Conflicts are measured only where tasks share parameters within one step."""
  if config.conflicts.every <= 0:
    return False
  if config.regime == "scratch" or len(config.tasks) < 2:
    return False  # one task: no pair to compare (the banner says conflicts are off)
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
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.optimizer.init(params))

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
  """(state, description) for a fine-tune: the body (and the target's head, tail and query when
  the source trained the target task) from a run: a joint run, or a scratch run of one task."""
  init_from = os.path.abspath(init_from)
  source_cfg = source_run(init_from)
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
  kind = f"a {source_cfg.get('regime', 'joint')} run of {','.join(source_model.task_names)}"
  if target in source_model.task_names:  # keep the target task's own head, query and tail
    for group in ("heads", "queries", "tails"):
      params[group] = {target: source[group][target]}
    kept = f"body, {target}'s head, query and tail"
  else:
    kept = f"body only ({target} was not trained there: its head and tail start fresh)"
  params = jax.device_put(params, run.state_shardings.params)
  state = fresh.replace(params=params, opt_state=jax.jit(
      run.optimizer.init, out_shardings=run.state_shardings.opt_state)(params))
  return state, f"fine-tuned from {init_from} ({kind}, step {step}): {kept}"


# ----------------------------------------------------------------------------- the loop


class _Preemption:
  """SIGTERM (preemption notice) or Ctrl-C -> checkpoint at the next step boundary, then exit.

  With several processes all must stop after the same step (saving is collective), so the
  notice goes through jax's preemption sync, whose SIGTERM handler jax.distributed installs:
  a SIGTERM to any process stops every process after one agreed step (launch/local.py turns
  Ctrl-C into SIGTERM). One process: SIGTERM and the first Ctrl-C ask to stop; a second
  Ctrl-C interrupts at once (KeyboardInterrupt; the last checkpoint is kept).
  """

  def __init__(self):
    self.requested = False
    self.synced = jax.process_count() > 1

  def __enter__(self):
    self._previous = {}
    if not self.synced:  # a Python handler would replace jax's
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    print(f"{name} received: saving a checkpoint at the next step and stopping"
          + (" (Ctrl-C again: stop at once)" if signum == signal.SIGINT else ""), flush=True)
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
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class NonFiniteLoss(RuntimeError):
  pass


class Preempted(Exception):
  """Stopped on SIGTERM or Ctrl-C after saving a checkpoint; exit PREEMPTED_EXIT."""


def count_params(model):
  """{group: parameter count} for heads, body, queries, tails and 'total'."""
  counts = {group: int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
            for group, tree in model.abstract_params().items()}
  counts["total"] = sum(counts.values())
  return counts


def _millions(n):
  return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


@dataclasses.dataclass
class Setup:
  """What `prepare` found: the run, its workdir's state, and what a start would do."""
  run: Run
  workdir: str
  latest_step: Any        # the newest saved checkpoint step, or None
  finished: Any           # the saved results of a finished run, or None
  probe_every: int

  def artifacts(self):
    names = ["config.json", LOG_FILE, METRICS_FILE, "checkpoints/", "events/", "conflicts/",
             "compute.json", "results.json", "train.lock"]
    return {n: os.path.join(self.workdir, n) for n in names}

  def start_kind(self):
    if self.latest_step is not None:
      return f"resuming at step {self.latest_step}"
    if self.run.config.regime == "finetune":
      return f"fresh, fine-tuning from {self.run.config.init_from}"
    return "fresh"

  def banner(self):
    config, run = self.run.config, self.run
    counts = count_params(run.model)
    mesh = " x ".join(f"{k}={v}" for k, v in run.mesh.shape.items())
    devices = jax.devices()
    conflicts_part = (f"conflicts every {self.probe_every} steps" if self.probe_every
                      else "conflicts off")
    return (f"run: {config.regime} {','.join(config.tasks)} | {_millions(counts['total'])} "
            f"parameters | {len(devices)} {devices[0].platform} device(s), mesh {mesh} | "
            f"batch {config.data.batch_size}/task, {config.total_steps} steps, lr "
            f"{config.optim.lr:g} | {conflicts_part} | workdir {self.workdir} "
            f"({self.start_kind()}) | {LOSS_UNITS}")

  def describe(self):
    """The dry run's text: resolved config, parameters per group, mesh, artifact paths."""
    counts = count_params(self.run.model)
    lines = ["config:"] + [f"  {k} = {v!r}" for k, v in sorted(
        io.flatten(self.run.config.to_dict()).items())] + ["",
             "parameters: " + ", ".join(f"{g} {counts[g]:,}" for g in
                                        ("heads", "body", "queries", "tails", "total")),
             "mesh: " + ", ".join(f"{k}={v}" for k, v in self.run.mesh.shape.items())
             + f" over {self.run.mesh.devices.size} {jax.devices()[0].platform} device(s)",
             f"workdir: {self.workdir} ({self.start_kind() if not self.finished else 'finished'})"]
    lines += [f"  {name:<14} {path}" for name, path in self.artifacts().items()]
    lines.append(self.banner())
    return "\n".join(lines)


def check_workdir(workdir):
  """The absolute workdir; ValueError (one line) if it is a file or cannot be created/written."""
  workdir = os.path.abspath(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir={workdir} is a file; give a folder (new or a run's)")
  existing = workdir
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
    raise ValueError(f"--workdir={workdir} is not writable ({existing} is read-only or not a "
                     "folder); choose a writable place")
  return workdir


def prepare(config, workdir):
  """Check everything a start needs without writing anything; return the Setup.

  A different config in a workdir that holds saved steps is refused here; a finished run
  (results.json of the final step, and its checkpoint) is recognised.
  """
  run = build(config)
  workdir = check_workdir(workdir)
  checkpoints.check_config(workdir, config.to_dict())
  latest = checkpoints.latest_saved_step(workdir)
  finished = None
  results_path = os.path.join(workdir, "results.json")
  if latest == config.total_steps and os.path.exists(results_path):
    saved = io.read_json(results_path)
    if saved.get("step") == config.total_steps:
      finished = saved
  probe_every = config.conflicts.every if probing_enabled(config) else 0
  return Setup(run, workdir, latest, finished, probe_every)


def train_and_evaluate(config, workdir):
  """Train (or resume) the run in `workdir`, evaluate it, and return its results dict.

  A finished run is not run again: its saved results are returned (and said so).
  """
  from mtl import evaluate, progress as progress_lib
  from mtl.data import sources

  config = normalize(config)
  setup = prepare(config, workdir)
  workdir = setup.workdir
  if setup.finished is not None:
    progress_lib.attach_log(workdir)  # the attempt is logged; nothing else is written
    print(f"already finished at step {setup.finished['step']}; results in "
          f"{os.path.join(workdir, 'results.json')}", flush=True)
    return setup.finished
  # Inputs are opened before anything is written: a missing folder fails the start cleanly.
  images = sources.open_images(config.data, "train")
  streaks = (pipeline.load_streak_layers(config.degrade.rain.streak_dir)
             if config.degrade.rain.streak_dir else None)
  testsets = evaluate.load_testsets(config)
  pairs = pipeline.load_pairs(config.data.get("pairs", ""), setup.run.model.specs, config.data.cache_mb)
  is_writer = jax.process_index() == 0
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as error:
    raise ValueError(f"--workdir={workdir} cannot be created: {error.strerror}") from None
  lock = io.WorkdirLock(workdir)
  if is_writer:
    lock.acquire()
  try:
    if is_writer:
      progress_lib.attach_log(workdir)
      if lock.stale:
        print(f"removed the stale lock of pid {lock.stale.get('pid')} (no longer running)",
              flush=True)
      checkpoints.check_or_write_config(workdir, config.to_dict())
    return _train(setup, config, workdir, images, streaks, pairs, testsets, is_writer)
  finally:
    if is_writer:
      lock.release()


def _train(setup, config, workdir, images, streaks, pairs, testsets, is_writer):
  from mtl import evaluate, events, progress as progress_lib
  run, probe_every = setup.run, setup.probe_every
  mngr = checkpoints.manager(workdir, config.keep_checkpoints)
  with jax.set_mesh(run.mesh):
    source_note = ""
    if mngr.latest_step() is not None:
      state = checkpoints.restore(mngr, run.abstract_state)
      print(f"resumed {workdir} at step {int(state.step)}", flush=True)
    elif config.regime == "finetune":
      state, source_note = finetune_params(run, config.init_from)
    else:
      state = run.init_state()
    start = int(state.step)
    names = run.model.task_names
    layer_names, order = ipt.body_layer_order(state.params["body"])
    if is_writer:
      print(setup.banner(), flush=True)
      if source_note:
        print(source_note, flush=True)
      if probe_every or start == 0:
        conflicts.truncate_after(workdir, start - 1)  # steps >= start will be probed again
    metrics_log = MetricsLog(os.path.join(workdir, METRICS_FILE), start, enabled=is_writer)

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
    writer.hparams(hparams_of(config), trial_id=os.path.basename(workdir))
    progress = progress_lib.Progress(config.total_steps, start, every=config.log_every)
    batches = pipeline.train_batches(
        images, run.model.specs, config.model.patch_size, config.data.batch_size, config.seed,
        start_step=start, num_steps=config.total_steps - start,
        process_index=jax.process_index(), process_count=jax.process_count(),
        schedule=config.schedule, streaks=streaks, pairs=pairs)
    probe_buffer, pending, compiled = [], [], set()
    step, started = start, time.time()
    try:
      with _Preemption() as preemption:
        for step, local_batch in batches:
          batch = sharding.to_global(local_batch, run.mesh)
          task_names = tuple(n for n in names if n in local_batch)
          probing = bool(probe_every and step % probe_every == 0)
          key = ("probe",) if probing else task_names
          t0 = time.monotonic()
          if probing:
            state, metrics, grams = probe(state, batch)
            probe_buffer.append((step, grams[np.asarray(order)]))
          else:
            state, metrics = plain_step(task_names)(state, batch)
          if key not in compiled:  # the first call traces and compiles (execution is async)
            compiled.add(key)
            seconds = time.monotonic() - t0
            progress.exclude(seconds)
            if is_writer:
              what = "probe step" if probing else f"step ({','.join(task_names)})"
              print(f"compiled the {what} in {seconds:.1f}s", flush=True)
          pending.append((step, metrics))
          done = step + 1
          stop = preemption.check(done)  # on every step: all processes must ask in step
          checkpoint_now = (done % config.checkpoint_every == 0 or done == config.total_steps
                            or stop)
          if done % config.log_every == 0 or checkpoint_now:
            try:
              _log_metrics(pending, writer, progress, run.schedule, done, metrics_log)
            except NonFiniteLoss as error:
              raise NonFiniteLoss(f"{error}: training stopped; {_kept(mngr)}. Lower optim.lr "
                                  "or set optim.grad_clip") from None
            pending = []
          if checkpoint_now:
            if not bool(_all_finite(state.params)):
              raise NonFiniteLoss(f"non-finite parameters after step {step}: training stopped; "
                                  f"{_kept(mngr)}. Lower optim.lr or set optim.grad_clip")
            _flush_probes(workdir, probe_buffer, layer_names, names, is_writer, writer)
            probe_buffer = []
            checkpoints.save(mngr, done, state, force=True)
          if config.eval_every and done % config.eval_every == 0 and done < config.total_steps:
            evaluate.evaluate(run.model, state.params, config, testsets, workdir, done, writer)
          if preemption.requested:
            break
    finally:  # a save in flight completes even when training stops on an error
      mngr.wait_until_finished()
      mngr.close()
      metrics_log.close()
    final_step = int(state.step)
    if is_writer:
      _record_compute(workdir, run, config, state, probe if probe_every else plain_step(names),
                      final_step, time.time() - started)
    if preemption.requested and final_step < config.total_steps:
      writer.close()
      raise Preempted(f"preempted: checkpoint saved at step {final_step} in {workdir}; "
                      "run the same command to resume")
    results = evaluate.evaluate(run.model, state.params, config, testsets, workdir, final_step,
                                writer, final=True)
    if is_writer and probe_every:
      from mtl import plots
      plots.draw_and_log(conflicts.load(workdir), os.path.join(workdir, "conflicts"), writer,
                         ema_beta=config.conflicts.ema_beta, scalars=False)  # logged per flush
    writer.close()
  return results


def _kept(mngr):
  latest = mngr.latest_step()
  return (f"the last good checkpoint (step {latest}) is kept" if latest is not None
          else "no checkpoint was saved before it")


def hparams_of(config):
  """The run's TensorBoard HParams: what distinguishes the runs of a study."""
  return {"lr": float(config.optim.lr), "seed": int(config.seed), "regime": config.regime,
          "tasks": ",".join(config.tasks), "schedule": config.schedule,
          "n_feats": int(config.model.n_feats),
          "layers": f"{config.model.num_encoder_layers}+{config.model.num_decoder_layers}",
          "batch_size": int(config.data.batch_size), "total_steps": int(config.total_steps),
          "precision": config.precision, "init_from": config.init_from}


class MetricsLog:
  """<workdir>/metrics.jsonl: one JSON line per logged step; lines past `start` are dropped on
  a resume (those steps are trained and logged again), and a torn last line is ignored."""

  def __init__(self, path, start, enabled=True):
    self.path, self._file = path, None
    if not enabled:
      return
    if os.path.exists(path):
      kept = []
      with open(path) as f:
        for line in f:
          try:
            if json.loads(line)["step"] <= start:
              kept.append(line if line.endswith("\n") else line + "\n")
          except (ValueError, KeyError, TypeError):
            pass
      io.write_atomic(path, lambda f: f.write("".join(kept).encode()))
    self._file = open(path, "a")

  def write(self, record):
    if self._file is not None:
      self._file.write(json.dumps(record, sort_keys=True) + "\n")
      self._file.flush()

  def close(self):
    if self._file is not None:
      self._file.close()
      self._file = None


def read_metrics(workdir):
  """The records of <workdir>/metrics.jsonl, in order."""
  with open(os.path.join(workdir, METRICS_FILE)) as f:
    return [json.loads(line) for line in f if line.strip()]


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


def _log_metrics(pending, writer, progress, schedule, done, metrics_log=None):
  """Fetch pending step metrics, stop on a non-finite one, write TensorBoard, metrics.jsonl and
  the progress line (per-task losses: means over the steps since the last line)."""
  if not pending:
    return
  fetched = jax.device_get([m for _, m in pending])
  for (step, _), metrics in zip(pending, fetched):
    bad = {k: float(v) for k, v in metrics.items() if not np.isfinite(float(v))}
    if bad:
      shown = ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
      total = float(metrics["loss/total"])
      raise NonFiniteLoss(f"non-finite {shown} at step {step}"
                          + (f" (loss/total {total:.3g} is finite)" if np.isfinite(total) else ""))
  mean = {k: float(np.mean([m[k] for m in fetched if k in m]))
          for k in set().union(*fetched)}
  mean["lr"] = float(schedule(done - 1))
  per_task = {k[len("loss/"):]: v for k, v in sorted(mean.items())
              if k.startswith("loss/") and k != "loss/total"}
  shown = dict({"loss": mean["loss/total"]}, **(per_task if len(per_task) > 1 else {}))
  line = progress.update(done, shown)
  if line and jax.process_index() == 0:
    print(line, flush=True)
  mean["steps_per_sec"] = progress.rate()
  writer.scalars(done, {f"train/{k}": v for k, v in mean.items()})
  if metrics_log is not None:
    rate = mean["steps_per_sec"]
    metrics_log.write({
        "step": done, "time": round(time.time(), 3), "steps": len(fetched),
        "loss": per_task,
        "loss_total": mean["loss/total"], "lr": mean["lr"], "grad_norm": mean["grad_norm"],
        "steps_per_sec": rate if np.isfinite(rate) else None})


def _flush_probes(workdir, probe_buffer, layer_names, task_names, is_writer, writer):
  """Append the buffered probes' half-split Gramians (S, L, 2T, 2T) to the store and log their
  whole-body raw and corrected cosines and conflict fractions to TensorBoard (per checkpoint)."""
  if not probe_buffer or not is_writer:
    return
  from mtl import plots
  steps = np.array([s for s, _ in probe_buffer], np.int64)
  grams = np.stack(jax.device_get([g for _, g in probe_buffer])).astype(np.float32)
  conflicts.append(workdir, steps, grams, layer_names, list(task_names))
  plots.log_probe_scalars(conflicts.Record.from_halves(steps, grams, layer_names, task_names),
                          writer)


# ----------------------------------------------------------------------------- analysis


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
