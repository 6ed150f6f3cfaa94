"""A run config saved as JSON (what launch/study.py writes for each of its runs).

  python launch/train.py --config=experiments/from_json.py:path=STUDY/runs/NAME/run_config.json \
      --workdir=STUDY/runs/NAME

Argument (mtl/run_defaults.py's convention): path=<run_config.json>; the short form
`from_json.py:STUDY/runs/NAME/run_config.json` means the same.
"""
from mtl import run_defaults, run_folder


def get_config(arg=None):
  path = run_defaults.parse_arg(arg, "experiments/from_json.py", "path", path="")["path"]
  if not path:
    raise ValueError("experiments/from_json.py needs path=<run_config.json>")
  config = run_folder.config_from_json(path)
  run_defaults.check_fields(config.to_dict(), path)
  return config
