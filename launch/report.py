"""Tables and report of a study from the runs that are DONE; never trains.

  python launch/report.py --workdir=/tmp/mtl/mini

Writes WORKDIR/tables/{main,transfer,conflicts,compute,selection}.{md,csv,tex},
WORKDIR/figures/loss-<task>.png and WORKDIR/report.md (which lists the runs still missing),
and prints a short summary: runs done, warnings, per task each regime's score and verdict
vs scratch, per task pair the conflict verdict, and where the files are.
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
  from mtl.report import document
  try:
    _, summary = document.write_with_summary(flags.FLAGS.workdir)
  except (ValueError, FileNotFoundError) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
  print(summary)


if __name__ == "__main__":
  app.run(main)
