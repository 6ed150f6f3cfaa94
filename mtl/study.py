"""Studies: a grid of runs (regimes x tasks x learning rates x seeds), expanded and run in order.

A study config (experiments/studies/*.py) starts from `defaults()` and sets:
  name           title of the report ('' -> the study directory's name)
  tasks          the tasks compared: the rows of the tables, the task list of the joint run
  run            the base run config (experiments/base.py fields): model, data, eval sets ...
  regimes        which of REGIMES to run:
                   scratch   each task alone, from random init
                   joint     all tasks together (every task every step), from random init
                   finetune  each task from the joint run of the same seed (and from each group
                             that holds it), at the pre-training lr chosen on validation
                   pairs     every pair of tasks jointly (pairwise transfer)
                   groups    every group of `groups` jointly (fine-tuned too if 'finetune')
  groups         {name: (task, ...)} for the regime 'groups'
  seeds          every run is repeated for each seed
  steps          {regime: steps per run}; pairs / groups 0 -> as joint
  equal_compute  scratch runs as many steps as pre-training + fine-tuning together
                 (steps.scratch is then derived: leave it 0)
  lrs            {regime: learning rates swept}; pairs / groups () -> as joint
  per_regime     {regime: partial run config}, merged onto `run` for that regime's runs
                 (e.g. fine-tuning data, warm-up)
  validation     the eval set the learning rate is chosen on (one of run.eval.sets)
  test           the eval sets the tables report (run.eval.sets, not the validation set)
  reference      published numbers for a reference row: label, note, psnr_y / ssim_y as
                 {task: {test set: value}}

Every run evaluates on validation and test sets (`run.eval.sets`). Runs that differ only in
their learning rate form a *sweep*; per seed, the sweep's run with the best validation score
(mean Y-PSNR on `validation` over the run's tasks) is the one reported, and the joint (or group)
run a fine-tune starts from. A fine-tune therefore waits until every lr of its pre-training sweep
of the same seed is done.

Run names (one workdir each under STUDY/runs/):
  scratch-<task>-lr<lr>-s<seed>          joint-lr<lr>-s<seed>
  finetune-<task>-lr<lr>-s<seed>         (from the joint run)
  pair-<a>+<b>-lr<lr>-s<seed>            group-<group>-lr<lr>-s<seed>
  finetune-<task>-from-<group>-lr<lr>-s<seed>
Each run is `python launch/train.py --config=experiments/from_json.py:<run>/run_config.json
--workdir=<run>`; a finished and evaluated run gets a DONE file. See WORKSPACE.md for the layout.
"""
import dataclasses
import fnmatch
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

import ml_collections
import numpy as np

from mtl import tasks as tasks_lib

REGIMES = ("scratch", "joint", "finetune", "pairs", "groups")
# Fields of the run config that the study sets for each run; per_regime may not set them.
CONTROLLED = ("tasks", "regime", "seed", "total_steps", "optim.lr", "init_from")
# Study fields that only change the report; they may differ between invocations.
REPORT_ONLY = ("name", "test", "reference")
REFERENCE_FIELDS = ("label", "note", "psnr_y", "ssim_y")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = "launch/train.py"
FROM_JSON = "experiments/from_json.py"
STUDY_FILE = "study.json"
RUNS_DIR = "runs"
RUN_CONFIG = "run_config.json"
DONE_FILE = "DONE"
LOG_FILE = "train.log"
FORMAT_VERSION = 1
DEFAULT_JAX_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "mtl", "jax_cache")


def defaults():
  """Every study field with its default; study configs start from this."""
  c = ml_collections.ConfigDict()
  c.name = ""
  c.tasks = ()
  c.run = None
  c.regimes = ("scratch", "joint", "finetune")
  c.groups = ml_collections.ConfigDict()
  c.seeds = (0,)
  c.steps = ml_collections.ConfigDict({r: 0 for r in REGIMES})
  c.equal_compute = False
  c.lrs = ml_collections.ConfigDict({r: () for r in REGIMES})
  c.per_regime = ml_collections.ConfigDict({r: ml_collections.ConfigDict() for r in REGIMES})
  c.validation = "photos_val"
  c.test = ("photos",)
  c.reference = ml_collections.ConfigDict(dict(
      label="", note="", psnr_y=ml_collections.ConfigDict(), ssim_y=ml_collections.ConfigDict()))
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
  return [e.split("=", 1)[0].strip() for e in str(sets).split(",") if e.strip()]


def validate(study):
  """Check a study config; ValueError with one line naming the bad field and the valid values."""
  d = _as_dict(study)
  _unknown(d, defaults().keys(), "")
  for key in ("steps", "lrs", "per_regime"):
    _unknown(d[key], REGIMES, key)
  _unknown(d["reference"], REFERENCE_FIELDS, "reference")
  if not d["tasks"]:
    raise ValueError("tasks=() names no task; list the tasks to compare, e.g. "
                     "('denoise_30', 'sr_x2', 'derain')")
  tasks_lib.get_all(d["tasks"])
  if not isinstance(d["run"], dict) or not {"model", "data", "eval", "optim"} <= set(d["run"]):
    raise ValueError("run is not a run config; set it to one, e.g. experiments.tiny.get_config()")
  regimes = list(d["regimes"])
  if not regimes:
    raise ValueError(f"regimes=() names no regime; valid: {', '.join(REGIMES)}")
  for regime in regimes:
    if regime not in REGIMES:
      raise ValueError(f"unknown regime {regime!r} in regimes; valid: {', '.join(REGIMES)}")
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
  if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
    raise ValueError(f"seeds={tuple(seeds)}; give one or more non-negative integers")
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds={tuple(seeds)} lists a seed twice")
  if d["equal_compute"]:
    if not {"scratch", "finetune"} <= set(regimes):
      raise ValueError("equal_compute needs the regimes 'scratch' and 'finetune'")
    if d["steps"]["scratch"]:
      raise ValueError(f"equal_compute=True derives steps.scratch (pre-training + fine-tuning "
                       f"steps); leave steps.scratch 0, not {d['steps']['scratch']}")
  for regime in regimes:
    steps = regime_steps(d, regime)
    if not isinstance(steps, int) or steps < 1:
      raise ValueError(f"steps.{regime}={steps}; give the steps of each {regime} run (>= 1)")
    lrs = regime_lrs(d, regime)
    if not lrs or not all(isinstance(lr, (int, float)) and lr > 0 for lr in lrs):
      raise ValueError(f"lrs.{regime}={tuple(lrs)}; give one or more positive learning rates")
    if len({format_lr(lr) for lr in lrs}) != len(lrs):
      raise ValueError(f"lrs.{regime}={tuple(lrs)} lists a learning rate twice")
  for regime, partial in d["per_regime"].items():
    if partial and regime not in regimes:
      raise ValueError(f"per_regime.{regime} is set but {regime!r} is not in regimes")
    _check_partial(d["run"], partial, f"per_regime.{regime}")
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
  for metric in ("psnr_y", "ssim_y"):
    for task, sets in d["reference"][metric].items():
      tasks_lib.get(task)
      if not isinstance(sets, dict) or not all(isinstance(v, (int, float)) for v in sets.values()):
        raise ValueError(f"reference.{metric}.{task} must map test set names to numbers")


def _check_partial(run, partial, where, path=""):
  for key, value in partial.items():
    full = f"{path}{key}"
    if full in CONTROLLED:
      raise ValueError(f"{where}.{full} is set by the study for each run; remove it")
    if not isinstance(run, dict) or key not in run:
      raise ValueError(f"{where}.{full} is not a run config field")
    if isinstance(value, dict):
      _check_partial(run[key], value, where, full + ".")


def regime_steps(d, regime):
  """Steps of one run of `regime` (d: the study as a dict)."""
  steps = d["steps"]
  if regime in ("pairs", "groups"):
    return steps[regime] or steps["joint"]
  if regime == "scratch" and d["equal_compute"]:
    return pretraining_steps(d) + steps["finetune"]
  return steps[regime]


def pretraining_steps(d):
  """The steps a fine-tune's starting point was trained for (joint, else the groups)."""
  return regime_steps(d, "joint" if "joint" in d["regimes"] else "groups")


def regime_lrs(d, regime):
  lrs = d["lrs"]
  return tuple(lrs[regime] or (lrs["joint"] if regime in ("pairs", "groups") else ()))


def format_lr(lr):
  """2e-4 -> '2e-4', 0.0015 -> '1.5e-3' (run names)."""
  mantissa, exponent = f"{float(lr):.6e}".split("e")
  return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


# ----------------------------------------------------------------------------- expansion


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One run of a study."""
  name: str
  regime: str        # one of REGIMES
  column: str        # its column in the tables: scratch, joint, finetune, pair:a+b, group:g,
                     # finetune:g (fine-tuned from group g)
  tasks: tuple
  seed: int
  lr: float
  steps: int
  sweep: str         # the name without the lr: the runs among which the lr is chosen
  source: str = ""   # finetune: the sweep of the pre-training runs it starts from

  def to_json(self):
    return dict(dataclasses.asdict(self), tasks=list(self.tasks))


def expand(study):
  """The study's runs in the order they run: per seed, scratch, joint, its fine-tunes, pairs,
  groups, their fine-tunes; within each, tasks in study order, then learning rates."""
  d = _as_dict(study)
  regimes, names = d["regimes"], list(d["tasks"])
  runs = []

  def add(regime, column, prefix, run_tasks, seed, source=""):
    for lr in regime_lrs(d, regime):
      runs.append(RunSpec(
          name=f"{prefix}-lr{format_lr(lr)}-s{seed}", regime=regime, column=column,
          tasks=tuple(run_tasks), seed=seed, lr=float(lr), steps=regime_steps(d, regime),
          sweep=f"{prefix}-s{seed}", source=source))

  for seed in d["seeds"]:
    if "scratch" in regimes:
      for t in names:
        add("scratch", "scratch", f"scratch-{t}", [t], seed)
    if "joint" in regimes:
      add("joint", "joint", "joint", names, seed)
      if "finetune" in regimes:
        for t in names:
          add("finetune", "finetune", f"finetune-{t}", [t], seed, source=f"joint-s{seed}")
    if "pairs" in regimes:
      for i, a in enumerate(names):
        for b in names[i + 1:]:
          add("pairs", f"pair:{a}+{b}", f"pair-{a}+{b}", [a, b], seed)
    if "groups" in regimes:
      for g, members in d["groups"].items():
        add("groups", f"group:{g}", f"group-{g}", members, seed)
      if "finetune" in regimes:
        for g, members in d["groups"].items():
          for t in names:
            if t in members:
              add("finetune", f"finetune:{g}", f"finetune-{t}-from-{g}", [t], seed,
                  source=f"group-{g}-s{seed}")
  return runs


def _merge(target, partial):
  for key, value in partial.items():
    if isinstance(value, dict) and isinstance(target.get(key), dict):
      _merge(target[key], value)
    else:
      target[key] = value


def run_config(study, spec, init_from=""):
  """The run config (a plain dict, JSON-ready) of one run."""
  d = _as_dict(study)
  config = json.loads(json.dumps(d["run"]))
  _merge(config, d["per_regime"][spec.regime])
  config["tasks"] = list(spec.tasks)
  config["regime"] = spec.regime if spec.regime in ("scratch", "finetune") else "joint"
  config["seed"] = spec.seed
  config["total_steps"] = spec.steps
  config["optim"]["lr"] = spec.lr
  config["init_from"] = init_from
  if len(spec.tasks) == 1:  # one task has no pairs to probe (the trainer would only warn)
    config["conflicts"]["every"] = 0
  return config


def _flatten(d, prefix=""):
  out = {}
  for key, value in d.items():
    if isinstance(value, dict) and value:
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return out


def differences(saved, current):
  """Study fields (dotted) that differ, ignoring REPORT_ONLY fields."""
  a, b = _flatten(saved), _flatten(json.loads(json.dumps(current)))
  report_only = lambda k: any(k == f or k.startswith(f + ".") for f in REPORT_ONLY)
  return sorted(k for k in set(a) | set(b) if not report_only(k) and a.get(k) != b.get(k))


def _tuples(value):
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _write_json(path, obj):
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _read_json(path):
  with open(path) as f:
    return json.load(f)


# ----------------------------------------------------------------------------- the study


class Waiting(Exception):
  """A fine-tune whose pre-training runs are not all done yet."""


@dataclasses.dataclass
class Selection:
  """The run a sweep reports for one seed, chosen on validation."""
  run: RunSpec
  score: float            # its validation score (mean Y-PSNR over its tasks)
  candidates: list        # [(RunSpec, score or None when not done)] in lr order
  complete: bool          # every lr of the sweep is done


class Study:
  """A validated, expanded study bound to its directory."""

  def __init__(self, config, workdir):
    validate(config)
    self.config = json.loads(json.dumps(_as_dict(config)))
    self.workdir = os.path.abspath(workdir)
    self.runs = expand(self.config)
    self.by_name = {r.name: r for r in self.runs}
    self.sweeps = {}
    for r in self.runs:
      self.sweeps.setdefault(r.sweep, []).append(r)
    self._results = {}

  @classmethod
  def load(cls, workdir):
    """The study saved in workdir/study.json (for the report)."""
    path = os.path.join(workdir, STUDY_FILE)
    if not os.path.exists(path):
      raise FileNotFoundError(f"no {STUDY_FILE} in {workdir}; run launch/study.py "
                              f"--workdir={workdir} first")
    saved = _read_json(path)
    return cls(ml_collections.ConfigDict(_tuples(saved["study"])), workdir)

  @property
  def name(self):
    return self.config["name"] or os.path.basename(self.workdir.rstrip("/"))

  @property
  def tasks(self):
    return list(self.config["tasks"])

  @property
  def validation(self):
    return self.config["validation"]

  @property
  def test_sets(self):
    return list(self.config["test"])

  # -- files

  def run_dir(self, name):
    return os.path.join(self.workdir, RUNS_DIR, name)

  def path(self, name, filename):
    return os.path.join(self.run_dir(name), filename)

  def is_done(self, name):
    return os.path.exists(self.path(name, DONE_FILE))

  def status(self, name):
    if self.is_done(name):
      return "done"
    if os.path.exists(self.path(name, "config.json")):  # the trainer has started it
      return "started"
    return "pending"

  def results(self, name):
    """results.json of a done run (cached), else None."""
    if name not in self._results:
      done = self.is_done(name)
      self._results[name] = _read_json(self.path(name, "results.json")) if done else None
    return self._results[name]

  def done_info(self, name):
    """The DONE file's content ({} if not done)."""
    return _read_json(self.path(name, DONE_FILE)) if self.is_done(name) else {}

  def compute(self, name):
    path = self.path(name, "compute.json")
    return _read_json(path) if self.is_done(name) and os.path.exists(path) else None

  def command(self, spec, python="python"):
    return [python, TRAIN, f"--config={FROM_JSON}:{self.path(spec.name, RUN_CONFIG)}",
            f"--workdir={self.run_dir(spec.name)}"]

  def study_json(self):
    return {"version": FORMAT_VERSION, "study": self.config,
            "runs": [r.to_json() for r in self.runs]}

  def check_saved(self):
    """Refuse (ValueError, one line) a study.json in workdir that holds a different study."""
    path = os.path.join(self.workdir, STUDY_FILE)
    if not os.path.exists(path):
      return False
    saved = _read_json(path)["study"]
    diff = differences(saved, self.config)
    if diff:
      a, b = _flatten(saved), _flatten(self.config)
      shown = ", ".join(f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in diff[:4])
      more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
      raise ValueError(f"{self.workdir} holds a different study: {shown}{more}; use a new "
                       "--workdir, or the same study config to continue it")
    return True

  def prepare(self):
    """Write study.json (first start; a changed study is refused) and the runs' directories."""
    exists = self.check_saved()
    os.makedirs(os.path.join(self.workdir, RUNS_DIR), exist_ok=True)
    if not exists:
      _write_json(os.path.join(self.workdir, STUDY_FILE), self.study_json())
    elif _read_json(os.path.join(self.workdir, STUDY_FILE)) != self.study_json():
      _write_json(os.path.join(self.workdir, STUDY_FILE), self.study_json())  # report fields

  def write_run_config(self, spec):
    """Write run_config.json (a fine-tune's needs its pre-training runs done); returns it."""
    init_from = self.init_from(spec) if spec.regime == "finetune" else ""
    config = run_config(self.config, spec, init_from)
    os.makedirs(self.run_dir(spec.name), exist_ok=True)
    _write_json(self.path(spec.name, RUN_CONFIG), config)
    return config

  # -- learning rate selection

  def validation_score(self, spec):
    """Mean Y-PSNR on the validation set over the run's tasks (None if not done)."""
    results = self.results(spec.name)
    if results is None:
      return None
    values = [sets[self.validation]["psnr_y"] for t, sets in results["tasks"].items()
              if t in spec.tasks and self.validation in sets]
    if not values:
      raise ValueError(f"run {spec.name} has no {self.validation!r} result for its tasks "
                       f"{list(spec.tasks)}; the validation set must apply to every task")
    return float(np.mean(values))

  def select(self, sweep):
    """The sweep's best done run on validation (ties: the first lr), or None if none is done."""
    candidates = [(r, self.validation_score(r)) for r in self.sweeps[sweep]]
    done = [(r, s) for r, s in candidates if s is not None]
    if not done:
      return None
    best = max(done, key=lambda rs: rs[1])  # max keeps the first of equal scores
    return Selection(best[0], best[1], candidates, len(done) == len(candidates))

  def init_from(self, spec):
    """A fine-tune's starting point: its source sweep's run chosen on validation."""
    missing = [r.name for r in self.sweeps[spec.source] if not self.is_done(r.name)]
    if missing:
      raise Waiting(f"{spec.name} starts from the best of {spec.source.replace('-s', '-lr*-s')} "
                    f"on {self.validation}; not done yet: {', '.join(missing)}")
    return self.run_dir(self.select(spec.source).run.name)

  def describe_init(self, spec):
    try:
      return self.init_from(spec)
    except Waiting:
      names = ", ".join(r.name for r in self.sweeps[spec.source])
      return f"<best on {self.validation} of {names}; chosen when they are done>"


# ----------------------------------------------------------------------------- running


def matching(runs, only):
  """Runs whose name matches one of the comma-separated globs in `only` (all for '')."""
  globs = [g.strip() for g in only.split(",") if g.strip()]
  if not globs:
    return list(runs)
  chosen = [r for r in runs if any(fnmatch.fnmatchcase(r.name, g) for g in globs)]
  if not chosen:
    raise ValueError(f"--only={only} matches no run; names look like {runs[0].name}")
  return chosen


def format_duration(seconds):
  seconds = int(round(max(0.0, seconds)))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f"{hours}h{minutes:02d}m"
  return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def summary_line(spec):
  return (f"{spec.regime} {','.join(spec.tasks)} | {spec.steps} steps | "
          f"lr {format_lr(spec.lr)} | seed {spec.seed}")


def dry_run(study, only="", out=sys.stdout):
  """Print the runs, their state and exact commands (run from the repository root)."""
  study.check_saved()
  runs = matching(study.runs, only)
  c = study.config
  out.write(f"study {study.name}: {len(runs)} of {len(study.runs)} runs in {study.workdir}\n"
            f"  tasks {', '.join(c['tasks'])}; regimes {', '.join(c['regimes'])}; seeds "
            f"{', '.join(map(str, c['seeds']))}; lr chosen on {c['validation']}; test "
            f"{', '.join(c['test'])}\n")
  width = len(str(len(runs)))
  for i, spec in enumerate(runs, 1):
    out.write(f"run {i:>{width}}/{len(runs)} {spec.name}  [{study.status(spec.name)}]  "
              f"{summary_line(spec)}\n")
    if spec.regime == "finetune":
      out.write(f"    init_from: {study.describe_init(spec)}\n")
    out.write(f"    {shlex.join(study.command(spec))}\n")
  out.flush()
  return 0


try:  # loaded here: the child, between fork and exec, must only call it
  import ctypes
  _PRCTL = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: an orphaned run is possible, nothing else changes
  _PRCTL = None


def _die_with_parent():
  """In the child: SIGTERM when the study process dies (the trainer checkpoints and stops)."""
  if _PRCTL is not None:
    _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Runner:
  """Runs a study's runs one after the other, each as a subprocess of launch/train.py."""

  def __init__(self, study, out=sys.stdout, python=sys.executable, jax_cache=""):
    self.study = study
    self.out = out
    self.python = python
    self.jax_cache = jax_cache
    self.child = None
    self.signalled = None
    self.lock = threading.Lock()

  def say(self, message):
    with self.lock:
      self.out.write(message + "\n")
      self.out.flush()

  def _on_signal(self, signum, frame):
    if self.signalled is None:
      self.signalled = signum
      self.say(f"[study] {signal.Signals(signum).name}: the current run checkpoints and stops "
               "(again to kill it); run the same command to resume")
      self._send(signal.SIGTERM)
    else:
      self._send(signal.SIGKILL)

  def _send(self, sig):
    if self.child is not None and self.child.poll() is None:
      try:
        self.child.send_signal(sig)
      except ProcessLookupError:
        pass

  def _env(self):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # Runs share most of their programs (model init, eval, same-shaped steps): JAX's persistent
    # compilation cache spares each run most of its compile time (~15 s of 20 s for tiny).
    if self.jax_cache == "off":
      env.pop("JAX_COMPILATION_CACHE_DIR", None)
    elif self.jax_cache:
      env["JAX_COMPILATION_CACHE_DIR"] = os.path.abspath(self.jax_cache)
    else:
      env.setdefault("JAX_COMPILATION_CACHE_DIR", DEFAULT_JAX_CACHE)
    return env

  def _pump(self, stream, prefix, log):
    for line in iter(stream.readline, b""):
      text = line.decode(errors="replace").rstrip("\n")
      log.write(text + "\n")
      log.flush()
      self.say(f"{prefix}{text}")
    stream.close()

  def _train(self, spec, prefix):
    """One run as a subprocess; returns its exit status."""
    with open(self.study.path(spec.name, LOG_FILE), "a") as log:
      log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(self.study.command(spec))}\n")
      # Own session: a terminal's Ctrl-C reaches only the study, which turns it into SIGTERM.
      self.child = subprocess.Popen(
          self.study.command(spec, self.python), cwd=ROOT, env=self._env(),
          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
          preexec_fn=_die_with_parent)
      pump = threading.Thread(target=self._pump, args=(self.child.stdout, prefix, log),
                              daemon=True)
      pump.start()
      code = self.child.wait()
      pump.join(timeout=10)
      self.child = None
    return code

  def _finished(self, spec):
    path = self.study.path(spec.name, "results.json")
    return os.path.exists(path) and _read_json(path).get("step") == spec.steps

  def run(self, only=""):
    """Run the matching runs that are not done; the exit status of the study."""
    study = self.study
    runs = matching(study.runs, only)
    study.prepare()
    for sig in (signal.SIGINT, signal.SIGTERM):
      signal.signal(sig, self._on_signal)
    total, width = len(runs), len(str(len(runs)))
    started, ran, waiting = time.time(), 0, []
    self.say(f"[study] {study.name}: {total} runs in {study.workdir} "
             f"({sum(study.is_done(r.name) for r in runs)} done)")
    for i, spec in enumerate(runs, 1):
      head = f"run {i:>{width}}/{total} {spec.name}"
      if self.signalled is not None:  # signalled between two runs: start no other
        self.say(f"[study] interrupted before {spec.name}; run the same command to resume")
        return 128 + self.signalled
      if study.is_done(spec.name):
        self.say(f"{head}: done, skipped")
        continue
      try:
        config = study.write_run_config(spec)
      except Waiting as wait:
        self.say(f"{head}: waiting: {wait}")
        waiting.append(spec.name)
        continue
      state = study.status(spec.name)
      self.say(f"{head}: {'resuming' if state == 'started' else 'starting'} | "
               f"{summary_line(spec)}"
               + (f" | from {os.path.basename(config['init_from'])}" if config["init_from"]
                  else ""))
      t0 = time.time()
      code = self._train(spec, f"[{i}/{total} {spec.name}] ")
      if self.signalled is not None:
        self.say(f"{head}: interrupted; run the same command to resume")
        return 128 + self.signalled
      if code != 0 or not self._finished(spec):
        self.say(f"{head}: failed (exit status {code}); its log: "
                 f"{study.path(spec.name, LOG_FILE)}; fix it and run the same command to resume")
        return 1
      seconds = time.time() - t0
      _write_json(study.path(spec.name, DONE_FILE),
                  {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": seconds})
      ran += 1
      left = sum(not study.is_done(r.name) for r in runs)
      eta = (time.time() - started) / ran * left
      self.say(f"{head}: done in {format_duration(seconds)} | study: {total - left}/{total} done"
               f", elapsed {format_duration(time.time() - started)}"
               + (f", ~{format_duration(eta)} to go" if left else ""))
    if waiting:
      self.say(f"[study] {len(waiting)} runs wait for their pre-training runs: "
               f"{', '.join(waiting)}")
      return 3
    self.say(f"[study] all {total} runs done in {study.workdir}; tables: python launch/report.py "
             f"--workdir={study.workdir}")
    return 0
