"""What the launchers share (every one imports it through _root): --help exits 0; one-line errors
for absl entry points (`absl_main`); a run's saved run_config.json taken as --config
(`json_config`); for the cluster launchers (local, slurm, tpu_vm) absl flags parsed with
one-line errors, the `-- <train.py arguments>` split, and paths (a gs:// style URL is told
apart: data may be read from one, a workdir is refused)."""
import functools
import math
import os
import re
import shlex
import sys
import threading

from absl import app, flags

# Flags a launcher owns; the same flags among the train.py arguments would contradict it.
OWNED = ("coordinator_address", "num_processes", "process_id", "num_cpu_devices")


class UsageError(Exception):
  pass


def split_args(argv):
  """(the launcher's own arguments, the train.py arguments after the first `--`)."""
  if "--" in argv:
    i = argv.index("--")
    return argv[:i], argv[i + 1:]
  return argv, []


def owned_flag(arg):
  """Whether a train.py argument sets a flag the launcher owns."""
  return arg.startswith("--") and arg[2:].partition("=")[0] in OWNED


def absl_main(body):
  """An absl `main(argv)` around `body()`: no positional arguments, orbax/jax quiet below
  WARNING unless --verbosity is given, and bad input (ValueError, OSError such as a file where a
  folder belongs) printed as one `error: ...` line with exit status 1; Ctrl-C as one line, exit
  status 130 (what is written is written whole: outputs are written atomically)."""
  @functools.wraps(body)
  def main(argv):
    from absl import logging
    if len(argv) > 1:
      fail(f"unexpected arguments {' '.join(argv[1:])}; pass flags only")
    if not flags.FLAGS["verbosity"].present:  # orbax is chatty at INFO
      logging.set_verbosity(logging.WARNING)
    try:
      body()
    except (ValueError, OSError) as error:  # OSError: a path of the wrong kind, names itself
      fail(error)
    except KeyboardInterrupt:
      print("error: interrupted (Ctrl-C)", file=sys.stderr, flush=True)
      exit_now(130)
  return main


def _load_config(argv):
  """The config the --config argument names, loaded as ml_collections does (None if it fails)."""
  import importlib.util
  spec = next((a[len("--config="):] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return None
  path, _, arg = spec.partition(".py")
  try:
    module_spec = importlib.util.spec_from_file_location("_config_file", path + ".py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg[1:]) if arg.startswith(":") else module.get_config()
  except Exception:  # the flag's own parse reports a config that fails to load
    return None


def _unknown_field(argv):
  """One line for an override naming a field the config does not have (None where none is
  found: the config does not load, or has every field the overrides name)."""
  import ml_collections
  if not any(a.startswith(("--config=", "-config=")) for a in argv):
    return ("--config=<config file> is missing: the --config.<field> overrides apply to it "
            "(e.g. --config=experiments/tiny.py)")
  config = _load_config(argv)
  for arg in argv[1:]:
    if arg.startswith("--config.") and config is not None:
      parts, node = arg[len("--config."):].partition("=")[0].split("."), config
      for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
          valid = (", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict)
                   else "no fields (not a group)")
          where = ".".join(parts[:i]) or "the config"
          from mtl import run_defaults
          if where in run_defaults.FREE_GROUPS and i == len(parts) - 1:  # a method's own argument
            value = arg.partition("=")[2]
            return (f"{arg}: give {where} as one dict of the method's arguments, e.g. "
                    f"\"--config.{where}={{'{part}': {value}}}\"")
          return f"unknown config field {'.'.join(parts[:i + 1])!r} in {arg}; {where} has: {valid}"
        node = node[part]
  return None


def fail(message):
  """`error` with exit status 1: bad input to train.py and the absl launchers."""
  error(message, 1)


def required_paths(*names):
  """absl's mark_flags_as_required, and an empty value refused too (a path '' is the current
  folder, or a bare errno line)."""
  flags.mark_flags_as_required(list(names))
  for name in names:
    flags.register_validator(name, lambda value: value != "",
                             message=f"--{name} is empty; give a path")


def config_arg(argv):
  """The --config file of `argv`, without a ':<argument>' after its .py ('' without one)."""
  values = [a.split("=", 1)[1] for a in argv[1:] if a.startswith(("--config=", "-config="))]
  return re.sub(r"(\.py):.*$", r"\1", values[-1]) if values else ""


def parse_flags(argv):
  """absl's parsing with one `error:` line (exit 1) instead of a traceback or absl's two-line
  'FATAL Flags parsing error' block; a --config file that fails to load is named here too."""
  try:
    rest = flags.FLAGS(argv)
  except (AttributeError, flags.UnrecognizedFlagError) as error:  # --config.<no such field>
    if "has no attribute 'get_config'" in str(error):
      fail(f"--config={config_arg(argv)} defines no get_config(); a config file is Python "
           "whose get_config() returns the config (e.g. experiments/tiny.py)")
    if isinstance(error, AttributeError) or "'config." in str(error):
      fail(_unknown_field(argv) or f"unknown config field in the overrides ({error})")
    fail(f"unknown flag --{error.flagname}; --help lists the flags")
  except flags.Error as error:  # a config file's own error ends absl's message (a traceback)
    lines = [l.strip() for l in str(error).splitlines() if l.strip()]
    line = lines[-1] if "Traceback" in str(error) else lines[0]
    fail(line.split(": ", 1)[1] if line.startswith(("ValueError: ", "FileNotFoundError: "))
         else line)
  except (ValueError, TypeError, KeyError, FileNotFoundError, OSError) as error:
    # a KeyError: ml_collections' error for an override below a field that is not there
    fail(isinstance(error, KeyError) and _unknown_field(argv)
         or (f"{error}".splitlines()[0] if str(error) else type(error).__name__))
  except (SyntaxError, NameError, ImportError) as error:  # the config file ran as Python
    fail(f"--config={config_arg(argv)} is not a Python config file ({type(error).__name__}: "
         f"{str(error).splitlines()[0] if str(error) else ''}); give a .py file defining "
         "get_config(), or a run's saved run_config.json")
  fields = [a.partition("=")[0] for a in argv[1:] if a.startswith("--config.")]
  twice = sorted({f for f in fields if fields.count(f) > 1})
  if twice:  # ml_collections applies both, and a tuple field adds the second to the first
    fail(f"{twice[0]} is given {fields.count(twice[0])} times; give each config field once")
  if "config" in flags.FLAGS and flags.FLAGS["config"].value is not None:
    try:  # a config file that failed to load says so only when its value is used
      getattr(flags.FLAGS["config"].value, "keys")
    except OSError as error:
      reason = [l.strip() for l in str(error.__cause__ or error).splitlines() if l.strip()]
      given = next((a for a in argv if a.startswith(("--config=", "-config="))), "--config")
      fail(f"{given.replace(f'{FROM_JSON}:path=', '')}: {reason[-1]}")
  if len(rest) > 1:
    fail(f"unexpected arguments {' '.join(rest[1:])}; pass flags only")
  _refuse_nan(fail)
  _expand_home()
  return rest


def _expand_home():
  """A string flag given as ~/path: the shell expands no ~ after --flag=, and a folder named ~
  would be made (and later invite rm -rf ~); it is the user's home, as on a command line. Not
  for the cluster launchers (cli.run): their paths are the remote machines'."""
  for name in flags.FLAGS:
    value = flags.FLAGS[name].value
    if isinstance(value, str) and (value == "~" or value.startswith("~/")):
      flags.FLAGS[name].value = os.path.expanduser(value)


def _refuse_nan(refuse):
  """A float flag given as nan passes absl's bounds (every comparison with it is false) and would
  turn off whatever it bounds; refused, through `refuse`, before anything runs."""
  for name in flags.FLAGS:
    flag = flags.FLAGS[name]
    if flag.present and isinstance(flag.value, float) and math.isnan(flag.value):
      refuse(f"--{name}=nan is not a number; give a finite value")


SHUTDOWN_GRACE = 10.0  # seconds a failed process of several waits for the others to shut down


def exit_now(status):
  """Exit once every file is written and closed. One process skips the interpreter's teardown:
  a failed checkpoint read's pending reads would print a traceback each there, and jax's backend
  takes ~1 s to tear down. Several processes (jax.distributed) that finished or stopped together
  (status 0, or 75 after an agreed step) exit as usual, through jax.distributed's shutdown
  barrier. One that failed waits at that barrier SHUTDOWN_GRACE seconds at most: the others
  reach it too where they failed alike (a config error; process 0, the coordinator, leaving
  first aborted the others' start), and never where it failed alone (they wait in a collective:
  the barrier timed out after 5 minutes); then it exits, and its death ends their collective."""
  jax = sys.modules.get("jax")
  if jax is not None and jax.distributed.is_initialized():  # asks no backend to start
    from mtl import run_folder  # loaded: only the trainer starts jax.distributed
    if status in (0, run_folder.PREEMPTED_EXIT):
      sys.exit(status)
    sys.stdout.flush()
    sys.stderr.flush()
    barrier = threading.Thread(target=jax.distributed.shutdown, daemon=True)
    barrier.start()
    barrier.join(SHUTDOWN_GRACE)
  sys.stdout.flush()
  sys.stderr.flush()
  from absl import logging
  logging.flush()
  os._exit(status)


def _help_exits_zero():
  """absl's --help, --helpshort, --helpfull and --helpxml print what was asked for, then exit 1
  (absl.app's _exit_before_main(1)); a user who asked for help got it: they exit 0 here."""
  for cls in (app.HelpFlag, app.HelpfullFlag, app.HelpXMLFlag):  # HelpshortFlag is a HelpFlag
    if getattr(cls.parse, "exits_zero", False):
      continue

    def parse(self, arg, _parse=cls.parse):
      try:
        _parse(self, arg)
      except SystemExit as stop:
        if stop.code == 1:  # help was printed: the only way these flags exit
          sys.exit(0)
        raise
    parse.exits_zero = True
    cls.parse = parse


_help_exits_zero()


# The config file that reads a run config saved as JSON (a study's runs are launched with it).
FROM_JSON = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "experiments", "from_json.py")


def json_config(argv):
  """`argv` with `--config=<file>.json` (a run's saved run_config.json) read through
  FROM_JSON: the config flag would run the file as Python."""
  out = []
  for arg in argv:
    head, _, path = arg.partition("=")
    if head in ("--config", "-config") and path.endswith(".json") and ".py:" not in path:
      arg = f"--config={FROM_JSON}:path={path}"
    out.append(arg)
  return out


def error(message, status=2):
  """Print `error: message` (one line) on stderr and exit with `status` (2: the cluster
  launchers' usage errors)."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  exit_now(status)


def run(main):
  """app.run(main) where main(train_args) gets the arguments after `--`; a bad or unknown flag,
  a stray positional argument or a UsageError from main is one `error:` line (exit status 2).
  --help shows every flag with its help and default (absl)."""
  train_args = []

  def parse(argv):
    nonlocal train_args
    own, train_args = split_args(argv[1:])
    try:
      rest = flags.FLAGS([argv[0], *own])
    except flags.UnrecognizedFlagError as e:
      error(f"unknown flag --{e.flagname}; --help lists the flags")
    except flags.Error as e:
      error(e)
    if rest[1:]:
      error(f"unexpected argument {rest[1]!r}; the train.py arguments go after `--`, "
            "e.g. -- --config=experiments/tiny.py --workdir=/tmp/mtl/tiny")
    _refuse_nan(error)
    return rest

  def wrapped(argv):
    del argv
    try:
      return main(train_args)
    except UsageError as e:
      error(e)

  app.run(wrapped, flags_parser=parse)


def is_url(path):
  """Whether `path` is a URL such as gs://bucket/dir (etils.epath opens it; os.path cannot)."""
  return re.match(r"^[a-z][a-z0-9+.-]*://", path) is not None


def absolute(path, cwd):
  """`path` made absolute against `cwd` (~ expanded); a URL (gs://...) is returned unchanged."""
  if is_url(path):
    return path
  return os.path.abspath(os.path.join(cwd, os.path.expanduser(path)))


def shell_path(path):
  """`path` quoted for a shell, a leading ~ kept outside the quotes (the shell running the
  script or remote command expands it)."""
  if path == "~" or path.startswith("~/"):
    return "~" + (("/" + shlex.quote(path[2:])) if path[2:] else "")
  return shlex.quote(path)


def chains(line):
  """Whether a shell line holds a comment, a newline or a control operator outside quotes (a
  launcher that appends to it, '&& next' or '|| exit 1', would act on part of it only)."""
  try:
    words = list(shlex.shlex(line, posix=True, punctuation_chars=";&|"))
    commented = list(shlex.shlex(line.replace("#", "\\#"), posix=True, punctuation_chars=";&|"))
  except ValueError:  # unbalanced quotes
    return True
  return ("\n" in line or "\r" in line or words != [w.replace("\\#", "#") for w in commented]
          or any(set(w) <= set(";&|") for w in words))
