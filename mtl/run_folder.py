"""A run's folder (its workdir): the names of what a run writes there, its saved config, and a
state from parameters. Every other module asks here for a path or a config of a run.

  config.json    the run's config in force (a restart with a different config is refused, but
                 for RESUMABLE_FIELDS)
  train.log      the output of every attempt        metrics.jsonl  one JSON line per logged step
  checkpoints/   orbax steps                         events/        TensorBoard
  conflicts/     the conflict store                  compute.json   wall time and throughput
  results.json   the final evaluation                train.lock     the live trainer's pid
  analysis/step-<N>/  conflicts of the step-N checkpoint on fresh batches (analyze.py --checkpoint)
"""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mtl import aggregators, checkpoints, files, optim
from mtl.models import ipt
from mtl.step import TrainState

CONFIG_FILE = "config.json"
LOG_FILE = "train.log"
METRICS_FILE = "metrics.jsonl"
COMPUTE_FILE = "compute.json"
# How compute.json counts FLOPs: 'model' (mtl/flops.py, from the shapes); files without the field
# hold XLA's cost analysis ('xla'), which counts a scanned layer loop's body once.
FLOPS_COUNTED_BY = "model"
RESULTS_FILE = "results.json"
LOCK_FILE = "train.lock"
IMPORT_RECORD = "imported.json"  # an imported IPT workdir: which file it came from
DIVERGED_FILE = "diverged.json"  # stopped on a non-finite loss, parameters or output: {error}
PREEMPTED_EXIT = 75  # EX_TEMPFAIL: stopped on SIGTERM or Ctrl-C after a checkpoint; run again
ANALYSIS_DIR = "analysis"
EVENTS_DIR = "events"
CONFLICTS_DIR = "conflicts"  # the conflict store, its figures, the TAG affinity
RESTORED_DIR = "restored"  # saved evaluation images: restored[-<variant>]/<step>/<task>/<set>/
ARTIFACTS = (CONFIG_FILE, LOG_FILE, METRICS_FILE, checkpoints.CHECKPOINT_DIR + "/",
             EVENTS_DIR + "/", CONFLICTS_DIR + "/", COMPUTE_FILE, RESULTS_FILE, LOCK_FILE,
             ANALYSIS_DIR + "/", DIVERGED_FILE)
# Fields that may change between a run and its resumption: they do not change what is learned
# (model.remat, model.body_calls and model.scan_unroll: how the same step is computed; the
# mesh and body_calls sum in another order, so the numbers differ by float rounding);
# total_steps only where the lr schedule does not depend on it (check_total_steps).
RESUMABLE_FIELDS = ("total_steps", "log_every", "eval_every", "checkpoint_every",
                    "keep_checkpoints", "eval", "mesh", "model.remat", "model.body_calls",
                    "model.scan_unroll", "model.init")  # a resume's parameters are saved ones


def flops_counted_by(compute):
  """How a compute.json dict counts its FLOPs: 'model', or 'xla' (written before the field)."""
  return compute.get("flops_counted_by", "xla")


def conflicts_dir(workdir):
  return os.path.join(workdir, CONFLICTS_DIR)


def analysis_dir(workdir, step):
  """Where launch/analyze.py --checkpoint measures the conflicts of a run's step-`step` checkpoint
  (its conflict store under conflicts/, figures beside it)."""
  return os.path.join(workdir, ANALYSIS_DIR, f"step-{step}")


def checkpoint_steps(total_steps, checkpoint_every):
  """The steps a run that is not interrupted saves: every checkpoint_every and its last."""
  return sorted({*range(checkpoint_every, total_steps + 1, checkpoint_every), total_steps})


def results_name(step, final, task=""):
  """results.json for the final evaluation, results-<step>.json for one during training;
  results-<step>-<task>.json for launch/ipt_published.py's scores of one task."""
  if task:
    return f"results-{step:09d}-{task}.json"
  return RESULTS_FILE if final else f"results-{step:09d}.json"


def config_from_json(path):
  """The ConfigDict saved as JSON at `path` (lists become the tuples config files hold)."""
  return ml_collections.ConfigDict(files.tuples(files.read_json(path)))


# Fields whose runs saved before them behaved otherwise than today's default (2026-12-04): their
# evaluations averaged overlapping tiles; their models took nnx's initialisers.
LEGACY_DEFAULTS = {"eval.tiling": "mean", "model.init": "flax"}


def read_config(workdir):
  """The ConfigDict a run saved in <workdir>/config.json; a LEGACY_DEFAULTS field it predates
  reads as that run behaved."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{workdir} holds no {CONFIG_FILE}; point --workdir to a "
                            "training run or an imported IPT workdir")
  saved = files.read_json(path)
  for field, value in LEGACY_DEFAULTS.items():
    group, name = field.split(".")
    if isinstance(saved.get(group), dict):
      saved[group].setdefault(name, value)
  return ml_collections.ConfigDict(files.tuples(saved))


def read_results(workdir):
  """The final results a run saved, or None."""
  path = os.path.join(workdir, RESULTS_FILE)
  return files.read_json(path) if os.path.exists(path) else None


def check_config(workdir, config_dict, defaults=None, saved_view=None):
  """Refuse (one line) a config that differs from the workdir's saved one, unless the run there
  never saved a step (then it may be replaced: returns True). No saved config: False (saved
  steps without it, or a run's checkpoints/ folder as the workdir: refused).
  defaults (run_defaults.config_defaults()): a field the saved config predates counts as its
  default, so a resume that gives it another value is refused. saved_view: what the saved
  config is read as (run_config.absolute_paths: older runs saved paths as typed)."""
  path = os.path.join(workdir, CONFIG_FILE)
  check_checkpoints_have_config(workdir)
  if not os.path.exists(path):
    return False
  saved = files.read_json(path)
  if saved_view is not None:  # e.g. run_config.absolute_paths: relative paths of older runs
    saved = saved_view(saved)
  latest = checkpoints.latest_saved_step(workdir)
  if latest is None:
    return bool(files.differences(saved, config_dict))
  added = files.refuse_changes(f"workdir {workdir}", saved, config_dict, RESUMABLE_FIELDS,
                            "a run with a different config",
                            "use a new --workdir or the same config to resume",
                            defaults=defaults)
  check_total_steps(workdir, latest, saved.get("total_steps"), config_dict)
  if added:
    print(f"{path} predates the config fields {files.field_list(added)}: resuming with their "
          "current values", flush=True)
  return False


def check_checkpoints_have_config(workdir):
  """Refuse (one line) a workdir that is a run's checkpoints/ folder (orbax step folders at its
  top: a run there would write its own files among them), or that holds saved steps but no
  config.json (another run's checkpoints, or a run's whose config was lost: resuming them with
  this config would go unchecked)."""
  own = checkpoints.step_folders(workdir)
  if own:
    raise ValueError(f"--workdir={workdir} holds checkpoint steps ({files.field_list(own, 4)}): "
                     "it looks like a run's checkpoints/ folder; point --workdir to its parent")
  folder = os.path.join(workdir, checkpoints.CHECKPOINT_DIR)
  saved = [str(s) for s in checkpoints.saved_steps(folder)]
  if saved and not os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    raise ValueError(f"--workdir={workdir} holds saved steps ({files.field_list(saved, 4)} in "
                     f"checkpoints/) but no {CONFIG_FILE}, so their config cannot be checked; "
                     f"use a new --workdir, or put back the {CONFIG_FILE} of the run that saved "
                     "them")


def check_total_steps(workdir, latest, saved_steps, config_dict):
  """Refuse (one line) a resume at step `latest` whose total_steps differs from the saved
  config's `saved_steps` where the lr schedule depends on it (cosine, step: their lr at every
  later step would change), or is below `latest` (that step would be evaluated on every rerun)."""
  steps = config_dict["total_steps"]
  if saved_steps is not None and steps != saved_steps:
    optim_cfg = ml_collections.ConfigDict(config_dict["optim"])  # not resumable: the saved one
    old, new = (optim.schedule_args(optim_cfg, n) for n in (saved_steps, steps))
    if any(not np.array_equal(old[k], new[k]) for k in old):
      raise ValueError(f"total_steps={steps}: the run in {workdir} has total_steps="
                       f"{saved_steps}, and its {optim_cfg.schedule} lr schedule depends on it "
                       f"(the lr of every later step would change); resume with total_steps="
                       f"{saved_steps}, or use a new --workdir")
  if steps < latest:
    raise ValueError(f"total_steps={steps} is below step {latest}, the latest checkpoint in "
                     f"{workdir}; valid: total_steps >= {latest}")


def check_or_write_config(workdir, config_dict, defaults=None, saved_view=None):
  """First start: save the config. Restart: refuse a different config (one clear line); a run
  that never saved a step takes the new config (its old one is replaced, and said so); a resume
  that changes resumable fields says which, and config.json then holds the config in force."""
  path = os.path.join(workdir, CONFIG_FILE)
  replace = check_config(workdir, config_dict, defaults, saved_view)
  if replace:
    print(f"{path}: replacing the config of a run that never saved a step", flush=True)
  elif os.path.exists(path):
    saved = files.read_json(path)
    changes = changed_fields(saved, config_dict, saved_view)
    if changes:
      print(f"resuming with changed fields: {changes}; {path} records them", flush=True)
    # fields the saved config predates too: launch/analyze.py reads the config in force
    replace = bool(files.differences(saved, config_dict))
  if replace or not os.path.exists(path):
    files.write_json(path, config_dict)


def changed_fields(saved, config_dict, saved_view=None):
  """The fields (that the saved config holds) a config changes from a run's saved config, as
  text; '' where none does. `saved_view`: what check_config compares of the saved one."""
  seen = saved_view(saved) if saved_view is not None else saved
  changed = [k for k in files.differences(seen, config_dict) if k in files.flatten(seen)]
  return files.show_changes(seen, config_dict, changed) if changed else ""


def source_run(init_from):
  """The config dict of the run `init_from` names; ValueError unless it is a run with a
  checkpoint."""
  path = os.path.join(init_from, CONFIG_FILE)
  if not os.path.isdir(init_from):
    raise FileNotFoundError(f"init_from={init_from} is not a folder; point it to a run's workdir")
  if not os.path.exists(path) or checkpoints.latest_saved_step(init_from) is None:
    raise ValueError(f"init_from={init_from} is not a run with a checkpoint (no "
                     f"{CONFIG_FILE} or no saved step); point it to a run's workdir")
  return files.read_json(path)


def saved_params(config, model):
  """The abstract params a run of `config` saved: its model's, and what its config.mtl trained
  (uncertainty's log-variances, params['loss_weighting']): a restore must name them all."""
  params = model.abstract_params()
  mtl_cfg = config.get("mtl")
  if not mtl_cfg or not mtl_cfg.get("loss_weighting"):
    return params
  leaves = len(ipt.shared_layer_names(params["body"]))
  extra = jax.eval_shape(lambda: aggregators.init_step_state(
      ml_collections.ConfigDict(dict(mtl_cfg)), len(model.task_names), leaves)[0])
  return dict(params, loss_weighting=extra) if extra else params


def state_from_params(run, params, step=0, like=None):
  """A TrainState of `params` with a fresh optimizer state (run.optimizer.init, jitted to the
  run's shardings) at `step`; with `like`, the rest of the state (step, carried state) is its."""
  opt_state = jax.jit(run.optimizer.init, out_shardings=run.state_shardings.opt_state)(params)
  if like is not None:
    return like.replace(params=params, opt_state=opt_state)
  return TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state=opt_state)
