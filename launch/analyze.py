"""Redraw and summarize the gradient conflicts a run has stored.

  python launch/analyze.py --workdir=/tmp/mtl/tiny [--step_range=START:END] [--window=N]

Reads <workdir>/conflicts/store/ (probe steps in [START, END), either side optional),
redraws the figures into <workdir>/conflicts/ (file names: see mtl/plots.py), writes the
same images and the whole-body cosine per pair to TensorBoard under
<workdir>/events/analyze/ (a run of its own beside the trainer's <workdir>/events/), and
prints a text summary (task x task mean cosine, conflict fractions) of the last N probe
steps (all for N=0). Bad input: one line on stderr, exit status 1, nothing written.
"""
import os
import sys

import _root  # noqa: F401  (repository root on sys.path for `mtl` without installing)
from absl import app, flags

flags.DEFINE_string("workdir", None, "Directory of the run (holds conflicts/store/).")
flags.DEFINE_string("step_range", "", "Probe steps START:END to load, half-open; '' for all.")
flags.DEFINE_integer("window", 0, "Average the summary and averaged figures over the last N "
                     "probe steps; 0 for all.", lower_bound=0)
flags.DEFINE_float("ema_beta", 0.1, "GradVac EMA beta for the curves (0 for none).",
                   lower_bound=0.0, upper_bound=1.0)
flags.mark_flags_as_required(["workdir"])


def analyze(workdir, step_range="", window=0, ema_beta=0.1):
  """Load, draw, log to TensorBoard, and return the text summary."""
  from mtl import conflicts, plots, summary
  if not os.path.isdir(workdir):
    raise ValueError(f"--workdir={workdir} is not a directory")
  record = conflicts.load(workdir, conflicts.parse_step_range(step_range))
  report = conflicts.summarize(record, window)  # everything that can fail on input comes first
  paths = plots.draw_all(record, os.path.join(workdir, "conflicts"), window, ema_beta)
  with summary.Writer(os.path.join(workdir, "events", "analyze")) as writer:
    last = int(record.steps[-1])
    for path in paths:
      with open(path, "rb") as f:
        writer.image(last, "conflicts/" + os.path.splitext(os.path.basename(path))[0], f.read())
    body = conflicts.pair_values(record.cosines("body")[:, 0])
    fraction = record.conflict_fraction("body")[:, 0]
    for s, step in enumerate(record.steps):
      values = {f"conflicts/cos/{p}": body[s, k] for k, p in enumerate(record.pair_names)}
      values["conflicts/conflict_fraction"] = fraction[s]
      writer.scalars(int(step), values)
  text = conflicts.format_summary(report)
  return text + "\nfigures: " + ", ".join(os.path.relpath(p, workdir) for p in paths)


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected arguments {' '.join(argv[1:])}; pass flags only", file=sys.stderr)
    sys.exit(1)
  f = flags.FLAGS
  try:
    print(analyze(f.workdir, f.step_range, f.window, f.ema_beta), flush=True)
  except ValueError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
