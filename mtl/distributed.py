"""Multi-process start-up: jax.distributed from flags, or automatic under SLURM / TPU VM / k8s."""
import os
import sys
import threading

import jax
import numpy as np
from absl import flags, logging

# Environments in which jax.distributed.initialize() finds the processes itself ('auto'): SLURM
# as JAX reads it (jax._src.clusters.slurm_cluster: all five; more than one task), Cloud TPU,
# JobSet.
SLURM_ENV = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
AUTO_ENV = ("TPU_WORKER_HOSTNAMES", "CLOUD_TPU_TASK_ID", "JOBSET_NAME",
            "MEGASCALE_COORDINATOR_ADDRESS")
# Each flag's environment variable: its value where the flag is not given.
ENV = {"coordinator_address": "MTL_COORDINATOR_ADDRESS", "num_processes": "MTL_NUM_PROCESSES",
       "process_id": "MTL_PROCESS_ID", "num_cpu_devices": "MTL_NUM_CPU_DEVICES",
       "distributed": "MTL_DISTRIBUTED"}


def define_flags():
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0 (multi-process runs); env MTL_COORDINATOR_ADDRESS.")
  flags.DEFINE_integer("num_processes", 1, "Number of processes; env MTL_NUM_PROCESSES.")
  flags.DEFINE_integer("process_id", 0, "This process's index; env MTL_PROCESS_ID.")
  flags.DEFINE_integer("num_cpu_devices", 0,
                       "Fake CPU devices per process (testing sharding on CPU); 0 = default; env "
                       "MTL_NUM_CPU_DEVICES.")
  flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                    "jax.distributed.initialize() without arguments: auto = when SLURM (more "
                    "than one task), a TPU env or JobSet is detected; on = always (Cloud TPU "
                    "VMs, found via the metadata server); off = never. Env MTL_DISTRIBUTED.")
  flags.DEFINE_integer("distributed_timeout", 300,
                       "Seconds to wait for the coordinator and the other processes.")


def _settings():
  """{flag: (value, how it was given: '--flag' or '$MTL_...')}: a flag not given takes its
  environment variable's value, checked as the flag would be (one line naming it)."""
  out = {}
  for name, var in ENV.items():
    flag = flags.FLAGS[name]
    if flag.present or var not in os.environ:
      out[name] = (flag.value, f"--{name}")
      continue
    try:
      out[name] = (flag.parser.parse(os.environ[var]), f"${var}")
    except ValueError as error:
      raise SystemExit(f"error: ${var}={os.environ[var]!r} is not valid for --{name}: "
                       f"{error}") from None
  return out


def _auto():
  """The variables by which this process runs in an environment jax.distributed reads itself,
  or () (SLURM with one task: one process, every GPU of the step its own)."""
  if all(v in os.environ for v in SLURM_ENV) and os.environ["SLURM_NTASKS"] != "1":
    return SLURM_ENV
  return tuple(v for v in AUTO_ENV if v in os.environ)


def initialize():
  """Start jax.distributed if this is a multi-process job; a no-op for one process."""
  f, given = flags.FLAGS, _settings()
  value = {name: v for name, (v, _) in given.items()}
  say = lambda name: f"{given[name][1]}={value[name]}"
  processes, index = value["num_processes"], value["process_id"]
  # checked whatever the branch: a --process_id=3 without --num_processes ran as one process
  if processes < 1:
    raise SystemExit(f"error: {say('num_processes')} must be >= 1")
  if not 0 <= index < processes:
    raise SystemExit(f"error: {say('process_id')} is outside 0..{processes - 1}"
                     + ("; give --num_processes too" if processes == 1 else ""))
  if f.distributed_timeout < 1:
    raise SystemExit(f"error: --distributed_timeout={f.distributed_timeout} must be >= 1 "
                     "(seconds)")
  if value["num_cpu_devices"] < 0:
    raise SystemExit(f"error: {say('num_cpu_devices')} must be >= 0 (0: default)")
  if value["num_cpu_devices"]:
    jax.config.update("jax_num_cpu_devices", value["num_cpu_devices"])
  address = value["coordinator_address"]
  if address or processes > 1:
    if not address:
      raise SystemExit(f"error: {say('num_processes')} needs --coordinator_address")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise SystemExit(f"error: {say('coordinator_address')} is not host:port (e.g. "
                       "10.0.0.1:1234, a port in 1..65535)")
    logging.info("jax.distributed: process %d of %d, coordinator %s", index, processes, address)
    # On a timeout jax aborts the process from C++ (a multi-line fatal log, exit 134), which no
    # `except` sees; this watchdog fires first and says in one line what went wrong.
    watchdog = threading.Timer(f.distributed_timeout, _give_up,
                               args=(f.distributed_timeout, index, processes, address))
    watchdog.daemon = True
    watchdog.start()
    try:
      jax.distributed.initialize(address, num_processes=processes, process_id=index,
                                 initialization_timeout=f.distributed_timeout + 60)
    except Exception as error:  # the runtime's own messages span many lines
      raise SystemExit(f"error: jax.distributed could not start (coordinator {address}, "
                       f"{processes} processes, timeout {f.distributed_timeout}s): "
                       f"{first_line(error)}")
    finally:
      watchdog.cancel()
    return
  found = _auto() if value["distributed"] == "auto" else ()
  if value["distributed"] == "on" or found:
    try:
      jax.distributed.initialize()
    except Exception as error:
      where = f"found {', '.join(found)}" if found else f"{say('distributed')}"
      raise SystemExit(f"error: jax.distributed could not start from the environment ({where}): "
                       f"{first_line(error)}; MTL_DISTRIBUTED=off runs this process alone")


def first_line(error):
  """The first line of an error's message (the runtime's span many), or its type's name."""
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


def _give_up(timeout, index, processes, address):
  print(f"error: jax.distributed could not start within --distributed_timeout="
        f"{timeout}s: process {index} of {processes} got no answer "
        f"from the coordinator {address} (process 0) or not all processes joined; "
        "start every process with the same --coordinator_address and --num_processes",
        file=sys.stderr, flush=True)
  os._exit(1)  # the main thread is blocked inside jax's C++ connect


MESSAGE_BYTES = 2048  # of a refusal sent to every process (agree): one line, cut there


def agree(refusal):
  """Make process 0's start-up refusal (a ValueError, or None) every process's: it checks the
  workdir alone, and the others would go on into the first collective and wait there for it
  (orbax's first barrier, timing out after minutes). One process: `refusal` is raised."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    sent = np.zeros(MESSAGE_BYTES + 1, np.uint8)
    if refusal is not None:
      text = str(refusal).encode()[:MESSAGE_BYTES]
      sent[0], sent[1:1 + len(text)] = 1, np.frombuffer(text, np.uint8)
    got = np.asarray(multihost_utils.broadcast_one_to_all(sent))
    if got[0] and refusal is None:
      raise ValueError(bytes(got[1:]).rstrip(b"\0").decode(errors="replace"))
  if refusal is not None:
    raise refusal
