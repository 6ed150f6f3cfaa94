"""A run config saved as JSON (what launch/study.py writes for each of its runs).

  python launch/train.py --config=experiments/from_json.py:STUDY/runs/NAME/run_config.json \
      --workdir=STUDY/runs/NAME
"""
import json

import ml_collections


def _tuples(value):
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def get_config(path):
  with open(path) as f:
    return ml_collections.ConfigDict(_tuples(json.load(f)))
