"""mtl: IPT-style multi-task training for low-level vision, and the conflicts between its tasks."""
from mtl import xla_options as _xla_options

_xla_options.apply()  # before any JAX backend opens
