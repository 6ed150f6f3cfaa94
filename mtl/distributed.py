"""Multi-process start-up: jax.distributed from flags, or automatic under SLURM / TPU VM / k8s."""
import os
import sys
import threading

import jax
from absl import flags, logging

AUTO_ENV = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "CLOUD_TPU_TASK_ID",
            "JOBSET_NAME", "MEGASCALE_COORDINATOR_ADDRESS")


def define_flags():
  flags.DEFINE_string("coordinator_address", os.environ.get("MTL_COORDINATOR_ADDRESS"),
                      "host:port of process 0 (multi-process runs); env MTL_COORDINATOR_ADDRESS.")
  flags.DEFINE_integer("num_processes", int(os.environ.get("MTL_NUM_PROCESSES", 1)),
                       "Number of processes; env MTL_NUM_PROCESSES.")
  flags.DEFINE_integer("process_id", int(os.environ.get("MTL_PROCESS_ID", 0)),
                       "This process's index; env MTL_PROCESS_ID.")
  flags.DEFINE_integer("num_cpu_devices", int(os.environ.get("MTL_NUM_CPU_DEVICES", 0)),
                       "Fake CPU devices per process (testing sharding on CPU); 0 = default.")
  flags.DEFINE_enum("distributed", os.environ.get("MTL_DISTRIBUTED", "auto"),
                    ["auto", "on", "off"],
                    "jax.distributed.initialize() without arguments: auto = when SLURM, a TPU "
                    "env or JobSet is detected; on = always (Cloud TPU VMs, found via the "
                    "metadata server); off = never. Env MTL_DISTRIBUTED.")
  flags.DEFINE_integer("distributed_timeout", 300,
                       "Seconds to wait for the coordinator and the other processes.")


def initialize():
  """Start jax.distributed if this is a multi-process job; a no-op for one process."""
  f = flags.FLAGS
  # checked whatever the branch: a --process_id=3 without --num_processes ran as one process
  if f.num_processes < 1:
    raise SystemExit(f"error: --num_processes={f.num_processes} must be >= 1")
  if not 0 <= f.process_id < f.num_processes:
    raise SystemExit(f"error: --process_id={f.process_id} is outside 0..{f.num_processes - 1}"
                     + ("; give --num_processes too" if f.num_processes == 1 else ""))
  if f.distributed_timeout < 1:
    raise SystemExit(f"error: --distributed_timeout={f.distributed_timeout} must be >= 1 "
                     "(seconds)")
  if f.num_cpu_devices < 0:
    raise SystemExit(f"error: --num_cpu_devices={f.num_cpu_devices} must be >= 0 (0: default)")
  if f.num_cpu_devices:
    jax.config.update("jax_num_cpu_devices", f.num_cpu_devices)
  if f.coordinator_address or f.num_processes > 1:
    if not f.coordinator_address:
      raise SystemExit(f"error: --num_processes={f.num_processes} needs --coordinator_address")
    logging.info("jax.distributed: process %d of %d, coordinator %s",
                 f.process_id, f.num_processes, f.coordinator_address)
    # On a timeout jax aborts the process from C++ (a multi-line fatal log, exit 134), which no
    # `except` sees; this watchdog fires first and says in one line what went wrong.
    watchdog = threading.Timer(f.distributed_timeout, _give_up, args=(f,))
    watchdog.daemon = True
    watchdog.start()
    try:
      jax.distributed.initialize(f.coordinator_address, num_processes=f.num_processes,
                                 process_id=f.process_id,
                                 initialization_timeout=f.distributed_timeout + 60)
    except Exception as error:  # the runtime's own messages span many lines
      first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
      raise SystemExit(f"error: jax.distributed could not start (coordinator "
                       f"{f.coordinator_address}, {f.num_processes} processes, timeout "
                       f"{f.distributed_timeout}s): {first}")
    finally:
      watchdog.cancel()
  elif f.distributed == "on" or (f.distributed == "auto"
                                 and any(v in os.environ for v in AUTO_ENV)):
    jax.distributed.initialize()


def _give_up(f):
  print(f"error: jax.distributed could not start within --distributed_timeout="
        f"{f.distributed_timeout}s: process {f.process_id} of {f.num_processes} got no answer "
        f"from the coordinator {f.coordinator_address} (process 0) or not all processes joined; "
        "start every process with the same --coordinator_address and --num_processes",
        file=sys.stderr, flush=True)
  os._exit(1)  # the main thread is blocked inside jax's C++ connect
