"""Put the repository root on sys.path so `experiments` configs import when run from anywhere, and
import mtl before anything opens a JAX backend (mtl sets its XLA options on import)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import mtl  # noqa: E402,F401
