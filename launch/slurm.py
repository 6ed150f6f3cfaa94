"""A SLURM batch job: one training process per GPU on every node, resumable and requeued.

  python launch/slurm.py --nodes=2 --gpus_per_node=8 --time=24:00:00 --partition=gpu \
      --account=myproj [--job_name=mtl] [--signal_seconds=120] [--no_requeue] [--dry_run] \
      -- --config=experiments/ipt_paper.py --workdir=/shared/ckpt/ipt --config.mesh.fsdp=8

writes <workdir>/slurm/<job_name>.sbatch (from launch/slurm.sbatch.template) and submits it with
sbatch. --dry_run prints the script and then the sbatch command, and submits nothing.

In the job, `srun` starts nodes x gpus_per_node tasks, each `python launch/train.py ...` with one
GPU; mtl.distributed sees SLURM_JOB_ID and calls jax.distributed.initialize() without arguments
(SLURM gives the coordinator, the process count and index). SLURM sends SIGTERM
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

import cli

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TEMPLATE = os.path.join(HERE, "slurm.sbatch.template")


def absolute_train_args(train_args, cwd):
  """The job runs in the repository: make --workdir and a local --config file absolute."""
  out, workdir = [], None
  for arg in train_args:
    name, eq, value = arg.partition("=")
    if name == "--workdir" and eq:
      value = workdir = os.path.abspath(os.path.join(cwd, os.path.expanduser(value)))
      arg = f"{name}={value}"
    elif name == "--config" and eq:
      path, colon, rest = value.partition(":")
      if os.path.exists(os.path.join(cwd, path)):
        arg = f"{name}={os.path.abspath(os.path.join(cwd, path))}{colon}{rest}"
    elif name in ("--workdir", "--config"):
      raise cli.UsageError(f"{arg}: write it as {arg}=VALUE (one argument)")
    if name.lstrip("-") in cli.OWNED:
      raise cli.UsageError(f"{arg}: under SLURM jax.distributed gets the process layout from SLURM; "
                       "remove it")
    out.append(arg)
  if workdir is None:
    raise cli.UsageError("train.py arguments need --workdir=DIR (on a filesystem all nodes see), "
                     "e.g. -- --config=experiments/tiny.py --workdir=/shared/mtl/tiny")
  return out, workdir


def parse_args(argv, cwd=None):
  own, train_args = cli.split_args(argv)
  p = cli.Parser(prog="launch/slurm.py", description=__doc__.split("\n")[0])
  p.add_argument("--nodes", type=int, default=1)
  p.add_argument("--gpus_per_node", type=int, default=8, help="= tasks (processes) per node")
  p.add_argument("--time", default="24:00:00", help="time limit, [D-]HH:MM:SS")
  p.add_argument("--partition", default="")
  p.add_argument("--account", default="")
  p.add_argument("--job_name", default="mtl")
  p.add_argument("--cpus_per_task", type=int, default=0, help="0: the cluster's default")
  p.add_argument("--signal_seconds", type=int, default=120,
                 help="SIGTERM this long before the time limit (must cover a step and a save); "
                      "0: none")
  p.add_argument("--no_requeue", dest="requeue", action="store_false",
                 help="do not requeue an unfinished run")
  p.add_argument("--setup", action="append", default=[],
                 help="a shell line run before srun (module load ..., source venv/bin/activate)")
  p.add_argument("--sbatch", action="append", default=[],
                 help="an extra #SBATCH option, e.g. --sbatch=--qos=high")
  p.add_argument("--python", default="python", help="the interpreter on the nodes")
  p.add_argument("--dry_run", action="store_true", help="print the script and the command")
  args = p.parse_args(own)
  for name in ("nodes", "gpus_per_node"):
    if getattr(args, name) < 1:
      raise cli.UsageError(f"--{name}={getattr(args, name)} must be >= 1")
  if args.cpus_per_task < 0 or args.signal_seconds < 0:
    raise cli.UsageError("--cpus_per_task and --signal_seconds must be >= 0")
  if not re.fullmatch(r"(\d+-)?\d+(:\d{1,2}){0,2}", args.time):
    raise cli.UsageError(f"--time={args.time} is not a SLURM time; use [D-]HH:MM:SS, e.g. 24:00:00")
  if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.job_name):
    raise cli.UsageError(f"--job_name={args.job_name!r}: use letters, digits, '_', '.', '-'")
  for extra in args.sbatch:
    if not extra.startswith("--"):
      raise cli.UsageError(f"--sbatch={extra}: give a long option, e.g. --sbatch=--qos=high")
  args.train_args, args.workdir = absolute_train_args(train_args, cwd or os.getcwd())
  return args


def render(args):
  """The batch script's text."""
  directives = [f"--job-name={args.job_name}", f"--nodes={args.nodes}",
                f"--ntasks-per-node={args.gpus_per_node}", "--gpus-per-task=1",
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
  directives += ["--open-mode=append",
                 f"--output={os.path.join(args.workdir, 'slurm', '%x-%j.out')}"]
  directives += args.sbatch
  with open(TEMPLATE) as f:
    template = f.read()
  train = shlex.join([args.python, "launch/train.py", *args.train_args])
  return template.format(
      sbatch="\n".join(f"#SBATCH {d}" for d in directives),
      repo=shlex.quote(ROOT), workdir=shlex.quote(args.workdir),
      setup="\n".join(args.setup) if args.setup else "# (no --setup lines)",
      train=train, requeue="1" if args.requeue else "0")


def script_path(args):
  return os.path.join(args.workdir, "slurm", f"{args.job_name}.sbatch")


def main(argv):
  try:
    args = parse_args(argv)
  except cli.UsageError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  script, path = render(args), script_path(args)
  command = ["sbatch", path]
  if args.dry_run:
    sys.stdout.write(script)
    print(shlex.join(command))
    return 0
  if shutil.which("sbatch") is None:
    print("error: sbatch not found on PATH; run this on a SLURM login node, or add --dry_run "
          "to print the script", file=sys.stderr)
    return 1
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(script)
  print(f"wrote {path}", flush=True)
  return subprocess.run(command).returncode


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
