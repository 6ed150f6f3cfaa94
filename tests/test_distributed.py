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

The single-process runs share a persistent compilation cache of their own (same programs: ~30 s
saved each); the multi-process runs use the trainer's default one, as the other tests' runs.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments import tiny
from mtl import checkpoints, conflicts
from mtl import run_folder, run_state, sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "launch", "train.py")
LOCAL = os.path.join(ROOT, "launch", "local.py")

TASKS = "denoise_30,sr_x2"   # two tasks: the smallest joint run with a conflict probe
STEPS = 6
OVERRIDES = {                # the tiny model on 24-pixel crops; short evaluation
    "total_steps": STEPS, "checkpoint_every": 2, "log_every": 1, "model.patch_size": 24,
    "data.batch_size": 8, "eval.max_side": 48, "eval.max_images": 1, "conflicts.every": 1,
}
RUN_TIMEOUT = 600            # seconds for any one run (2 busy cores); a hang fails, not blocks

# One xdist worker runs this module (README: pytest -n 2 --dist loadgroup), so its module fixtures
# are built once: two 2-process runs at a time on 2 cores missed Gloo's 30 s set-up deadline.
pytestmark = pytest.mark.xdist_group("distributed")


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


def _signal_when(cmd, log_path, line, send, timeout=150):
  """(exit status, output, seconds from the signal to the exit) of `cmd` (its own process
  group), `send(proc, output)` called once its output shows `line`."""
  with open(log_path, "w") as log:
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT,
                            start_new_session=True)
  try:
    _wait_for(lambda: line in log_path.read_text(), proc, RUN_TIMEOUT, repr(line))
    send(proc, log_path.read_text())
    start = time.monotonic()
    rc = proc.wait(timeout=timeout)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  return rc, log_path.read_text(), time.monotonic() - start


def _kill_p1(sig):
  return lambda proc, out: os.kill(int(re.search(r"p1 pid (\d+)", out).group(1)), sig)


def _latest(workdir):
  ckpt = os.path.join(workdir, "checkpoints")
  steps = [int(d) for d in os.listdir(ckpt) if d.isdigit()] if os.path.isdir(ckpt) else []
  return max(steps, default=None)


def _final_params(workdir):
  run = run_state.build(_config())  # the 8 devices of the test session (conftest)
  params, step = checkpoints.restore_params(os.path.join(workdir, "checkpoints"),
                                            run.abstract_state.params)
  return jax.device_get(params), step


def _assert_same_params(a, b, exact=True):
  """exact: bitwise. Otherwise to float32 noise (the 2 x 4 vs 1 x 8 comparison: gloo's ring
  all-reduce adds the 8 devices' gradients in a rotated order per chunk, one process adds them
  in device order; the last bits differ from the first step on)."""
  leaves_a = jax.tree_util.tree_leaves_with_path(a)
  leaves_b = jax.tree_util.tree_leaves(b)
  assert len(leaves_a) == len(leaves_b)
  if exact:
    differing = [(jax.tree_util.keystr(path), float(np.max(np.abs(x - y))))
                 for (path, x), y in zip(leaves_a, leaves_b) if not np.array_equal(x, y)]
    assert not differing, f"{len(differing)} of {len(leaves_b)} leaves differ: {differing[:5]}"
  else:
    worst = max(float(np.max(np.abs(x - y))) for (_, x), y in zip(leaves_a, leaves_b))
    assert worst < 1e-5, f"parameters differ by up to {worst:g}"


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


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
  """A 2 x 4 run whose two processes were SIGKILLed after its first checkpoint landed; also a
  copy of its workdir as the kill left it. Returns (workdir, copy, latest step, pid of p0)."""
  base = tmp_path_factory.mktemp("killed")
  workdir, log_path = str(base / "run"), base / "first.log"
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
  # the time up to its checkpoint is spent all the same (a study's compute table adds it)
  with open(os.path.join(workdir, run_folder.COMPUTE_FILE)) as f:
    assert json.load(f)["wall_seconds"] > 0
  copy = str(base / "copy")
  shutil.copytree(workdir, copy, symlinks=True)
  return workdir, copy, killed_at, pids[0]


def test_two_processes_killed_and_resumed_equal_one_process(killed, reference):
  workdir, _, killed_at, first_p0 = killed
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
  _assert_same_params(params, expected, exact=False)

  record, ref_record = conflicts.load(workdir), conflicts.load(reference)
  np.testing.assert_array_equal(record.steps, np.arange(STEPS))  # every probe step once
  # The stores agree as float32 noise allows. At step 0 (same parameters) the gradients differ
  # only by summation order (each process sums its half of up to 8 x 48^2 = 18432 positions, then
  # the halves are added): ~sqrt(n) eps = 1.6e-5 of a leaf's scale, so 5e-5 for the Gramians
  # (measured 5e-6; a half-batch lost or counted twice moves them by O(1)). Later the noise grows
  # through the L1 loss's sign flips (measured: up to 8e-4 of a leaf's scale by step 3), while
  # the whole-body cosines the analysis reports agree to 5e-6 (held to 1e-4: that growth, 20x).
  got, want = record.gramians.astype(np.float64), ref_record.gramians.astype(np.float64)
  rel = np.abs(got - want) / np.abs(want).max(axis=(2, 3), keepdims=True)
  assert rel[0].max() < 5e-5 and rel.max() < 5e-3, rel.max(axis=(1, 2, 3))
  np.testing.assert_allclose(record.cosines(by="body"), ref_record.cosines(by="body"), atol=1e-4)
  # Only process 0 writes the run's files: one events file per start, each by process 0.
  p0 = int(re.search(r"started p0 pid (\d+)", out).group(1))
  writers = {int(name.split(".")[-2]) for name in os.listdir(os.path.join(workdir, "events"))}
  assert writers == {first_p0, p0}  # events.out.tfevents.<time>.<host>.<pid>.<n>
  assert os.path.exists(os.path.join(workdir, "results.json"))


def test_a_process_killed_outright_stops_the_others_at_once_with_one_line(killed, tmp_path):
  """kill -9 of one process: the other waits in its next collective until jax.distributed's
  heartbeat timeout (~100 s), then aborts with pages of C++ logs; no checkpoint can be saved
  without the dead one. The launcher kills it at once and says so in one line."""
  _, copy, killed_at, _ = killed
  workdir = str(tmp_path / "run")
  shutil.copytree(copy, workdir, symlinks=True)
  cmd = _local_cmd(workdir, total_steps=STEPS + 20)
  cmd.insert(2, "--grace_seconds=120")  # a survivor that waits shows as a launcher that waits
  rc, out, waited = _signal_when(cmd, tmp_path / "log", f"[p0] step {killed_at + 1}/",
                                 _kill_p1(signal.SIGKILL), timeout=300)
  assert rc == 128 + signal.SIGKILL and waited < 60, (waited, out[-4000:])  # not its grace
  assert ("[local] p1 was killed by SIGKILL: the others cannot finish a collective without it; "
          "killing them (the last saved checkpoint is kept: run the same command to resume)"
          in out), out[-4000:]
  assert "Traceback" not in out and "Fatal Python error" not in out, out[-4000:]


def test_a_stop_after_the_last_step_is_agreed_by_both_processes(killed, tmp_path):
  """SIGTERM once the last step is logged: the notice comes after the last step's own sync
  point, so one more, after the last save, decides for both processes alike: both stop before
  the final evaluation (exit 75, a rerun evaluates), or, if the notice came later still, both
  evaluate and the launcher reports the finished run (0), never a signal's 143."""
  _, copy, _, _ = killed
  workdir = str(tmp_path / "run")
  shutil.copytree(copy, workdir, symlinks=True)
  rc, out, _ = _signal_when(_local_cmd(workdir), tmp_path / "log", f"[p0] step {STEPS}/{STEPS}",
                            lambda proc, out: proc.send_signal(signal.SIGTERM))
  stopped = re.findall(r"\[p\d\] preempted: checkpoint saved at step (\d+) in .*; run the same "
                       r"command to evaluate it", out)
  assert rc in (run_folder.PREEMPTED_EXIT, 0), out[-4000:]
  if rc == run_folder.PREEMPTED_EXIT:
    assert stopped == [str(STEPS)] * 2 and not os.path.exists(os.path.join(workdir,
                                                                           "results.json"))
    proc, _ = _run(_local_cmd(workdir), _env())  # evaluates only
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert not re.search(r"\[p0\] step \d+/", proc.stdout), proc.stdout[-4000:]
  else:
    assert not stopped
  assert os.path.exists(os.path.join(workdir, "results.json"))


def test_sigterm_to_one_process_stops_both_at_one_step(killed, tmp_path):
  """A preemption notice may reach one host only (or each at a different step): both must save
  the same step, or the collective save deadlocks (it does with a per-process SIGTERM flag; the
  trainer's agreement through jax's preemption sync point fixes it)."""
  _, copy, killed_at, _ = killed
  workdir = str(tmp_path / "run")
  shutil.copytree(copy, workdir, symlinks=True)
  # total_steps may change on resume; a far end keeps the agreed step short of it. A save takes
  # seconds; without the step agreement it deadlocks (the wait's timeout).
  rc, out, _ = _signal_when(_local_cmd(workdir, total_steps=STEPS + 20), tmp_path / "log",
                            f"[p0] step {killed_at + 1}/", _kill_p1(signal.SIGTERM))
  saved = {int(s) for s in re.findall(r"\[p\d\] preempted: checkpoint saved at step (\d+)", out)}
  assert rc == run_folder.PREEMPTED_EXIT and len(saved) == 1, out[-4000:]
  assert len(re.findall(r"\[p\d\] preempted: checkpoint saved", out)) == 2  # both processes
  assert _latest(workdir) == saved.pop()


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


@pytest.mark.parametrize("changes, message", [
    ({"mesh.fsdp": 3}, "mesh.fsdp=3 does not divide the 8 devices"),
    # process 1 crashed (a jax.Array spanning devices it cannot address) and process 0 trained
    # alone on its half of the batch, then hung at the first checkpoint
    ({"mesh.data": 4}, "mesh data=4 x fsdp=1 takes 4 of process 0's devices of 2 processes; "
                       "every process must give it as many: set mesh.data=-1 (all 8 devices)"),
    # a check process 0 makes alone: process 1 went on into orbax's first barrier and failed
    # there 30 s later with a traceback, process 0 waiting minutes in jax's shutdown barrier
    ({}, "is in use by pid"),
])
def test_a_refused_start_stops_both_processes_with_one_line_each(tmp_path, changes, message):
  workdir = str(tmp_path / "run")
  if not changes:  # the workdir of a live run (this test's process)
    os.makedirs(workdir)
    with open(os.path.join(workdir, "train.lock"), "w") as f:
      json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}, f)
  proc, _ = _run(_local_cmd(workdir, **changes), _env(), timeout=120)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 1, out[-3000:]
  errors = [l for l in out.splitlines() if re.match(r"\[p\d\] error:", l)]
  assert sorted(l[:4] for l in errors) == ["[p0]", "[p1]"], out[-3000:]  # once per process
  assert all(message in l for l in errors), out[-3000:]
  assert "Traceback" not in out and not os.path.exists(os.path.join(workdir, "checkpoints"))


def test_an_error_in_one_process_ends_the_run_at_once(killed, tmp_path):
  """A process that stops on an error (here a Ctrl-C of its own: KeyboardInterrupt) exited
  through jax.distributed's shutdown barrier, which the others, blocked in their next
  collective, never reached: 5 minutes, then pages of C++ logs. It leaves the barrier after
  cli.SHUTDOWN_GRACE now, and the other's collective fails: one line each."""
  _, copy, killed_at, _ = killed
  workdir = str(tmp_path / "run")
  shutil.copytree(copy, workdir, symlinks=True)
  rc, out, waited = _signal_when(_local_cmd(workdir, total_steps=STEPS + 20), tmp_path / "log",
                                 f"[p0] step {killed_at + 1}/", _kill_p1(signal.SIGINT),
                                 timeout=300)
  assert rc == 128 + signal.SIGINT and waited < 60, (waited, out[-4000:])  # not the barrier's
  assert "[p1] error: interrupted (Ctrl-C)" in out, out[-4000:]
  assert "Traceback" not in out and "Fatal Python error" not in out, out[-4000:]


@pytest.mark.parametrize("flags, message", [
    (["--process_id=3"], "--process_id=3 is outside 0..0; give --num_processes too"),
    (["--num_processes=0"], "--num_processes=0 must be >= 1"),
    (["--num_processes=2", "--process_id=2"], "--process_id=2 is outside 0..1"),
    (["--distributed_timeout=-5"], "--distributed_timeout=-5 must be >= 1 (seconds)"),
    (["--num_cpu_devices=-1"], "--num_cpu_devices=-1 must be >= 0 (0: default)"),
    # a launcher that sets MTL_PROCESS_ID but not MTL_NUM_PROCESSES ran N single-process runs
    (["MTL_PROCESS_ID=1"], "$MTL_PROCESS_ID=1 is outside 0..0; give --num_processes too"),
    # the environment's values were read as the flags were defined: a traceback each
    (["MTL_NUM_PROCESSES=two"], "$MTL_NUM_PROCESSES='two' is not valid for --num_processes: "
                                "invalid literal for int() with base 10: 'two'"),
    (["MTL_DISTRIBUTED=yes"], "$MTL_DISTRIBUTED='yes' is not valid for --distributed: value "
                              "should be one of <auto|on|off>"),
    (["--num_processes=2", "--coordinator_address=localhost"],  # an IndexError deep in jax
     "--coordinator_address=localhost is not host:port (e.g. 10.0.0.1:1234, a port in "
     "1..65535)"),
    (["MTL_DISTRIBUTED=on"], "jax.distributed could not start from the environment "
                             "($MTL_DISTRIBUTED=on): coordinator_address should be defined.; "
                             "MTL_DISTRIBUTED=off runs this process alone"),
])
def test_bad_process_flags_are_one_line_whatever_else_is_given(tmp_path, flags, message):
  env = dict(_env(), **dict(f.split("=", 1) for f in flags if f.startswith("MTL_")))
  flags = [f for f in flags if not f.startswith("MTL_")]
  proc, _ = _run([sys.executable, TRAIN, *_args(str(tmp_path / "run")), *flags], env,
                 timeout=120)
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1] == f"error: {message}", proc.stderr[-2000:]
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("changes, message", [
    ({"mesh.data": 16}, "mesh data=16 x fsdp=1 needs 16 devices, 8 are present"),
    ({"mesh.fsdp": 3}, "mesh.fsdp=3 does not divide the 8 devices"),
    ({"mesh.data": 3, "mesh.fsdp": 3}, "mesh data=3 x fsdp=3 needs 9 devices, 8 are present"),
    # a resumed run may not change its batch: the fix then is a mesh of fewer devices
    ({"data.batch_size": 4}, "data.batch_size=4 is not divisible by the 8 batch shards of the "
     "mesh; use a multiple of 8, or fewer devices: mesh.data=4 (a resumed run may change its "
     "mesh, not its batch)"),
    ({"mesh.data": 2, "mesh.fsdp": 2, "data.batch_size": 6},
     "data.batch_size=6 is not divisible by the 4 batch shards of the mesh; use a multiple of 4, "
     "or fewer devices: mesh.data=1"),
    ({"mesh.data": 2, "mesh.fsdp": 4, "data.batch_size": 6},  # no mesh.data fits fsdp=4
     "data.batch_size=6 is not divisible by the 8 batch shards of the mesh; use a multiple of 8"),
])
def test_mesh_that_does_not_fit_is_a_clear_error(changes, message):
  config = _config()
  for key, value in changes.items():
    group, field = key.split(".")
    config[group][field] = value
  with pytest.raises(ValueError) as error:
    run_state.build(config)
  assert message in str(error.value) and "\n" not in str(error.value)
  assert ("fewer devices" in message) == ("fewer devices" in str(error.value))


def test_slurm_is_detected_as_jax_detects_it_and_one_task_runs_alone(tmp_path, monkeypatch):
  """SLURM_JOB_ID alone (a shell of salloc, a job step without srun) started jax.distributed,
  which failed with a traceback; a one-task step (a study's job) took one GPU of its N."""
  slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node1", "SLURM_NTASKS": "1",
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
  for env in ({"SLURM_JOB_ID": "7"}, slurm):
    proc, _ = _run([sys.executable, TRAIN, *_args(str(tmp_path / "run")), "--dry_run"],
                   dict(_env(), **env), timeout=120)
    assert proc.returncode == 0 and "mesh: data=1, fsdp=1 over 1 cpu device" in proc.stdout, (
        env, proc.stderr[-2000:])
  from mtl import distributed
  for name, value in dict(slurm, SLURM_NTASKS="4").items():
    monkeypatch.setenv(name, value)
  assert distributed._auto() == distributed.SLURM_ENV


def test_an_explicit_mesh_may_use_some_of_the_devices_whatever_fsdp_divides():
  # fsdp must divide the devices only where data=-1 spans them all
  mesh = sharding.make_mesh({"data": 2, "fsdp": 3}, jax.devices()[:8])
  assert dict(mesh.shape) == {"data": 2, "fsdp": 3}
