"""What the launchers share: one-line errors and exit codes for absl entry points, and the
cluster launchers' (local, slurm, tpu_vm) argument parser and `-- <train.py arguments>` split."""
import argparse
import functools
import sys

# Flags a launcher owns; the same flags among the train.py arguments would contradict it.
OWNED = ("coordinator_address", "num_processes", "process_id", "num_cpu_devices")


class UsageError(Exception):
  pass


class Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, not argparse's usage block
    raise UsageError(message)


def split_args(argv):
  """(the launcher's own arguments, the train.py arguments after `--`)."""
  if "--" in argv:
    i = argv.index("--")
    return argv[:i], argv[i + 1:]
  return argv, []


def owned_flag(arg):
  """Whether a train.py argument sets a flag the launcher owns."""
  return arg.startswith("--") and arg[2:].partition("=")[0] in OWNED


def absl_main(body):
  """An absl `main(argv)` around `body()`: no positional arguments, orbax/jax quiet below
  WARNING unless --verbosity is given, and bad input (ValueError, FileNotFoundError) printed as
  one `error: ...` line with exit status 1."""
  @functools.wraps(body)
  def main(argv):
    from absl import flags, logging
    if len(argv) > 1:
      print(f"error: unexpected arguments {' '.join(argv[1:])}; pass flags only", file=sys.stderr)
      sys.exit(1)
    if not flags.FLAGS["verbosity"].present:  # orbax is chatty at INFO
      logging.set_verbosity(logging.WARNING)
    try:
      body()
    except (ValueError, FileNotFoundError) as error:
      print(f"error: {error}", file=sys.stderr)
      sys.exit(1)
  return main
