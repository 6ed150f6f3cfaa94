"""Process-wide XLA options, put into XLA_FLAGS when mtl is imported (XLA reads that variable once,
when JAX opens its first backend; a backend opened before `import mtl` keeps its own options),
and the size of XLA's CPU thread pool (a run's `cpu_threads`).

A flag the user already set in XLA_FLAGS is left as the user set it.
"""
import os

# jaxlib 0.10 hands CPU convolutions and dots to YNNPACK by default; its convolutions run on one
# thread (a 5x5, 32-channel convolution took as long on 1 core as on 2), where XLA's own Eigen
# kernels use them all: the small IPT step ran 12-18% faster without it (launch/benchmark.py
# --sections=train,profile). XLA aborts on a flag it does not know: jaxlibs before 0.10 get none.
CPU_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": ""}
_KNOWN = ((0, 10), (0, 11))  # jaxlib (major, minor) releases seen to take CPU_FLAGS


def _jaxlib_version():
  try:
    from jaxlib import version
    return tuple(int(part) for part in version.__version__.split(".")[:2])
  except (ImportError, ValueError):
    return None


def _library_knows(names):
  """Whether jaxlib's XLA library holds every flag name (for releases not in _KNOWN)."""
  import glob
  import mmap
  try:
    import jaxlib
  except ImportError:
    return False
  for path in glob.glob(os.path.join(os.path.dirname(jaxlib.__file__), "*.so")):
    if os.path.getsize(path) < 2**20:  # stubs; the flags live in the big shared library
      continue
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
      if all(data.find(name.encode()) >= 0 for name in names):
        return True
  return False


def flags_to_add(current, jaxlib_version, knows=_library_knows):
  """The `--name=value` strings of CPU_FLAGS that `current` (an XLA_FLAGS value) does not set."""
  missing = {name: value for name, value in CPU_FLAGS.items()
             if f"--{name}=" not in current and f"--{name} " not in f"{current} "}
  if not missing or jaxlib_version is None or jaxlib_version < _KNOWN[0]:
    return []
  if jaxlib_version not in _KNOWN and not knows(list(missing)):
    return []
  return [f"--{name}={value}" for name, value in missing.items()]


def apply(environ=os.environ):
  """Append the missing CPU_FLAGS to environ['XLA_FLAGS']; returns what was added."""
  current = environ.get("XLA_FLAGS", "")
  added = flags_to_add(current, _jaxlib_version())
  if added:
    environ["XLA_FLAGS"] = " ".join([current.strip()] + added).strip()
  return added


# XLA's CPU client sizes its thread pool from the first of these set, else from the CPUs this
# process may use (its affinity).
THREAD_VARIABLES = ("PJRT_NPROC", "NPROC")


def cpu_threads(environ=os.environ):
  """The threads XLA's CPU client of this process has (or will have)."""
  for name in THREAD_VARIABLES:
    if environ.get(name, "").isdigit() and int(environ[name]) > 0:
      return int(environ[name])
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def set_cpu_threads(n, environ=os.environ):
  """Give XLA's CPU client n threads (0: leave it as it is). Eigen splits a matmul's or a
  convolution's sums by thread, so a CPU run's numbers depend on this count, not on which cores
  run it: 1 thread alone on 2 cores and 1 beside another run give the same losses, 2 threads
  others. Call before JAX opens its CPU backend (launch/train.py does, first thing)."""
  if n < 0:
    raise ValueError(f"cpu_threads={n} must be >= 0 (0: every CPU the run may use)")
  if n:
    environ[THREAD_VARIABLES[0]] = str(n)
