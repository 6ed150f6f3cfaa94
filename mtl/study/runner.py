"""Running a study: its runs one after another as subprocesses of launch/train.py, or a dry run.

A signal to the study becomes SIGTERM to the current run (which checkpoints and stops); the same
command resumes. Each run's output goes to its train.log and, prefixed, to the study's stdout.
"""
import fnmatch
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

from mtl import io
from mtl.study.spec import format_lr
from mtl.study.workdir import (DEFAULT_JAX_CACHE, DONE_FILE, LOG_FILE, ROOT, Waiting)


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
    env["MTL_TRAIN_LOG"] = "0"  # the runner writes each run's train.log itself (_pump)
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
    return os.path.exists(path) and io.read_json(path).get("step") == spec.steps

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
      io.write_json(study.path(spec.name, DONE_FILE),
                  {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": seconds})
      ran += 1
      left = sum(not study.is_done(r.name) for r in runs)
      eta = (time.time() - started) / ran * left
      self.say(f"{head}: done in {io.format_duration(seconds)} | study: {total - left}/{total} done"
               f", elapsed {io.format_duration(time.time() - started)}"
               + (f", ~{io.format_duration(eta)} to go" if left else ""))
    if waiting:
      self.say(f"[study] {len(waiting)} runs wait for their pre-training runs: "
               f"{', '.join(waiting)}")
      return 3
    self.say(f"[study] all {total} runs done in {study.workdir}; tables: python launch/report.py "
             f"--workdir={study.workdir}")
    return 0
