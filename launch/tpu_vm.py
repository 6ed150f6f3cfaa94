"""Train on a Cloud TPU VM slice: the same command on every worker, over gcloud ssh.

  python launch/tpu_vm.py --name=my-v5e-32 --zone=us-west4-a [--project=P] [--repo=~/mtl] \
      [--setup="source ~/venv/bin/activate"] [--dry_run] \
      -- --config=experiments/ipt_paper.py --workdir=/mnt/shared/ipt --config.mesh.fsdp=8

runs

  gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all \
      --command="cd REPO && MTL_DISTRIBUTED=on python launch/train.py ARGS"

Every worker runs one process that owns the worker's local chips; jax.distributed.initialize()
without arguments finds the slice (JAX asks the TPU metadata server). MTL_DISTRIBUTED=on asks
mtl.distributed to make that call: the environment variables it otherwise looks for may be
absent on a TPU VM. The repository (same path) and its environment must be on every worker,
and --workdir on a filesystem all workers share (NFS / Filestore, or a gcsfuse mount).
Re-running the same command resumes from the latest checkpoint. --dry_run prints the command.
"""
import re
import shlex
import shutil
import subprocess
import sys

import cli



def _quote_path(path):
  """Quote a remote path but keep a leading ~ (expanded by the remote shell)."""
  if path == "~" or path.startswith("~/"):
    return "~" + (("/" + shlex.quote(path[2:])) if path[2:] else "")
  return shlex.quote(path)


def parse_args(argv):
  own, train_args = cli.split_args(argv)
  p = cli.Parser(prog="launch/tpu_vm.py", description=__doc__.split("\n")[0])
  p.add_argument("--name", required=True, help="the TPU VM (slice) name")
  p.add_argument("--zone", required=True)
  p.add_argument("--project", default="", help="default: gcloud's configured project")
  p.add_argument("--worker", default="all", help="'all' (training) or worker indices (checks)")
  p.add_argument("--repo", default="~/mtl", help="the repository on the workers")
  p.add_argument("--python", default="python3", help="the interpreter on the workers")
  p.add_argument("--setup", action="append", default=[],
                 help="a shell command run first on each worker (e.g. source venv/bin/activate)")
  p.add_argument("--dry_run", action="store_true", help="print the command and exit")
  args = p.parse_args(own)
  for name in ("name", "zone"):
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", getattr(args, name)):
      raise cli.UsageError(f"--{name}={getattr(args, name)!r} is not a valid GCP name "
                       "(lowercase letters, digits, '-')")
  if args.worker != "all" and not re.fullmatch(r"\d+(,\d+)*", args.worker):
    raise cli.UsageError(f"--worker={args.worker}: use 'all' or indices like 0 or 0,1")
  if not any(a.startswith("--workdir") for a in train_args):
    raise cli.UsageError("train.py arguments need --workdir=DIR (shared by all workers), "
                     "e.g. -- --config=experiments/tiny.py --workdir=/mnt/shared/mtl/tiny")
  for arg in train_args:
    if cli.owned_flag(arg):
      raise cli.UsageError(f"{arg}: on a TPU VM jax.distributed finds the workers itself; remove it")
  args.train_args = train_args
  return args


def remote_command(args):
  steps = [f"cd {_quote_path(args.repo)}", *args.setup,
           "MTL_DISTRIBUTED=on " + shlex.join([args.python, "launch/train.py", *args.train_args])]
  return " && ".join(steps)


def gcloud_command(args):
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, f"--zone={args.zone}"]
  if args.project:
    cmd.append(f"--project={args.project}")
  return cmd + [f"--worker={args.worker}", f"--command={remote_command(args)}"]


def main(argv):
  try:
    args = parse_args(argv)
  except cli.UsageError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  cmd = gcloud_command(args)
  if args.dry_run:
    print(shlex.join(cmd))
    return 0
  if shutil.which("gcloud") is None:
    print("error: gcloud not found on PATH; install the Google Cloud CLI "
          "(https://cloud.google.com/sdk/docs/install), or add --dry_run to print the command",
          file=sys.stderr)
    return 1
  return subprocess.run(cmd).returncode


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
