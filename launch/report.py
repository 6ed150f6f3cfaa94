"""Tables and report of a study from the runs that are DONE; never trains.

  python launch/report.py --workdir=/tmp/mtl/mini

Writes WORKDIR/tables/{main,transfer,conflicts,compute,selection}.{md,csv,tex},
WORKDIR/figures/loss-<task>.png and WORKDIR/report.md (which lists the runs still missing).
"""
import sys

import _root  # noqa: F401  (repository root on sys.path)
from absl import app, flags, logging

flags.DEFINE_string("workdir", None, "Directory of the study (holds study.json).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from mtl import report
  try:
    path = report.write(flags.FLAGS.workdir)
  except (ValueError, FileNotFoundError) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
  with open(path) as f:
    text = f.read()
  print(text.split("## How the numbers")[0].rstrip())
  print(f"\nwrote {path} and its tables/ and figures/")


if __name__ == "__main__":
  app.run(main)
