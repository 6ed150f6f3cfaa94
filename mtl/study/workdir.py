"""A study bound to its directory: runs' files and states, and the learning rate chosen per sweep.

Layout (see WORKSPACE.md): STUDY/study.json, STUDY/runs/<run>/{run_config.json, DONE, train.log,
and the run's own workdir files}. Runs that differ only in their learning rate form a sweep; per
seed, the sweep's run with the best validation score is the one reported and the one a
fine-tune starts from.
"""
import dataclasses
import fcntl
import json
import math
import os
import re
import time

import ml_collections
import numpy as np

from mtl import checkpoints, conflicts, files, run_defaults, run_folder
from mtl.study.runs import StudyRun, expand, is_pretraining, run_config, sweep_runs
from mtl.study.spec import (REPORT_ONLY, defaults, equal_flops_steps, method_of,
                            reference_source, upgrade, validate, _as_dict)

STUDY_FILE = "study.json"
RUNS_DIR = "runs"
RUN_CONFIG = "run_config.json"
DONE_FILE = "DONE"
FAILED_FILE = "FAILED"
LOG_FILE = run_folder.LOG_FILE
RUN_LOCK = "RUNNING"
# The wall seconds and count of a run's ended starts; not in STUDY_FILES, so a superseded run's
# moves with the trainer files those starts made.
STARTS_FILE = "STARTS"
# A run's own files the study writes; the rest of its directory is the trainer's workdir.
STUDY_FILES = (RUN_CONFIG, DONE_FILE, FAILED_FILE, LOG_FILE, RUN_LOCK)
FORMAT_VERSION = 1
# Run-config fields whose change by mtl (not by a study config) alters what a finished run's
# results mean, and how: said when a study holding such runs is continued.
PROTOCOL_CHANGES = {
    "data.step_offset": "a fine-tune now draws the samples after its pre-training's steps, "
                        "where it drew the pre-training's first ones again",
    "eval.tiling": "an evaluation now keeps each tile's centre, where it averaged overlapping "
                   "tiles",
    "model.init": "a model now starts from the official IPT's initialisation, where it took "
                  "nnx's"}


def _read_study(path):
  """study.json's dict; ValueError (one line) where it holds no study, or one without a field
  that an older mtl's would also have (spec.upgrade fills in those it lacked)."""
  saved = files.read_json(path)
  damaged = "it may be damaged: restore it, or rerun launch/study.py with the study's config"
  if not isinstance(saved.get("study"), dict):
    raise ValueError(f"{path} holds no study (its 'study' entry is missing); {damaged}")
  study = upgrade(saved["study"])
  missing = [key for key in defaults() if key not in study]
  missing += [f"reference.{key}" for key in defaults().reference
              if isinstance(study.get("reference"), dict) and key not in study["reference"]]
  # an older mtl's study without seeds ran seed 0 alone: runs of other seeds say it is damaged
  seeds = {int(m.group(1)) for run in saved.get("runs", []) if isinstance(run, dict)
           for m in [re.search(r"-s(\d+)$", str(run.get("name", "")))] if m}
  if "seeds" not in saved["study"] and seeds - {0}:
    missing.append(f"seeds (its runs have seeds {', '.join(map(str, sorted(seeds)))})")
  if missing:
    raise ValueError(f"{path}: its study has no {', '.join(missing)}; {damaged}")
  return saved


class Waiting(Exception):
  """A fine-tune whose pre-training runs are not all done yet."""


@dataclasses.dataclass
class Selection:
  """The run a sweep reports for one seed, chosen on validation."""
  run: StudyRun
  score: float            # its validation score (mean study.metric over its tasks)
  candidates: list        # [(StudyRun, score or None when not done)] in lr order
  complete: bool          # every lr of the sweep is done

  @property
  def edge(self):
    """'smallest' / 'largest' where the chosen lr is an end of its grid (the best lr may lie
    beyond it: the grid does not bracket it), 'only' for a grid of one lr, else ''."""
    lrs = [r.lr for r, _ in self.candidates]
    if len(set(lrs)) < 2:
      return "only"
    return ("smallest" if self.run.lr == min(lrs) else
            "largest" if self.run.lr == max(lrs) else "")

  @property
  def lead(self):
    """At a grid end, the chosen score minus that of the next lr inward (how flat the landscape
    is where the grid stops: a small lead says the lr hardly matters there); None inside the
    grid, for one lr, or where the next lr has no score (diverged or not done)."""
    if self.edge not in ("smallest", "largest"):
      return None
    ranked = sorted(self.candidates, key=lambda rs: rs[0].lr)
    _, score = ranked[1] if self.edge == "smallest" else ranked[-2]
    return None if score is None else self.score - score


def lock_holder(study, name):
  """Who runs the run now: the RUNNING file's content ({} if unreadable) while a live study
  process holds its lock; else the run's train.lock record (with "lock": its path) while a
  trainer this study did not start holds it (launch/train.py run by hand); else None (no lock,
  or a stale one left by a killed process)."""
  path = study.path(name, RUN_LOCK)
  if not os.path.exists(path):
    return trainer_holder(study, name)
  with open(path, "a+") as handle:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      try:
        holder = json.loads(handle.read() or "{}")
      except (ValueError, RecursionError):
        return {}
      return holder if isinstance(holder, dict) else {}  # its callers .get() fields
    fcntl.flock(handle, fcntl.LOCK_UN)
  return trainer_holder(study, name)


def trainer_holder(study, name):
  lock = files.WorkdirLock(study.run_dir(name), run_folder.LOCK_FILE)
  holder = lock.live_holder()
  return None if holder is None else {**holder, "lock": lock.path}


def _check_methods(config, runs):
  """Each joint:<method> regime's config.mtl (its arguments included) as the trainer checks it,
  before any run: a bad argument would fail that regime's runs only after the others."""
  from mtl import aggregators
  for spec in {r.regime: r for r in runs if method_of(r.regime)}.values():
    run = run_config(config, spec)
    try:
      aggregators.check_config(run["mtl"], len(spec.tasks), run.get("schedule", "all"))
    except ValueError as error:
      raise ValueError(f"regime {spec.regime}: {error}") from None


class Study:
  """A validated, expanded study bound to its directory."""

  def __init__(self, config, workdir):
    validate(config)
    self.config = json.loads(json.dumps(_as_dict(config)))
    self.workdir = os.path.abspath(workdir)
    self.runs = expand(self.config)
    _check_methods(self.config, self.runs)
    self.by_name = {r.name: r for r in self.runs}
    self.sweeps = {}
    for r in self.runs:
      self.sweeps.setdefault(r.sweep, []).append(r)
    self._results = {}

  def check_runs(self):
    """One run of each regime checked as the trainer checks its config (its folders included),
    before any run trains: a bad value would fail that regime's runs only after the others
    trained. Fine-tunes aside: their start is chosen when they start (their other fields are
    their pre-training's). Not on load: a report reads a study whose folders may be elsewhere."""
    from mtl import run_config as trainer_config
    for spec in {r.regime: r for r in self.runs if not r.regime.startswith("finetune")}.values():
      run = run_config(self.config, spec)
      run["total_steps"] = max(run["total_steps"], 1)  # equal_flops: derived when it starts
      try:
        trainer_config.validate(trainer_config.normalize(
            ml_collections.ConfigDict(files.tuples(run))))
      except (ValueError, FileNotFoundError) as error:
        raise ValueError(f"regime {spec.regime}: {error}") from None

  @classmethod
  def load(cls, workdir):
    """The study saved in workdir/study.json (for the report)."""
    path = os.path.join(workdir, STUDY_FILE)
    if not os.path.exists(path) and os.path.exists(os.path.join(workdir, run_folder.CONFIG_FILE)):
      raise FileNotFoundError(f"{workdir} is a training run's workdir, not a study's: its scores "
                              f"are in its {run_folder.RESULTS_FILE}, its conflicts drawn by "
                              f"launch/analyze.py --workdir={workdir}")
    parent = os.path.dirname(os.path.abspath(workdir))
    if not os.path.exists(path) and os.path.exists(os.path.join(parent, STUDY_FILE)):
      raise FileNotFoundError(f"{workdir} is inside the study {parent}; give --workdir={parent}")
    if not os.path.exists(path):
      raise FileNotFoundError(f"no {STUDY_FILE} in {workdir}; run launch/study.py "
                              f"--workdir={workdir} first")
    saved = _read_study(path)
    return cls(ml_collections.ConfigDict(files.tuples(upgrade(saved["study"]))), workdir)

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

  @property
  def metric(self):
    return self.config["metric"]

  # -- files

  def run_dir(self, name):
    return os.path.join(self.workdir, RUNS_DIR, name)

  def path(self, name, *filenames):
    return os.path.join(self.run_dir(name), *filenames)

  def is_done(self, name):
    return os.path.exists(self.path(name, DONE_FILE))

  def has_started(self, name):
    return os.path.exists(self.path(name, run_folder.CONFIG_FILE))  # the trainer's first write

  def diverged(self, name):
    """The error a finished run stopped on when its loss, parameters or output went non-finite
    (its DONE says so: a result of its lr, never chosen by its sweep), else None."""
    return self.done_info(name).get("diverged")

  def status(self, name):
    if self.is_done(name):
      return "diverged" if self.diverged(name) else "done"
    if os.path.exists(self.path(name, FAILED_FILE)):  # its last attempt failed
      return "failed"
    if self.has_started(name):
      return "started"
    return "pending"

  def results(self, name):
    """results.json of a done run (cached once it is done: a runner's study sees runs finish),
    else None."""
    if name not in self._results:
      if not self.is_done(name):
        return None
      self._results[name] = run_folder.read_results(self.run_dir(name))
    return self._results[name]

  def done_info(self, name):
    """The DONE file's content ({} if not done)."""
    return files.read_json(self.path(name, DONE_FILE)) if self.is_done(name) else {}

  def compute(self, name):
    """compute.json of a run that trained to its end (done, not diverged), else None."""
    path = self.path(name, run_folder.COMPUTE_FILE)
    finished = self.is_done(name) and not self.diverged(name)
    return files.read_json(path) if finished and os.path.exists(path) else None

  def command(self, spec, train):
    """The command that trains run `spec`: train(its run_config.json, its workdir), the caller's
    command (launch/study.py: launch/train.py on experiments/from_json.py)."""
    return train(self.path(spec.name, RUN_CONFIG), self.run_dir(spec.name))

  def study_json(self):
    return {"version": FORMAT_VERSION, "study": self.config,
            "runs": [r.to_json() for r in self.runs]}

  def run_change(self, name):
    """How this study would configure the finished run `name` differently than it ran (its
    run_config.json), in words ('' when it would not): the fields that change, or why none
    compare (dropped, another start chosen, unreadable). A field its run_config.json predates
    counts where this study gives it another value than its default."""
    spec = self.by_name.get(name)
    if spec is None:
      return "dropped by this study"
    try:
      old = files.read_json(self.path(name, RUN_CONFIG))
      new = run_config(self.config, spec, old["init_from"],
                       self.known_steps(spec) or old["total_steps"])
      if spec.regime == "finetune":  # a changed grid/validation/metric chooses another start
        chosen = os.path.basename(self.init_from(spec))
        if chosen != os.path.basename(old["init_from"]):
          return f"init_from ({os.path.basename(old['init_from'])} -> {chosen})"
    except Waiting:
      return "init_from (its start would be chosen among runs not trained yet)"
    except (OSError, ValueError, KeyError) as error:
      return f"its {RUN_CONFIG} does not compare ({error})"
    fields = files.differences(old, new, defaults=run_defaults.config_defaults())
    return files.show_changes(old, new, fields) if fields else ""

  def finished_run_changes(self, saved):
    """{name: run_change(name)} of the finished runs (DONE) of the study saved as `saved`
    (study.json's content) that this study drops or would configure differently."""
    names = [r["name"] for r in saved.get("runs", []) if self.is_done(r["name"])]
    return {n: what for n, what in ((n, self.run_change(n)) for n in names) if what}

  def _refuse_changed_protocol(self, path, saved):
    """Refuse (one line) a study whose finished runs this mtl would configure differently under
    the study they ran with (e.g. fine-tunes run before data.step_offset: their data repeated
    the pre-training's): new runs beside them would answer with two protocols mixed."""
    try:
      ran = Study(ml_collections.ConfigDict(files.tuples(upgrade(saved["study"]))), self.workdir)
    except (KeyError, TypeError, ValueError):
      return  # no study to compare with: the current study's check decides
    # a finished run without its run_config.json has no protocol to compare (e.g. made by hand)
    changes = {n: what for n, what in ran.finished_run_changes(saved).items()
               if os.path.exists(ran.path(n, RUN_CONFIG))}
    if changes:
      name, what = next(iter(changes.items()))
      why = "; ".join(PROTOCOL_CHANGES[f] for f in PROTOCOL_CHANGES if f in what)
      raise ValueError(
          f"{path}: this mtl configures the finished run(s) {files.field_list(list(changes), 3)} "
          f"differently than they ran, with the same study config ({name}: {what})"
          + (f": {why}" if why else "") + "; their results would be mixed with runs of another "
          "protocol: run the study in a new --workdir (this one stays readable by "
          "launch/report.py)")

  def check_saved(self, dry_run=False):
    """Whether workdir holds a study.json; refuses (ValueError, one line) a different study
    there when the change drops or alters a finished run. A change that only alters unfinished
    runs (the fix for what made one fail) is accepted and said: finished runs are kept (refused
    while another process runs one of its runs: that run would finish the old study). Without
    a study.json, a training run's workdir is refused, and so are finished runs this study
    would configure differently."""
    path = os.path.join(self.workdir, STUDY_FILE)
    if not os.path.exists(path):
      if os.path.exists(os.path.join(self.workdir, run_folder.CONFIG_FILE)):
        raise ValueError(f"--workdir={self.workdir} is a training run's workdir (it holds "
                         f"{run_folder.CONFIG_FILE}); give a study a folder of its own")
      runs = os.path.join(self.workdir, RUNS_DIR)
      found = sorted(os.listdir(runs)) if os.path.isdir(runs) else []
      changed = self.finished_run_changes({"runs": [{"name": n} for n in found]})
      if changed:
        name, what = next(iter(changed.items()))
        raise ValueError(f"{self.workdir} holds no {STUDY_FILE} but finished runs this study "
                         f"would configure differently ({files.field_list(list(changed), 3)}; "
                         f"{name}: {what}); use a new --workdir, or the study config they were "
                         "run with")
      return False
    saved = _read_study(path)
    self._refuse_changed_protocol(path, saved)
    finished = list(self.finished_run_changes(saved))
    advice = (f"it changes the finished run(s) {files.field_list(finished, 3)}: " if finished
              else "") + "use a new --workdir, or the same study config to continue it"
    try:
      added = files.refuse_changes(self.workdir, saved["study"], self.config, REPORT_ONLY,
                                   "a different study", advice)
    except ValueError:
      if finished:
        raise
      changed = [k for k in files.differences(saved["study"], self.config, REPORT_ONLY)
                 if k in files.flatten(saved["study"])]
      running = [r["name"] for r in saved.get("runs", []) if lock_holder(self, r["name"])
                 is not None]
      if running:  # it would finish under the old study, beside runs of the new one
        raise ValueError(f"{path}: the study changed ({files.field_list(changed, 4)}) while "
                         f"another process runs {files.field_list(running, 3)}; let it finish "
                         "(or stop it), then run the changed study")
      print(f"{path}: the study changed ({files.field_list(changed, 4)}); no finished run "
            + ("would change: they would be kept, the unfinished runs would take the new "
               "config" if dry_run else
               "changes: they are kept, the unfinished runs take the new config"), flush=True)
      added = []
    if added:
      print(f"{path} predates the study fields {files.field_list(added)}: continuing with their "
            "current values", flush=True)
    measure = files.differences(saved["study"].get("final_conflicts", {}),
                                self.config["final_conflicts"])
    # the report reads each store's own settings, and gives their span
    if measure and (made := self._measured_checkpoints()):
      print(f"{path}: final_conflicts changed ({files.field_list(measure, 4)}); the {len(made)} "
            "end-of-training measurement(s) made keep their settings (the report gives their "
            "span); delete a checkpoint's runs/<run>/analysis/step-<N>/ to measure it again "
            f"with the new ones (made: {files.field_list(made, 3)})", flush=True)
    return True

  def _measured_checkpoints(self):
    """'<run>/step-<N>' of every checkpoint with an end-of-training conflict store."""
    runs = os.path.join(self.workdir, RUNS_DIR)
    return [f"{name}/step-{step}" for name in sorted(os.listdir(runs) if os.path.isdir(runs)
                                                     else [])
            if os.path.isdir(os.path.join(runs, name))
            for step in _analysed_steps(os.path.join(runs, name))]

  def prepare(self):
    """Write study.json (first start; a changed study is refused) and the runs' directories."""
    exists = self.check_saved()
    os.makedirs(os.path.join(self.workdir, RUNS_DIR), exist_ok=True)
    if not exists:
      files.write_json(os.path.join(self.workdir, STUDY_FILE), self.study_json())
    elif files.read_json(os.path.join(self.workdir, STUDY_FILE)) != self.study_json():
      files.write_json(os.path.join(self.workdir, STUDY_FILE), self.study_json())  # report fields

  def write_run_config(self, spec, out=None):
    """Write run_config.json (a fine-tune's needs its pre-training runs done; an equal_flops
    scratch run's needs its fine-tunes done); returns it. A started run whose checkpoints the
    new config cannot resume (the study was corrected after it failed) starts afresh: its
    trainer files move into <run>/superseded-<UTC time>/ (kept, and said on `out`)."""
    init_from = self.init_from(spec) if spec.regime == "finetune" else ""
    config = run_config(self.config, spec, init_from, self.steps_of(spec))
    os.makedirs(self.run_dir(spec.name), exist_ok=True)
    if self.has_started(spec.name):
      from mtl import run_config as trainer_config
      try:  # the trainer saves its paths absolute (relative to this process's folder, as its own)
        run_folder.check_config(self.run_dir(spec.name), trainer_config.absolute_paths(config),
                                run_defaults.config_defaults(), trainer_config.absolute_paths)
      except ValueError as refusal:
        self._supersede(spec.name, refusal, out)
    files.write_json(self.path(spec.name, RUN_CONFIG), config)
    return config

  def _supersede(self, name, why, out):
    stamp = f"superseded-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    folder, k = stamp, 1
    while os.path.exists(self.path(name, folder)):  # twice in one second: a suffix, no clash
      folder, k = f"{stamp}-{k}", k + 1
    os.makedirs(self.path(name, folder))
    for entry in sorted(os.listdir(self.run_dir(name))):
      if entry not in STUDY_FILES and not entry.startswith("superseded-"):
        os.rename(self.path(name, entry), self.path(name, folder, entry))
    if out is not None:
      out.write(f"{name}: its checkpoints cannot resume with the run config the study now "
                f"gives it ({why}); moved its files to {self.path(name, folder)} and starting "
                "it afresh\n")
      out.flush()

  # -- budgets

  def budget_sweeps(self, spec):
    """(pre-training sweep, fine-tune sweep) an equal-budget scratch run is equalled with."""
    column, _ = reference_source(self.config, spec.tasks[0])
    if column == "joint":
      return f"joint-s{spec.seed}", f"finetune-{spec.tasks[0]}-s{spec.seed}"
    group = column[len("group:"):]
    return f"group-{group}-s{spec.seed}", f"finetune-{spec.tasks[0]}-from-{group}-s{spec.seed}"

  def steps_of(self, spec):
    """A run's steps: spec.steps, or for scratch under equal_flops the steps of as many
    training FLOPs as its fine-tune and its share of the pre-training (Waiting until both
    sweeps are done; their runs differ only in lr, so any of them gives the FLOPs)."""
    if not (spec.regime == "scratch" and self.config["budget"] == "equal_flops"):
      return spec.steps
    pre, fine = self.budget_sweeps(spec)
    missing = [r.name for r in self.sweeps[pre] + self.sweeps[fine] if not self.is_done(r.name)]
    if missing:
      raise Waiting(f"{spec.name} runs as many FLOPs as {sweep_runs(fine)} plus its "
                    f"share of {sweep_runs(pre)}; not done yet: {', '.join(missing)}")
    first = lambda sweep: next((r for r in self.sweeps[sweep] if not self.diverged(r.name)),
                               self.sweeps[sweep][0])
    pre_compute, fine_compute = self.compute(first(pre).name), self.compute(first(fine).name)
    if pre_compute is None or fine_compute is None:
      raise ValueError(f"{spec.name}: budget='equal_flops' needs compute.json in "
                       f"{first(pre).name} and {first(fine).name}")
    return equal_flops_steps(pre_compute, fine_compute, len(first(pre).tasks))

  def known_steps(self, spec):
    """steps_of(spec), or None while an equal_flops scratch run waits for its fine-tunes."""
    try:
      return self.steps_of(spec)
    except Waiting:
      return None

  # -- learning rate selection

  def validation_score(self, spec):
    """Mean study.metric on the validation set over the run's tasks (None if not done or
    diverged: it has no results)."""
    results = self.results(spec.name)
    if results is None:
      return None
    values = [sets[self.validation][self.metric] for t, sets in results["tasks"].items()
              if t in spec.tasks and self.validation in sets]
    if not values:
      raise ValueError(f"run {spec.name} has no {self.validation!r} result for its tasks "
                       f"{list(spec.tasks)}; the validation set must apply to every task")
    return float(np.mean(values))

  def select(self, sweep):
    """The sweep's best done run on validation (ties: the first lr), or None if none is done
    (diverged runs are done, never chosen)."""
    candidates = [(r, self.validation_score(r)) for r in self.sweeps[sweep]]
    scored = [(r, s) for r, s in candidates if s is not None]
    if not scored:
      return None
    # max keeps the first of equal scores; a NaN score (a model that outputs NaN) is the worst
    best = max(scored, key=lambda rs: rs[1] if math.isfinite(rs[1]) else -math.inf)
    return Selection(best[0], best[1], candidates,
                     all(self.is_done(r.name) for r in self.sweeps[sweep]))

  def dead_end(self, sweep):
    """The sweep whose every lr diverged, so that `sweep` can never choose a run: `sweep`
    itself, or (a fine-tune) the pre-training it starts from; None if there is none."""
    specs = self.sweeps[sweep]
    if all(self.diverged(r.name) for r in specs):
      return sweep
    return self.dead_end(specs[0].source) if specs[0].source else None

  def init_from(self, spec):
    """A fine-tune's starting point: its source sweep's run chosen on validation."""
    missing = [r.name for r in self.sweeps[spec.source] if not self.is_done(r.name)]
    if missing:
      raise Waiting(f"{spec.name} starts from the best of {sweep_runs(spec.source)} "
                    f"on {self.validation}; not done yet: {', '.join(missing)}")
    chosen = self.select(spec.source)
    if chosen is None:
      sweep = sweep_runs(spec.source)
      raise ValueError(f"{spec.name} has no start: every lr of {sweep} diverged; give the study "
                       "lower lrs (lrs, or lrs_override for that regime)")
    return self.run_dir(chosen.run.name)

  def describe_init(self, spec):
    try:
      return self.init_from(spec)
    except Waiting:
      names = ", ".join(r.name for r in self.sweeps[spec.source])
      return f"<best on {self.validation} of {names}; chosen when they are done>"

  def _pretraining_sweeps(self):
    """[(column, seed, sweep)] of the multi-task pre-training sweeps (columns joint and
    group:<g>), in run order."""
    return list(dict.fromkeys((r.column, r.seed, r.sweep) for r in self.runs
                              if is_pretraining(r.column)))

  def pretraining_choices(self):
    """[(column, seed, Selection)] of the multi-task pre-training sweeps with a done run, in run
    order: the run each seed reports and fine-tunes from."""
    chosen = [(column, seed, self.select(sweep))
              for column, seed, sweep in self._pretraining_sweeps()]
    return [(column, seed, c) for column, seed, c in chosen if c is not None]

  def open_pretraining_seeds(self):
    """{column: [seed]} of the multi-task pre-training sweeps not complete (an lr not done yet,
    and not every one diverged): the run validation picks there may still change."""
    out = {}
    for column, seed, sweep in self._pretraining_sweeps():
      chosen = self.select(sweep)
      if (not chosen.complete) if chosen is not None else not self.dead_end(sweep):
        out.setdefault(column, []).append(seed)
    return out

  def final_conflicts_pending(self):
    """[(run name, step, folder)] of the end-of-training measurements (study.final_conflicts)
    that the chosen pre-training runs (every lr done) still lack: question 1 reads only what is
    measured."""
    if not self.config["final_conflicts"]["batch_size"]:
      return []
    return [(c.run.name, step, out) for _, _, c in self.pretraining_choices() if c.complete
            for step, out in self.final_conflicts_dirs(c.run.name)
            if not os.path.isdir(conflicts.store_dir(out))]

  def final_conflicts_to_come(self):
    """How many end-of-training measurements are not made yet: those the chosen runs lack
    (final_conflicts_pending) and `checkpoints` for each pre-training sweep not done."""
    if not self.config["final_conflicts"]["batch_size"]:
      return 0
    open_sweeps = sum(not all(self.is_done(r.name) for r in self.sweeps[sweep])
                      for _, _, sweep in self._pretraining_sweeps())
    return (open_sweeps * self.config["final_conflicts"]["checkpoints"]
            + len(self.final_conflicts_pending()))

  def final_conflicts_dirs(self, name):
    """[(step, folder)] where run `name`'s conflicts at its last saved steps are measured
    (study.final_conflicts: its newest `checkpoints` saved steps, oldest first; where its
    checkpoints are gone, its newest measured ones). Steps of the run's checkpoint schedule
    come first: a stop's extra checkpoint (SIGTERM saves where it stops) would make an
    interrupted study measure other steps than an uninterrupted one."""
    run_dir, wanted = self.run_dir(name), self.config["final_conflicts"]["checkpoints"]
    steps = checkpoints.saved_steps(run_dir) or _analysed_steps(run_dir)
    try:
      run = files.read_json(self.path(name, RUN_CONFIG))
      scheduled = set(run_folder.checkpoint_steps(run["total_steps"], run["checkpoint_every"]))
    except (OSError, ValueError, KeyError):
      scheduled = set()
    on_schedule = [s for s in steps if s in scheduled]
    steps = on_schedule if len(on_schedule) >= wanted else steps
    return [(step, run_folder.analysis_dir(run_dir, step)) for step in steps[-wanted:]]


def _analysed_steps(run_dir):
  """The steps whose checkpoints analyze.py --checkpoint measured into analysis/step-<N>/."""
  folder = os.path.join(run_dir, run_folder.ANALYSIS_DIR)
  names = os.listdir(folder) if os.path.isdir(folder) else []
  return sorted(int(n[len("step-"):]) for n in names if re.fullmatch(r"step-\d+", n) and
                os.path.isdir(conflicts.store_dir(os.path.join(folder, n))))
