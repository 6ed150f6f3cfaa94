"""Child processes: output pumped line by line, signals forwarded to the ones still running."""
import os
import signal
import sys
import time

from mtl import children


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
