"""A run before its loop: the Run built from a config (model, mesh, optimizer, shardings), its
fresh or fine-tuned state, and what `prepare` finds in its workdir (Setup: banner, dry-run text).
"""
import dataclasses
import functools
import os
import re
import shutil
import tempfile
from typing import Any

import jax
import jax.numpy as jnp

from mtl import (aggregators, checkpoints, files, optim, run_defaults, run_folder, sharding,
                 tasks, xla_options)
from mtl.models import ipt
from mtl.run_config import absolute_paths, probe_plan, validate
from mtl.step import TrainState, step_args

# The init runs once per run and compiles at every cold start: LLVM's level 1 compiles it faster
# (2 CPU cores: tiny 5.2 -> 2.8 s, paper 9.9 -> 8.6 s) with the same draws bit for bit (level 0
# would differ by an ulp), for at most 0.1 s more of its one run.
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}
LOSS_UNITS = "loss: L1 on the [0, 255] scale, per task (total = their sum); /255 for BasicSR's [0, 1]"


# ----------------------------------------------------------------------------- state


@dataclasses.dataclass
class Run:
  """Everything the loop needs, built once from a config."""
  config: Any
  model: ipt.IPT
  mesh: Any
  optimizer: Any
  schedule: Any
  plan: Any               # run_config.ProbePlan: which steps split (probes, aggregators)
  state_shardings: Any
  abstract_state: Any = None  # the state's ShapeDtypeStructs with their shardings (build's)

  @functools.cached_property
  def fresh_state(self):
    """_fresh_state as one object: build's eval_shape and init_state's jit share its trace
    (jax's trace cache holds the function weakly; each `self._fresh_state` is a new object)."""
    return self._fresh_state

  def _fresh_state(self, seed):
    """seed: uint32, as step_args gives it (traced: every run's init shares one program)."""
    params = self.model.init(jax.random.key(seed))
    extra, mtl_state = aggregators.init_step_state(  # config.mtl's trained params, carried state
        self.config.get("mtl"), len(self.model.task_names),
        len(ipt.shared_layer_names(params["body"])))
    params = dict(params, loss_weighting=extra) if extra else params
    ema = params if self.config.optim.get("ema_decay", 0.0) > 0 else None  # starts at the init
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.optimizer.init(params), mtl_state=mtl_state or None,
                      ema_params=ema)

  def init_function(self):
    """The jitted init: seed (uint32) -> fresh state with its shardings."""
    return jax.jit(self.fresh_state, out_shardings=self.state_shardings,
                   compiler_options=INIT_COMPILER_OPTIONS)

  def init_state(self):
    """Fresh state, created directly with its shardings (never whole on one device)."""
    return self.init_function()(step_args(self.config)["seed"])


def build(config):
  specs, model_cfg = validate(config)
  model = ipt.IPT(model_cfg, specs)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch(mesh, config.data.batch_size)
  plan = probe_plan(config)
  if plan.batch_size:
    sharding.check_batch(mesh, plan.batch_size, "conflicts.batch_size")
  optimizer, schedule = optim.make_optimizer(config.optim, config.total_steps)
  run = Run(config, model, mesh, optimizer, schedule, plan, None)
  with jax.set_mesh(mesh):  # as init_state is called: the mesh is part of the trace's context
    abstract = jax.jit(run.fresh_state).eval_shape(jax.ShapeDtypeStruct((), jnp.uint32))
  run.state_shardings = jax.tree_util.tree_map(
      lambda x: sharding.leaf_sharding(mesh, x.shape), abstract)
  run.abstract_state = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
      run.state_shardings)
  return run


def finetune_params(run, init_from):
  """(state, description) for a fine-tune: the body (and the target's head, tail and query when
  the source trained the target task) from a run: a joint run, or a scratch run of one task."""
  init_from = os.path.abspath(init_from)
  source_cfg = run_folder.source_run(init_from)
  target = run.model.task_names[0]
  source_model = ipt.IPT(ipt.ModelConfig.from_config(source_cfg["model"], run.config.precision),
                         tasks.get_all(source_cfg["tasks"]))
  abstract = jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding.replicated(run.mesh)),
      run_folder.saved_params(source_cfg, source_model))
  source, step = checkpoints.restore_params(init_from, abstract)
  fresh = run.init_state()
  params = dict(fresh.params, body=source["body"])
  kind = f"a {source_cfg.get('regime', 'joint')} run of {','.join(source_model.task_names)}"
  if target in source_model.task_names:  # keep the target task's own head, query and tail
    for group in ("heads", "queries", "tails"):
      params[group] = {target: source[group][target]}
    kept = f"body, {target}'s head, query and tail"
  else:
    kept = f"body only ({target} was not trained there: its head, query and tail start fresh)"
  params = jax.device_put(params, run.state_shardings.params)
  state = run_folder.state_from_params(run, params, like=fresh)
  if state.ema_params is not None:  # the EMA starts from the fine-tune's starting point
    # a copy: put on the sharding they have, the arrays would be params' own buffers, and the
    # step donates both (XLA: "Attempt to donate the same buffer twice")
    state = state.replace(ema_params=jax.device_put(params, run.state_shardings.ema_params,
                                                    may_alias=False))
  return state, f"fine-tuned from {init_from} ({kind}, step {step}): {kept}"


MODEL_GROUPS = ("heads", "body", "queries", "tails")


def param_counts(run):
  """{group: parameter count} of the model's heads, body, queries, tails and 'total'."""
  params = run.abstract_state.params
  counts = {group: ipt.count_params(params[group]) for group in MODEL_GROUPS}
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

  def artifacts(self):
    return {n: os.path.join(self.workdir, n) for n in run_folder.ARTIFACTS}

  def start_kind(self):
    if self.latest_step is not None:
      return f"resuming at step {self.latest_step}"
    if self.run.config.regime == "finetune":
      return f"fresh, fine-tuning from {self.run.config.init_from}"
    return "fresh"

  def banner(self, data=""):
    """The run's one-line banner (stdout and train.log); data: what it trains on, the images
    opened for it."""
    config, run = self.run.config, self.run
    counts = param_counts(run)
    mesh = " x ".join(f"{k}={v}" for k, v in run.mesh.shape.items())
    devices = jax.devices()
    conflicts_part = (f"conflicts on {run.plan.describe(config.data.batch_size)}"
                      if run.plan.probe_every else "conflicts off")
    shape = (len(config.tasks), config.schedule)
    remedy = aggregators.describe(config.get("mtl"), *shape)
    if remedy != aggregators.describe(None, *shape):  # a remedy's run must not look plain
      conflicts_part += (f" | update {remedy['aggregator']}, loss weighting "
                         f"{remedy['loss_weighting']}" + (f", TAG affinity {remedy['affinity']}"
                                                          if "affinity" in remedy else ""))
    lr = f"lr {config.optim.lr:g}"
    if 0 < config.total_steps <= config.optim.warmup_steps:  # the ramp never reaches its top
      lr += (f" (its {config.optim.warmup_steps}-step warm-up outlasts the run: lr peaks at "
             f"{run.schedule(config.total_steps - 1):.3g})")
    threads = (f" on {xla_options.cpu_threads()} thread(s)" if devices[0].platform == "cpu"
               else "")  # a CPU run's sums are split by thread: its numbers depend on them
    return (f"run: {config.regime} {','.join(config.tasks)} | {_millions(counts['total'])} "
            f"parameters | {len(devices)} {devices[0].platform} device(s){threads}, mesh {mesh} | "
            f"batch {config.data.batch_size}/task, {config.total_steps} steps, {lr} | "
            f"{f'data {data} | ' if data else ''}{conflicts_part} | "
            f"workdir {self.workdir} ({self.start_kind()}) | {LOSS_UNITS}")

  def describe(self):
    """The dry run's text: resolved config, parameters per group, mesh, artifact paths."""
    counts = param_counts(self.run)
    lines = ["config:"] + [f"  {k} = {v!r}" for k, v in sorted(
        files.flatten(self.run.config.to_dict()).items())] + ["",
             "parameters: " + ", ".join(f"{g} {counts[g]:,}" for g in
                                        MODEL_GROUPS + ("total",)),
             "mesh: " + ", ".join(f"{k}={v}" for k, v in self.run.mesh.shape.items())
             + f" over {self.run.mesh.devices.size} {jax.devices()[0].platform} device(s)",
             f"workdir: {self.workdir} ({self.start_kind() if not self.finished else 'finished'})"]
    lines += [f"  {name:<14} {path}" for name, path in self.artifacts().items()]
    lines.append(self.banner())
    return "\n".join(lines)


def _refuse_unresumable_results(workdir, config):
  """A start from step 0 in a workdir that holds what only saved steps write (the final
  results, the conflict store's chunks, checkpoint analyses) would replace them: refused. Chunks
  of this run's own steps before its first save are not (they are flushed just before that save,
  so a kill during it leaves them with no checkpoint; the start measures them again, the same)."""
  from mtl import conflicts
  found = [name for name in (run_folder.RESULTS_FILE, run_folder.ANALYSIS_DIR)
           if os.path.exists(os.path.join(workdir, name))]
  first_save = run_folder.checkpoint_steps(config.total_steps, config.checkpoint_every)[0]
  own = os.path.exists(os.path.join(workdir, run_folder.CONFIG_FILE))  # its config was checked
  if any(not own or last >= first_save for _, last, _ in conflicts.Store(workdir).chunks()):
    found.append("conflicts/store/ chunks")
  if found:
    raise ValueError(f"--workdir={workdir} holds an earlier run's results ({', '.join(found)}) "
                     "but no checkpoint to resume from; a start from step 0 would replace them: "
                     "use a new --workdir")


def _refuse_a_folder_of_images(workdir):
  """A first start in a folder that holds images (a run writes none at its top level): likely a
  user's data folder, where a run's files would mix with theirs."""
  from mtl.data import folder as folder_lib
  found = sorted(n for n in os.listdir(workdir) if folder_lib.is_image_file(n)) if os.path.isdir(
      workdir) else []
  if found:
    raise ValueError(f"--workdir={workdir} holds images ({', '.join(found[:3])}"
                     f"{' ...' if len(found) > 3 else ''}): a run's files would go among them; "
                     "use a new or empty folder")


def check_workdir(workdir):
  """The absolute workdir; ValueError (one line) if it is a file or cannot be created/written,
  or if one of a run's folders there is a file (or one of its files a folder)."""
  workdir = os.path.abspath(workdir)
  files.check_not_a_file(workdir, "--workdir", "a folder (new or a run's)")
  for name in run_folder.ARTIFACTS:
    path = os.path.join(workdir, name.rstrip("/"))
    if os.path.exists(path) and os.path.isdir(path) != name.endswith("/"):
      kind = "folder" if name.endswith("/") else "file"
      raise ValueError(f"{path} is not a {kind}, as a run's {name.rstrip('/')} must be; move it "
                       "away or use a new --workdir")
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
  threads, pool = config.get("cpu_threads", 0), xla_options.cpu_threads()
  if threads and jax.default_backend() == "cpu" and pool != threads:
    raise ValueError(f"cpu_threads={threads}, but XLA's CPU backend here has {pool} threads: "
                     "it is sized once, as JAX starts "
                     "(launch/train.py does it; elsewhere call mtl.xla_options.set_cpu_threads "
                     "first)")
  run = build(config)
  workdir = check_workdir(workdir)
  run_folder.check_config(workdir, config.to_dict(), run_defaults.config_defaults(),
                          absolute_paths)
  latest = checkpoints.latest_saved_step(workdir)
  if latest is None:
    _refuse_unresumable_results(workdir, config)
  if not os.path.exists(os.path.join(workdir, run_folder.CONFIG_FILE)):
    _refuse_a_folder_of_images(workdir)
  finished = None
  saved = run_folder.read_results(workdir) if latest == config.total_steps else None
  if saved is not None:
    if saved.get("step") == config.total_steps:
      finished = saved
  return Setup(run, workdir, latest, finished)


def write_workdir(params, cfg, task_names, workdir, source=""):
  """An mtl workdir (config.json + orbax checkpoint at step 0) holding `params`, as train.py writes.

  The config is mtl.run_defaults' with the imported model, tasks and regime 'joint' (so
  fine-tunes can init_from it and analysis can load it); the optimizer state is fresh. It is
  written into a hidden folder inside `workdir` and moved up once whole, config.json last: an
  interrupted import leaves no half a run (which every later command would refuse), only that
  folder, which the next import removes.
  """
  if os.path.exists(os.path.join(workdir, run_folder.CONFIG_FILE)):
    raise ValueError(f"workdir {workdir} already holds a run; choose a new --workdir")
  workdir = check_workdir(workdir)  # a file, or an unwritable place: one line, as train.py's
  _refuse_a_folder_of_images(workdir)
  os.makedirs(workdir, exist_ok=True)
  left = [n for n in os.listdir(workdir) if re.fullmatch(IMPORTING + r"[a-z0-9_]{8}", n)
          and os.path.isdir(os.path.join(workdir, n))]  # an interrupted import's own folders
  if set(os.listdir(workdir)) - set(left):  # checked first: nothing is removed from such a one
    raise ValueError(f"workdir {workdir} holds other files; an import makes a run folder of its "
                     "own: choose a new --workdir")
  for name in left:
    shutil.rmtree(os.path.join(workdir, name))
  scratch = tempfile.mkdtemp(prefix=IMPORTING, dir=workdir)
  try:
    config = _write_imported(params, cfg, task_names, scratch, source)
    for name in sorted(os.listdir(scratch), key=lambda n: n == run_folder.CONFIG_FILE):
      os.rename(os.path.join(scratch, name), os.path.join(workdir, name))
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  return config


IMPORTING = ".importing-"  # write_workdir's scratch folder inside the workdir (+ mkdtemp's 8)


def _write_imported(params, cfg, task_names, workdir, source):
  """write_workdir's config.json, step 0 and import record, written into `workdir`."""
  config = run_defaults.get_config("tiny")
  config.tasks = tuple(task_names)
  for field in ipt.SIZES["paper"]:
    config.model[field] = getattr(cfg, field)
  config.regime, config.schedule = "joint", "one"  # IPT trained one task per batch
  config.total_steps = 1
  config.conflicts.every = 0
  config.eval.tiling = "ipt"  # restore.py and evaluation then give the official test's output
  config.mesh.data = 1
  config.data.batch_size = 1
  run = build(config)
  os.makedirs(workdir, exist_ok=True)
  run_folder.check_or_write_config(workdir, config.to_dict(), run_defaults.config_defaults())
  with jax.set_mesh(run.mesh):
    params = jax.device_put(params, run.state_shardings.params)
    state = run_folder.state_from_params(run, params)
    mngr = checkpoints.manager(workdir, keep=1, async_save=False)
    checkpoints.save(mngr, 0, state, force=True)
    mngr.wait_until_finished()
    mngr.close()
  files.write_json(os.path.join(workdir, run_folder.IMPORT_RECORD), {
      "source": os.path.abspath(source) if source else "", "tasks": list(task_names)})
  return config
