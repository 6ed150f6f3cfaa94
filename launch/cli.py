"""What the cluster launchers (local, slurm, tpu_vm) share: their argument parser and the
`-- <train.py arguments>` split, with one-line usage errors."""
import argparse

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
