"""Multi-process training on one machine, with real processes, real JAX and the real trainer.

2 processes x 4 fake CPU devices (launch/local.py, jax.distributed on 127.0.0.1, gloo) form the
same 8-device mesh as one process with 8 fake devices; the data of a step is a pure function of
(seed, step, task, global sample index), so the two set-ups must learn the same parameters.

  (a) 2 x 4 devices, both processes SIGKILLed after the first checkpoint, resumed with the same
      command: final parameters and conflict store equal one uninterrupted 1 x 8 run, bitwise.
  (b) SIGTERM to a run: checkpoint at the next step boundary, the 'preempted' message, and the
      re-run finishes (again bitwise equal to the uninterrupted run).
  (c) a coordinator that never answers: a clear one-line error within seconds, not a hang.
  (d) a mesh that does not divide the devices or the batch: a clear one-line error.

The single-process runs share a persistent compilation cache (same programs: ~30 s saved each).
The multi-process runs must not: a cached CPU executable with cross-process collectives stalled
in gloo context set-up here (jax 0.10.2), so each multi-process run compiles afresh.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments import tiny
from mtl import checkpoints, conflicts, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "launch", "train.py")
LOCAL = os.path.join(ROOT, "launch", "local.py")

TASKS = "denoise_30,sr_x2"   # two tasks: the smallest joint run with a conflict probe
STEPS = 6
OVERRIDES = {                # the tiny model on 24-pixel crops; short evaluation
    "total_steps": STEPS, "checkpoint_every": 2, "log_every": 1, "model.patch_size": 24,
    "data.batch_size": 8, "eval.max_side": 48, "eval.max_images": 1, "conflicts.every": 1,
}
RUN_TIMEOUT = 240            # seconds for any one run; a hang fails the test instead of blocking


def _args(workdir, **changes):
  fields = dict(OVERRIDES, **changes)
  return ([f"--config={ROOT}/experiments/tiny.py:{TASKS}", f"--workdir={workdir}"]
          + [f"--config.{k}={v}" for k, v in fields.items()])


def _config():
  config = tiny.get_config(TASKS)
  for key, value in OVERRIDES.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _env(cache=None):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "MTL_", "XLA_"))}
  env["PYTHONUNBUFFERED"] = "1"
  if cache:
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
  return env


def _run(cmd, env, timeout=RUN_TIMEOUT):
  start = time.monotonic()
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                        cwd=ROOT)
  return proc, time.monotonic() - start


def _train_cmd(workdir, devices=8, **changes):
  return [sys.executable, TRAIN, *_args(workdir, **changes), f"--num_cpu_devices={devices}"]


def _local_cmd(workdir, **changes):
  return [sys.executable, LOCAL, "--num_processes=2", "--devices_per_process=4", "--",
          *_args(workdir, **changes)]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _wait_for(predicate, proc, timeout, what):
  deadline = time.monotonic() + timeout
  while not predicate():
    if proc.poll() is not None:
      raise AssertionError(f"process exited ({proc.returncode}) before {what}")
    if time.monotonic() > deadline:
      raise AssertionError(f"no {what} within {timeout}s")
    time.sleep(0.05)


def _latest(workdir):
  ckpt = os.path.join(workdir, "checkpoints")
  steps = [int(d) for d in os.listdir(ckpt) if d.isdigit()] if os.path.isdir(ckpt) else []
  return max(steps, default=None)


def _final_params(workdir):
  run = train.build(_config())  # the 8 devices of the test session (conftest)
  params, step = checkpoints.restore_params(os.path.join(workdir, "checkpoints"),
                                            run.abstract_state.params)
  return jax.device_get(params), step


def _assert_same_params(a, b):
  """Bitwise: same program on the same 8-device mesh, same data, same reduction order."""
  leaves_a = jax.tree_util.tree_leaves_with_path(a)
  leaves_b = jax.tree_util.tree_leaves(b)
  assert len(leaves_a) == len(leaves_b)
  differing = [(jax.tree_util.keystr(path), float(np.max(np.abs(x - y))))
               for (path, x), y in zip(leaves_a, leaves_b) if not np.array_equal(x, y)]
  assert not differing, f"{len(differing)} of {len(leaves_b)} leaves differ: {differing[:5]}"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache):
  """One uninterrupted single-process run on 8 fake devices."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  proc, _ = _run(_train_cmd(workdir), _env(cache))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def test_two_processes_killed_and_resumed_equal_one_process(tmp_path, reference):
  workdir = str(tmp_path / "run")
  log_path = tmp_path / "first.log"
  with open(log_path, "w") as log:
    first = subprocess.Popen(_local_cmd(workdir), stdout=log, stderr=subprocess.STDOUT,
                             env=_env(), cwd=ROOT, start_new_session=True)
  try:
    _wait_for(lambda: "pid" in log_path.read_text(), first, 30, "launcher start line")
    pids = [int(p) for p in re.findall(r"p\d pid (\d+)", log_path.read_text())]
    assert len(pids) == 2
    # The first checkpoint lands (orbax renames <step>.orbax-checkpoint-tmp-* when complete).
    _wait_for(lambda: _latest(workdir) is not None, first, RUN_TIMEOUT, "first checkpoint")
    for pid in pids:  # the machine dies: no checkpoint, no clean-up
      os.kill(pid, signal.SIGKILL)
    rc = first.wait(timeout=60)
  finally:
    if first.poll() is None:
      os.killpg(first.pid, signal.SIGKILL)
  killed_at = _latest(workdir)
  assert rc == 128 + signal.SIGKILL, log_path.read_text()[-3000:]
  assert killed_at < STEPS and not os.path.exists(os.path.join(workdir, "results.json"))

  proc, _ = _run(_local_cmd(workdir), _env())
  assert proc.returncode == 0, proc.stdout[-4000:]
  out = proc.stdout
  for p in (0, 1):  # both processes restored the same step
    assert re.search(rf"\[p{p}\] resumed \S+ at step {killed_at}\b", out), out[-4000:]
  assert f"[p0] step {STEPS}/{STEPS}" in out
  assert not re.search(r"\[p1\] step \d+/", out)  # progress is printed by process 0 only

  params, step = _final_params(workdir)
  expected, expected_step = _final_params(reference)
  assert step == expected_step == STEPS
  _assert_same_params(params, expected)

  record, ref_record = conflicts.load(workdir), conflicts.load(reference)
  np.testing.assert_array_equal(record.steps, np.arange(STEPS))  # every probe step once
  np.testing.assert_array_equal(record.gramians, ref_record.gramians)
  # Only process 0 writes the run's files: one events file, the results, the figures.
  assert len(os.listdir(os.path.join(workdir, "events"))) == 1
  assert os.path.exists(os.path.join(workdir, "results.json"))


def test_sigterm_checkpoints_then_resume_finishes(tmp_path, reference, cache):
  workdir = str(tmp_path / "run")
  log_path = tmp_path / "first.log"
  # No periodic checkpoint before the end: the one found is the preemption's.
  cmd = _train_cmd(workdir, checkpoint_every=100)
  with open(log_path, "w") as log:
    first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(cache),
                             cwd=ROOT)
  try:
    _wait_for(lambda: f"step 2/{STEPS}" in log_path.read_text(), first, RUN_TIMEOUT, "step 2")
    first.send_signal(signal.SIGTERM)
    rc = first.wait(timeout=120)
  finally:
    if first.poll() is None:
      first.kill()
  out = log_path.read_text()
  match = re.search(r"preempted: checkpoint saved at step (\d+) in (\S+); run the same command "
                    r"to resume", out)
  assert rc != 0 and match, out[-3000:]
  saved = int(match.group(1))
  assert 2 <= saved < STEPS and _latest(workdir) == saved
  assert not os.path.exists(os.path.join(workdir, "results.json"))

  proc, _ = _run(cmd, _env(cache))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"resumed {workdir} at step {saved}" in proc.stdout
  assert os.path.exists(os.path.join(workdir, "results.json"))
  params, step = _final_params(workdir)
  assert step == STEPS
  _assert_same_params(params, _final_params(reference)[0])
  np.testing.assert_array_equal(conflicts.load(workdir).steps, np.arange(STEPS))


def test_coordinator_that_never_answers_fails_fast_with_one_line(tmp_path):
  address = f"127.0.0.1:{_free_port()}"  # nothing listens there
  cmd = [sys.executable, TRAIN, *_args(str(tmp_path / "run")), f"--coordinator_address={address}",
         "--num_processes=2", "--process_id=1", "--num_cpu_devices=4", "--distributed_timeout=5"]
  proc, seconds = _run(cmd, _env(), timeout=60)
  assert proc.returncode != 0
  assert seconds < 30, f"took {seconds:.0f}s"
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and address in errors[0] and "5s" in errors[0], proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr and "Fatal Python error" not in proc.stderr, (
      proc.stderr[-3000:])


@pytest.mark.parametrize("launcher, changes, message", [
    ("local", {"mesh.fsdp": 3}, "mesh.fsdp=3 does not divide the 8 devices"),
    ("single", {"mesh.data": 16}, "mesh data=16 x fsdp=1 needs 16 devices, 8 are present"),
    ("single", {"data.batch_size": 4},
     "data.batch_size=4 is not divisible by the 8 batch shards"),
])
def test_mesh_that_does_not_fit_is_a_clear_error(tmp_path, launcher, changes, message):
  workdir = str(tmp_path / "run")
  cmd = _local_cmd(workdir, **changes) if launcher == "local" else _train_cmd(workdir, **changes)
  proc, seconds = _run(cmd, _env(), timeout=120)
  assert proc.returncode == 1, (proc.stdout + proc.stderr)[-3000:]
  text = proc.stdout + proc.stderr
  errors = [l for l in text.splitlines() if re.match(r"(\[p\d\] )?error:", l)]
  assert errors and all(message in l for l in errors), text[-3000:]
  assert len(errors) == (2 if launcher == "local" else 1)  # each process says it once
  assert "Traceback" not in text
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))
