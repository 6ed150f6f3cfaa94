"""A run config saved as JSON (what launch/study.py writes for each of its runs).

  python launch/train.py --config=experiments/from_json.py:path=STUDY/runs/NAME/run_config.json \
      --workdir=STUDY/runs/NAME

Argument (base.py's convention): path=<run_config.json>; the short form
`from_json.py:STUDY/runs/NAME/run_config.json` means the same.
"""
import json

import ml_collections

from experiments import base


def _tuples(value):
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def get_config(arg=None):
  path = base.parse_arg(arg, "experiments/from_json.py", "path", path="")["path"]
  if not path:
    raise ValueError("experiments/from_json.py needs path=<run_config.json>")
  with open(path) as f:
    return ml_collections.ConfigDict(_tuples(json.load(f)))
