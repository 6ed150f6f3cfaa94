r"""Train on a Cloud TPU VM slice: the same command on every worker, over gcloud ssh.

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
and --workdir an absolute path on a filesystem all workers share (NFS / Filestore, or a gcsfuse
mount; not a gs:// URL: the run folder is written with file I/O). Other relative paths
(--config, init_from, data folders) name files under --repo on each worker.
Re-running the same command resumes from the latest checkpoint. --dry_run prints the command;
--help lists every flag with its default.
"""
import re
import shlex
import shutil
import subprocess

from absl import flags

import cli


def define_flags():
  flags.DEFINE_string("name", None, "The TPU VM (slice) name (required).")
  flags.DEFINE_string("zone", None, "Its zone, e.g. us-west4-a (required).")
  flags.DEFINE_string("project", "", "GCP project ('' -> gcloud's configured project).")
  flags.DEFINE_string("worker", "all", "'all' (training) or worker indices like 0 or 0,1 (checks).")
  flags.DEFINE_string("repo", "~/mtl", "The repository on the workers (same path on each).")
  flags.DEFINE_string("python", "python3", "The interpreter on the workers.")
  flags.DEFINE_multi_string("setup", [], "A shell command run first on each worker (e.g. source "
                            "venv/bin/activate); one per --setup, joined with '&&'.")
  flags.DEFINE_bool("dry_run", False, "Print the gcloud command and exit.")


def check(args, train_args):
  """UsageError (one line) for a missing or bad flag or a train.py argument the launcher owns."""
  for name in ("name", "zone"):
    value = getattr(args, name)
    if value is None:
      raise cli.UsageError(f"--{name} is required, e.g. --name=my-v5e-32 --zone=us-west4-a")
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", value):
      raise cli.UsageError(f"--{name}={value!r} is not a valid GCP name "
                           "(lowercase letters, digits, '-')")
  if args.worker != "all" and not re.fullmatch(r"\d+(,\d+)*", args.worker):
    raise cli.UsageError(f"--worker={args.worker}: use 'all' or indices like 0 or 0,1")
  for line in args.setup:
    if cli.chains(line):
      raise cli.UsageError(f"--setup={line!r}: give one command per --setup (they are joined "
                           "with '&&': a comment, newline, ';', '&' or '|' would change what "
                           "runs after it, training included)")
  workdirs = [a.partition("=")[2] for a in train_args if a.startswith("--workdir=")]
  if not workdirs:
    raise cli.UsageError("train.py arguments need --workdir=DIR (shared by all workers), "
                         "e.g. -- --config=experiments/tiny.py --workdir=/mnt/shared/mtl/tiny")
  for workdir in workdirs:  # relative or ~: a folder of each worker's own, not shared
    if cli.is_url(workdir):
      raise cli.UsageError(f"--workdir={workdir} is a URL; the trainer writes the run folder with "
                           "file I/O: mount the bucket on every worker (gcsfuse) and give that "
                           "path")
    if not workdir.startswith("/"):
      raise cli.UsageError(f"--workdir={workdir} is not absolute: on the workers it would name "
                           "a folder of each worker's own; give a path all workers share, e.g. "
                           "--workdir=/mnt/shared/mtl/run")
  for arg in train_args:
    if cli.owned_flag(arg):
      raise cli.UsageError(f"{arg}: on a TPU VM jax.distributed finds the workers itself; "
                           "remove it")
  if not any(arg.startswith("--config=") for arg in train_args):  # else every worker fails alike
    raise cli.UsageError("train.py arguments need --config=FILE (under --repo on the workers), "
                         f"e.g. -- --config=experiments/tiny.py --workdir={workdirs[-1]}")


def remote_command(args, train_args):
  steps = [f"cd {cli.shell_path(args.repo)}", *args.setup,
           f"MTL_DISTRIBUTED=on {cli.shell_path(args.python)} "
           + shlex.join(["launch/train.py", *train_args])]
  return " && ".join(steps)


def gcloud_command(args, train_args):
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, f"--zone={args.zone}"]
  if args.project:
    cmd.append(f"--project={args.project}")
  return cmd + [f"--worker={args.worker}", f"--command={remote_command(args, train_args)}"]


def main(train_args):
  args = flags.FLAGS
  check(args, train_args)
  cmd = gcloud_command(args, train_args)
  if args.dry_run:
    print(shlex.join(cmd))
    return 0
  if shutil.which("gcloud") is None:
    cli.error("gcloud not found on PATH; install the Google Cloud CLI "
              "(https://cloud.google.com/sdk/docs/install), or add --dry_run to print the command",
              status=1)
  return subprocess.run(cmd).returncode


if __name__ == "__main__":
  define_flags()
  cli.run(main)
