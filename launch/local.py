r"""N training processes on this machine: the multi-process set-up of a cluster, for testing.

  python launch/local.py --num_processes=2 --devices_per_process=4 [--port=auto] [--dry_run] \
      -- --config=experiments/tiny.py --workdir=/tmp/mtl/tiny2

starts, for i in 0..N-1,

  python launch/train.py <args after --> --coordinator_address=127.0.0.1:PORT \
      --num_processes=N --process_id=i --num_cpu_devices=D

and prefixes each output line with [p<i>]. Process 0 hosts the jax.distributed coordinator;
the N x D fake CPU devices form one global mesh, exactly as N hosts of D accelerators would.

Exit status: the first non-zero exit status of a process (the others are then stopped), else 0.
Ctrl-C or SIGTERM is forwarded to every process as SIGTERM, so they save a checkpoint at the next
step boundary and exit; a second Ctrl-C kills them. Re-running the same command resumes.
--dry_run prints the commands, one per line, and exits. --help lists every flag.
"""
import os
import shlex
import shutil
import signal
import socket
import sys
import threading
import time

import _root  # noqa: F401  (repository root on sys.path for `mtl`)
from absl import flags

import cli
from mtl import children

TRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")


def define_flags():
  flags.DEFINE_integer("num_processes", 2, "Training processes to start (>= 1).")
  flags.DEFINE_integer("devices_per_process", 4,
                       "Fake CPU devices per process (--num_cpu_devices of train.py, >= 1).")
  flags.DEFINE_string("port", "auto", "Coordinator port on 127.0.0.1: a number, or 'auto' (a free "
                      "port).")
  flags.DEFINE_string("python", sys.executable, "Interpreter that runs launch/train.py.")
  flags.DEFINE_float("grace_seconds", 30.0, "After a process fails, how long the others get to "
                     "stop on SIGTERM before SIGKILL.")
  flags.DEFINE_float("stop_seconds", 600.0, "After Ctrl-C / SIGTERM, how long the processes get to "
                     "checkpoint before SIGKILL.")
  flags.DEFINE_bool("dry_run", False, "Print the commands, one per line, and exit.")


def check(args, train_args):
  """UsageError (one line) for a bad flag value or a train.py argument the launcher owns."""
  if args.num_processes < 1:
    raise cli.UsageError(f"--num_processes={args.num_processes} must be >= 1")
  if args.devices_per_process < 1:
    raise cli.UsageError(f"--devices_per_process={args.devices_per_process} must be >= 1")
  for name in ("grace_seconds", "stop_seconds"):
    if not 0 < getattr(args, name) < float("inf"):
      raise cli.UsageError(f"--{name}={getattr(args, name)} must be a number of seconds > 0")
  if shutil.which(args.python) is None:
    raise cli.UsageError(f"--python={args.python} is not an interpreter found here; give a "
                         "python that runs launch/train.py")
  if args.port != "auto" and not (args.port.isdigit() and 0 < int(args.port) < 65536):
    raise cli.UsageError(f"--port={args.port} is not valid; use 'auto' or a number in 1..65535")
  for arg in train_args:
    if cli.owned_flag(arg):
      raise cli.UsageError(f"{arg} is set by the launcher; remove it from the train.py arguments")
  for name in ("--config", "--workdir"):  # else every process fails alike, on its own output
    if not any(arg.startswith(name + "=") and arg != name + "=" for arg in train_args):
      raise cli.UsageError(f"train.py arguments need {name}=...; e.g. -- "
                           "--config=experiments/tiny.py --workdir=/tmp/mtl/two")


def free_port():
  """A port nothing listens on now (the OS picks it; a tiny race before process 0 binds it)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def commands(args, train_args, port):
  return [[args.python, TRAIN, *train_args, f"--coordinator_address=127.0.0.1:{port}",
           f"--num_processes={args.num_processes}", f"--process_id={i}",
           f"--num_cpu_devices={args.devices_per_process}"]
          for i in range(args.num_processes)]


def _printer(index, lock):
  """on_line for process `index`: each line of its output to ours, prefixed by [p<index>]."""
  prefix = f"[p{index}] ".encode()

  def on_line(line):
    with lock:
      out = sys.stdout.buffer
      out.write(prefix + line if line.endswith(b"\n") else prefix + line + b"\n")
      out.flush()
  return on_line


def _exit_status(returncode):
  return 128 - returncode if returncode < 0 else returncode  # killed by signal s -> 128 + s


class Launcher:
  def __init__(self, cmds, grace_seconds=30.0, stop_seconds=600.0):
    self.cmds = cmds
    self.grace_seconds, self.stop_seconds = grace_seconds, stop_seconds
    self.deadline = None  # when to SIGKILL whatever still runs
    self.procs = []
    self.signalled = None
    self.lock = threading.RLock()  # the signal handler may interrupt a say() in progress

  def say(self, message):
    with self.lock:
      sys.stdout.write(f"[local] {message}\n")
      sys.stdout.flush()

  def _on_signal(self, signum, frame):
    if self.signalled is None:
      self.signalled = signum
      self.say(f"{signal.Signals(signum).name}: forwarding SIGTERM to {len(self.procs)} "
               "processes (they checkpoint and stop; again to kill them)")
      self._send(signal.SIGTERM)
      self.deadline = time.monotonic() + self.stop_seconds
    else:
      self.say("second signal: killing the processes")
      self._send(signal.SIGKILL)

  def _send(self, sig):
    children.send(self.procs, sig)

  def run(self):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for sig in (signal.SIGINT, signal.SIGTERM):
      signal.signal(sig, self._on_signal)
    pumps = []
    for i, cmd in enumerate(self.cmds):
      child = children.Child(cmd, env, _printer(i, self.lock))
      self.procs.append(child.proc)
      pumps.append(child.pump)
    self.say("started " + ", ".join(f"p{i} pid {p.pid}" for i, p in enumerate(self.procs)))

    first_failure = None
    while [p.poll() for p in self.procs].count(None):  # poll (reap) every one, each round
      for i, p in enumerate(self.procs):
        if p.returncode not in (None, 0) and first_failure is None:
          first_failure = (i, p.returncode)
          if self.signalled is None and any(q.poll() is None for q in self.procs):
            # The others would wait in a collective for the failed one: stop them.
            if p.returncode < 0:  # killed (SIGKILL, a crash): no checkpoint can be saved without
              # it; the others' next collective would wait for it until the heartbeat timeout
              # (~100 s), then abort
              self.say(f"p{i} was killed by {signal.Signals(-p.returncode).name}: the others "
                       "cannot finish a collective without it; killing them (the last saved "
                       "checkpoint is kept: run the same command to resume)")
              self._send(signal.SIGKILL)
            else:
              self.say(f"p{i} exited with status {_exit_status(p.returncode)}: stopping the "
                       "others")
              self._send(signal.SIGTERM)
              self.deadline = time.monotonic() + self.grace_seconds
      if self.deadline is not None and time.monotonic() > self.deadline:
        self.say("processes still running after SIGTERM: killing them")
        self._send(signal.SIGKILL)
        self.deadline = None
      time.sleep(0.05)
    for t in pumps:
      t.join(timeout=5)
    if first_failure is None:  # a failure seen only after the loop's last poll
      first_failure = next(((i, p.returncode) for i, p in enumerate(self.procs)
                            if p.returncode != 0), None)
    if first_failure is not None:
      i, code = first_failure
      self.say(f"p{i} exited with status {_exit_status(code)}")
      return _exit_status(code)
    if self.signalled is not None and any(p.returncode != 0 for p in self.procs):
      return 128 + self.signalled
    return 0  # every process finished (a signal near the end may come after their last step)


def main(train_args):
  args = flags.FLAGS
  check(args, train_args)
  port = free_port() if args.port == "auto" else int(args.port)
  cmds = commands(args, train_args, port)
  if args.dry_run:
    for cmd in cmds:
      print(shlex.join(cmd))
    return 0
  return Launcher(cmds, args.grace_seconds, args.stop_seconds).run()


if __name__ == "__main__":
  define_flags()
  cli.run(main)
