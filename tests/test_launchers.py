"""The launchers: exact dry-run commands and scripts, one-line errors, and (with a stand-in
training process, no JAX) the local launcher's prefixes, exit status and signal forwarding, and
the SLURM script's requeue rule (with stand-in srun / scontrol on PATH)."""
import os
import shlex
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL = os.path.join(ROOT, "launch", "local.py")
SLURM = os.path.join(ROOT, "launch", "slurm.py")
TPU_VM = os.path.join(ROOT, "launch", "tpu_vm.py")
TRAIN = os.path.join(ROOT, "launch", "train.py")
TRAIN_ARGS = ["--config=experiments/tiny.py:sr_x2,derain", "--workdir=/shared/runs/a",
              "--config.eval.sets=photos,Set5=/data/my set"]  # a space survives quoting


def _run(args, cwd=ROOT, env=None, timeout=60):
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                        env=env, timeout=timeout)


def _one_line_error(proc, *words, status=2):
  assert proc.returncode == status, proc.stdout + proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  assert all(w in lines[0] for w in words), lines[0]
  assert proc.stdout == ""


# ----------------------------------------------------------------------------- local


def test_local_dry_run_prints_exactly_the_commands():
  proc = _run([LOCAL, "--num_processes=3", "--devices_per_process=2", "--port=12345",
               "--dry_run", "--", *TRAIN_ARGS])
  assert proc.returncode == 0, proc.stderr
  expected = [shlex.join([sys.executable, TRAIN, *TRAIN_ARGS,
                          "--coordinator_address=127.0.0.1:12345", "--num_processes=3",
                          f"--process_id={i}", "--num_cpu_devices=2"]) for i in range(3)]
  assert proc.stdout.splitlines() == expected
  assert shlex.split(expected[2])[-4:] == ["--coordinator_address=127.0.0.1:12345",
                                           "--num_processes=3", "--process_id=2",
                                           "--num_cpu_devices=2"]
  assert "--config.eval.sets=photos,Set5=/data/my set" in shlex.split(expected[0])


def test_local_auto_port_is_one_free_port_for_all():
  proc = _run([LOCAL, "--dry_run", "--", *TRAIN_ARGS])  # defaults: 2 processes x 4 devices
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert len(lines) == 2
  ports = {shlex.split(l)[-4] for l in lines}
  assert len(ports) == 1
  port = int(ports.pop().rsplit(":", 1)[1])
  assert 0 < port < 65536
  assert [shlex.split(l)[-2:] for l in lines] == [
      ["--process_id=0", "--num_cpu_devices=4"], ["--process_id=1", "--num_cpu_devices=4"]]


@pytest.mark.parametrize("args, words", [
    (["--num_processes=0"], ["--num_processes=0", ">= 1"]),
    (["--num_processes=-2"], ["--num_processes=-2", ">= 1"]),
    (["--devices_per_process=0"], ["--devices_per_process=0", ">= 1"]),
    (["--num_processes=two"], ["--num_processes", "two"]),
    (["--port=http"], ["--port=http", "auto"]),
    (["--port=70000"], ["--port=70000"]),
    (["--bogus"], ["--bogus"]),
    (["--", "--process_id=1"], ["--process_id=1", "launcher"]),
    # a traceback (FileNotFoundError) when the processes started; NaN or negative: no deadline
    (["--python=/nonexistent/python"], ["--python=/nonexistent/python is not an interpreter"]),
    (["--grace_seconds=nan"], ["--grace_seconds=nan", "not a number"]),
    (["--stop_seconds=-5"], ["--stop_seconds=-5.0", "> 0"]),
    # every process failed alike, each on its own output
    (["--dry_run", "--"], ["train.py arguments need --config="]),
    (["--dry_run", "--", "--config=experiments/tiny.py"], ["need --workdir="]),
])
def test_local_bad_input_is_one_line(args, words):
  argv = args if "--" in args else args + ["--dry_run", "--", *TRAIN_ARGS]
  _one_line_error(_run([LOCAL, *argv]), *words)


@pytest.fixture
def stand_in(tmp_path):
  """An executable given as --python: it gets train.py's path and arguments, ignores train.py,
  prints, and exits as told by STAND_IN_<process_id> (a status, or 'wait': wait for SIGTERM)."""
  path = tmp_path / "stand_in.py"
  path.write_text(textwrap.dedent(f"""\
      #!{sys.executable}
      import os, signal, sys, time
      args = dict(a[2:].split("=", 1) for a in sys.argv[2:] if a.startswith("--") and "=" in a)
      pid = args["process_id"]
      def on_term(signum, frame):
        print(f"process {{pid}} got SIGTERM", flush=True)
        sys.exit(int(os.environ.get("STAND_IN_TERM", "1")))
      signal.signal(signal.SIGTERM, on_term)
      print(f"process {{pid}} of {{args['num_processes']}}, {{args['num_cpu_devices']}} devices, "
            f"coordinator {{args['coordinator_address']}}", flush=True)
      print("partial line without newline", end="", flush=True)
      print("", flush=True)
      # Ready only after the prints: a SIGTERM inside print() would land between a line and its
      # newline, and the handler's own line would run on from it.
      if os.environ.get("STAND_IN_READY"):  # the handler is in place
        open(os.path.join(os.environ["STAND_IN_READY"], pid), "w").close()
      action = os.environ.get(f"STAND_IN_{{pid}}", "0")
      if action == "wait":
        time.sleep(60)
        sys.exit(5)
      time.sleep(0.2)
      sys.exit(int(action))
      """))
  path.chmod(path.stat().st_mode | stat.S_IXUSR)
  return str(path)


def _launch(stand_in, env_extra, n=2):
  env = dict(os.environ, **env_extra)
  return subprocess.Popen([sys.executable, LOCAL, f"--num_processes={n}",
                           "--devices_per_process=3", "--port=23456", "--grace_seconds=5",
                           f"--python={stand_in}", "--", *TRAIN_ARGS],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          cwd=ROOT)


def test_local_prefixes_every_line_and_succeeds(stand_in):
  proc = _launch(stand_in, {}, n=3)
  out, err = proc.communicate(timeout=30)
  assert proc.returncode == 0, out + err
  lines = out.splitlines()
  for i in range(3):
    assert f"[p{i}] process {i} of 3, 3 devices, coordinator 127.0.0.1:23456" in lines
    assert f"[p{i}] partial line without newline" in lines
  assert all(l.startswith(("[p0] ", "[p1] ", "[p2] ", "[local] ")) for l in lines), out


def test_local_propagates_the_first_failure_and_stops_the_others(stand_in):
  start = time.monotonic()
  proc = _launch(stand_in, {"STAND_IN_0": "wait", "STAND_IN_1": "3"})
  out, err = proc.communicate(timeout=30)
  assert proc.returncode == 3, out + err
  assert "[local] p1 exited with status 3: stopping the others" in out
  assert "[p0] process 0 got SIGTERM" in out  # p0 was waiting: SIGTERM ended it
  assert time.monotonic() - start < 20


def test_local_forwards_sigterm_to_every_process(stand_in, tmp_path):
  ready = tmp_path / "ready"
  ready.mkdir()
  proc = _launch(stand_in, {"STAND_IN_0": "wait", "STAND_IN_1": "wait",
                            "STAND_IN_READY": str(ready)})
  deadline = time.monotonic() + 20
  while len(os.listdir(ready)) < 2 and time.monotonic() < deadline and proc.poll() is None:
    time.sleep(0.05)
  assert len(os.listdir(ready)) == 2
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=30)
  assert "[local] SIGTERM: forwarding SIGTERM to 2 processes" in out, out + err
  assert "[p0] process 0 got SIGTERM" in out and "[p1] process 1 got SIGTERM" in out
  assert proc.returncode == 1  # the processes' own status (a preempted trainer exits 1)


def test_local_reports_a_run_that_finished_despite_a_signal(stand_in, tmp_path):
  """SIGTERM just after the last step: the processes may finish (their evaluation) and exit 0;
  the run is done, and the launcher says so with 0, not the signal's 143."""
  ready = tmp_path / "ready"
  ready.mkdir()
  proc = _launch(stand_in, {"STAND_IN_0": "wait", "STAND_IN_1": "wait", "STAND_IN_TERM": "0",
                            "STAND_IN_READY": str(ready)})
  deadline = time.monotonic() + 20
  while len(os.listdir(ready)) < 2 and time.monotonic() < deadline and proc.poll() is None:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=30)
  assert "[p0] process 0 got SIGTERM" in out and "[p1] process 1 got SIGTERM" in out, out + err
  assert proc.returncode == 0


# ----------------------------------------------------------------------------- slurm


def _slurm_dry(tmp_path, *flags):
  proc = _run([SLURM, *flags, "--dry_run", "--", *TRAIN_ARGS[:1], f"--workdir={tmp_path}/run",
               *TRAIN_ARGS[2:]])
  assert proc.returncode == 0, proc.stderr
  return proc.stdout.splitlines()


def test_slurm_dry_run_prints_the_script_and_the_sbatch_command(tmp_path):
  lines = _slurm_dry(tmp_path, "--nodes=2", "--gpus_per_node=4", "--time=2-00:00:00",
                     "--partition=gpu", "--account=proj", "--job_name=ipt", "--cpus_per_task=12",
                     "--setup=source ~/venv/bin/activate", "--sbatch=--qos=high")
  workdir = f"{tmp_path}/run"
  assert lines[0] == "#!/bin/bash"
  assert [l for l in lines if l.startswith("#SBATCH")] == [
      "#SBATCH --job-name=ipt", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4",
      # every task sees the node's GPUs: JAX gives local task i GPU i of those it sees
      "#SBATCH --gpus-per-node=4", "#SBATCH --time=2-00:00:00", "#SBATCH --cpus-per-task=12",
      "#SBATCH --partition=gpu", "#SBATCH --account=proj", "#SBATCH --signal=TERM@120",
      "#SBATCH --requeue", f'#SBATCH --chdir="{ROOT}"', "#SBATCH --open-mode=append",
      f'#SBATCH --output="{workdir}/slurm/%x-%j.out"', "#SBATCH --qos=high"]
  # a failed setup line stops the job before srun
  assert "source ~/venv/bin/activate || exit 1" in lines
  assert not any("MTL_DISTRIBUTED" in l for l in lines)  # one process per GPU: distributed
  srun = [l for l in lines if l.startswith("srun ")]
  config = f"--config={ROOT}/experiments/tiny.py:sr_x2,derain"  # a local file: made absolute
  assert srun == ["srun --kill-on-bad-exit=1 " + shlex.join(
      ["python", f"{ROOT}/launch/train.py", config, f"--workdir={workdir}", TRAIN_ARGS[2]])]
  assert lines[-1] == f"sbatch {workdir}/slurm/ipt.sbatch"
  assert not os.path.exists(workdir)  # a dry run writes nothing


def test_slurm_options_off_and_relative_paths(tmp_path):
  proc = _run([SLURM, "--signal_seconds=0", "--norequeue", "--python=~/venv/bin/python",
               "--dry_run", "--", "--config=experiments/tiny.py", "--workdir=rel/run",
               "--config.init_from=runs/joint"], cwd=str(tmp_path))
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert not any(l.startswith(("#SBATCH --signal", "#SBATCH --requeue")) for l in lines)
  assert "REQUEUE=0" in lines
  # The job runs here, so runs/joint names tmp_path/runs/joint as it would in a local run;
  # --workdir becomes absolute, and a config that is no file here is the repository's.
  assert f'#SBATCH --chdir="{tmp_path}"' in lines
  srun = [l for l in lines if l.startswith("srun ")]
  assert srun == ["srun --kill-on-bad-exit=1 ~/venv/bin/python " + shlex.join([
      f"{ROOT}/launch/train.py", f"--config={ROOT}/experiments/tiny.py",
      f"--workdir={tmp_path}/rel/run", "--config.init_from=runs/joint"])]  # ~: bash expands it


@pytest.mark.parametrize("args, words", [
    (["--nodes=0"], ["--nodes=0", ">= 1"]),
    (["--gpus_per_node=0"], ["--gpus_per_node=0", ">= 1"]),
    (["--time=soon"], ["--time=soon", "HH:MM:SS"]),
    (["--time=2:00", "--signal_seconds=120"], ["--signal_seconds=120", "--time=2:00 (120 s)"]),
    (["--job_name=my job"], ["--job_name"]),
    (["--sbatch=qos=high"], ["--sbatch='qos=high'"]),
    # a newline would end the #SBATCH line and run the rest as a command; '#' starts a comment
    (["--partition=gpu\necho INJECTED"], ["--partition='gpu\\necho INJECTED'", "letters"]),
    (["--sbatch=--comment=my run"], ["--sbatch='--comment=my run'", "without spaces"]),
    (["--setup=module load x\nrm -rf ~"], ["give one command per --setup"]),
    # '|| exit 1' would cover only the part after ';' or be commented out: a failure let through
    (["--setup=module load cuda  # ours"], ["--setup='module load cuda  # ours'", "one command"]),
    (["--setup=module load a; module load b"], ["one command per --setup"]),
    (["--", "--config=experiments/tiny.py"], ["--workdir"]),
    (["--", "--workdir=/x", "--num_processes=2"], ["--num_processes=2"]),
    (["--", "--workdir=gs://bucket/run"], ["--workdir=gs://bucket/run", "gcsfuse"]),
    # the current folder, silently; a file: a traceback at makedirs
    (["--dry_run", "--", "--workdir="], ["--workdir= is empty"]),
    (["--dry_run", "--", f"--workdir={os.path.abspath(__file__)}"], ["is a file"]),
    # the job waited in the queue, then failed on it
    (["--dry_run", "--", "--config=experiments/nope.py", "--workdir=/x"],
     ["--config=experiments/nope.py: no such file here or in"]),
    (["--dry_run", "--", "--workdir=/x"], ["need --config=FILE"]),
])
def test_slurm_bad_input_is_one_line(args, words):
  argv = args if "--" in args else args + ["--dry_run", "--", "--workdir=/x"]
  _one_line_error(_run([SLURM, *argv]), *words)


def test_slurm_without_sbatch_says_so_and_writes_nothing(tmp_path):
  env = dict(os.environ, PATH=str(tmp_path / "empty"))
  proc = _run([SLURM, "--", "--config=experiments/tiny.py", f"--workdir={tmp_path}/run"], env=env)
  _one_line_error(proc, "sbatch not found", "--dry_run", status=1)
  assert not os.path.exists(tmp_path / "run")


def test_slurm_resubmission_keeps_the_earlier_script(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "sbatch").write_text("#!/bin/bash\necho Submitted batch job 7\n")
  (bin_dir / "sbatch").chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
  script = tmp_path / "run" / "slurm" / "mtl.sbatch"
  for hours in ("1", "1", "2"):
    proc = _run([SLURM, f"--time={hours}:00:00", "--nocheck_config", "--",
                 "--config=experiments/tiny.py", f"--workdir={tmp_path}/run"], env=env)
    assert proc.returncode == 0, proc.stderr
  # the same script again replaces nothing; another one keeps the earlier beside it
  assert "#SBATCH --time=2:00:00" in script.read_text()
  assert "#SBATCH --time=1:00:00" in (tmp_path / "run" / "slurm" / "mtl.sbatch.1").read_text()
  assert not os.path.exists(f"{script}.2")
  assert f"the earlier script is kept as {script}.1" in proc.stdout


def test_slurm_submits_only_a_config_train_py_accepts_here(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "sbatch").write_text(f"#!/bin/bash\necho \"$@\" > {tmp_path}/submitted\n")
  (bin_dir / "sbatch").chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
  run = ["--config=experiments/tiny.py", f"--workdir={tmp_path}/run"]
  # a typo would wait in the queue, then end the job at its start
  for override, words in (("--config.optim.lrr=1e-3", ["would stop at its start", "optim.lrr"]),
                          ("--config.optim.lr=-1", ["would stop at its start", "optim.lr=-1"])):
    _one_line_error(_run([SLURM, "--", *run, override], env=env), *words)
    assert not os.path.exists(tmp_path / "submitted")
  proc = _run([SLURM, "--", *run, "--config.optim.lr=1e-3"], env=env)
  assert proc.returncode == 0, proc.stderr
  assert (tmp_path / "submitted").read_text() == f"{tmp_path}/run/slurm/mtl.sbatch\n"


def _fake_tools(bin_dir, log):
  """srun: create checkpoints/$FAKE_STEP (if set), then exit $FAKE_STATUS; scontrol: log."""
  bin_dir.mkdir()
  (bin_dir / "srun").write_text(textwrap.dedent(f"""\
      #!/bin/bash
      echo "srun $*" >> {log}
      [ -n "${{FAKE_STEP:-}}" ] && mkdir -p "$FAKE_WORKDIR/checkpoints/$FAKE_STEP"
      [ -n "${{FAKE_DONE:-}}" ] && touch "$FAKE_WORKDIR/results.json"
      exit "${{FAKE_STATUS:-0}}"
      """))
  (bin_dir / "scontrol").write_text(f"#!/bin/bash\necho \"scontrol $*\" >> {log}\n")
  for tool in ("srun", "scontrol"):
    (bin_dir / tool).chmod(0o755)


@pytest.mark.parametrize("existing, step, done, status, requeued", [
    (None, "40", False, 1, True),     # preempted after progress: requeue
    ("40", "80", False, 1, True),     # again, from a resumed run
    ("40", None, False, 1, False),    # failed without progress: no endless requeue
    (None, "100", True, 0, False),    # finished
    (None, "40", False, 0, False),    # exited 0 without results (nothing to requeue for)
])
def test_slurm_script_requeues_only_unfinished_runs_that_progressed(
    tmp_path, existing, step, done, status, requeued):
  workdir = tmp_path / "run"
  lines = _slurm_dry(tmp_path, "--job_name=t")
  script = "\n".join(lines[:-1]) + "\n"
  if existing:
    (workdir / "checkpoints" / existing).mkdir(parents=True)
  log = tmp_path / "calls.log"
  _fake_tools(tmp_path / "bin", log)
  env = dict(os.environ, PATH=f"{tmp_path}/bin:{os.environ['PATH']}", SLURM_JOB_ID="777",
             FAKE_WORKDIR=str(workdir), FAKE_STATUS=str(status), FAKE_STEP=step or "",
             FAKE_DONE="1" if done else "")
  proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env,
                        timeout=30)
  assert proc.returncode == status, proc.stdout + proc.stderr
  calls = log.read_text().splitlines()
  assert calls[0].startswith(f"srun --kill-on-bad-exit=1 python {ROOT}/launch/train.py")
  assert (calls[1:] == ["scontrol requeue 777"]) == requeued, calls
  assert ("requeueing job 777" in proc.stdout) == requeued


# ----------------------------------------------------------------------------- tpu vm


def test_tpu_vm_dry_run_prints_exactly_the_gcloud_command():
  proc = _run([TPU_VM, "--name=my-v5e-32", "--zone=us-west4-a", "--project=my-proj",
               "--repo=~/src/mtl", "--setup=source ~/venv/bin/activate", "--dry_run", "--",
               *TRAIN_ARGS])
  assert proc.returncode == 0, proc.stderr
  remote = ("cd ~/src/mtl && source ~/venv/bin/activate && MTL_DISTRIBUTED=on "
            + shlex.join(["python3", "launch/train.py", *TRAIN_ARGS]))
  assert proc.stdout.splitlines() == [shlex.join([
      "gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v5e-32", "--zone=us-west4-a",
      "--project=my-proj", "--worker=all", f"--command={remote}"])]
  # What the remote shell receives parses back into train.py's exact arguments.
  command = shlex.split(proc.stdout)[-1][len("--command="):]
  assert shlex.split(command.split(" && ")[-1])[2:] == ["launch/train.py", *TRAIN_ARGS]


def test_tpu_vm_defaults():
  proc = _run([TPU_VM, "--name=t", "--zone=z-1", "--dry_run", "--", "--config=c.py",
               "--workdir=/mnt/w"])
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == ("gcloud compute tpus tpu-vm ssh t --zone=z-1 --worker=all "
                                 "'--command=cd ~/mtl && MTL_DISTRIBUTED=on python3 "
                                 "launch/train.py --config=c.py --workdir=/mnt/w'")


def test_tpu_vm_keeps_a_python_s_leading_tilde_for_the_remote_shell(tmp_path):
  proc = _run([TPU_VM, "--name=t", "--zone=z", "--python=~/my env/bin/python", "--dry_run", "--",
               "--config=c.py", "--workdir=/mnt/run"])
  assert proc.returncode == 0, proc.stderr
  remote = shlex.split(proc.stdout)[-1][len("--command="):].split(" && ")[-1]
  assert remote == ("MTL_DISTRIBUTED=on ~/'my env/bin/python' launch/train.py "
                    "--config=c.py --workdir=/mnt/run")
  fake = tmp_path / "my env" / "bin"  # the remote shell expands ~ and runs that interpreter
  fake.mkdir(parents=True)
  (fake / "python").write_text("#!/bin/sh\necho ran \"$@\"\n")
  (fake / "python").chmod(0o755)
  ran = subprocess.run(["bash", "-c", remote], capture_output=True, text=True,
                       env=dict(os.environ, HOME=str(tmp_path)), timeout=30)
  assert ran.stdout == "ran launch/train.py --config=c.py --workdir=/mnt/run\n", ran.stderr


@pytest.mark.parametrize("args, words", [
    (["--zone=z"], ["--name"]),
    (["--name=My_TPU", "--zone=z"], ["--name='My_TPU'"]),
    (["--name=t", "--zone=z", "--worker=first"], ["--worker=first"]),
    (["--name=t", "--zone=z", "--dry_run", "--", "--config=x"], ["--workdir"]),
    (["--name=t", "--zone=z", "--dry_run", "--", "--workdir=/w", "--num_processes=4"],
     ["--num_processes=4"]),
    # joined with '&&': a comment would comment out the training, a ';' run it after a failure
    (["--name=t", "--zone=z", "--setup=source ~/venv/bin/activate  # py3.12"],
     ["--setup='source ~/venv/bin/activate  # py3.12'", "one command per --setup"]),
    (["--name=t", "--zone=z", "--setup=module load x; true"], ["--setup='module load x; true'"]),
    # each worker would write a folder of its own, not one shared run
    (["--name=t", "--zone=z", "--dry_run", "--", "--workdir=runs/a"],
     ["--workdir=runs/a is not absolute", "/mnt/shared/mtl/run"]),
    # the trainer writes with file I/O: each worker would write <repo>/gs:/b/run of its own
    (["--name=t", "--zone=z", "--dry_run", "--", "--workdir=gs://b/run"],
     ["--workdir=gs://b/run is a URL", "gcsfuse"]),
    (["--name=t", "--zone=z", "--dry_run", "--", "--workdir=~/runs/a"],
     ["--workdir=~/runs/a is not absolute"]),
    # every worker would fail alike, each on its own output
    (["--name=t", "--zone=z", "--dry_run", "--", "--workdir=/w"], ["need --config=FILE"]),
])
def test_tpu_vm_bad_input_is_one_line(args, words):
  argv = args if "--" in args else args + ["--dry_run", "--", "--config=c.py", "--workdir=/w"]
  _one_line_error(_run([TPU_VM, *argv]), *words)


def test_tpu_vm_without_gcloud_says_so(tmp_path):
  env = dict(os.environ, PATH=str(tmp_path))
  _one_line_error(_run([TPU_VM, "--name=t", "--zone=z", "--", "--config=c.py", "--workdir=/w"],
                       env=env),
                  "gcloud not found", "--dry_run", status=1)


# ----------------------------------------------------------------------------- all three


@pytest.mark.parametrize("launcher, flags", [
    (LOCAL, ["num_processes", "devices_per_process", "port", "python", "grace_seconds",
             "stop_seconds", "dry_run"]),
    (SLURM, ["nodes", "gpus_per_node", "time", "partition", "account", "job_name",
             "cpus_per_task", "signal_seconds", "requeue", "setup", "sbatch", "python",
             "dry_run"]),
    (TPU_VM, ["name", "zone", "project", "worker", "repo", "python", "setup", "dry_run"]),
])
def test_help_lists_every_flag_with_its_help_and_default(launcher, flags):
  proc = _run([launcher, "--help"])
  assert proc.returncode == 0 and proc.stderr == "", proc.stderr  # launch/cli.py: help exits 0
  assert "  python launch/" in proc.stdout  # the module docstring: usage and behaviour
  for name in flags:
    match = [l for l in proc.stdout.splitlines()
             if l.startswith((f"  --{name}: ", f"  --[no]{name}: "))]
    assert len(match) == 1, name
    assert len(match[0].split(": ", 1)[1]) > 10, match[0]  # a help text, not a bare name
  required = {"name", "zone"}
  for block in proc.stdout.split("\n  --")[1:]:
    name = block.split(":", 1)[0].replace("[no]", "")
    if name in flags and name not in required:
      assert "(default: " in block, block


@pytest.mark.parametrize("launcher", [LOCAL, SLURM, TPU_VM])
def test_arguments_before_the_separator_must_be_flags(launcher):
  proc = _run([launcher, "--dry_run", "stray", "--", "--workdir=/w"])
  _one_line_error(proc, "unexpected argument 'stray'", "after `--`")
  proc = _run([launcher, "--bogus=1", "--", "--workdir=/w"])
  _one_line_error(proc, "unknown flag --bogus", "--help")
