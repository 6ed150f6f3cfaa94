"""Running a study: its runs as child processes of the given train command (one at a time, or up to
`max_parallel` side by side: one GPU each, or on a CPU cores of their own), the study's status
table, and a dry run.

A signal to the study becomes SIGTERM to the running runs (which checkpoint and stop); the same
command resumes. Each run's output goes to its train.log and, prefixed, to the study's stdout.
While a study process runs a run it holds an exclusive lock on the run's RUNNING file (its host,
pid and start inside): another study process (a second terminal, a SLURM job) skips that run,
and the status table shows it as running; the lock dies with its process. A run whose training
failed gets a FAILED file (exit status, time, log), removed when it is started again; a study
corrected after a failure re-runs the failed run (see Study.check_saved, write_run_config). A run
whose loss or output went non-finite (the trainer's diverged.json) is done, marked diverged: that
is its lr's outcome, so the study goes on and its sweep chooses among the other lrs.
"""
import fcntl
import fnmatch
import json
import os
import shlex
import signal
import socket
import sys
import threading
import time

from mtl import children, compile_cache, conflicts, files, run_folder
from mtl.run_folder import PREEMPTED_EXIT
from mtl.study.runs import sweep_runs
from mtl.study.spec import format_lr
from mtl.study.workdir import (DONE_FILE, FAILED_FILE, LOG_FILE, RUN_CONFIG, RUN_LOCK, STARTS_FILE,
                               trainer_holder, lock_holder)

ANALYZE_LOG = "analyze.log"  # a final_conflicts measurement's output, in its folder
STATES = ("done", "diverged", "no start", "running", "failed", "waiting", "started", "pending")


def matching(runs, only):
  """Runs whose name matches one of the comma-separated globs in `only` (all for '')."""
  globs = [g.strip() for g in only.split(",") if g.strip()]
  if not globs:
    return list(runs)
  chosen = [r for r in runs if any(fnmatch.fnmatchcase(r.name, g) for g in globs)]
  if not chosen:
    raise ValueError(f"--only={only} matches no run; names look like {runs[0].name}")
  return chosen


def summary_line(spec):
  return (f"{spec.regime} {','.join(spec.tasks)} | {spec.steps} steps | "
          f"lr {format_lr(spec.lr)} | seed {spec.seed}")


def waits_for(study, spec):
  """The runs (not done) that a fine-tune's start needs: its source sweep; [] for other runs."""
  if spec.regime != "finetune":
    return []
  return [r for r in study.sweeps[spec.source] if not study.is_done(r.name)]


def start_order(study, queue):
  """The order `queue`'s runs are offered a free slot in: seed by seed (a study stopped early
  has whole seeds), and within a seed the runs a fine-tune waits for first, so that the seed's
  other runs fill the cores while the last of them trains instead of it training alone."""
  seeds = list(dict.fromkeys(r.seed for r in study.runs))
  awaited = {r.name for spec in queue for r in waits_for(study, spec)}
  return sorted(queue, key=lambda r: (seeds.index(r.seed), r.name not in awaited))


def state(study, spec):
  """One of STATES: done; diverged (done: its loss went non-finite); no start (a fine-tune
  whose every pre-training lr diverged: an outcome of the grid, as diverged); running (a live
  lock); failed (FAILED, not running); waiting (a fine-tune whose pre-training sweep is not
  done); started (has trained; resumes); pending."""
  if study.is_done(spec.name):
    return study.status(spec.name)  # done | diverged
  if study.dead_end(spec.sweep):
    return "no start"
  if lock_holder(study, spec.name) is not None:
    return "running"
  if os.path.exists(study.path(spec.name, FAILED_FILE)):
    return "failed"
  if waits_for(study, spec):
    return "waiting"
  return study.status(spec.name)  # started | pending


def seconds_left(finished, to_go, elapsed, parallel):
  """Seconds until the runs `to_go` are done, `parallel` at a time: a run costs the seconds per
  step of the finished runs [(run, seconds)] of its regime and task count (else of every finished
  run, per step and task: a step trains each of its tasks), less what it has run (`elapsed`:
  {name: seconds}); a run whose steps are not known yet (equal_flops scratch) the mean run."""
  known = [(r, s) for r, s in finished if r.steps]
  per_step = {}  # (regime, task count): (steps, seconds) of its finished runs
  for r, s in known:
    steps, secs = per_step.get((r.regime, len(r.tasks)), (0, 0.0))
    per_step[(r.regime, len(r.tasks))] = (steps + r.steps, secs + s)
  per_task_step = sum(s for _, s in known) / max(1, sum(r.steps * len(r.tasks) for r, _ in known))
  mean = sum(s for _, s in finished) / max(1, len(finished))
  left = 0.0
  for r in to_go:
    steps, secs = per_step.get((r.regime, len(r.tasks)), (0, 0.0))
    if not r.steps:
      cost = mean
    elif steps:
      cost = r.steps * secs / steps
    else:
      cost = r.steps * len(r.tasks) * per_task_step
    left += max(cost - elapsed.get(r.name, 0.0), 0.0)
  return left / max(1, min(parallel, len(to_go)))


def measurements_left(took, queued, running, parallel):
  """Seconds until the end-of-training measurements are done, `parallel` at a time: they are
  alike (one model, its tasks, as many batches each), so each costs the mean of those done
  (`took`: their seconds), less what each one in progress has run (`running`: seconds)."""
  mean = sum(took) / len(took)
  work = mean * queued + sum(max(mean - s, 0.0) for s in running)
  return work / max(1, min(parallel, queued + len(running)))


def add_start(record, seconds):
  """A run's starts record ({'seconds': their wall total, 'starts': how many}; {} before the
  first ended) with one more start of `seconds`."""
  return {"seconds": record.get("seconds", 0.0) + seconds, "starts": record.get("starts", 0) + 1}


def took(record):
  """'12s', or '1m05s over 2 starts': a DONE or STARTS record's time in words ('' without one;
  a DONE written before 'starts' was recorded holds its last start's seconds)."""
  if record.get("seconds") is None:
    return ""
  starts = record.get("starts", 1)
  return files.format_duration(record["seconds"]) + (f" over {starts} starts" if starts > 1
                                                     else "")


def _detail(study, spec, run_state):
  """A few words on a run's state for the status table."""
  if run_state == "done":
    spent = took(study.done_info(spec.name))
    return f"in {spent}" if spent else ""
  if run_state == "diverged":
    return study.diverged(spec.name)
  if run_state == "no start":
    return _no_start(study, spec)
  if run_state == "running":
    holder = lock_holder(study, spec.name) or {}
    where = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
    if holder.get("slurm_job"):
      where += f", SLURM job {holder['slurm_job']}"
    return f"{where}, since {holder.get('started', '?')}"
  if run_state == "failed":
    failed = files.read_json(study.path(spec.name, FAILED_FILE))
    if "error" in failed:  # it could not start
      return f"{failed['error']} ({failed.get('time')})"
    return (f"{_exit_words(failed.get('status', 0))} at {failed.get('time')}; log: "
            f"{study.path(spec.name, LOG_FILE)}")
  if run_state == "waiting":
    return "for " + ", ".join(r.name for r in waits_for(study, spec))
  if run_state == "started":
    return "interrupted; resumes from its checkpoint"
  return ""


def _no_start(study, spec):
  """Why a fine-tune can never start, and what to change."""
  return (f"every lr of {sweep_runs(study.dead_end(spec.sweep))} diverged; give that sweep "
          "lower lrs (lrs, or lrs_override for its regime)")


def _exit_words(code):
  """A child's exit status in words: a negative one is the signal that killed it."""
  if code >= 0:
    return f"exit status {code}"
  try:
    name = signal.Signals(-code).name
  except ValueError:
    name = f"signal {-code}"
  return f"killed by {name}" + (" (the OOM killer, or a kill -9)" if -code == signal.SIGKILL
                                else "")


def status_table(study, runs):
  """Lines: a count per state, then one line per run (state, name, detail)."""
  states = [(spec, state(study, spec)) for spec in runs]
  counts = {s: sum(st == s for _, st in states) for s in STATES}
  width = max(len(spec.name) for spec in runs)
  lines = [f"[study] {study.name}: {len(runs)} runs in {study.workdir}: "
           + ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s])]
  for spec, run_state in states:
    detail = _detail(study, spec, run_state)
    lines.append(f"  {run_state:<8} {spec.name:<{width}}  {detail}".rstrip())
  return lines


def dependencies(study, runs):
  """{run name: names of the runs (among `runs`, not done) it must start after}: a fine-tune
  waits for every lr of its pre-training sweep (it picks the best on validation at its start)."""
  selected = {r.name for r in runs}
  return {spec.name: [r.name for r in waits_for(study, spec) if r.name in selected]
          for spec in runs if not study.is_done(spec.name)}


def dry_run(study, train, only="", out=sys.stdout, analyze=None):
  """Print the runs, their state and exact commands (`train`: Study.command's), then the
  end-of-training conflict measurements to come (`analyze`: the Runner's)."""
  study.check_saved(dry_run=True)
  runs = matching(study.runs, only)
  c = study.config
  to_go = [spec for spec in runs if not study.is_done(spec.name)]
  out.write(f"study {study.name}: {len(runs)} of {len(study.runs)} runs in {study.workdir}; "
            f"{len(to_go)} to go, {sum(spec.steps for spec in to_go):,} training steps\n"
            f"  tasks {', '.join(c['tasks'])}; regimes {', '.join(c['regimes'])}; seeds "
            f"{', '.join(map(str, c['seeds']))}; lr chosen on {c['validation']}; test "
            f"{', '.join(c['test'])}\n")
  width = len(str(len(runs)))
  unwritten = 0
  for i, spec in enumerate(runs, 1):
    out.write(f"run {i:>{width}}/{len(runs)} {spec.name}  [{state(study, spec)}]  "
              f"{summary_line(spec)}\n")
    if spec.regime == "finetune":
      out.write(f"    init_from: {study.describe_init(spec)}; its data from step "
                f"{spec.step_offset} on (data.step_offset: after its pre-training's)\n")
    out.write(f"    {shlex.join(study.command(spec, train))}\n")
    if not os.path.exists(study.path(spec.name, RUN_CONFIG)):
      unwritten += 1
      out.write(f"    ({RUN_CONFIG} not written yet)\n")
  to_come = study.final_conflicts_to_come() if analyze is not None else 0
  if to_come:
    final = study.config["final_conflicts"]
    pending = study.final_conflicts_pending()
    out.write(f"end-of-training conflict measurements: {to_come} to come"
              + (f", {len(pending)} of them ready now:" if pending else
                 " (once the pre-training sweeps are done)") + "\n")
    for name, step, folder in pending:
      command = analyze(study.path(name, RUN_CONFIG), study.run_dir(name), folder, final, step)
      out.write(f"  {name} step {step}: {shlex.join(command)}\n")
  if unwritten:
    out.write(f"dry run: nothing was written; the study writes a run's {RUN_CONFIG} when it starts "
              f"the run (a fine-tune's once its pre-training runs are done), so the {unwritten} "
              "command(s) marked 'not written yet' work only after that\n")
  out.flush()
  return 0


def _write_lock(handle, **more):
  """Who holds a run's lock (the RUNNING file; `lock_holder` reads it): this host, process and
  time, and `more`."""
  handle.seek(0)
  handle.truncate()
  handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                           "slurm_job": os.environ.get("SLURM_JOB_ID", ""), **more}))
  handle.flush()


def _cores(cores):
  """A core set in words: '0', '0-3', '0,2'."""
  low, high = min(cores), max(cores)
  if len(cores) == high - low + 1:
    return str(low) if low == high else f"{low}-{high}"
  return ",".join(map(str, sorted(cores)))


class _Active:
  """A run in progress: its process, output pump, log, lock, device and core set."""

  def __init__(self, spec, head, proc, pump, log, lock, device, cores, started, programs):
    self.spec, self.head, self.proc, self.pump = spec, head, proc, pump
    self.log, self.lock, self.device, self.cores, self.started = log, lock, device, cores, started
    self.programs = programs  # (compiled, loaded) in its compute.json before this start


class _Measuring:
  """A final_conflicts measurement in progress: its process, output pump, log (which holds its
  lock), device, core set and folder."""

  def __init__(self, proc, pump, log, device, cores, started, out):
    self.proc, self.pump, self.log, self.device, self.cores = proc, pump, log, device, cores
    self.started, self.out = started, out


def programs(study, name):
  """(XLA programs compiled, loaded from the cache) by a run's attempts: its compute.json's
  counts (launch/train.py adds each attempt's), (0, 0) before its first."""
  path = study.path(name, run_folder.COMPUTE_FILE)
  record = files.read_json(path) if os.path.exists(path) else {}
  return record.get("programs_compiled", 0), record.get("programs_loaded", 0)


class Runner:
  """Runs a study's runs as subprocesses, each `train`'s command (Study.command): at most
  `max_parallel` at once (each with one of `devices` as CUDA_VISIBLE_DEVICES when given),
  fine-tunes after their sweep."""

  def __init__(self, study, train, out=sys.stdout, compile_cache="", max_parallel=1,
               devices=None, analyze=None, keep_going=False):
    if max_parallel < 1:
      raise ValueError(f"--max_parallel={max_parallel} must be >= 1")
    if devices is not None and len(devices) < max_parallel:
      raise ValueError(f"--max_parallel={max_parallel} needs as many devices, one per run; "
                       f"there are {len(devices)} ({','.join(devices) or 'none'})")
    self.study = study
    self.out = out
    self.train = train
    self.analyze = analyze  # (run_config, workdir, out, final, step) -> the measuring command
    self.measuring = {}     # the final_conflicts measurements in progress, by their head
    self.measured = 0       # measurements started here (their heads' numbers)
    self.took_s = []        # seconds of each measurement done here: their ETA
    self.measure_failed = False
    self.first_measurement = None  # (name, step, out): the one started among the runs
    self.compile_cache = compile_cache
    self.max_parallel = max_parallel
    self.keep_going = keep_going  # a failed run stops new starts unless this is set
    self.free_devices = list(devices) if devices is not None else None
    # CPU runs get equal core sets of their own, also alone: their thread count sets their sums
    self.free_cores = children.core_sets(max_parallel) if devices is None else None
    self.active = {}
    self.programs = [0, 0]  # compiled, loaded by the runs this process ran
    self.signalled = None
    self.lock = threading.RLock()  # the signal handler may interrupt a say() in progress

  def say(self, message):
    with self.lock:
      self.out.write(message + "\n")
      self.out.flush()

  def _on_signal(self, signum, frame):
    if self.signalled is None:
      self.signalled = signum
      self.say(f"[study] {signal.Signals(signum).name}: the running runs checkpoint and stop "
               "(again to kill them); run the same command to resume")
      self._send(signal.SIGTERM)
    else:
      self._send(signal.SIGKILL)

  def _send(self, sig):
    children.send([r.proc for r in list(self.active.values()) + list(self.measuring.values())],
                  sig)

  def _take_slot(self):
    """(device, core set, ' | device D' or ' | cores C' for the start line) for a child."""
    device = self.free_devices.pop(0) if self.free_devices is not None else None
    cores = self.free_cores.pop(0) if self.free_cores is not None else None
    return device, cores, (f" | device {device}" if device is not None else
                           f" | cores {_cores(cores)}" if cores else "")

  def _give_back(self, device, cores):
    if device is not None:
      self.free_devices.append(device)
    if cores is not None:
      self.free_cores.append(cores)

  def _env(self, device):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["MTL_TRAIN_LOG"] = "0"  # the runner writes each run's train.log itself (_printer)
    # Runs share most of their programs (model init, eval, same-shaped steps): the persistent
    # compilation cache (launch/train.py reads it from here; '' = none) spares them compiling.
    env["JAX_COMPILATION_CACHE_DIR"] = compile_cache.directory_from(self.compile_cache)
    if device is not None:
      env["CUDA_VISIBLE_DEVICES"] = device
    return env

  def _printer(self, prefix, log):
    """on_line for one run: each line of its output to its train.log and, prefixed, to ours."""
    def on_line(line):
      text = line.decode(errors="replace").rstrip("\n")
      log.write(text + "\n")
      log.flush()
      self.say(f"{prefix}{text}")
    return on_line

  def _acquire(self, spec):
    """The run's lock (an open file), or None when another live process holds it."""
    os.makedirs(self.study.run_dir(spec.name), exist_ok=True)
    handle = open(self.study.path(spec.name, RUN_LOCK), "a+")
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.close()
      return None
    _write_lock(handle)
    return handle

  def _start(self, spec, head, prefix, lock, device, cores):
    """Start one run as a subprocess (its output to train.log and, prefixed, to ours) on
    `device` (CUDA_VISIBLE_DEVICES; None: every device), pinned to the core set `cores` (None:
    unpinned)."""
    failed = self.study.path(spec.name, FAILED_FILE)
    if os.path.exists(failed):
      os.remove(failed)
    command = self.study.command(spec, self.train)
    log = open(self.study.path(spec.name, LOG_FILE), "a")
    log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}"
              + (f"  (CUDA_VISIBLE_DEVICES={device})" if device is not None else "")
              + (f"  (cores {_cores(cores)})" if cores else "") + "\n")
    log.flush()
    # the trainer holds the run's lock too: one that outlives us (finishing its checkpoint after
    # we were killed) keeps a rerun from starting it a second time
    child = children.Child(command, self._env(device), self._printer(prefix, log), cores,
                           keep=(lock.fileno(),))
    _write_lock(lock, trainer_pid=child.proc.pid)
    self.active[spec.name] = _Active(spec, head, child.proc, child.pump, log, lock, device,
                                     cores, time.time(), programs(self.study, spec.name))

  def _finish(self, run):
    """Reap a finished run: release its lock and device, add the start to its STARTS record;
    (its exit status, that record)."""
    code = run.proc.wait()
    run.pump.join(timeout=10)
    run.log.close()
    path = self.study.path(run.spec.name, STARTS_FILE)  # before the lock goes: ours to write
    spent = add_start(files.read_json(path) if os.path.exists(path) else {},
                      time.time() - run.started)
    files.write_json(path, spent)
    fcntl.flock(run.lock, fcntl.LOCK_UN)
    run.lock.close()
    self._give_back(run.device, run.cores)
    del self.active[run.spec.name]
    after = programs(self.study, run.spec.name)
    self.programs = [n + a - b for n, a, b in zip(self.programs, after, run.programs)]
    return code, spent

  def _diverged(self, spec, code):
    """The error of a run that stopped on a non-finite loss, parameters or output (the
    trainer's DIVERGED_FILE, exit 1), else None: the lr's outcome, not a failure to fix."""
    path = self.study.path(spec.name, run_folder.DIVERGED_FILE)
    if code != 1 or not os.path.exists(path):
      return None
    return str(files.read_json(path).get("error", "non-finite loss"))

  def _finished(self, spec):
    """The run evaluated its last step (its run_config's total_steps: an equal_flops scratch
    run's steps are only known once its pre-training runs are done)."""
    path = self.study.path(spec.name, run_folder.RESULTS_FILE)
    steps = files.read_json(self.study.path(spec.name, RUN_CONFIG))["total_steps"]
    return os.path.exists(path) and files.read_json(path).get("step") == steps

  def _measure_final_conflicts(self, start=True):
    """study.final_conflicts: the conflicts of each pre-training sweep's chosen run (every lr
    done) at its last saved steps, where not yet measured: up to max_parallel at once, each on a
    core set (or device) of its own, as the runs; with start=False only those in progress are
    awaited. False if one failed (none start after it)."""
    if not self.study.config["final_conflicts"]["batch_size"] or self.analyze is None:
      return True
    busy = {m.out for m in self.measuring.values()}
    todo = [p for p in self.study.final_conflicts_pending() if p[2] not in busy]
    total = self.measured + len(todo)
    while self.measuring or (todo and start and not self.measure_failed
                             and self.signalled is None):
      while (todo and start and not self.measure_failed and self.signalled is None
             and len(self.measuring) < self.max_parallel):
        self._start_measuring(total, *todo.pop(0))
      self._poll_measurements(len(todo))
      time.sleep(0.05)
    return not self.measure_failed

  def _poll_measurements(self, queued=None):
    """Collect the measurements that ended; a done line says the time the others still need
    (`queued` not started yet; None: said in the runs' lines instead)."""
    for head, m in [(h, m) for h, m in self.measuring.items() if m.proc.poll() is not None]:
      code = m.proc.wait()
      m.pump.join(timeout=10)
      m.log.close()  # releases its lock
      self._give_back(m.device, m.cores)
      del self.measuring[head]
      if self.signalled is not None:
        self.say(f"{head}: interrupted; run the same command to measure it")
      elif code != 0:
        self.say(f"{head}: failed (exit status {code}); its log: {m.log.name}; the same "
                 "command measures it again")
        self.measure_failed = True
      else:
        self.took_s.append(time.time() - m.started)
        self.say(f"{head}: done in {files.format_duration(self.took_s[-1])}"
                 + ("" if queued is None else self._measurements_left(queued)))

  def _measurements_to_come(self):
    """'~T for the N end-of-training conflict measurements' (T once one of them is done here),
    '' where there are none."""
    to_come = self.study.final_conflicts_to_come() if self.analyze else 0
    if not to_come:
      return ""
    what = f"the {to_come} end-of-training conflict measurement" + ("s" if to_come > 1 else "")
    if not self.took_s:
      return what
    running = [time.time() - m.started for m in self.measuring.values()]
    left = measurements_left(self.took_s, max(0, to_come - len(running)), running,
                             self.max_parallel)
    return f"~{files.format_duration(left)} for {what}"

  def _measurements_left(self, queued):
    """' | ~T to go for the other N' after a measurement, '' after the last one."""
    now = time.time()
    running = [now - m.started for m in self.measuring.values()]
    if not queued and not running:
      return ""
    left = measurements_left(self.took_s, queued, running, self.max_parallel)
    return f" | ~{files.format_duration(left)} to go for the other {queued + len(running)}"

  def _start_measuring(self, total, name, step, out):
    """Start one final_conflicts measurement (launch/analyze.py --checkpoint) into `out`, the
    next of `total`, unless another process measures it or has measured it."""
    study, final = self.study, self.study.config["final_conflicts"]
    head = f"conflicts {self.measured + 1}/{total} {name} step {step}"
    os.makedirs(out, exist_ok=True)
    log = open(os.path.join(out, ANALYZE_LOG), "a")
    try:  # one process measures a checkpoint (SLURM jobs of a study may finish side by side)
      fcntl.flock(log, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      log.close()
      self.say(f"{head}: being measured by another process; skipped")
      return
    if os.path.isdir(conflicts.store_dir(out)):
      log.close()
      return  # measured while this process waited
    amount = (f"until +-{final['halfwidth']:g} (at most {final['max_batches']} batches)"
              if final["halfwidth"] > 0 else f"{final['max_batches']} batches")
    device, cores, where = self._take_slot()
    self.say(f"{head}: measuring it on fresh batches of {final['batch_size']}/task, {amount} "
             f"-> {out}{where}")
    child = children.Child(
        self.analyze(study.path(name, RUN_CONFIG), study.run_dir(name), out, final, step),
        self._env(device), self._printer(f"[{head}] ", log), cores, keep=(log.fileno(),))
    self.measuring[head] = _Measuring(child.proc, child.pump, log, device, cores, time.time(),
                                      out)
    self.measured += 1

  def run(self, only=""):
    """Run the matching runs that are not done; the exit status of the study: 0 all done, 1 a
    run failed, 3 some wait for runs not done here (or run in another process), 128 + signal."""
    study = self.study
    runs = matching(study.runs, only)
    study.prepare()
    for sig in (signal.SIGINT, signal.SIGTERM):
      signal.signal(sig, self._on_signal)
    for line in status_table(study, runs):
      self.say(line)
    total, width = len(runs), len(str(len(runs)))
    heads = {spec.name: f"run {i:>{width}}/{total} {spec.name}" for i, spec in enumerate(runs, 1)}
    prefixes = {spec.name: f"[{i}/{total} {spec.name}] " for i, spec in enumerate(runs, 1)}
    queue, no_start = [], []
    for spec in runs:
      if study.is_done(spec.name):
        self.say(f"{heads[spec.name]}: done, skipped")
      elif study.dead_end(spec.sweep):
        self.say(f"{heads[spec.name]}: no start: {_no_start(study, spec)}")
        no_start.append(spec.name)
      else:
        queue.append(spec)
    started, ran, waiting, elsewhere, failed = time.time(), 0, [], [], []
    halted = lambda: bool(failed) and not self.keep_going  # no new starts
    requeued = set()  # runs stopped at a checkpoint by a signal of their own, started again
    finished = []  # (run, seconds): runs trained whole here, which the ETA extrapolates
    while queue or self.active:
      if (self.first_measurement and self.signalled is None and not halted()
          and len(self.active) + len(self.measuring) < self.max_parallel):
        # one measurement among the runs, in the first slot free once a sweep is done: the
        # runs' lines can then say how long the others will take
        self._start_measuring(study.final_conflicts_to_come(), *self.first_measurement)
        self.first_measurement = None
      if (self.signalled is None and not halted()
          and len(self.active) + len(self.measuring) < self.max_parallel):
        for spec in start_order(study, queue):
          if len(self.active) + len(self.measuring) >= self.max_parallel:
            break
          head = heads[spec.name]
          missing = waits_for(study, spec)
          if missing:
            if any(r.name in self.active or r in queue for r in missing):
              continue  # its sweep runs here: start it once they are done
            self.say(f"{head}: waiting: {spec.name} starts from the best of its sweep on "
                     f"{study.validation}; not done yet: {', '.join(r.name for r in missing)}")
            queue.remove(spec)
            waiting.append(spec.name)
            continue
          lock = self._acquire(spec)
          # held by another study process, or its trainer started by hand
          holder = (lock_holder(study, spec.name) or {} if lock is None
                    else trainer_holder(study, spec.name))
          if holder is not None:
            if lock is not None:
              lock.close()
            trainer = (f", its trainer pid {holder['trainer_pid']}" if "trainer_pid" in holder
                       else "")
            if "lock" in holder:
              trainer = (f": a trainer this study did not start, {holder['lock']}; delete that "
                         "file if the process is gone")
            self.say(f"{head}: running in another process (pid {holder.get('pid', '?')} on "
                     f"{holder.get('host', '?')}{trainer}); skipped")
            queue.remove(spec)
            elsewhere.append(spec.name)
            continue
          queue.remove(spec)
          if study.is_done(spec.name):  # finished by another process since the queue was made
            lock.close()
            self.say(f"{head}: done by another process; skipped")
            continue
          if study.dead_end(spec.sweep):  # its pre-training sweep ended here, every lr diverged
            lock.close()
            self.say(f"{head}: no start: {_no_start(study, spec)}")
            no_start.append(spec.name)
            continue
          try:
            config = study.write_run_config(spec, self.out)
          except ValueError as error:
            lock.close()
            files.write_json(study.path(spec.name, FAILED_FILE),
                             {"error": str(error), "time": time.strftime("%Y-%m-%d %H:%M:%S")})
            self.say(f"{head}: failed: {error}")
            failed.append(spec.name)
            continue
          except BaseException:
            lock.close()
            raise
          resuming = study.has_started(spec.name)
          device, cores, where = self._take_slot()
          self.say(f"{head}: {'resuming' if resuming else 'starting'} | {summary_line(spec)}"
                   + (f" | from {os.path.basename(config['init_from'])}" if config["init_from"]
                      else "") + where)
          self._start(spec, head, prefixes[spec.name], lock, device, cores)
      for run in [r for r in self.active.values() if r.proc.poll() is not None]:
        spec, head = run.spec, run.head
        code, spent = self._finish(run)  # every start counts: one stopped, one resumed
        diverged = self._diverged(spec, code)
        ended = diverged or (code == 0 and self._finished(spec))
        if self.signalled is not None and not ended:  # one that ended as we stopped is done
          self.say(f"{head}: interrupted; run the same command to resume")
          continue
        if code == PREEMPTED_EXIT and spec.name not in requeued:
          # a signal of its own (a kill, a preemption reaching it alone): nothing to fix
          self.say(f"{head}: stopped at a checkpoint by a signal of its own (exit status "
                   f"{code}); resuming it")
          requeued.add(spec.name)
          queue.insert(0, spec)
          continue
        if not ended:
          files.write_json(study.path(spec.name, FAILED_FILE),
                           {"status": code, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                            "log": study.path(spec.name, LOG_FILE)})
          self.say(f"{head}: failed ({_exit_words(code)}); its log: "
                   f"{study.path(spec.name, LOG_FILE)}; fix the cause (the study's config may "
                   "change for runs not yet done) and run the same command: finished runs are "
                   "kept" + (("; the others go on (--keep_going)" if self.keep_going else
                              "; starting no other run") if queue else ""))
          failed.append(spec.name)
          continue
        files.write_json(study.path(spec.name, DONE_FILE),
                         {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **spent,
                          **({"diverged": diverged} if diverged else {})})
        ran += 1
        if not diverged and spent["starts"] == 1:  # trained all its steps in one start
          finished.append((spec, spent["seconds"]))
        to_go = [r for r in runs if not study.is_done(r.name) and r.name not in no_start]
        left = len(to_go)
        here = [r for r in to_go if r.name not in elsewhere]  # not another process's to run
        eta = seconds_left(finished, here, {name: time.time() - a.started
                                            for name, a in self.active.items()},
                           self.max_parallel)
        if self.analyze and not self.measured and not self.first_measurement:
          self.first_measurement = next(iter(study.final_conflicts_pending()), None)
        measuring = self._measurements_to_come()
        if left and finished:
          then = (f", ~{files.format_duration(eta)} to go"
                  + (f" for the runs, then {measuring}" if measuring else ""))
        else:
          then = f", then {measuring}" if measuring else ""
        what = f"{'diverged' if diverged else 'done'} in {took(spent)}"
        if diverged:  # its error is in DONE and the status table; here, what the sweep does
          what += " (non-finite loss or output): its sweep chooses among its other lrs"
        self.say(f"{head}: {what} | study: {total - left}/{total} "
                 f"done, elapsed {files.format_duration(time.time() - started)}{then}")
      self._poll_measurements()
      if not self.active and (self.signalled is not None or halted()):
        break
      time.sleep(0.05)
    if ran or failed or self.signalled is not None:
      self.say(f"[study] compiled {self.programs[0]} programs, {self.programs[1]} loaded from "
               "the cache (XLA, the runs started here)")
    if not self._measure_final_conflicts(start=self.signalled is None and not halted()):
      failed.append("final_conflicts")
    if self.signalled is not None:
      if queue:
        self.say(f"[study] interrupted before {queue[0].name}; run the same command to resume")
      return 128 + self.signalled
    if failed:  # the last line, as the runs' own failure lines may have scrolled away
      waits = (f"; {len(waiting)} runs wait for runs not done: {', '.join(waiting)}" if waiting
               else "")
      self.say(f"[study] stopped: {', '.join(failed)} failed{waits} (the status table names the "
               "logs: launch/study.py --dry_run); fix the cause and run the same command: "
               "finished runs are kept")
      return 1
    if no_start:
      self.say(f"[study] {len(no_start)} runs can never start, every lr of their pre-training "
               f"sweep diverged: {', '.join(no_start)}; give those sweeps lower lrs (lrs, or "
               "lrs_override for the regime) and run the same command: finished runs are kept")
      return 1
    # runs another process finished while this one ran are done: not a reason to exit 3
    waiting = [name for name in waiting if not study.is_done(name)]
    elsewhere = [name for name in elsewhere if not study.is_done(name)]
    if waiting or elsewhere:
      if waiting:
        self.say(f"[study] {len(waiting)} runs wait for their pre-training runs: "
                 f"{', '.join(waiting)}")
      if elsewhere:
        self.say(f"[study] {len(elsewhere)} runs run in another process: {', '.join(elsewhere)}")
      return 3
    self.say(f"[study] all {total} runs done in {study.workdir}; tables: python launch/report.py "
             f"--workdir={study.workdir}")
    return 0
