"""A study's schema: its fields and their validation (mtl.study.runs expands it into runs).

A study config (experiments/studies/*.py) starts from `defaults()` and sets:
  name           title of the report ('' -> the study directory's name)
  tasks          the tasks compared: the rows of the tables, the task list of the joint run
  run            the base run config (mtl/run_defaults.py fields): model, data, eval sets ...
  regimes        which of STUDY_REGIMES to run:
                   scratch   each task alone, from random init
                   joint     all tasks together (every task every step), from random init
                   finetune  each task from the joint run of the same seed chosen on
                             validation (and from each group that holds it)
                   pairs     every pair of tasks jointly (pairwise transfer)
                   groups    every group of `groups` jointly (fine-tuned too if 'finetune')
  groups         {name: (task, ...)} for the regime 'groups'
  seeds          every run is repeated for each seed (default 0, 1, 2: a paired interval over
                 seeds needs >= 2, and is usable from 3). Seeds are paired across regimes: the
                 same seed gives the same body init, the same head / query / tail init of a
                 task and the same crops and degradations of a task at a data step in every
                 regime (keyed by seed, data step and task name, never by a task's place in
                 the run); a fine-tune's data steps continue after its pre-training's
                 (data.step_offset = the pre-training's steps), so pre-training + fine-tuning
                 see a task's samples of a scratch run's steps, none twice
  metric         'psnr_y' (BasicSR's Y channel) or 'psnr_rgb': the lr is chosen on it and the
                 tables report it (with the matching SSIM)
  steps          {regime: steps per run}; pairs / groups 0 -> as joint
  budget         what scratch is given, named for what it equalizes with pre-train + fine-tune:
                   'steps'         every regime runs steps.<regime> as set
                   'equal_images'  scratch sees as many images of its task as pre-training +
                                   fine-tuning did: steps.joint (schedule 'all'; 'one': / tasks)
                                   + steps.finetune (steps.scratch is derived: leave it 0;
                                   per_regime may not give these regimes their own batch);
                                   under schedule 'all' the same images (see seeds)
                   'equal_flops'   scratch costs as many training FLOPs (compute.json: the model's)
                                   as its fine-tune plus its share of the pre-training run: the
                                   pre-training FLOPs / the number of tasks it trains (one
                                   pre-training serves a fine-tune per task). Known only when
                                   they are done: scratch runs after the seed's fine-tunes
  lrs            the learning-rate grid every regime sweeps (one grid: a fair protocol)
  lrs_override   {regime: grid} replacing `lrs` for one regime (the report says grids differ)
  per_regime     {regime: partial run config}, merged onto `run` for that regime's runs
                 (e.g. fine-tuning data, warm-up); per_regime['joint:<method>'] (merged after
                 per_regime.joint) may set only that method's arguments: {'mtl':
                 {'aggregator_args' or 'loss_weighting_args': {...}}} (e.g. CAGrad's c)
  validation     the eval set the learning rate is chosen on (one of run.eval.sets)
  test           the eval sets the tables report (run.eval.sets, not the validation set)
  reference      published numbers for a reference row: label, note, and per metric (psnr_y,
                 ssim_y, psnr_rgb, ssim_rgb) {task: {test set: value}}; requires {task: dotted
                 run-config field}: the task's numbers are shown only when every run of the
                 task sets that field (shown in the study metric's table, never with a Δ: no
                 seeds to pair)

Every run evaluates on validation and test sets (`run.eval.sets`). Runs that differ only in
their learning rate form a *sweep*; per seed, the sweep's run with the best validation score
(mean `metric` on `validation` over the run's tasks) is the one reported, and the joint (or
group) run a fine-tune starts from. A fine-tune therefore waits until every lr of its
pre-training sweep of the same seed is done.

Run names (one workdir each under STUDY/runs/):
  scratch-<task>-lr<lr>-s<seed>          joint-lr<lr>-s<seed>
  finetune-<task>-lr<lr>-s<seed>         (from the joint run)
  pair-<a>+<b>-lr<lr>-s<seed>            group-<group>-lr<lr>-s<seed>
  finetune-<task>-from-<group>-lr<lr>-s<seed>
Each run is its study runner's train command on <run>/run_config.json (launch/study.py's:
launch/train.py --config=experiments/from_json.py:<run>/run_config.json --workdir=<run>); a
finished and evaluated run gets a DONE file. See WORKSPACE.md for the layout.
"""
import math
import os
import re

import ml_collections

from mtl import evaluate, files, run_config, run_defaults, run_folder
from mtl import tasks as tasks_lib

STUDY_REGIMES = ("scratch", "joint", "finetune", "pairs", "groups")
# 'joint:<method>' (e.g. 'joint:pcgrad', 'joint:uncertainty'): the joint run with an aggregator
# or loss weighting of mtl.aggregators (config.mtl), same steps, lrs and seeds as 'joint'.
METHOD_PREFIX = "joint:"


def method_of(regime):
  """'joint:pcgrad' -> 'pcgrad'; None for the plain regimes."""
  return regime[len(METHOD_PREFIX):] if regime.startswith(METHOD_PREFIX) else None


def _check_method_regime(regime):
  from mtl import aggregators
  valid = sorted(set(aggregators.WEIGHTINGS) - {"sum"}) + sorted(aggregators.LOSS_WEIGHTINGS)
  if method_of(regime) not in valid:
    raise ValueError(f"unknown regime {regime!r} in regimes; valid: {', '.join(STUDY_REGIMES)}"
                     f" or joint:<{'|'.join(valid)}>")
# Fields of the run config that the study sets for each run; per_regime may not set them.
CONTROLLED = ("tasks", "regime", "seed", "total_steps", "optim.lr", "init_from",
              "data.step_offset")
# Study fields that only change the report; they may differ between invocations.
REPORT_ONLY = ("name", "test", "reference", "final_conflicts")
METRICS = {"psnr_y": "ssim_y", "psnr_rgb": "ssim_rgb"}   # study.metric -> the SSIM shown with it
REFERENCE_METRICS = (*METRICS, *METRICS.values())  # the reference row's values, per metric
REFERENCE_FIELDS = ("label", "note", *REFERENCE_METRICS, "requires")
BUDGETS = ("steps", "equal_images", "equal_flops")


def defaults():
  """Every study field with its default; study configs start from this."""
  c = ml_collections.ConfigDict()
  c.name = ""
  c.tasks = ()
  c.run = None
  c.regimes = ("scratch", "joint", "finetune")
  c.groups = ml_collections.ConfigDict()
  c.seeds = (0, 1, 2)
  c.metric = "psnr_y"
  c.steps = ml_collections.ConfigDict({r: 0 for r in STUDY_REGIMES})
  c.budget = "steps"
  c.lrs = ()
  c.lrs_override = ml_collections.ConfigDict({r: () for r in STUDY_REGIMES})
  c.per_regime = ml_collections.ConfigDict({r: ml_collections.ConfigDict() for r in STUDY_REGIMES})
  c.validation = "photos_val"
  c.test = ("photos",)
  # Once a pre-training sweep (joint, group:<g>) is done, its run chosen on validation gets its
  # conflicts measured at its last `checkpoints` saved steps (run.checkpoint_every apart), each
  # on fresh batches of batch_size images per task (0: not), until +-halfwidth or max_batches
  # (launch/analyze.py --checkpoint); their mean per seed is question 1's headline.
  c.final_conflicts = ml_collections.ConfigDict(dict(batch_size=0, halfwidth=0.02,
                                                     max_batches=64, checkpoints=1))
  # requires: {task: dotted run-config field}; the task's reference values are shown only when
  # that field is set in every run that trains the task (e.g. real rain streaks for Rain100L).
  c.reference = ml_collections.ConfigDict(dict(
      label="", note="", requires=ml_collections.ConfigDict(),
      **{m: ml_collections.ConfigDict() for m in REFERENCE_METRICS}))
  return c


# ----------------------------------------------------------------------------- validation


def _as_dict(value):
  return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def _unknown(given, known, where):
  extra = sorted(set(given) - set(known))
  if extra:
    prefix = f"{where}." if where else ""
    raise ValueError(f"unknown study field {prefix}{extra[0]}; valid: "
                     f"{', '.join(prefix + k for k in known)}")


def eval_set_names(sets):
  """'photos,Set5=/d/Set5,Rain100L=paired:/d/R' -> ['photos', 'Set5', 'Rain100L']."""
  return [entry[0] for entry in evaluate.parse_sets(str(sets))]


def _check_sets_apart(d):
  """Refuse a test set whose folder is the validation set's (other names, the same images: the lr
  would be chosen on the test images), or any eval set that a regime trains on
  (`run_config.check_sets_apart`)."""
  sets = str(d["run"]["eval"]["sets"])
  paths = {name: os.path.realpath(path) for name, _, path, _ in evaluate.parse_sets(sets) if path}
  val = paths.get(d["validation"])
  for name in d["test"]:
    if val and paths.get(name) == val:
      raise ValueError(f"test set {name!r} is the validation set's folder {val}; the lr is "
                       "chosen on validation, so report other images as test")
  for overrides in [{}] + [p.get("data", {}) for p in d["per_regime"].values()]:
    run_config.check_sets_apart(sets, {**d["run"]["data"], **overrides})
  held_out = ("source", "folder", "validation_fraction")   # what folder_val's images depend on
  for regime, p in d["per_regime"].items() if evaluate.FOLDER_VAL in d["test"] else ():
    changed = [k for k in held_out if k in p.get("data", {})
               and p["data"][k] != d["run"]["data"].get(k)]
    if changed:
      raise ValueError(f"test set {evaluate.FOLDER_VAL!r} holds other images in regime {regime} "
                       f"(its data.{changed[0]} differs from run.data's): its Δs would compare "
                       "other images; test on a set every regime scores alike")


def validate(study):
  """Check a study config; ValueError with one line naming the bad field and the valid values."""
  d = _as_dict(study)
  _unknown(d, defaults().keys(), "")
  for key in ("steps", "lrs_override"):
    _unknown(d[key], STUDY_REGIMES, key)
  methods = [r for r in d["regimes"] if r.startswith(METHOD_PREFIX)]
  _unknown(d["per_regime"], (*STUDY_REGIMES, *methods), "per_regime")
  _unknown(d["reference"], REFERENCE_FIELDS, "reference")
  _unknown(d["final_conflicts"], defaults().final_conflicts.keys(), "final_conflicts")
  final = d["final_conflicts"]
  missing = [k for k in defaults().final_conflicts if k not in final]
  if missing:
    raise ValueError(f"final_conflicts has no {missing[0]}; set its fields one by one on "
                     "study_lib.defaults()'s (study.final_conflicts.batch_size = 128, ...)")
  if not (isinstance(final["batch_size"], int) and final["batch_size"] >= 0
          and final["batch_size"] % 2 == 0):
    raise ValueError(f"final_conflicts.batch_size={final['batch_size']!r}; give an even number of "
                     "images per task (split into two halves), or 0 for no final measurement")
  if not (isinstance(final["max_batches"], int) and final["max_batches"] >= 2):
    raise ValueError(f"final_conflicts.max_batches={final['max_batches']!r}; give at least 2")
  if not (isinstance(final["halfwidth"], (int, float)) and final["halfwidth"] >= 0):
    raise ValueError(f"final_conflicts.halfwidth={final['halfwidth']!r}; give a half-width >= 0 "
                     "(0: exactly max_batches)")
  if not (isinstance(final["checkpoints"], int) and final["checkpoints"] >= 1):
    raise ValueError(f"final_conflicts.checkpoints={final['checkpoints']!r}; give the number of "
                     "last saved steps to measure (>= 1)")
  if not d["tasks"]:
    raise ValueError("tasks=() names no task; list the tasks to compare, e.g. "
                     "('denoise_30', 'sr_x2', 'derain')")
  tasks_lib.get_all(d["tasks"])
  if not isinstance(d["run"], dict) or not {"model", "data", "eval", "optim"} <= set(d["run"]):
    raise ValueError("run is not a run config; set it to one, e.g. experiments.tiny.get_config()")
  regimes = list(d["regimes"])
  if not regimes:
    raise ValueError(f"regimes=() names no regime; valid: {', '.join(STUDY_REGIMES)}")
  for regime in regimes:
    if regime.startswith(METHOD_PREFIX):
      _check_method_regime(regime)
    elif regime not in STUDY_REGIMES:
      raise ValueError(f"unknown regime {regime!r} in regimes; valid: {', '.join(STUDY_REGIMES)}")
  if len(set(regimes)) != len(regimes):
    raise ValueError(f"regimes={tuple(regimes)} lists a regime twice")
  if "joint" in regimes and len(d["tasks"]) < 2:
    raise ValueError(f"regime 'joint' needs two or more tasks, got tasks={tuple(d['tasks'])}")
  if "pairs" in regimes and len(d["tasks"]) < 2:
    raise ValueError(f"regime 'pairs' needs two or more tasks, got tasks={tuple(d['tasks'])}")
  if "groups" in regimes and not d["groups"]:
    raise ValueError("regime 'groups' needs groups, e.g. groups.sr = ('sr_x2', 'sr_x3')")
  if d["groups"] and "groups" not in regimes:
    raise ValueError("groups are given but 'groups' is not in regimes; add it or drop groups")
  for name, members in d["groups"].items():
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
      raise ValueError(f"group name {name!r} is not valid; use letters, digits and _")
    tasks_lib.get_all(members)
    if len(members) < 2:
      raise ValueError(f"groups.{name}={tuple(members)} needs two or more tasks")
  if "finetune" in regimes and not {"joint", "groups"} & set(regimes):
    raise ValueError("regime 'finetune' needs a pre-training regime: add 'joint' or 'groups'")
  seeds = list(d["seeds"])
  if not seeds or not all(isinstance(s, int) and 0 <= s < 2**32 for s in seeds):
    raise ValueError(f"seeds={tuple(seeds)}; give one or more integers in [0, 2**32)")
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds={tuple(seeds)} lists a seed twice")
  if d["metric"] not in METRICS:
    raise ValueError(f"metric={d['metric']!r}; valid: {', '.join(METRICS)}")
  if d["budget"] not in BUDGETS:
    raise ValueError(f"budget={d['budget']!r}; valid: {', '.join(BUDGETS)}")
  if d["budget"] != "steps":
    if not {"scratch", "finetune"} <= set(regimes):
      raise ValueError(f"budget={d['budget']!r} needs the regimes 'scratch' and 'finetune'")
    if d["steps"]["scratch"]:
      raise ValueError(f"budget={d['budget']!r} derives steps.scratch from pre-training + "
                       f"fine-tuning; leave steps.scratch 0, not {d['steps']['scratch']}")
    for t in d["tasks"]:
      if not reference_source(d, t):
        raise ValueError(f"budget={d['budget']!r}: task {t} has no fine-tune to equal (it is in "
                         "no group and there is no joint regime); add it to a group")
  if d["budget"] != "steps":
    _check_budget_alike(d)
  for regime in regimes:
    steps = regime_steps(d, regime)
    if regime == "scratch" and d["budget"] == "equal_flops":
      continue  # derived from the fine-tunes' compute.json when they are done
    if not isinstance(steps, int) or steps < 1:
      raise ValueError(f"steps.{regime}={steps}; give the steps of each {regime} run (>= 1)")
    lrs = regime_lrs(d, regime)
    if not lrs or not all(isinstance(lr, (int, float)) and 0 < lr < math.inf for lr in lrs):
      raise ValueError(f"lrs={tuple(lrs)} (for {regime}); give one or more positive learning "
                       "rates, e.g. lrs = (1e-3, 3e-3)")
    if len({format_lr(lr) for lr in lrs}) != len(lrs):
      raise ValueError(f"lrs={tuple(lrs)} (for {regime}) lists a learning rate twice")
  for regime, partial in d["per_regime"].items():
    if partial and regime not in regimes:
      raise ValueError(f"per_regime.{regime} is set but {regime!r} is not in regimes")
    args = {k: v for k, v in partial.get("mtl", {}).items()
            if k in ("aggregator_args", "loss_weighting_args")}
    if method_of(regime) and partial != ({"mtl": args} if args else {}):  # else unfair
      raise ValueError(f"per_regime.{regime} may set only the method's arguments (mtl."
                       "aggregator_args or mtl.loss_weighting_args); the rest is "
                       "per_regime.joint's")
    _check_partial(d["run"], partial, f"per_regime.{regime}")
  if final["batch_size"]:
    _check_final_checkpoints(d, final["checkpoints"])
  names = eval_set_names(d["run"]["eval"]["sets"])
  if d["validation"] not in names:
    raise ValueError(f"validation={d['validation']!r} is not among run.eval.sets "
                     f"({', '.join(names)}); add it there or pick one of them")
  if not d["test"]:
    raise ValueError(f"test=() names no test set; pick from run.eval.sets ({', '.join(names)})")
  for name in d["test"]:
    if name not in names:
      raise ValueError(f"test set {name!r} is not among run.eval.sets ({', '.join(names)})")
    if name == d["validation"]:
      raise ValueError(f"test set {name!r} is also the validation set; the lr is chosen on "
                       "validation, so report other sets as test")
  _check_sets_apart(d)
  for metric in REFERENCE_METRICS:
    for task, sets in d["reference"][metric].items():
      tasks_lib.get(task)
      if not isinstance(sets, dict) or not all(isinstance(v, (int, float)) for v in sets.values()):
        raise ValueError(f"reference.{metric}.{task} must map test set names to numbers")
  for task, field in d["reference"]["requires"].items():
    tasks_lib.get(task)
    if _lookup(d["run"], field) is _MISSING:
      raise ValueError(f"reference.requires.{task}={field!r} is not a run config field")


def _check_budget_alike(d):
  """The regimes a budget equates set none of the fields it takes to be the same in them: it
  derives scratch's steps from theirs (equal_images: a step of any of them is data.batch_size
  images of the task; equal_flops: a scratch step costs a fine-tune step)."""
  if d["budget"] == "equal_images":
    regimes, keys = ("scratch", "finetune", pretraining_regime(d)), ("data.batch_size",)
    why = "counts a step of scratch, pre-training and fine-tuning as the same images"
  else:
    regimes, keys = ("scratch", "finetune"), ("model", "data.batch_size")
    why = "prices a scratch step as a fine-tune step"
  for regime in regimes:
    for key in keys:
      head, _, tail = key.partition(".")
      part = d["per_regime"][regime].get(head, {})
      if (tail and isinstance(part, dict) and tail in part) or (not tail and part):
        raise ValueError(f"budget={d['budget']!r} {why}; per_regime.{regime}.{key} makes them "
                         "differ: remove it")


def _check_final_checkpoints(d, wanted):
  """The pre-training runs save and keep the `wanted` last checkpoints final_conflicts measures."""
  for regime in ("joint", "groups"):
    if regime not in d["regimes"]:
      continue
    run = {**d["run"], **d["per_regime"][regime]}
    saved = run_folder.checkpoint_steps(regime_steps(d, regime), run["checkpoint_every"])
    if len(saved) < wanted:
      raise ValueError(f"final_conflicts.checkpoints={wanted} but the {regime} runs save "
                       f"{len(saved)} (steps {', '.join(map(str, saved))}: checkpoint_every="
                       f"{run['checkpoint_every']}); lower per_regime.{regime}.checkpoint_every "
                       "or measure fewer")
    if run["keep_checkpoints"] < wanted:
      raise ValueError(f"final_conflicts.checkpoints={wanted} but the {regime} runs keep "
                       f"{run['keep_checkpoints']} (keep_checkpoints); set per_regime.{regime}."
                       f"keep_checkpoints = {wanted} or measure fewer")


_MISSING = object()


def _lookup(config, dotted):
  """config['a']['b'] for 'a.b'; _MISSING when a key is absent."""
  for key in dotted.split("."):
    if not isinstance(config, dict) or key not in config:
      return _MISSING
    config = config[key]
  return config


def _check_partial(run, partial, where, path=""):
  for key, value in partial.items():
    full = f"{path}{key}"
    if full in CONTROLLED:
      raise ValueError(f"{where}.{full} is set by the study for each run; remove it")
    if not isinstance(run, dict) or key not in run:
      raise ValueError(f"{where}.{full} is not a run config field")
    if full in run_defaults.FREE_GROUPS:  # the method's keyword arguments: checked with the method
      continue
    if isinstance(value, dict):
      _check_partial(run[key], value, where, full + ".")


def regime_steps(d, regime):
  """Steps of one run of `regime` (d: the study as a dict); 0 for scratch under equal_flops
  (known once the fine-tunes are done: see equal_flops_steps)."""
  steps = d["steps"]
  if method_of(regime):
    return steps["joint"]
  if regime in ("pairs", "groups"):
    return steps[regime] or steps["joint"]
  if regime == "scratch" and d["budget"] == "equal_flops":
    return 0
  if regime == "scratch" and d["budget"] == "equal_images":
    return pretraining_task_steps(d) + steps["finetune"]
  return steps[regime]


def pretraining_regime(d):
  """The regime whose runs fine-tunes (and budgets) refer to: joint, else groups."""
  return "joint" if "joint" in d["regimes"] else "groups"


def reference_source(d, task):
  """(column, tasks) of the pre-training a task's budget is equalled with: the joint run, else
  the first group holding the task; None if there is none."""
  if "joint" in d["regimes"]:
    return "joint", tuple(d["tasks"])
  for g, members in d["groups"].items():
    if task in members:
      return f"group:{g}", tuple(members)
  return None


def pretraining_task_steps(d):
  """Steps of pre-training that train a given task: all of them under schedule 'all', the
  expected share 1 / (tasks) under schedule 'one' (IPT's one task per step)."""
  regime = pretraining_regime(d)
  steps = regime_steps(d, regime)
  schedule = d["per_regime"][regime].get("schedule", d["run"].get("schedule", "all"))
  if schedule != "one":
    return steps
  sizes = ([len(d["tasks"])] if regime == "joint" else
           [len(m) for m in d["groups"].values()])
  return int(round(steps / max(sizes)))


def equal_flops_steps(pretraining, finetune, pretraining_tasks):
  """Scratch steps of equal training FLOPs: (pre-training FLOPs / its tasks + fine-tune FLOPs)
  / FLOPs of one fine-tune step (a scratch step of the same task costs the same: same model,
  batch and crops). pretraining, finetune: the runs' compute.json dicts."""
  methods = {run_folder.flops_counted_by(c) for c in (pretraining, finetune)}
  if len(methods) > 1:
    raise ValueError("the pre-training and fine-tune compute.json count FLOPs differently "
                     f"({' and '.join(sorted(methods))}): rerun the older with this mtl, or use "
                     "budget='equal_images'")
  per_step = finetune["flops_per_step"]
  if not per_step > 0:
    raise ValueError(f"fine-tune compute.json has flops_per_step={per_step}; equal_flops needs "
                     "a positive count (use budget='equal_images')")
  charged = pretraining["train_flops"] / pretraining_tasks + finetune["train_flops"]
  return max(1, int(round(charged / per_step)))


def regime_lrs(d, regime):
  """The lr grid of `regime`: lrs_override.<regime>, else the study's one grid `lrs` (a
  method regime joint:<method> sweeps the joint regime's grid)."""
  key = "joint" if method_of(regime) else regime
  return tuple(d["lrs_override"][key] or d["lrs"])


def lr_grids_differ(d):
  """True when some regime of the study sweeps another grid than the others."""
  return len({tuple(format_lr(x) for x in regime_lrs(d, r)) for r in d["regimes"]}) > 1


def upgrade(saved):
  """A study dict saved by an older mtl (per-regime lrs, equal_compute, fewer final_conflicts
  fields) in today's fields."""
  saved = dict(saved)
  if isinstance(saved.get("lrs"), dict):
    per = saved.pop("lrs")
    saved["lrs"] = ()
    saved["lrs_override"] = {r: per.get(r, ()) or (per.get("joint", ()) if r in ("pairs",
                             "groups") else ()) for r in STUDY_REGIMES}
  if "equal_compute" in saved:
    saved["budget"] = "equal_images" if saved.pop("equal_compute") else "steps"
  saved.setdefault("metric", "psnr_y")
  saved.setdefault("seeds", (0,))
  saved["reference"] = dict(saved.get("reference", {}))
  for field in ("requires", *REFERENCE_METRICS):
    saved["reference"].setdefault(field, {})
  saved["final_conflicts"] = {**defaults().final_conflicts.to_dict(),
                              **saved.get("final_conflicts", {})}
  return saved


def format_lr(lr):
  """2e-4 -> '2e-4', 0.0015 -> '1.5e-3' (run names)."""
  mantissa, exponent = f"{float(lr):.6e}".split("e")
  return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def differences(saved, current):
  """Study fields (dotted) that differ, ignoring REPORT_ONLY fields."""
  return files.differences(saved, current, REPORT_ONLY)
