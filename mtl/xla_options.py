"""Process-wide XLA options, put into XLA_FLAGS when mtl is imported (XLA reads that variable once,
when JAX opens its first backend; a backend opened before `import mtl` keeps its own options).

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
