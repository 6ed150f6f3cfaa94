"""The study runner beyond one run at a time: the SLURM submission graph (dry run: exact sbatch
calls and dependencies), the status table (done / running / failed / waiting), a run locked by
another process is skipped, --max_parallel=2 runs the micro study two at a time (stand-ins for
its runs), and runs that differ only in seed and lr share their compiled programs."""
import fcntl
import json
import os
import re
import subprocess
import sys

import pytest

from micro_study import MICRO_STUDY, cli
from mtl import children
from mtl import study as study_lib
from mtl.study import runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The micro study with a swept joint lr and two seeds: each fine-tune waits for two joint runs.
SWEPT = MICRO_STUDY + '''
_micro = get_config


def get_config(arg=""):
  study = _micro(arg)
  if arg == "swept":
    study.lrs_override.joint, study.seeds = (1e-3, 2e-4), (0, 1)  # a swept joint regime
  elif arg == "values":  # runs that differ only in seed and lr
    study.tasks, study.regimes, study.seeds, study.lrs = ("denoise_30",), ("scratch",), (0, 1), (
        1e-3, 5e-4)
    study.steps.scratch = 2
  elif arg == "joint":  # one joint run, measured at its last two checkpoints
    study.regimes = ("joint",)
  elif arg == "diverge":  # the joint sweep's lr 1e30 diverges; the fine-tunes train at 1e-3
    study.regimes, study.final_conflicts.batch_size = ("joint", "finetune"), 0
    study.lrs, study.lrs_override.finetune = (1e-3, 1e30), (1e-3,)
    study.run.conflicts.every = 0
  elif arg == "diverge_all":  # every joint lr diverges, on both seeds; scratch trains
    study.final_conflicts.batch_size, study.seeds = 0, (0, 1)
    study.lrs_override.joint = (1e30,)
    study.steps.scratch = 2
    study.run.conflicts.every = 0
  return study
'''


@pytest.fixture(scope="module")
def study_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("studies") / "micro.py"
  path.write_text(SWEPT)
  return str(path)


def _config(study_file, arg):
  import importlib.util
  spec = importlib.util.spec_from_file_location("micro_study_file", study_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _load(study_file, arg, workdir):
  return study_lib.Study(_config(study_file, arg), workdir)


def _fake_done(study, name, val_psnr):
  spec = study.by_name[name]
  os.makedirs(study.run_dir(name), exist_ok=True)
  results = {"step": spec.steps, "tasks": {t: {"photos_val": {"psnr_y": val_psnr},
                                               "photos": {"psnr_y": val_psnr}}
                                           for t in spec.tasks}}
  for filename, obj in (("results.json", results), ("DONE", {"seconds": 12.0})):
    with open(study.path(name, filename), "w") as f:
      json.dump(obj, f)


# ----------------------------------------------------------------------------- SLURM


def test_submit_dry_run_prints_exact_sbatch_calls_and_dependencies(study_file, tmp_path):
  workdir = str(tmp_path / "study")
  out = cli(f"--config={study_file}:swept", f"--workdir={workdir}", "--submit=slurm", "--dry_run",
            "--slurm_partition=gpu", "--slurm_time=2:00:00",
            "--slurm_setup=source venv/bin/activate")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert lines[0] == (f"# study micro: 12 runs in {workdir}: 0 done, 0 already queued or "
                      "running, 12 jobs to submit")
  calls = [l for l in lines if l.startswith("JOB_")]
  assert len(calls) == 12
  names = [r.name for r in _load(study_file, "swept", workdir).runs]
  slurm_dir = f"{workdir}/slurm"
  for i, (name, call) in enumerate(zip(names, calls), 1):
    # seed 0: JOB_3, JOB_4 are its joint runs; seed 1: JOB_9, JOB_10
    after = {"finetune": "--dependency=afterok:$JOB_3:$JOB_4 " if name.endswith("s0")
             else "--dependency=afterok:$JOB_9:$JOB_10 "}.get(name.split("-")[0], "")
    assert call == f"JOB_{i}=$(sbatch --parsable {after}{slurm_dir}/{name}.sbatch)"
  # the command each job runs, exactly
  assert (f"# joint-lr2e-4-s1: srun --kill-on-bad-exit=1 python {ROOT}/launch/study.py "
          f"--workdir={workdir} --only=joint-lr2e-4-s1") in lines
  assert lines[-3:] == [
      "# dependencies (a fine-tune starts when every lr of its sweep is done and picks the best "
      "on photos_val):",
      "#   joint-lr1e-3-s0, joint-lr2e-4-s0 -> finetune-denoise_30-lr1e-3-s0, "
      "finetune-derain-lr1e-3-s0",
      "#   joint-lr1e-3-s1, joint-lr2e-4-s1 -> finetune-denoise_30-lr1e-3-s1, "
      "finetune-derain-lr1e-3-s1"]
  assert not os.path.exists(workdir)  # a dry run writes nothing


def test_submit_skips_done_runs_and_their_dependencies(study_file, tmp_path):
  workdir = str(tmp_path / "study")
  study = _load(study_file, "swept", workdir)
  study.prepare()
  _fake_done(study, "joint-lr1e-3-s0", 20.0)
  _fake_done(study, "scratch-derain-lr1e-3-s1", 20.0)
  out = cli(f"--workdir={workdir}", "--submit=slurm", "--dry_run", "--only=*-s0")  # study.json
  assert out.returncode == 0, out.stderr
  calls = [l for l in out.stdout.splitlines() if l.startswith("JOB_")]
  assert [re.sub(r".*/slurm/|\.sbatch\)", "", c) for c in calls] == [
      "scratch-denoise_30-lr1e-3-s0", "scratch-derain-lr1e-3-s0", "joint-lr2e-4-s0",
      "finetune-denoise_30-lr1e-3-s0", "finetune-derain-lr1e-3-s0"]
  assert "--dependency=afterok:$JOB_3 " in calls[3] and "--dependency=afterok:$JOB_3 " in calls[4]


def test_submit_writes_scripts_chains_real_job_ids_and_skips_queued_jobs(study_file, tmp_path):
  """With stand-in sbatch / squeue on PATH: the scripts, the ids in the dependencies, jobs.json,
  and a second submission that finds every job still queued and submits nothing."""
  bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
  bin_dir.mkdir()
  (bin_dir / "sbatch").write_text(
      f'#!/bin/bash\necho "sbatch $*" >> {log}\nn=$(wc -l < {log})\necho "$((1000 + n));cluster"\n')
  (bin_dir / "squeue").write_text('#!/bin/bash\nseq 1001 1100\n')  # every job still queued
  for tool in ("sbatch", "squeue"):
    (bin_dir / tool).chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
  workdir = str(tmp_path / "study")
  args = [sys.executable, "launch/study.py", f"--config={study_file}", f"--workdir={workdir}",
          "--submit=slurm", "--slurm_gpus_per_node=2"]
  out = subprocess.run(args, cwd=ROOT, text=True, capture_output=True, env=env, timeout=120)
  assert out.returncode == 0, out.stdout + out.stderr
  calls = log.read_text().splitlines()
  assert calls[3] == (f"sbatch --parsable --dependency=afterok:1003 "
                      f"{workdir}/slurm/finetune-denoise_30-lr1e-3-s0.sbatch")
  assert "submitted finetune-derain-lr1e-3-s0 as job 1005 (after joint-lr1e-3-s0)" in out.stdout
  with open(os.path.join(workdir, "slurm", "jobs.json")) as f:
    assert json.load(f)["joint-lr1e-3-s0"] == "1003"
  script = open(f"{workdir}/slurm/joint-lr1e-3-s0.sbatch").read().splitlines()
  assert "#SBATCH --ntasks-per-node=1" in script and "#SBATCH --gpus-per-node=2" in script
  # one process drives both GPUs: jax.distributed's SLURM rule would give it only GPU 0
  assert "export MTL_DISTRIBUTED=off" in script
  assert (f"srun --kill-on-bad-exit=1 python {ROOT}/launch/study.py --workdir={workdir} "
          "--only=joint-lr1e-3-s0") in script
  assert f"WORKDIR={workdir}/runs/joint-lr1e-3-s0" in script  # the requeue rule's run
  again = subprocess.run(args, cwd=ROOT, text=True, capture_output=True, env=env, timeout=120)
  assert again.returncode == 0, again.stderr
  assert again.stdout.splitlines() == [
      f"# study micro: 5 runs in {workdir}: 0 done, 5 already queued or running, 0 jobs to "
      "submit"]
  assert len(log.read_text().splitlines()) == 5


def test_submit_without_sbatch_says_so(study_file, tmp_path):
  env = dict(os.environ, PATH=os.path.dirname(sys.executable))
  out = subprocess.run([sys.executable, "launch/study.py", f"--config={study_file}",
                        f"--workdir={tmp_path}/study", "--submit=slurm"], cwd=ROOT, text=True,
                       capture_output=True, env=env, timeout=120)
  assert out.returncode == 1
  assert out.stderr.strip().splitlines() == [
      "error: sbatch not found on PATH; submit from a SLURM login node, or add --dry_run to "
      "print the sbatch calls"]


# ----------------------------------------------------------------------------- states


def test_status_table_shows_done_running_failed_and_waiting(study_file, tmp_path):
  workdir = str(tmp_path / "study")
  study = _load(study_file, "", workdir)
  study.prepare()
  _fake_done(study, "scratch-denoise_30-lr1e-3-s0", 20.0)
  os.makedirs(study.run_dir("scratch-derain-lr1e-3-s0"))
  with open(study.path("scratch-derain-lr1e-3-s0", runner.FAILED_FILE), "w") as f:
    json.dump({"status": 1, "time": "2026-01-01 00:00:00"}, f)
  os.makedirs(study.run_dir("joint-lr1e-3-s0"))
  with open(study.path("joint-lr1e-3-s0", runner.RUN_LOCK), "w") as held:
    held.write(json.dumps({"host": "node7", "pid": 4242, "started": "2026-01-01 00:00:01"}))
    held.flush()
    fcntl.flock(held, fcntl.LOCK_EX)  # a live process runs it
    lines = runner.status_table(study, study.runs)
    assert lines[0] == (f"[study] micro: 5 runs in {workdir}: 1 done, 1 running, 1 failed, "
                        "2 waiting")
    assert lines[1:] == [
        "  done     scratch-denoise_30-lr1e-3-s0   in 12s",
        "  failed   scratch-derain-lr1e-3-s0       exit status 1 at 2026-01-01 00:00:00; log: "
        f"{study.path('scratch-derain-lr1e-3-s0', 'train.log')}",
        "  running  joint-lr1e-3-s0                pid 4242 on node7, since 2026-01-01 00:00:01",
        "  waiting  finetune-denoise_30-lr1e-3-s0  for joint-lr1e-3-s0",
        "  waiting  finetune-derain-lr1e-3-s0      for joint-lr1e-3-s0"]
    # Another study process (here without --config: the saved study) skips the locked run.
    out = cli(f"--workdir={workdir}", "--only=joint-*")
    assert out.returncode == 3, out.stdout + out.stderr
    assert "run 1/1 joint-lr1e-3-s0: running in another process (pid 4242 on node7); skipped" \
        in out.stdout
  # The lock died with its holder: the run is no longer running (a stale file does not count).
  assert runner.state(study, study.by_name["joint-lr1e-3-s0"]) == "pending"


# ----------------------------------------------------------------------------- side by side


def test_start_order_is_seed_by_seed_with_awaited_runs_first(study_file, tmp_path):
  study = _load(study_file, "swept", str(tmp_path / "study"))
  names = lambda runs: [r.name.rsplit("-s", 1)[0] + f" s{r.seed}" for r in runs]
  seed = ["joint-lr1e-3", "joint-lr2e-4", "scratch-denoise_30-lr1e-3", "scratch-derain-lr1e-3",
          "finetune-denoise_30-lr1e-3", "finetune-derain-lr1e-3"]
  assert names(runner.start_order(study, study.runs)) == (
      [f"{n} s0" for n in seed] + [f"{n} s1" for n in seed])
  # Seed 0's joint sweep done: nothing waits on seed 0, whose other runs still come first.
  for name in ("joint-lr1e-3-s0", "joint-lr2e-4-s0"):
    _fake_done(study, name, 30.0)
  queue = [r for r in study.runs if r.name not in ("joint-lr1e-3-s0", "joint-lr2e-4-s0")]
  assert names(runner.start_order(study, queue))[:5] == [
      "scratch-denoise_30-lr1e-3 s0", "scratch-derain-lr1e-3 s0", "finetune-denoise_30-lr1e-3 s0",
      "finetune-derain-lr1e-3 s0", "joint-lr1e-3 s1"]


def test_eta_weighs_each_run_by_its_steps_and_tasks_and_counts_the_runs_in_progress():
  run = lambda name, regime, tasks, steps: study_lib.StudyRun(
      name=name, regime=regime, column=regime, tasks=tasks, seed=0, lr=1e-3, steps=steps,
      sweep=name)
  group = run("g2", "groups", ("sr_x2", "sr_x3"), 600)
  scratch = [run(f"s{i}", "scratch", ("sr_x2",), 750) for i in range(2)]
  finetunes = [run(f"f{i}", "finetune", ("sr_x2",), 150) for i in range(3)]
  finished = [(run("g0", "groups", ("sr_x2", "sr_x3"), 600), 230.0),
              (run("g1", "groups", ("sr_x2", "sr_x3"), 600), 250.0)]
  # The groups' 0.4 s/step; scratch and fine-tunes, not seen yet, 0.2 s per step and task; the
  # group in progress for 100 s has 140 s left; two at a time: (140 + 2 * 150 + 3 * 30) / 2.
  to_go = [group, *scratch, *finetunes]
  assert runner.seconds_left(finished, to_go, {"g2": 100.0}, 2) == pytest.approx(265.0)
  # Once a scratch run is done, scratch runs cost what it took (60 s); the fine-tunes the three
  # runs' seconds per step and task: 540 s / 3150.
  finished.append((scratch[0], 60.0))
  assert runner.seconds_left(finished, to_go[2:], {}, 2) == pytest.approx(
      (60 + 3 * 150 * 540 / 3150) / 2)
  # One run left runs alone; a run over its estimate counts 0, not less; steps not known yet
  # (equal_flops scratch, 0) cost the mean finished run.
  assert runner.seconds_left(finished, [group], {"g2": 500.0}, 2) == 0.0
  unknown = run("s9", "scratch", ("sr_x2",), 0)
  assert runner.seconds_left(finished, [unknown], {}, 2) == pytest.approx((230 + 250 + 60) / 3)


def test_measurements_left_counts_the_queued_and_what_those_in_progress_still_need():
  # Two done in 60 s and 80 s (mean 70): 3 queued cost 210 s; one in progress for 30 s needs 40
  # more, one past the mean (90 s) nothing: 250 s of work on 2 at a time.
  assert runner.measurements_left([60, 80], 3, [30, 90], 2) == pytest.approx(250 / 2)
  assert runner.measurements_left([60, 80], 1, [], 4) == pytest.approx(70)  # 1 left: 1 at a time
  assert runner.measurements_left([60], 0, [], 2) == 0


# A trainer's stand-in: trains 0.5 s, then scores every task 30 dB and leaves the checkpoints of
# steps 2 and 4, as the micro study's runs do.
TRAINED = """
import json, os, sys, time
config, workdir = sys.argv[1:]
run = json.load(open(config))
time.sleep(0.5)
for step in (2, 4):
  os.makedirs(os.path.join(workdir, "checkpoints", str(step)))
scores = {"photos_val": {"psnr_y": 30.0}, "photos": {"psnr_y": 30.0}}
with open(os.path.join(workdir, "results.json"), "w") as f:
  json.dump({"step": run["total_steps"], "tasks": {t: scores for t in run["tasks"]}}, f)
"""


def test_max_parallel_runs_the_micro_study_two_at_a_time(study_file, tmp_path):
  """The micro study with --max_parallel=2, stand-ins for its runs and measurements (real runs
  side by side: tests/test_gpu_check.py's gpu_study.sh)."""
  import io
  import signal
  workdir = str(tmp_path / "study")
  study = _load(study_file, "", workdir)
  train = lambda config, workdir: [sys.executable, "-c", TRAINED, config, workdir]
  analyze = lambda config, workdir, out, final, step: [sys.executable, "-c", MEASURE, out, "False"]
  out = io.StringIO()
  handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
  try:
    assert runner.Runner(study, train, out=out, max_parallel=2, analyze=analyze).run() == 0
  finally:
    for sig, handler in handlers.items():
      signal.signal(sig, handler)
  lines = out.getvalue().splitlines()
  events = [re.sub(r"^run \d/5 ", "", l).split(" |")[0] for l in lines if l.startswith("run ")]
  # Two runs side by side from the start, the one the fine-tunes wait for first; the fine-tunes
  # only after it is done.
  assert events[:2] == ["joint-lr1e-3-s0: starting", "scratch-denoise_30-lr1e-3-s0: starting"]
  joint_done = next(i for i, e in enumerate(events) if e.startswith("joint-lr1e-3-s0: done"))
  for task in ("denoise_30", "derain"):
    assert events.index(f"finetune-{task}-lr1e-3-s0: starting") > joint_done
    with open(study.path(f"finetune-{task}-lr1e-3-s0", "run_config.json")) as f:
      assert json.load(f)["init_from"] == study.run_dir("joint-lr1e-3-s0")
  assert all(study.is_done(r.name) for r in study.runs)
  if children.core_sets(2):  # the first two, side by side, each on a core set of its own
    first_two = [l for l in lines if ": starting" in l][:2]
    assert len({l.rpartition(" | cores ")[2] for l in first_two}) == 2, first_two
  assert [l for l in lines if l.startswith("[study]")][-1].startswith("[study] all 5 runs done")
  # The joint run's two end-of-training measurements: the first among the runs, in the first
  # slot free once its sweep is done (before the fine-tunes, which share that slot's turn), the
  # other after the runs.
  starts = [i for i, l in enumerate(lines) if ": measuring it on fresh batches" in l]
  ran = next(i for i, l in enumerate(lines) if l.startswith("[study] compiled"))
  assert [lines[i].split(" joint-")[0] for i in starts] == ["conflicts 1/2", "conflicts 2/2"]
  assert starts[0] < ran < starts[1], lines
  for task in ("denoise_30", "derain"):
    assert next(i for i, l in enumerate(lines)
                if f"finetune-{task}-lr1e-3-s0: starting" in l) > starts[0], lines
  assert len([l for l in lines if re.match(r"conflicts \d/2 .*: done in \S+", l)]) == 2, lines
  # Run again, it shows the table and does nothing else.
  again = io.StringIO()
  assert runner.Runner(study, train, out=again, max_parallel=2, analyze=analyze).run() == 0
  assert again.getvalue().splitlines()[0] == f"[study] micro: 5 runs in {workdir}: 5 done"
  assert "starting" not in again.getvalue()


def test_the_runs_lines_say_what_the_end_of_training_measurements_will_take(study_file,
                                                                             tmp_path):
  """Before a measurement is done here, the runs' lines count the measurements to come (a sweep
  not done yet counts its checkpoints); after, they say their time: the mean so far."""
  import io
  study = _load(study_file, "", str(tmp_path / "study"))  # one joint sweep; 2 checkpoints
  study.prepare()
  run = runner.Runner(study, None, out=io.StringIO(), max_parallel=2, analyze=lambda *a: [])
  assert study.final_conflicts_to_come() == 2  # its 2 checkpoints
  assert run._measurements_to_come() == "the 2 end-of-training conflict measurements"
  (joint,) = [r for r in study.runs if r.regime == "joint"]
  study.write_run_config(joint, io.StringIO())
  joint = joint.name
  _fake_done(study, joint, 30.0)
  for step in (2, 4):
    os.makedirs(os.path.join(study.run_dir(joint), "checkpoints", str(step)))
  os.makedirs(os.path.join(study.run_dir(joint), "analysis", "step-2", "conflicts", "store"))
  assert [p[1] for p in study.final_conflicts_pending()] == [4]
  run.took_s = [75.0]
  assert run._measurements_to_come() == "~1m15s for the 1 end-of-training conflict measurement"
  dry = io.StringIO()  # a dry run lists it with its command (it listed none: "0 to go")
  runner.dry_run(study, lambda config, workdir: ["train"], out=dry,
                 analyze=lambda config, workdir, out, final, step: ["analyze", out])
  assert dry.getvalue().splitlines()[-3:-1] == [
      "end-of-training conflict measurements: 1 to come, 1 of them ready now:",
      f"  {joint} step 4: analyze {study.run_dir(joint)}/analysis/step-4"], dry.getvalue()
  assert runner.Runner(study, None, max_parallel=2)._measurements_to_come() == ""  # no analyze


# A trainer's stand-in: its first start trains 2 s, then signals the study (which stops it: exit
# 75, as launch/train.py on SIGTERM); its second start finishes at once.
TWO_STARTS = """
import json, os, signal, sys, time
config, workdir = sys.argv[1:]
marker = os.path.join(workdir, "first_start")
if not os.path.exists(marker):
  open(marker, "w").close()
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(75))
  time.sleep(2.0)
  os.kill(os.getppid(), signal.SIGTERM)
  time.sleep(60)
with open(os.path.join(workdir, "results.json"), "w") as f:
  json.dump({"step": json.load(open(config))["total_steps"]}, f)
"""


def test_done_records_the_seconds_of_every_start_of_a_stopped_and_resumed_run(study_file,
                                                                               tmp_path):
  import io
  import signal
  study = _load(study_file, "values", str(tmp_path / "study"))
  name = study.runs[0].name
  train = lambda config, workdir: [sys.executable, "-c", TWO_STARTS, config, workdir]
  handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
  try:
    assert runner.Runner(study, train, out=io.StringIO()).run(only=name) == 128 + signal.SIGTERM
    assert not study.is_done(name)
    assert runner.Runner(study, train, out=io.StringIO()).run(only=name) == 0
  finally:
    for sig, handler in handlers.items():
      signal.signal(sig, handler)
  done = study.done_info(name)
  assert done["starts"] == 2 and done["seconds"] >= 2.0, done  # the second start alone: < 2 s
  assert re.fullmatch(rf"  done     {name}  in \d+s over 2 starts",
                      runner.status_table(study, [study.by_name[name]])[1])
  assert runner.took({"seconds": 12.0}) == "12s"  # a DONE written before starts were counted


# A trainer's stand-in acting as told by its run's name (the last of its workdir) and the starts
# it has had: 'own75' exits 75 on its first start (stopped at a checkpoint by a SIGTERM of its
# own), then finishes; 'always75' always exits 75; 'killed' dies of SIGKILL; 'other' finishes and
# writes DONE for the next run, as another study process would; 'ends' signals the study and
# finishes anyway (a run that ended as the study stopped).
OWN_EXITS = """
import json, os, signal, sys, time
config, workdir = sys.argv[1:]
how = open(os.path.join(os.path.dirname(workdir), "how.json")).read().strip('"')
starts = os.path.join(workdir, "starts")
n = os.path.exists(starts) and int(open(starts).read()) or 0
open(starts, "w").write(str(n + 1))
if how == "always75" or how == "own75" and n == 0:
  sys.exit(75)
if how == "killed":
  os.kill(os.getpid(), signal.SIGKILL)
if how == "first_fails" and os.path.basename(workdir) == "scratch-denoise_30-lr1e-3-s0":
  sys.exit(1)
if how == "ends":
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  os.kill(os.getppid(), signal.SIGTERM)
  time.sleep(0.5)
with open(os.path.join(workdir, "results.json"), "w") as f:
  json.dump({"step": json.load(open(config))["total_steps"]}, f)
if how in ("other", "other_held"):
  later = os.path.join(os.path.dirname(workdir), "scratch-denoise_30-lr5e-4-s0")
  os.makedirs(later, exist_ok=True)
  open(os.path.join(later, "DONE"), "w").write(json.dumps({"seconds": 1.0}))
"""


@pytest.mark.parametrize("how, status, words", [
    ("own75", 0, "stopped at a checkpoint by a signal of its own (exit status 75); resuming it"),
    ("always75", 1, "failed (exit status 75)"),
    ("killed", 1, "failed (killed by SIGKILL (the OOM killer, or a kill -9))"),
    ("other", 0, "scratch-denoise_30-lr5e-4-s0: done by another process; skipped"),
    # held by another process when its turn came, done by it before we ended: not an exit 3
    ("other_held", 0, "[study] all 2 runs done"),
    ("ends", 128 + 15, "scratch-denoise_30-lr1e-3-s0: done in"),
])
def test_a_child_s_own_stop_death_or_end_and_a_run_done_elsewhere(study_file, tmp_path, how,
                                                                    status, words):
  """A run stopped at a checkpoint by a signal of its own (exit 75: nothing to fix) is started
  again once, not a failure that stops the study; a killed one says its signal; a run another
  process finished since the queue was made is not started again (its DONE rewritten), nor
  waited for once done; a run that ended as the study was stopped is done, not 'interrupted'."""
  import io
  import signal
  study = _load(study_file, "values", str(tmp_path / "study"))
  first, later = "scratch-denoise_30-lr1e-3-s0", "scratch-denoise_30-lr5e-4-s0"
  study.prepare()
  with open(os.path.join(study.workdir, "runs", "how.json"), "w") as f:
    json.dump(how, f)
  train = lambda config, workdir: [sys.executable, "-c", OWN_EXITS, config, workdir]
  out = io.StringIO()
  handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
  os.makedirs(study.run_dir(later))
  held = open(study.path(later, runner.RUN_LOCK), "w")
  try:
    if how == "other_held":
      fcntl.flock(held, fcntl.LOCK_EX)  # another study process runs it
    assert runner.Runner(study, train, out=out).run(only=f"{first},{later}") == status, (
        out.getvalue())
  finally:
    held.close()
    for sig, handler in handlers.items():
      signal.signal(sig, handler)
  assert words in out.getvalue(), out.getvalue()
  assert study.is_done(first) == (how in ("own75", "other", "other_held", "ends")), out.getvalue()
  if how == "own75":
    assert study.done_info(first)["starts"] == 2
  if how in ("other", "other_held"):  # the other process's DONE kept, its run not started here
    assert study.done_info(later) == {"seconds": 1.0}
    assert not os.path.exists(study.path(later, "starts"))


# A trainer's stand-in that outlives a killed study, as the real one finishes its checkpoint
# after the SIGTERM a dying study sends: it ends once `release` exists (or a minute passed).
OUTLIVES = """
import json, os, signal, sys, time
config, workdir = sys.argv[1:]
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(os.path.join(workdir, "started"), "w").close()
end = time.time() + 60
while not os.path.exists(os.path.join(workdir, "release")) and time.time() < end:
  time.sleep(0.05)
with open(os.path.join(workdir, "results.json"), "w") as f:
  json.dump({"step": json.load(open(config))["total_steps"]}, f)
"""

A_STUDY = """
import sys
from mtl.study import runner
import test_study_runner as t
study = t._load(sys.argv[1], "values", sys.argv[2])
train = lambda config, workdir: [sys.executable, "-c", t.OUTLIVES, config, workdir]
runner.Runner(study, train).run(only=sys.argv[3])
"""


def test_a_run_whose_trainer_outlives_a_killed_study_is_not_started_twice(study_file, tmp_path):
  # the lock was the study's alone: a rerun started the run again, its trainer was refused by
  # train.lock, and the study marked the run FAILED and started nothing else
  import io
  import signal
  import time
  workdir = str(tmp_path / "study")
  study = _load(study_file, "values", workdir)
  name = study.runs[0].name
  killed = subprocess.Popen([sys.executable, "-c", A_STUDY, study_file, workdir, name],
                            env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT}/tests"},
                            stdout=subprocess.DEVNULL)
  started = os.path.join(study.run_dir(name), "started")
  for _ in range(600):
    if os.path.exists(started) or killed.poll() is not None:
      break
    time.sleep(0.05)
  assert os.path.exists(started), killed.poll()
  killed.send_signal(signal.SIGKILL)  # its trainer gets SIGTERM (it dies with its parent)
  killed.wait()
  train = lambda config, workdir: [sys.executable, "-c", OUTLIVES, config, workdir]
  out = io.StringIO()
  handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
  try:
    assert runner.Runner(study, train, out=out).run(only=name) == 3, out.getvalue()
    assert re.search(rf"{name}: running in another process \(pid {killed.pid} on .+, its "
                     r"trainer pid \d+\); skipped", out.getvalue()), out.getvalue()
    assert not os.path.exists(study.path(name, "FAILED"))
    open(os.path.join(study.run_dir(name), "release"), "w").close()  # the trainer ends
    for _ in range(600):
      if runner.lock_holder(study, name) is None:
        break
      time.sleep(0.05)
    assert runner.Runner(study, train, out=io.StringIO()).run(only=name) == 0
  finally:
    for sig, handler in handlers.items():
      signal.signal(sig, handler)
  assert study.is_done(name)


FINISHES = """
import json, os, sys
config, workdir = sys.argv[1:]
with open(os.path.join(workdir, "results.json"), "w") as f:
  json.dump({"step": json.load(open(config))["total_steps"]}, f)
"""


def test_a_run_trained_by_hand_is_running_not_failed_nor_moved_aside(study_file, tmp_path):
  # a run resumed by hand (launch/train.py on its run_config.json) holds its train.lock only:
  # a study started beside it marked it FAILED (its trainer refused by that lock) and stopped;
  # a corrected study moved the live trainer's files aside and trained a second one beside it
  import io
  import signal
  import socket
  workdir = str(tmp_path / "study")
  study = _load(study_file, "values", workdir)
  study.prepare()
  name = study.runs[0].name
  hand = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  os.makedirs(study.run_dir(name))
  lock = study.path(name, "train.lock")
  with open(lock, "w") as f:
    json.dump({"pid": hand.pid, "host": socket.gethostname(), "started": "then"}, f)
  train = lambda config, workdir: [sys.executable, "-c", FINISHES, config, workdir]
  handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
  try:
    assert runner.state(study, study.by_name[name]) == "running"
    assert (f"  running  {name}  pid {hand.pid} on {socket.gethostname()}, since then"
            in runner.status_table(study, [study.by_name[name]]))
    out = io.StringIO()
    assert runner.Runner(study, train, out=out).run(only=name) == 3, out.getvalue()
    assert (f"{name}: running in another process (pid {hand.pid} on {socket.gethostname()}: a "
            f"trainer this study did not start, {lock}; delete that file if the process is "
            "gone); skipped") in out.getvalue(), out.getvalue()
    assert not os.path.exists(study.path(name, "FAILED"))
    config = _config(study_file, "values")
    config.run.optim.warmup_steps += 1  # a correction of the unfinished runs
    with pytest.raises(ValueError, match=rf"while another process runs {name}; let it finish"):
      study_lib.Study(config, workdir).check_saved()
    assert sorted(os.listdir(study.run_dir(name))) == ["RUNNING", "train.lock"]  # none moved
  finally:
    hand.kill()
    hand.wait()
    for sig, handler in handlers.items():
      signal.signal(sig, handler)
  # its trainer gone, the lock is stale: the study trains the run
  assert runner.state(study, study.by_name[name]) == "pending"
  out = io.StringIO()
  try:
    assert runner.Runner(study, train, out=out).run(only=name) == 0, out.getvalue()
  finally:
    for sig, handler in handlers.items():
      signal.signal(sig, handler)
  assert study.is_done(name)


@pytest.mark.parametrize("keep_going", [False, True])
def test_a_failed_run_stops_new_starts_unless_told_to_keep_going(study_file, tmp_path,
                                                                  keep_going):
  import io
  study = _load(study_file, "values", str(tmp_path / "study"))
  first, later = "scratch-denoise_30-lr1e-3-s0", "scratch-denoise_30-lr5e-4-s0"
  study.prepare()
  with open(os.path.join(study.workdir, "runs", "how.json"), "w") as f:
    json.dump("first_fails", f)
  train = lambda config, workdir: [sys.executable, "-c", OWN_EXITS, config, workdir]
  out = io.StringIO()
  assert runner.Runner(study, train, out=out, keep_going=keep_going).run(
      only=f"{first},{later}") == 1, out.getvalue()
  lines = out.getvalue().splitlines()
  assert any(f"{first}: failed (exit status 1)" in line and line.endswith(
      "; the others go on (--keep_going)" if keep_going else "; starting no other run")
             for line in lines), lines
  assert not study.is_done(first) and study.is_done(later) == keep_going
  assert lines[-1].startswith(f"[study] stopped: {first} failed")


# launch/analyze.py's stand-in: fails (exit 3) if told to, else writes a conflict store and the
# cores it may run on after a second (long enough for another to start beside it).
MEASURE = """
import json, os, sys, time
out, fail = sys.argv[1:]
time.sleep(1.0)
if fail == "True":
  sys.exit(3)
os.makedirs(os.path.join(out, "conflicts", "store"))
with open(os.path.join(out, "cores.json"), "w") as f:
  json.dump(sorted(os.sched_getaffinity(0)), f)
"""


def test_end_of_training_measurements_run_side_by_side_and_a_failure_starts_no_other(
    study_file, tmp_path):
  import io
  import signal
  study = _load(study_file, "joint", str(tmp_path / "study"))
  (name,) = [r.name for r in study.runs]
  study.prepare()
  study.write_run_config(study.runs[0], io.StringIO())
  _fake_done(study, name, 30.0)
  for step in (2, 4):  # its two last complete checkpoints (orbax's final names)
    os.makedirs(os.path.join(study.run_dir(name), "checkpoints", str(step)))
  outs = {step: os.path.join(study.run_dir(name), "analysis", f"step-{step}") for step in (2, 4)}

  def measure(max_parallel, fail=None):
    analyze = lambda config, workdir, out, final, step: [sys.executable, "-c", MEASURE, out,
                                                         str(step == fail)]
    out = io.StringIO()
    code = runner.Runner(study, None, out=out, max_parallel=max_parallel, analyze=analyze).run()
    return code, [l for l in out.getvalue().splitlines() if l.startswith("conflicts ")]

  handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
  try:
    code, lines = measure(1, fail=2)  # one at a time: the failure stops the measuring
    assert code == 1 and lines[-1] == (
        f"conflicts 1/2 {name} step 2: failed (exit status 3); its log: "
        f"{os.path.join(outs[2], 'analyze.log')}; the same command measures it again"), lines
    assert not any("step 4" in l for l in lines) and study.final_conflicts_pending()
    code, lines = measure(2)  # both, side by side: each starts before either is done
    assert code == 0 and not study.final_conflicts_pending(), lines
    assert [l.split(": ")[1][:9] for l in lines] == ["measuring"] * 2 + ["done in 1"] * 2, lines
  finally:
    for sig, handler in handlers.items():
      signal.signal(sig, handler)
  cores = [tuple(json.load(open(os.path.join(outs[s], "cores.json")))) for s in (2, 4)]
  if children.core_sets(2):  # each on a core set of its own, as a run
    assert set(cores) == {tuple(sorted(c)) for c in children.core_sets(2)}, cores


# A trainer's stand-in that records the cores it may run on, then finishes.
AFFINITY = """
import json, os, sys
config, workdir = sys.argv[1:]
with open(os.path.join(workdir, "results.json"), "w") as f:
  json.dump({"step": json.load(open(config))["total_steps"],
             "cores": sorted(os.sched_getaffinity(0))}, f)
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to split")
def test_cpu_runs_side_by_side_each_get_cores_of_their_own(study_file, tmp_path):
  import io
  study = _load(study_file, "values", str(tmp_path / "study"))
  train = lambda config, workdir: [sys.executable, "-c", AFFINITY, config, workdir]
  out = io.StringIO()
  assert runner.Runner(study, train, out=out, max_parallel=2).run() == 0
  sets = [tuple(json.load(open(study.path(r.name, "results.json")))["cores"])
          for r in study.runs]
  cores = sorted(os.sched_getaffinity(0))
  halves = {tuple(cores[:len(cores) // 2]), tuple(cores[len(cores) // 2:])}
  assert set(sets) == halves, sets  # each run on one half, both halves used, never all cores
  assert re.search(r"starting \| scratch .* \| cores \d", out.getvalue()), out.getvalue()
  # A run with nothing beside it gets one half too: XLA sizes its thread pool, and so orders its
  # sums, by its cores, and its numbers may not depend on what happened to run beside it.
  alone = _load(study_file, "values", str(tmp_path / "alone"))
  name = alone.runs[0].name
  assert runner.Runner(alone, train, out=io.StringIO(), max_parallel=2).run(only=name) == 0
  assert tuple(json.load(open(alone.path(name, "results.json")))["cores"]) in halves


def test_max_parallel_needs_a_device_per_run():
  with pytest.raises(ValueError, match=r"--max_parallel=3 needs as many devices, one per run; "
                                       r"there are 2 \(0,1\)"):
    runner.Runner(None, None, max_parallel=3, devices=["0", "1"])
  with pytest.raises(ValueError, match="--max_parallel=0 must be >= 1"):
    runner.Runner(None, None, max_parallel=0)


def test_max_parallel_beyond_the_devices_is_one_line(study_file, tmp_path):
  out = cli(f"--config={study_file}", f"--workdir={tmp_path}/study", "--max_parallel=3",
            "--devices=4,5")
  assert out.returncode == 1
  assert out.stderr.strip().splitlines() == [
      "error: --max_parallel=3 needs as many devices, one per run; there are 2 (4,5)"]
  assert not os.path.exists(tmp_path / "study")


# ----------------------------------------------------------------------------- compiled programs


def test_runs_differing_in_seed_and_lr_share_their_compiled_programs(study_file, tmp_path):
  """The first run compiles every program (a fresh cache); the three others, with other seeds and
  learning rates, load them all; the study prints the sum of the runs' counts."""
  workdir, cache = str(tmp_path / "study"), str(tmp_path / "cache")
  out = cli(f"--config={study_file}:values", f"--workdir={workdir}", f"--compile_cache={cache}",
            timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr
  names = [r.name for r in _load(study_file, "values", workdir).runs]
  assert len(names) == 4
  counts = [json.load(open(os.path.join(workdir, "runs", n, "compute.json"))) for n in names]
  first, later = counts[0], counts[1:]
  assert first["compiled_programs"]["jit(train_step)"] == 1
  assert first["programs_compiled"] > 1  # init, step, evaluation, ...
  for name, count in zip(names[1:], later):
    assert count["programs_compiled"] == 0, (name, count["compiled_programs"])
    assert count["programs_loaded"] >= first["programs_compiled"], name
  loaded = sum(c["programs_loaded"] for c in counts)
  assert (f"[study] compiled {first['programs_compiled']} programs, {loaded} loaded from the "
          "cache (XLA, the runs started here)") in out.stdout.splitlines()


def test_a_diverged_lr_is_its_sweep_s_result_and_the_study_goes_on(study_file, tmp_path):
  # The lr's non-finite loss is an outcome of the grid, not a failure to fix: the run is done
  # (marked diverged), never chosen, and the fine-tunes start from the lr that trained.
  workdir = str(tmp_path / "diverge")
  out = cli(f"--config={study_file}:diverge", f"--workdir={workdir}", timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr
  study = _load(study_file, "diverge", workdir)
  diverged = sorted(r.name for r in study.runs if study.diverged(r.name))
  assert diverged == ["joint-lr1e30-s0"]
  assert "non-finite" in study.diverged("joint-lr1e30-s0")
  assert all(study.is_done(r.name) for r in study.runs)
  assert study.select("joint-s0").run.name == "joint-lr1e-3-s0"
  with open(study.path("finetune-derain-lr1e-3-s0", "run_config.json")) as f:
    assert json.load(f)["init_from"] == study.run_dir("joint-lr1e-3-s0")
  assert re.search(r"joint-lr1e30-s0: diverged in \d+s \(non-finite loss or output\): its "
                   r"sweep chooses among its other lrs \| study: 2/4 done", out.stdout), (
      out.stdout[-3000:])
  table = runner.status_table(study, study.runs)
  assert table[0].endswith("4 runs in " + workdir + ": 3 done, 1 diverged")
  from mtl.report import accounting
  rows = {row[0]: row for row in accounting.selection_table(study).rows}
  assert rows["joint-s0"][1].endswith(", 1e30: diverged") and rows["joint-s0"][2] == (
      "joint-lr1e-3-s0 (the grid's smallest lr)")  # the best may lie below it
  # Every joint lr diverged: the fine-tunes can never start, an outcome of the grid as a
  # diverged run is; they say why, and the other runs (both seeds' scratch) still all train
  # (counted as failures, they stopped every start after them: one run per rerun).
  workdir = str(tmp_path / "diverge_all")
  out = cli(f"--config={study_file}:diverge_all", f"--workdir={workdir}", timeout=600)
  assert out.returncode == 1, out.stdout[-3000:] + out.stderr
  assert ("finetune-denoise_30-lr1e-3-s0: no start: every lr of joint-lr*-s0 diverged; give "
          "that sweep lower lrs (lrs, or lrs_override for its regime)" in out.stdout), (
      out.stdout[-3000:])
  assert out.stdout.splitlines()[-1].startswith(
      "[study] 4 runs can never start, every lr of their pre-training sweep diverged: "), (
      out.stdout[-3000:])
  study = _load(study_file, "diverge_all", workdir)
  assert runner.status_table(study, study.runs)[0].endswith(
      ": 4 done, 2 diverged, 4 no start")
  from mtl.report import findings, scores, tables
  found = findings.build(study, tables.transfer_table(study), scores.conflict_records(study))
  assert found.missing[2].startswith(
      "no answer: every lr of joint-lr*-s0, joint-lr*-s1 diverged, so the fine-tunes"), found
  again = cli(f"--config={study_file}:diverge_all", f"--workdir={workdir}", timeout=600)
  assert again.returncode == 1 and "starting" not in again.stdout, again.stdout[-3000:]
  rows = {row[0]: row for row in accounting.selection_table(study).rows}
  assert rows["joint-s0"][1:3] == ["1e30: diverged", "none: every lr diverged"]
