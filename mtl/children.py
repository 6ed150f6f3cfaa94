"""Child processes a parent supervises (launch/local.py's trainers, a study's runs).

Children side by side on a CPU may each get cores of their own (`core_sets`, `cores`): two
unpinned study runs on 2 cores share both and took 1.3-1.5x as long (README, Studies). Each child
runs in its own session, so a terminal's Ctrl-C reaches only the parent, which
forwards SIGTERM (`send`): the trainers checkpoint at the next step boundary and stop. A child
gets SIGTERM when its parent dies (Linux), so none is left orphaned: a trainer then checkpoints
and exits 75 as on any SIGTERM, its output (to a pipe nobody reads any more) going on to its
train.log only (mtl.progress.Tee: a study's run, whose log the runner wrote, takes it over); one
whose parent died before it could ask for that signal exits before it starts. The signal follows
the parent's thread that started the child: start children from a thread that outlives them
(the main one). Its output (stdout and stderr
together) is pumped line by line to the parent's `on_line`.
"""
import os
import signal
import subprocess
import threading

try:  # loaded here: the child, between fork and exec, must only call it
  import ctypes
  _PRCTL = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: an orphaned child is possible, nothing else changes
  _PRCTL = None


def _die_with_parent(parent):
  """In the child (between fork and exec): SIGTERM when the parent, pid `parent`, dies (a
  trainer checkpoints and stops); where it died already, exit now (no signal would come)."""
  if _PRCTL is not None:
    _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # reparented: the parent died before the line above
      os._exit(1)


def core_sets(n, cores=None):
  """`cores` (default: the CPUs this process may use) cut into n disjoint sets of consecutive
  cores, one per child side by side, all of one size (any left over stay idle: XLA sizes a CPU
  run's thread pool to its cores, and its sums' order to its pool, so unequal sets would give
  unequal numbers); None where n < 2 or there are fewer cores than n (they share them all)."""
  if cores is None and not hasattr(os, "sched_getaffinity"):  # not Linux: they share them
    return None
  cores = sorted(os.sched_getaffinity(0) if cores is None else cores)
  if n < 2 or len(cores) < n:
    return None
  k = len(cores) // n
  return [set(cores[i * k:(i + 1) * k]) for i in range(n)]


class Child:
  """A started child process (`proc`) and the thread (`pump`) that hands each line of its
  output, as bytes, to on_line. `keep`: file descriptors it inherits (a lock it then holds as
  long as it lives)."""

  def __init__(self, command, env, on_line, cores=None, keep=()):
    parent = os.getpid()
    def setup():  # in the child, before exec; its threads (XLA's pool) then fit `cores`
      _die_with_parent(parent)
      if cores:
        os.sched_setaffinity(0, cores)
    self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 env=env, start_new_session=True, preexec_fn=setup,
                                 pass_fds=keep)
    self.pump = threading.Thread(target=self._pump, args=(on_line,), daemon=True)
    self.pump.start()

  def _pump(self, on_line):
    stream = self.proc.stdout
    for line in iter(stream.readline, b""):
      on_line(line)
    stream.close()


def send(procs, sig):
  """Send `sig` to every process of `procs` still running."""
  for p in procs:
    if p.poll() is None:
      try:
        p.send_signal(sig)
      except ProcessLookupError:
        pass
