"""Tables and report of a study from the runs that are DONE; never trains.

  python launch/report.py --workdir=/tmp/mtl/mini

Writes WORKDIR/tables/{main,transfer,conflicts,compute,selection}.{md,csv,tex} (and
end_conflicts: question 1's end-of-training figures, where the study measured them),
WORKDIR/figures/{loss-<task>,findings-delta,findings-conflict}.png and WORKDIR/report.md.
report.md opens with the findings: the four questions mtl exists for, each answered from the
study's own tables, a sentence per task pair or task with its 95% interval and verdict ('not
enough evidence' where the interval holds 0; 'not measured by this study' and the study config
that measures it where the study lacks the runs):
  1. Do the tasks conflict on the shared body? (corrected cosine per training phase)
  2. Does pre-train + fine-tune beat a tuned from-scratch run? (paired Δ PSNR per task)
  3. Do related tasks help more than unrelated ones? (paired Δ of the two fine-tunes)
  4. Does acting on conflicts beat plain joint training? (paired Δ, method - joint, per task)
then lists the runs still missing, the tables, the method and the figures. The terminal
summary starts with the same four answers, then runs done, warnings, per task each regime's
score and verdict vs scratch, and where the files are. These files are derived from the runs
and rewritten by every report (keep notes of your own beside them, not in tables/ or figures/:
a file there that this report does not write, e.g. an earlier report's end_conflicts, is
removed, and the summary says so); the runs are only read.
"""
import _root  # noqa: F401  (repository root on sys.path)
import cli
from absl import app, flags

flags.DEFINE_string("workdir", None, "Directory of the study (holds study.json).")
cli.required_paths("workdir")


@cli.absl_main
def main():
  from mtl.report import document
  _, summary = document.write_with_summary(flags.FLAGS.workdir)
  print(summary)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
