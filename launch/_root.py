"""Put the repository root on sys.path so `experiments` configs import when run from anywhere,
import mtl before anything opens a JAX backend (mtl sets its XLA options on import), and what
every launcher shares (cli: --help exits 0)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import mtl  # noqa: E402,F401
import cli  # noqa: E402,F401
