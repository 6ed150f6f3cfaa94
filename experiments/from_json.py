"""A run config saved as JSON (what launch/study.py writes for each of its runs).

  python launch/train.py --config=experiments/from_json.py:path=STUDY/runs/NAME/run_config.json \
      --workdir=STUDY/runs/NAME

Argument: path=<run_config.json>, or the path alone
(`from_json.py:STUDY/runs/NAME/run_config.json`); the whole argument is the path, so it may
hold any character ('=' and ',' included: a sweep's `lr=1e-3,seed=0/` folder), unlike the
key=value,... of mtl/run_defaults.py's convention.
"""
from mtl import run_defaults, run_folder

PREFIX = "path="


def get_config(arg=None):
  path = (arg or "").removeprefix(PREFIX)
  if not path:
    raise ValueError("experiments/from_json.py needs path=<run_config.json>")
  config = run_folder.config_from_json(path)
  run_defaults.check_fields(config.to_dict(), path)
  return config
