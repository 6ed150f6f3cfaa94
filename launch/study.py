r"""Run a study: every run of experiments/studies/<name>.py, resumable, here or on a SLURM cluster.

  python launch/study.py --config=experiments/studies/mini.py --workdir=/tmp/mtl/mini
  python launch/study.py --config=... --workdir=... --dry_run          # the runs and commands
  python launch/study.py --config=... --workdir=... --only='joint-*'   # a subset
  python launch/study.py --config=... --workdir=... --max_parallel=4   # 4 runs side by side
  python launch/study.py --config=... --workdir=... --keep_going      # a failure stops no other
  python launch/study.py --config=... --workdir=/shared/mini --submit=slurm \
      --slurm_partition=gpu --slurm_time=4:00:00 [--dry_run]           # one SLURM job per run

Every start prints the study's status table (done, diverged, no start, running, failed, waiting,
started, pending per run). Re-running the same command skips the runs that are done, skips runs
that another process is running, and resumes an interrupted one from its checkpoint. A run that
fails stops new starts (the runs in progress finish): a failure is mostly the config's, which the
other runs share; fix it and run the same command. With --keep_going the other runs start all the
same (those that start from a failed run's sweep wait), and the study still exits 1. A run
stopped at a checkpoint by a signal of its own (exit status 75) is started again once; a
fine-tune whose every pre-training lr diverged can never start ('no start', an outcome of the
grid as a diverged run is): the others go on. A
changed study config for the same --workdir is refused when it would drop or alter a finished
run, or while another process runs one of its runs; otherwise (fixing what made a run fail) it
is taken: finished runs are kept, the others run with the new config.
Without --config, the study saved in <workdir>/study.json is used (what the SLURM jobs run).

A study with final_conflicts.batch_size > 0 then measures each seed's chosen joint / group run
at its last final_conflicts.checkpoints saved steps (launch/analyze.py --checkpoint --step=N into
runs/<run>/analysis/step-<N>/, each on the run's cpu_threads; an interrupted one is measured on
the next start): the first in the first slot free once a sweep is done, among the runs (its time
gives the runs' lines the others' ETA), the others after the runs, up to --max_parallel at once.

--max_parallel=N runs up to N runs at once on this machine, fine-tunes after their pre-training
sweep; runs start seed by seed, a seed's pre-training runs first (its other runs then fill the
cores beside the last of them). With GPUs each run gets one (CUDA_VISIBLE_DEVICES; --devices);
on CPU each gets an equal share of the CPUs this process may use, pinned (runs of the mini study
sharing 2 cores took 1.3-1.5x as long; README, Studies), the same share when it runs alone, as
a CPU run's numbers depend on its thread count (run.cpu_threads fixes it; the CPU studies: 1);
all of them where there are fewer cores than runs.

--submit=slurm submits one job per run not done (`sbatch`, the script of launch/slurm.py with
--slurm_* options; each job is one process, `launch/study.py --workdir=<study> --only=<run>`,
owning --slurm_gpus_per_node GPUs, default 1); a fine-tune's
job starts after every lr of its pre-training sweep (--dependency=afterok:...) and picks the best
on validation at its start. With --dry_run it prints the sbatch calls and the dependency graph.
Submitted job ids are kept in <workdir>/slurm/jobs.json.

Tables and report:  python launch/report.py --workdir=/tmp/mtl/mini
Exit status: 0 all selected runs done (or submitted); 1 bad input, a failed run, a run with no
start or a failed submission; 3 some fine-tunes wait for pre-training runs not done here
(--only), or runs run in another process; 128 + signal when interrupted.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys

import _root  # noqa: F401  (repository root on sys.path for `experiments`)
from absl import app, flags
from ml_collections import config_flags

import cli
import slurm

config_flags.DEFINE_config_file("config", None, "Study config (experiments/studies/*.py[:arg]); "
                                "unset: the study saved in <workdir>/study.json.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory of the study (study.json, runs/, tables/).")
flags.DEFINE_bool("dry_run", False, "Print the runs and their exact commands (with --submit: the "
                  "sbatch calls and dependencies); write and submit nothing.")
flags.DEFINE_bool("keep_going", False, "Start the other runs after one fails (the study still "
                  "exits 1); without it a failure stops new starts, as a config error would fail "
                  "them all.")
flags.DEFINE_string("only", "", "Comma-separated globs of run names to run, e.g. 'joint-*'.")
flags.DEFINE_string("compile_cache", "", "XLA compilation cache the runs share: '' -> "
                    "$JAX_COMPILATION_CACHE_DIR or ~/.cache/mtl/jax_cache; 'off' -> none.")
flags.DEFINE_integer("max_parallel", 1, "Runs at once on this machine (each its own process).",
                     lower_bound=1)
flags.DEFINE_string("devices", "auto", "With --max_parallel > 1, the GPUs handed out one per run "
                    "as CUDA_VISIBLE_DEVICES: 'auto' ($CUDA_VISIBLE_DEVICES, else nvidia-smi's "
                    "GPUs, else none: CPU processes), 'none', or indices like 0,1,2,3.")
flags.DEFINE_enum("submit", "", ["", "slurm"], "'' runs here; 'slurm' submits one sbatch job per "
                  "run, with dependencies.")
slurm.define_flags(prefix="slurm_", gpus_per_node=1, job_name="mtl", module_name=sys.argv[0])
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


HERE = os.path.dirname(os.path.abspath(__file__))


def train_command(run_config, workdir):
  """One study run's command: launch/train.py on the run config the study saved as JSON."""
  return [sys.executable, os.path.join(HERE, "train.py"), f"--config={cli.FROM_JSON}:{run_config}",
          f"--workdir={workdir}"]


FIRST_BATCHES = 16  # analyze.py's --num_batches default: measured before checking the target


def analyze_command(run_config, workdir, out, final, step):
  """A pre-training run's conflicts at its saved step `step` (the study's final_conflicts):
  launch/analyze.py on that checkpoint, FIRST_BATCHES fresh batches then more until
  +-halfwidth or max_batches."""
  first = min(FIRST_BATCHES, final["max_batches"]) if final["halfwidth"] > 0 else \
      final["max_batches"]
  return [sys.executable, os.path.join(HERE, "analyze.py"), f"--checkpoint={workdir}",
          f"--config={cli.FROM_JSON}:{run_config}", f"--step={step}",
          f"--batch_size={final['batch_size']}", f"--num_batches={first}",
          f"--halfwidth={final['halfwidth']}", f"--max_batches={final['max_batches']}",
          f"--out={out}", "--knobs=study"]


def devices(value, max_parallel):
  """The device ids handed out one per run, or None (plain processes)."""
  if max_parallel == 1 or value == "none":
    return None  # one run at a time sees every device, as before
  if value != "auto":
    if not re.fullmatch(r"\d+(,\d+)*", value):
      raise ValueError(f"--devices={value}; use 'auto', 'none' or GPU indices like 0,1")
    return value.split(",")
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  if visible is not None:  # '' hides every GPU: CPU processes
    return [d.strip() for d in visible.split(",") if d.strip()] or None
  if shutil.which("nvidia-smi"):
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    gpus = [l for l in listing.stdout.splitlines() if l.startswith("GPU ")]
    if listing.returncode == 0 and gpus:
      return [str(i) for i in range(len(gpus))]
  return None


# ----------------------------------------------------------------------------- SLURM


def job_name(prefix, run_name):
  return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{prefix}-{run_name}")


def queued(job_ids):
  """Those of `job_ids` that SLURM still has pending or running (none without squeue)."""
  if not job_ids or shutil.which("squeue") is None:
    return set()
  out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)],
                       capture_output=True, text=True)
  return set(out.stdout.split()) & set(job_ids)


def plan(study, runs, args):
  """[(run, job script, sbatch arguments before the script, names it depends on)] for the runs
  not done (and not already queued or running), and {run: job id} of those already queued."""
  from mtl import files
  from mtl.study import runner
  jobs_file = os.path.join(study.workdir, "slurm", "jobs.json")
  recorded = files.read_json(jobs_file) if os.path.exists(jobs_file) else {}
  live = queued(list(recorded.values()))
  known = {name: job for name, job in recorded.items() if job in live}
  for spec in runs:  # a run a SLURM job is running now holds its lock
    holder = runner.lock_holder(study, spec.name)
    if holder and holder.get("slurm_job"):
      known[spec.name] = holder["slurm_job"]
  deps = runner.dependencies(study, runs)
  jobs = []
  for spec in runs:
    if spec.name not in deps or spec.name in known:
      continue
    if runner.lock_holder(study, spec.name) is not None:
      raise ValueError(f"run {spec.name} is running in a process outside SLURM; let it finish "
                       "(or stop it) and submit again")
    options = dict(vars(args), job_name=job_name(args.job_name, spec.name))
    command = [args.python, os.path.join(HERE, "study.py"), f"--workdir={study.workdir}",
               f"--only={spec.name}"]
    if FLAGS.compile_cache:
      command.append(f"--compile_cache={FLAGS.compile_cache}")
    log_dir = os.path.join(study.workdir, "slurm")
    # One study process per job: it picks a fine-tune's start, trains (one process owning the
    # job's GPUs) and marks the run done; several srun tasks would race for the run's lock.
    script = slurm.render(type(args)(**options), command, study.run_dir(spec.name), log_dir,
                          one_process=True)
    jobs.append((spec, os.path.join(log_dir, f"{spec.name}.sbatch"), script, deps[spec.name]))
  return jobs, known


def submit(study, runs, dry_run, out=sys.stdout):
  """Submit (or with dry_run print) one sbatch job per run, fine-tunes after their sweep."""
  from mtl import files
  args = slurm.options("slurm_")
  if args.nodes != 1:
    raise ValueError(f"--slurm_nodes={args.nodes}: a study's run is one process on one node; "
                     "give it more GPUs with --slurm_gpus_per_node")
  jobs, known = plan(study, runs, args)
  variables = {spec.name: f"JOB_{i}" for i, (spec, *_) in enumerate(jobs, 1)}
  ids = dict(known)
  if not dry_run:
    if jobs and shutil.which("sbatch") is None:
      raise ValueError("sbatch not found on PATH; submit from a SLURM login node, or add "
                       "--dry_run to print the sbatch calls")
    study.prepare()
  done = sum(study.is_done(r.name) for r in runs)
  out.write(f"# study {study.name}: {len(runs)} runs in {study.workdir}: {done} done, "
            f"{len(known)} already queued or running, {len(jobs)} jobs to submit\n")
  for spec, path, script, after in jobs:
    refs = [ids.get(name) or f"${variables[name]}" for name in after]
    call = ["sbatch", "--parsable"] + ([f"--dependency=afterok:{':'.join(refs)}"] if refs
                                       else []) + [path]
    if dry_run:
      srun = next(l for l in script.splitlines() if l.startswith("srun "))
      line = " ".join(shlex.quote(a) if not a.startswith("--dependency=") else a for a in call)
      out.write(f"# {spec.name}: {srun}\n{variables[spec.name]}=$({line})\n")
      continue
    os.makedirs(os.path.dirname(path), exist_ok=True)
    slurm.keep_earlier(path, script)  # an earlier submission's script stays beside it
    with open(path, "w") as f:
      f.write(script)
    result = subprocess.run(call, capture_output=True, text=True)
    if result.returncode != 0:
      raise ValueError(f"{shlex.join(call)} failed (status {result.returncode}): "
                       f"{result.stderr.strip().splitlines()[-1:] or ''}; the jobs submitted so "
                       f"far are in {os.path.join(study.workdir, 'slurm', 'jobs.json')}")
    ids[spec.name] = result.stdout.strip().split(";")[0]
    jobs_file = os.path.join(study.workdir, "slurm", "jobs.json")
    recorded = files.read_json(jobs_file) if os.path.exists(jobs_file) else {}
    files.write_json(jobs_file, dict(recorded, **{spec.name: ids[spec.name]}))
    out.write(f"submitted {spec.name} as job {ids[spec.name]}"
              + (f" (after {', '.join(after)})" if after else "") + "\n")
  graph = {}  # {the runs waited for: the runs waiting}
  for spec, _, _, after in jobs:
    if after:
      graph.setdefault(tuple(after), []).append(spec.name)
  if graph:
    out.write(f"# dependencies (a fine-tune starts when every lr of its sweep is done and picks "
              f"the best on {study.validation}):\n")
    for after, children in graph.items():
      out.write(f"#   {', '.join(after)} -> {', '.join(children)}\n")
  out.flush()
  return 0


def main(argv):
  del argv
  from mtl import files, run_config, study as study_lib
  from mtl.study import runner
  try:
    if not FLAGS.workdir:  # else the study's files go into the current folder
      raise ValueError("--workdir is empty; give the study's folder, e.g. --workdir=/tmp/mtl/mini")
    if cli.is_url(FLAGS.workdir):  # os.path would read gs://b/s as the folder gs:/b/s
      raise ValueError(f"--workdir={FLAGS.workdir} is a URL; a study is written with file I/O: "
                       "mount the bucket (gcsfuse) and give that path")
    files.check_not_a_file(FLAGS.workdir, "--workdir", "a study a folder (new or its own)")
    given = [f"--{name}" for name in FLAGS if name.startswith("slurm_") and FLAGS[name].present]
    if given and FLAGS.submit != "slurm":  # else the study would train here, not submit
      raise ValueError(f"{', '.join(given)} given without --submit=slurm: the runs would start "
                       "on this machine; add --submit=slurm to submit them as SLURM jobs")
    run_devices = devices(FLAGS.devices, FLAGS.max_parallel)  # checked for a dry run too
    if FLAGS.config is None:
      study = study_lib.Study.load(FLAGS.workdir)
    else:  # --config.tasks=sr_x2,derain splits as a run config's tuple fields do
      study = study_lib.Study(run_config.normalize(FLAGS.config), FLAGS.workdir)
    study.check_runs()  # a dry run too: it says what the runs would
    if FLAGS.submit == "slurm":
      study.check_saved()
      sys.exit(submit(study, runner.matching(study.runs, FLAGS.only), FLAGS.dry_run))
    if FLAGS.dry_run:
      sys.exit(study_lib.dry_run(study, train_command, FLAGS.only, analyze=analyze_command))
    sys.exit(study_lib.Runner(study, train_command, compile_cache=FLAGS.compile_cache,
                              max_parallel=FLAGS.max_parallel,
                              devices=run_devices,
                              analyze=analyze_command,
                              keep_going=FLAGS.keep_going).run(FLAGS.only))
  except BrokenPipeError:  # e.g. --dry_run | head: the reader has all it wanted (an OSError too)
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)
  except (ValueError, OSError, cli.UsageError) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt:  # before the runner's handler (which stops its runs) is in place
    print("error: interrupted (Ctrl-C) before any run started; run the same command to start",
          file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
