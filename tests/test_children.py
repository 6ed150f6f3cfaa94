"""Child processes: output pumped line by line, signals forwarded to the ones still running."""
import json
import os
import signal
import subprocess
import sys
import time

from mtl import children

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_output_lines_reach_the_parent_in_order():
  lines = []
  child = children.Child([sys.executable, "-c", "import sys; print('one'); print('two', "
                          "file=sys.stderr, flush=True); print('three', end='')"], None,
                         lines.append)
  assert child.proc.wait(timeout=60) == 0
  child.pump.join(timeout=10)
  assert lines == [b"one\n", b"two\n", b"three"]  # stderr with stdout; a last unended line too


def test_send_reaches_running_children_only():
  sleeper = children.Child([sys.executable, "-c", "import time; print('up', flush=True); "
                            "time.sleep(60)"], None, lambda line: None)
  done = children.Child([sys.executable, "-c", "pass"], None, lambda line: None)
  done.proc.wait(timeout=60)
  time.sleep(0.5)  # the sleeper is past start-up
  children.send([sleeper.proc, done.proc], signal.SIGTERM)
  assert sleeper.proc.wait(timeout=60) == -signal.SIGTERM
  assert done.proc.returncode == 0


def test_core_sets_cut_the_cores_into_disjoint_runs_of_consecutive_ones():
  assert children.core_sets(2, {0, 1}) == [{0}, {1}]
  assert children.core_sets(2, {0, 1, 2, 3, 4}) == [{0, 1}, {2, 3}]  # equal sets: equal pools
  assert children.core_sets(3, {4, 9, 6}) == [{4}, {6}, {9}]
  assert children.core_sets(3, {0, 1}) is None  # fewer cores than children: they share them
  assert children.core_sets(1, {0, 1}) is None


def test_a_child_given_cores_runs_on_those_only():
  cores = {min(os.sched_getaffinity(0))}  # one this test process may use
  lines = []
  child = children.Child([sys.executable, "-c", "import os; "
                          "print(sorted(os.sched_getaffinity(0)))"], None, lines.append, cores)
  assert child.proc.wait(timeout=60) == 0
  child.pump.join(timeout=10)
  assert lines == [f"{sorted(cores)}\n".encode()]


def test_a_child_whose_parent_died_before_it_asked_for_sigterm_exits_before_it_starts():
  code = "from mtl import children; children._die_with_parent({}); print('started')"
  orphan = subprocess.run([sys.executable, "-c", code.format(1)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)  # its parent is not pid 1: "it died"
  assert (orphan.returncode, orphan.stdout) == (1, "")
  kept = subprocess.run([sys.executable, "-c", code.format("__import__('os').getppid()")],
                        cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert (kept.returncode, kept.stdout) == (0, "started\n")


# A parent (as launch/local.py or a study's runner) that starts a trainer as a Child and is then
# killed outright (kill -9) once the trainer logged step 2.
_PARENT = """
import os, signal, sys, threading
from mtl import children
seen = threading.Event()
def on_line(line):
  if line.startswith(b"step 2/"):
    seen.set()
child = children.Child(sys.argv[1:], dict(os.environ, PYTHONUNBUFFERED="1"), on_line)
print(child.proc.pid, flush=True)
seen.wait(500)
os.kill(os.getpid(), signal.SIGKILL)
"""

# Above it, a subreaper: the orphaned trainer becomes its child, so its exit status is seen.
_REAPER = """
import ctypes, json, os, subprocess, sys
ctypes.CDLL("libc.so.6", use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
parent = subprocess.Popen([sys.executable, "-c"] + sys.argv[1:])
statuses = {}
while True:
  try:
    pid, status = os.wait()
  except ChildProcessError:
    break
  statuses[pid] = os.waitstatus_to_exitcode(status)
print(json.dumps({"parent": parent.pid, "statuses": statuses}), flush=True)
"""


def test_a_trainer_whose_parent_dies_checkpoints_and_exits_75(tmp_path):
  """The parent's death sends the trainer SIGTERM, with its output pipe gone: it saved no
  checkpoint and exited 1 (BrokenPipeError in its SIGTERM handler's line); now it checkpoints,
  says so in its train.log and exits 75 (preempted: run the same command to resume)."""
  if not sys.platform.startswith("linux"):
    import pytest
    pytest.skip("PR_SET_PDEATHSIG and PR_SET_CHILD_SUBREAPER are Linux's")
  workdir = tmp_path / "run"
  trainer = [sys.executable, "launch/train.py",
             "--config=experiments/tiny.py:tasks=denoise_30+sr_x2", f"--workdir={workdir}",
             "--config.mesh.data=1", "--config.data.batch_size=2",
             "--config.total_steps=1000", "--config.checkpoint_every=1000",
             "--config.log_every=1", "--config.conflicts.every=0", "--config.eval.max_images=1",
             "--config.eval.max_side=48"]
  out = subprocess.run([sys.executable, "-c", _REAPER, _PARENT, *trainer], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
  lines = out.stdout.splitlines()
  log = (workdir / "train.log").read_text() if (workdir / "train.log").exists() else ""
  assert out.returncode == 0 and len(lines) == 2, (out.stdout, out.stderr[-3000:], log[-3000:])
  trainer_pid, reaped = int(lines[0]), json.loads(lines[1])
  statuses = {int(pid): status for pid, status in reaped["statuses"].items()}
  assert statuses == {reaped["parent"]: -signal.SIGKILL, trainer_pid: 75}, log[-3000:]
  assert "SIGTERM received: saving a checkpoint at the next step and stopping\n" in log
  assert "(the reader of this process's stdout is gone: from here on its output goes to this " \
         "log only)" in log
  assert "Traceback" not in log and "BrokenPipe" not in log, log[-3000:]
  from mtl import checkpoints
  saved = checkpoints.latest_saved_step(str(workdir))
  assert saved is not None and saved >= 2
  assert f"preempted: checkpoint saved at step {saved} in {workdir}; run the same command to " \
         "resume" in log
