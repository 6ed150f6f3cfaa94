r"""A SLURM batch job: one training process per GPU on every node, resumable and requeued.

  python launch/slurm.py --nodes=2 --gpus_per_node=8 --time=24:00:00 --partition=gpu \
      --account=myproj [--job_name=mtl] [--signal_seconds=120] [--norequeue] [--dry_run] \
      -- --config=experiments/ipt_paper.py --workdir=/shared/ckpt/ipt --config.mesh.fsdp=8

writes <workdir>/slurm/<job_name>.sbatch (from launch/slurm.sbatch.template; an earlier, other
script there is kept as <job_name>.sbatch.1, .2, ...) and submits it with sbatch. --dry_run
prints the script and then the sbatch command, and submits nothing; before a submission,
train.py --check_config checks the config and its overrides here (--nocheck_config skips it);
--help lists every flag with its default.

The job runs in the folder slurm.py was started from (#SBATCH --chdir), so relative paths in
the train.py arguments (init_from, data and evaluation folders) name what they name here. In the
job, `srun` starts nodes x gpus_per_node tasks, each `python <repo>/launch/train.py ...`, all
seeing the node's GPUs; mtl.distributed sees a step of several tasks and calls
jax.distributed.initialize() without arguments (SLURM gives the coordinator, the process count
and index), and JAX gives the
task of local index i the node's GPU i (JAX's SLURM rule: --gpus-per-task=1 would hide GPU i from
every task but the first). SLURM sends SIGTERM
--signal_seconds before the time limit: the trainer checkpoints at the next step boundary and
exits; the script then requeues the job if training is unfinished and the checkpoint advanced
(so a run that fails before making progress is not requeued forever). The requeued job resumes
from the workdir's latest checkpoint. The workdir must be on a filesystem every node sees.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
import types

from absl import flags

import cli

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TEMPLATE = os.path.join(HERE, "slurm.sbatch.template")


def absolute_train_args(train_args, cwd):
  """Make --workdir absolute (a gs:// style workdir stays as it is) and --config a file path:
  the local file, else the repository's (experiments/...)."""
  out, workdir = [], None
  for arg in train_args:
    name, eq, value = arg.partition("=")
    if name == "--workdir" and eq:
      if not value:  # else the current folder
        raise cli.UsageError("--workdir= is empty; give the run's folder on a filesystem all "
                             "nodes see, e.g. --workdir=/shared/mtl/tiny")
      value = workdir = cli.absolute(value, cwd)
      arg = f"{name}={value}"
    elif name == "--config" and eq:
      path, colon, rest = value.partition(":")
      for base in (cwd, ROOT):
        if os.path.isfile(os.path.join(base, path)):
          arg = f"{name}={os.path.abspath(os.path.join(base, path))}{colon}{rest}"
          break
      else:  # the job would wait in the queue, then fail on it
        raise cli.UsageError(f"--config={value}: no such file here or in {ROOT} (the job runs "
                             "from this folder)")
    elif name in ("--workdir", "--config"):
      raise cli.UsageError(f"{arg}: write it as {arg}=VALUE (one argument)")
    if name.lstrip("-") in cli.OWNED:
      raise cli.UsageError(f"{arg}: under SLURM jax.distributed gets the process layout from "
                           "SLURM; remove it")
    out.append(arg)
  if workdir is None:
    raise cli.UsageError("train.py arguments need --workdir=DIR (on a filesystem all nodes see), "
                         "e.g. -- --config=experiments/tiny.py --workdir=/shared/mtl/tiny")
  return out, workdir


def check_config(train_args):
  """UsageError (one line) where train.py, run here as the job will run it, refuses the config or
  an override: a typo would otherwise wait in the queue, then end the job at its start."""
  command = [sys.executable, os.path.join(HERE, "train.py"), *train_args, "--check_config"]
  env = dict(os.environ, MTL_DISTRIBUTED="off")  # inside an allocation: no coordinator to find
  proc = subprocess.run(command, capture_output=True, text=True, env=env)
  if proc.returncode == 0:
    return
  lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
  refused = [line[len("error: "):] for line in lines if line.startswith("error: ")]
  if refused:
    raise cli.UsageError(f"the job would stop at its start: {refused[-1]} (nothing submitted)")
  raise cli.UsageError(f"could not check the config with {sys.executable} ({lines[-1]}); run "
                       "slurm.py with the job's Python, or add --nocheck_config")


def define_flags(prefix="", gpus_per_node=8, job_name="mtl", module_name=None):
  """The job's flags; study.py defines them again with prefix 'slurm_' for its runs' jobs (and
  module_name: its --help lists them among its own)."""
  f = lambda name: prefix + name
  kw = {"module_name": module_name} if module_name else {}
  flags.DEFINE_integer(f("nodes"), 1, "Nodes of the job (>= 1).", **kw)
  flags.DEFINE_integer(f("gpus_per_node"), gpus_per_node, "GPUs per node (>= 1); slurm.py starts "
                       "one process per GPU, a study's job one process owning them.", **kw)
  flags.DEFINE_string(f("time"), "24:00:00", "Time limit of the job, [D-]HH:MM:SS.", **kw)
  flags.DEFINE_string(f("partition"), "", "SLURM partition ('' -> the cluster's default).", **kw)
  flags.DEFINE_string(f("account"), "", "SLURM account ('' -> your default).", **kw)
  flags.DEFINE_string(f("job_name"), job_name, "Job name (letters, digits, '_', '.', '-').", **kw)
  flags.DEFINE_integer(f("cpus_per_task"), 0, "CPUs per process (0 -> the cluster's default).",
                       **kw)
  flags.DEFINE_integer(f("signal_seconds"), 120,
                       "SIGTERM this long before the time limit (must cover a step and a save); "
                       "0: none.", **kw)
  flags.DEFINE_bool(f("requeue"), True, "Requeue an unfinished run that advanced its checkpoint "
                    "(--no" + f("requeue") + " turns it off).", **kw)
  flags.DEFINE_multi_string(f("setup"), [], "A shell line run before srun (module load ..., source "
                            "venv/bin/activate).", **kw)
  flags.DEFINE_multi_string(f("sbatch"), [], "An extra #SBATCH option, e.g. "
                            f"--{prefix}sbatch=--qos=high.", **kw)
  flags.DEFINE_string(f("python"), "python", "The interpreter on the nodes.", **kw)


def time_seconds(value):
  """A SLURM --time in seconds (0: no limit), or None where `value` is not one of sbatch's forms:
  M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
  match = re.fullmatch(r"(?:(\d+)-)?(\d+)((?::\d{1,2}){0,2})", value)
  if match is None:
    return None
  days, first, rest = match.groups()
  parts = [int(first)] + [int(p) for p in rest.split(":")[1:]]
  if days is None:  # M, M:S or H:M:S
    scale = {1: [60], 2: [60, 1], 3: [3600, 60, 1]}[len(parts)]
  else:             # D-H, D-H:M or D-H:M:S
    scale = [3600, 60, 1][:len(parts)]
  return (int(days or 0) * 86400) + sum(p * s for p, s in zip(parts, scale))


def keep_earlier(path, text):
  """Before `text` is written to `path`: an earlier, different file there (the script of an
  earlier submission, its record) is kept as <path>.<k>; returns that name, or None."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    if f.read() == text:
      return None
  k = 1
  while os.path.exists(f"{path}.{k}"):
    k += 1
  os.replace(path, f"{path}.{k}")
  return f"{path}.{k}"


def options(prefix=""):
  """The parsed job flags (without the prefix) as a namespace; UsageError for a bad value."""
  names = ("nodes", "gpus_per_node", "time", "partition", "account", "job_name", "cpus_per_task",
           "signal_seconds", "requeue", "setup", "sbatch", "python")
  args = types.SimpleNamespace(**{n: flags.FLAGS[prefix + n].value for n in names})
  for name in ("nodes", "gpus_per_node"):
    if getattr(args, name) < 1:
      raise cli.UsageError(f"--{prefix}{name}={getattr(args, name)} must be >= 1")
  for name in ("cpus_per_task", "signal_seconds"):
    if getattr(args, name) < 0:
      raise cli.UsageError(f"--{prefix}{name}={getattr(args, name)} must be >= 0")
  limit = time_seconds(args.time)
  if limit is None:
    raise cli.UsageError(f"--{prefix}time={args.time} is not a SLURM time; use [D-]HH:MM:SS, "
                         "e.g. 24:00:00")
  if limit and args.signal_seconds >= limit:
    raise cli.UsageError(f"--{prefix}signal_seconds={args.signal_seconds} is not less than "
                         f"--{prefix}time={args.time} ({limit} s): SLURM would send SIGTERM as "
                         "the job starts")
  if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.job_name):
    raise cli.UsageError(f"--{prefix}job_name={args.job_name!r}: use letters, digits, '_', '.', "
                         "'-'")
  # An #SBATCH line ends at a newline (the rest would run as a command, and sbatch stops
  # reading directives there), a '#' starts a comment, whitespace splits the option.
  for name in ("partition", "account"):
    if getattr(args, name) and not re.fullmatch(r"[A-Za-z0-9_.,-]+", getattr(args, name)):
      raise cli.UsageError(f"--{prefix}{name}={getattr(args, name)!r}: use letters, digits, "
                           "'_', '.', ',', '-'")
  for extra in args.sbatch:
    if not extra.startswith("--") or re.search(r"[\s#]", extra):
      raise cli.UsageError(f"--{prefix}sbatch={extra!r}: give one long option without spaces "
                           f"or '#', e.g. --{prefix}sbatch=--qos=high")
  for line in args.setup:
    if cli.chains(line):  # '|| exit 1' is appended: it must cover the whole line
      raise cli.UsageError(f"--{prefix}setup={line!r}: give one command per --{prefix}setup (a "
                           "failed one stops the job: a comment, newline, ';', '&' or '|' would "
                           "let a failure through to training)")
  return args


def render(args, command, workdir, log_dir, one_process=False):
  """The batch script's text: `command` (a list; its interpreter, args.python, may start with
  ~/) run by srun in this folder, one process per GPU (or with `one_process`, one process owning
  the node's GPUs); `workdir` is the run whose checkpoints decide the requeue; SLURM's output is
  appended under `log_dir`."""
  tasks = 1 if one_process else args.gpus_per_node
  directives = [f"--job-name={args.job_name}", f"--nodes={args.nodes}",
                f"--ntasks-per-node={tasks}", f"--gpus-per-node={args.gpus_per_node}",
                f"--time={args.time}"]
  if args.cpus_per_task:
    directives.append(f"--cpus-per-task={args.cpus_per_task}")
  if args.partition:
    directives.append(f"--partition={args.partition}")
  if args.account:
    directives.append(f"--account={args.account}")
  if args.signal_seconds:
    directives.append(f"--signal=TERM@{args.signal_seconds}")
  if args.requeue:
    directives.append("--requeue")
  if re.search(r'[\n#"%]', log_dir):
    raise cli.UsageError(f"--workdir={os.path.dirname(log_dir)!r}: an #SBATCH --output path "
                         "cannot hold a newline, '#', '\"' or '%'")
  here = os.getcwd()
  if re.search(r'[\n#"%]', here):
    raise cli.UsageError(f"this folder, {here!r}, cannot be an #SBATCH --chdir path (a newline, "
                         "'#', '\"' or '%'); run from another folder")
  output = os.path.join(log_dir, "%x-%j.out")  # quoted: sbatch reads a quoted value whole
  directives += [f'--chdir="{here}"', "--open-mode=append", f'--output="{output}"']
  directives += args.sbatch
  with open(TEMPLATE) as f:
    template = f.read()
  return template.format(
      sbatch="\n".join(f"#SBATCH {d}" for d in directives),
      workdir=shlex.quote(workdir),
      # a failed setup line (a module that does not load) stops the job before srun
      setup="\n".join(f"{line} || exit 1" for line in args.setup) if args.setup
      else "# (no --setup lines)",
      # one process owning the node's GPUs: no jax.distributed, whose SLURM rule gives a
      # process only the GPU of its local index
      distributed="export MTL_DISTRIBUTED=off" if one_process else "",
      train=" ".join([cli.shell_path(command[0]), shlex.join(command[1:])]),
      requeue="1" if args.requeue else "0")


def local_dir(workdir, prefix=""):
  """Where the script and SLURM's output go: <workdir>/slurm, which sbatch must see as a file."""
  if cli.is_url(workdir):
    raise cli.UsageError(f"--workdir={workdir}: sbatch needs a local (shared) workdir for the job "
                         "script and its output; mount the bucket (gcsfuse) and give that path")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise cli.UsageError(f"--workdir={workdir} is a file; give the run's folder (new or its own)")
  return os.path.join(workdir, "slurm")


def main(train_args):
  args = options()
  train_args, workdir = absolute_train_args(train_args, os.getcwd())
  log_dir = local_dir(workdir)
  if not any(arg.startswith("--config=") for arg in train_args):
    raise cli.UsageError("train.py arguments need --config=FILE, e.g. -- "
                         f"--config=experiments/tiny.py --workdir={workdir}")
  script = render(args, [args.python, os.path.join(ROOT, "launch", "train.py"), *train_args],
                  workdir, log_dir)
  path = os.path.join(log_dir, f"{args.job_name}.sbatch")
  command = ["sbatch", path]
  if flags.FLAGS.dry_run:
    sys.stdout.write(script)
    print(shlex.join(command))
    return 0
  if shutil.which("sbatch") is None:
    cli.error("sbatch not found on PATH; run this on a SLURM login node, or add --dry_run to "
              "print the script", status=1)
  if flags.FLAGS.check_config:
    check_config(train_args)
  os.makedirs(log_dir, exist_ok=True)
  kept = keep_earlier(path, script)
  with open(path, "w") as f:
    f.write(script)
  print(f"wrote {path}" + (f" (the earlier script is kept as {kept})" if kept else ""),
        flush=True)
  return subprocess.run(command).returncode


if __name__ == "__main__":
  define_flags()
  flags.DEFINE_bool("dry_run", False, "Print the script and the sbatch command; submit nothing.")
  flags.DEFINE_bool("check_config", True, "Before submitting, check the config and overrides "
                    "here as train.py will (train.py --check_config); --nocheck_config skips it.")
  cli.run(main)
