"""Process-wide XLA options, put into XLA_FLAGS when mtl is imported (XLA reads that variable once,
when JAX opens its first backend; a backend opened before `import mtl` keeps its own options).

A flag the user already set in XLA_FLAGS is left as the user set it.
"""
import os

# jaxlib 0.10 hands CPU convolutions and dots to YNNPACK by default; its convolutions run on one
# thread (a 5x5, 32-channel convolution took as long on 1 core as on 2), where XLA's own Eigen
# kernels use them all: the small IPT step ran 12-18% faster without it (launch/benchmark.py
# --sections=train,profile). Older jaxlibs lack the flag, and XLA aborts on an unknown one.
CPU_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": ""}
_FIRST_JAXLIB_WITH_FLAGS = (0, 10)


def _jaxlib_version():
  try:
    from jaxlib import version
  except ImportError:
    return None
  try:
    return tuple(int(part) for part in version.__version__.split(".")[:2])
  except ValueError:
    return None


def flags_to_add(current, jaxlib_version):
  """The `--name=value` strings of CPU_FLAGS that `current` (an XLA_FLAGS value) does not set."""
  if jaxlib_version is None or jaxlib_version < _FIRST_JAXLIB_WITH_FLAGS:
    return []
  return [f"--{name}={value}" for name, value in CPU_FLAGS.items()
          if f"--{name}=" not in current and f"--{name} " not in f"{current} "]


def apply(environ=os.environ):
  """Append the missing CPU_FLAGS to environ['XLA_FLAGS']; returns what was added."""
  current = environ.get("XLA_FLAGS", "")
  added = flags_to_add(current, _jaxlib_version())
  if added:
    environ["XLA_FLAGS"] = " ".join([current.strip()] + added).strip()
  return added
