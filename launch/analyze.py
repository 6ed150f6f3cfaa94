"""Redraw and summarize the gradient conflicts a run has stored, or measure a saved model's.

  python launch/analyze.py --workdir=/tmp/mtl/tiny [--step_range=START:END] [--window=N]
  python launch/analyze.py --checkpoint=/tmp/mtl/tiny [--config=experiments/tiny.py] [--step=N] \
      [--batch_size=128] [--num_batches=16] [--halfwidth=0.02] [--max_batches=256] [--out=DIR]

Checkpoint mode: restores the parameters of the latest checkpoint under --checkpoint (a run's
workdir or its checkpoints/ folder; --step: that step's) with the run's own config.json, or
--config (e.g. other data; its tasks and model must be the run's), measures the per-task gradient
Gramians on fresh probe batches of --batch_size images per task (no training; the batches are
keyed by the run's seed and the checkpoint's step, so each checkpoint gets its own):
--num_batches, then more until every pair's corrected-cosine 95% interval is within
+-halfwidth (0: exactly --num_batches) or --max_batches are measured, and says when the target
was not reached and about how many batches it would take. It writes them as a conflict store
(recording the run and step measured: figures count batches, not steps) into --out (default
<checkpoint run>/analysis/step-<N>), draws its figures there, and prints mean and spread and the
summary over all batches (one phase: a saved model has no training phases); when too few batches
leave the noise floor 'not measurable', it says how many to measure. On a CPU it uses the run's
cpu_threads (its sums depend on the thread count), so a study's measurements are the same numbers
on any machine of that instruction set.

Reads <workdir>/conflicts/store/ (probe steps in [START, END), either side optional),
redraws the figures into <workdir>/conflicts/ (file names: see mtl/draw.py), writes the
same images and the probe scalars (mtl.draw.probe_scalars; its window's summaries under
conflicts/figure_window/) to TensorBoard under <workdir>/events/analyze/ (a run of its own
beside the trainer's <workdir>/events/; a rerun replaces its event files, as it redraws the
figures), and
prints a text summary: task x task mean cosine, conflict fractions, and per pair the noise
floor: the raw cosine's window mean, both tasks' same-task agreement, the noise-corrected
cosine and the conflict fraction, each with a 95% batch-means interval, and a verdict
('conflict beyond noise' only when the corrected interval is entirely < 0); then where in the
body: the modules whose corrected cosine with a pair is beyond noise over all (module, pair)
cells (Holm), conflicts and agreements, the strongest first. Then the
verdict per training phase (--phases contiguous parts of the probe steps: early, middle,
late) with one WARNING line per pair whose verdict changes between phases. The summary and
the averaged figures read the last N probe steps with --window=N; by default (0) the
headline phase, the last one (what training settled into, warm-up left out); --phases=1
makes that the whole run. Stores without halves (format version 1) say that the noise floor
was not measured. Bad input (a flag of the other mode among it): one line on stderr, exit
status 1, nothing written.
"""
import os
import re
import sys

import _root  # noqa: F401  (repository root on sys.path for `mtl` without installing)
import cli
from absl import app, flags
from ml_collections import config_flags

# What checkpoint mode's advice calls its knobs: its own flags, or the fields of a study's
# final_conflicts when launch/study.py runs it (there a first 16 batches are not a knob).
KNOBS = {"analyze": {k: f"--{k}" for k in ("num_batches", "halfwidth", "max_batches",
                                           "batch_size")},
         "study": {"num_batches": "final_conflicts.max_batches",
                   **{k: f"final_conflicts.{k}" for k in ("halfwidth", "max_batches",
                                                          "batch_size")}}}

flags.DEFINE_string("workdir", None, "Directory of the run (holds conflicts/store/).")
flags.DEFINE_string("checkpoint", None, "Measure this saved model instead.")
config_flags.DEFINE_config_file("config", None, "Checkpoint mode: the model and data to measure "
                                "with (default: the run's config.json; its tasks and model fixed).")
flags.DEFINE_integer("num_batches", 16, "Checkpoint mode: fresh batches to probe first.",
                     lower_bound=1)
flags.DEFINE_float("halfwidth", 0.02, "Checkpoint mode: then probe more until every pair's "
                   "corrected-cosine 95% interval is within +-this (0: --num_batches only).",
                   lower_bound=0.0)
flags.DEFINE_integer("max_batches", 256, "Checkpoint mode: at most this many batches in all "
                     "(--halfwidth > 0).", lower_bound=1)
# The corrected cosine estimates the cosine of the expected gradients, whatever the batch; while
# a task's half-batch gradient is mostly noise, the images a target costs fall as 1/batch.
flags.DEFINE_integer("batch_size", 128, "Checkpoint mode: images per task of each probe batch "
                     "(even; lower it where memory is short).", lower_bound=2)
flags.DEFINE_string("out", None, "Checkpoint mode: output folder.")
flags.DEFINE_enum("knobs", "analyze", list(KNOBS), "Checkpoint mode: what its advice calls the "
                  "measurement's knobs: analyze's flags, or (launch/study.py's measurements) the "
                  "study's final_conflicts fields.")
flags.DEFINE_integer("step", None, "Checkpoint mode: the checkpoint's step (default: the latest).",
                     lower_bound=0)
flags.DEFINE_string("step_range", "", "Probe steps START:END to load, half-open; '' for all.")
flags.DEFINE_integer("window", 0, "Average the summary and averaged figures over the last N "
                     "probe steps; 0 for the headline (last) training phase.", lower_bound=0)
flags.DEFINE_integer("phases", 3, "Training phases (equal parts of the probe steps) to give a "
                     "verdict for; the last is the headline; 1 for the whole run.", lower_bound=1)
flags.DEFINE_float("ema_beta", None, "GradVac EMA beta for the curves (0 for none; default: the "
                   "run's conflicts.ema_beta, as its trainer drew them).",
                   lower_bound=0.0, upper_bound=1.0)


def run_ema_beta(workdir):
  """The run's conflicts.ema_beta (its trainer's curves), or the default where it saved none."""
  from mtl import run_defaults, run_folder
  default = run_defaults.get_config().conflicts.ema_beta
  if not os.path.isfile(os.path.join(workdir, run_folder.CONFIG_FILE)):
    return default
  return run_folder.read_config(workdir).conflicts.get("ema_beta", default)


def analyze(workdir, step_range="", window=0, ema_beta=None, phases=3):
  """Load, draw, log to TensorBoard, and return the text summary (window 0: the headline
  training phase of `phases`; ema_beta None: the run's)."""
  from mtl import conflicts, draw, events, run_folder
  if not os.path.isdir(workdir):
    raise ValueError(f"--workdir={workdir} is not a directory")
  if ema_beta is None:
    ema_beta = run_ema_beta(workdir)
  # Everything that can fail on input is read and drawn in memory first: bad input leaves the
  # earlier figures and event files as they were.
  record = conflicts.load(workdir, conflicts.parse_step_range(step_range))
  phased = conflicts.phase_verdicts(record, phases)
  chosen = window or conflicts.headline_window(record, phases)
  report = conflicts.summarize(record, chosen)
  tag = affinity_text(workdir)  # before the line below: a bad file is the one line said
  print(f"drawing the conflict figures of {record.num_steps} probe steps", file=sys.stderr,
        flush=True)
  drawn = draw.figures(record, chosen, ema_beta)
  scalars = draw.probe_scalars(record, chosen, summary="conflicts/figure_window")
  paths = draw.write_figures(run_folder.conflicts_dir(workdir), drawn)
  logdir = os.path.join(workdir, run_folder.EVENTS_DIR, "analyze")
  replaced = events.remove_event_files(logdir)  # TensorBoard would merge a rerun with them
  with events.Writer(logdir) as writer:
    draw.log_figures(writer, record, drawn, scalars)
  if window:
    read = (f"the last {window} probe steps (--window={window})" if window < record.num_steps
            else f"all {record.num_steps} probe steps (--window={window} reaches past them)")
  elif len(phased["phases"]) > 1:
    read = f"the headline phase ({phased['headline']}); --window=N: the last N probe steps"
  else:
    read = "all probe steps (one phase)"
  text = conflicts.format_summary(report)
  text += f"\nthe summary above and the averaged figures read {read}"
  text += "\n\n" + conflicts.format_phases(phased)
  text += "\nfigures: " + ", ".join(os.path.relpath(p, workdir) for p in paths)
  if replaced:
    text += (f"\nreplaced {os.path.relpath(logdir, workdir)}/'s earlier event file"
             f"{'s' if replaced > 1 else ''} ({replaced}) and figures with these")
  for first, last in conflicts.step_gaps(record.steps):
    text += (f"\nWARNING: no probes at steps {first}-{last} (a store chunk removed?): the phases "
             "and figures span that gap")
  return text + tag


def affinity_text(workdir):
  """TAG affinity (config.mtl.affinity_every) and its best groupings, if the run measured it."""
  from mtl.conflicts import affinity
  stored = affinity.load(workdir)
  if stored is None:
    return ""
  steps, values, tasks = stored
  return "\n\n" + affinity.format_affinity(steps, values, tasks,
                                           groups=range(2, min(len(tasks), 4)))


FEW_BATCHES = 32  # checkpoint mode: fewer fresh batches than this get a hint to measure more


def _check_out(out, default=False):
  from mtl import conflicts, files
  files.check_not_a_file(out, "--out", "a folder for the measured store and figures")
  if out and os.path.isdir(conflicts.store_dir(out)):
    named = f"{out} (the default --out)" if default else f"--out={out}"
    raise ValueError(f"{named} already holds a conflict store; choose another --out")


def _run_dir(checkpoint):
  """The run folder --checkpoint names (a run's workdir or its checkpoints/ folder)."""
  from mtl import checkpoints
  if not os.path.isdir(checkpoint):
    raise ValueError(f"--checkpoint={checkpoint} is not a directory")
  return os.path.dirname(os.path.abspath(checkpoint.rstrip("/"))) if os.path.basename(
      checkpoint.rstrip("/")) == checkpoints.CHECKPOINT_DIR else os.path.abspath(checkpoint)


def _checkpoint_config(run_dir, config):
  """The config to measure `run_dir`'s checkpoint with: `config`, refused (one line) where its
  tasks or model differ from the run's saved config.json, or that saved config if None."""
  from mtl import run_folder
  from mtl.models import ipt
  saved = os.path.join(run_dir, run_folder.CONFIG_FILE)
  if not os.path.isfile(saved):
    if config is None:
      raise ValueError(f"--checkpoint={run_dir} holds no {run_folder.CONFIG_FILE}; pass "
                       "--config=<the run's config file>")
    return config
  run = run_folder.read_config(run_dir)
  if config is None:
    return run
  fix = f"omit --config to measure with the run's own ({saved})"
  if sorted(config.tasks) != sorted(run.tasks):
    raise ValueError(f"--config's tasks ({', '.join(config.tasks)}) differ from the checkpoint "
                     f"run's ({', '.join(run.tasks)}); {fix}")
  ours, theirs = (ipt.ModelConfig.from_config(c.model) for c in (config, run))
  if ours.shape_differences(theirs):
    diff = ", ".join(f"model.{k}={v} (the run's: {t})"
                     for k, v, t in ours.shape_differences(theirs))
    raise ValueError(f"--config's model differs from the checkpoint run's: {diff}; {fix}")
  return config


def measure(checkpoint, config, num_batches, out=None, batch_size=128, halfwidth=0.0,
            max_batches=0, step=None, knobs="analyze"):
  """Checkpoint mode: Gramians of `checkpoint`'s saved model on fresh batches, with `config`
  (_checkpoint_config's) -> a store in `out`, then `analyze(out)`."""
  import numpy as np
  from mtl import checkpoints, conflicts, run_folder
  from mtl import measure as conflicts_measure
  knob = KNOBS[knobs]
  run_dir = _run_dir(checkpoint)
  given = step is not None
  if step is None:  # the latest, resolved now: the default --out names it
    step = checkpoints.latest_saved_step(run_dir)
  default = out is None and step is not None
  _check_out(run_folder.analysis_dir(run_dir, step) if default else out, default)  # before work
  for _ in range(3):
    try:
      steps, grams, layers, tasks, ckpt_step = conflicts_measure.measure_conflicts(
          config, checkpoint, num_batches, batch_size, halfwidth=halfwidth,
          max_batches=max_batches, step=step)
      break
    except checkpoints.StepMissing as error:  # removed by the run, which trains on
      latest = checkpoints.latest_saved_step(run_dir)
      if given or latest in (None, step):
        raise
      print(f"{error}; measuring its latest step, {latest}, instead", file=sys.stderr,
            flush=True)
      step = latest
      if default:
        _check_out(run_folder.analysis_dir(run_dir, step), default)
  else:
    raise ValueError(f"the run in {run_dir} replaced its latest checkpoint three times while "
                     "it was read; give --step of one it keeps, or measure it when it stops")
  num_batches = len(steps)
  out = out or run_folder.analysis_dir(run_dir, ckpt_step)
  _check_out(out, default)  # again: another analyze may have measured it meanwhile
  conflicts.append(out, steps, grams, layers, tasks, {
      "size": batch_size, "fresh": True,
      "checkpoint": {"run": os.path.basename(run_dir), "step": ckpt_step}})
  body = grams.astype(np.float64).sum(1)  # per batch, over the body's layers
  cos = conflicts.pair_values(conflicts.cosines(conflicts.task_gramian(body)))
  import jax
  from mtl import xla_options
  threads = (f" ({xla_options.cpu_threads()} CPU thread(s))" if jax.default_backend() == "cpu"
             else "")
  lines = [f"checkpoint step {ckpt_step}: whole-body cosine over {num_batches} fresh probe batches "
           f"of {batch_size} images per task{threads}"]
  for k, pair in enumerate(conflicts.pair_names(tasks)):
    lines.append(f"  {pair:<28} mean {np.mean(cos[:, k]):+.4f}  std {np.std(cos[:, k]):.4f}")
  # One model, no training phases; its probes are batches (numbered from measure's first_step,
  # past any training step), so the text names them by the checkpoint's step instead.
  text = re.sub(rf"steps {int(steps[0])}-{int(steps[-1])} \({len(steps)}( probes)?[^)]*\)",
                f"checkpoint step {ckpt_step}, {len(steps)} fresh batches of {batch_size}/task",
                analyze(out, phases=1))
  if halfwidth > 0:
    widest, pair = conflicts_measure.widest_halfwidth(body, tasks)
    if widest <= halfwidth:
      text += (f"\nevery pair's corrected-cosine interval is within +-{halfwidth:g} after "
               f"{num_batches} batches ({knob['halfwidth']})")
    else:
      need = conflicts_measure.batches_needed(num_batches, widest, halfwidth)
      more = (f"; +-{halfwidth:g} would take about {need} batches ({knob['max_batches']})"
              if need else "")
      width = f"+-{widest:.3f}" if need else "not measurable"
      text += (f"\ntarget not reached: the widest interval, {pair}, is {width} after "
               f"{num_batches} batches{more}")
      noisy = conflicts_measure.noisy_tasks(body, tasks)
      if noisy:
        text += ("\n" + ", ".join(f"{t} (same-task agreement {a:+.3f})" for t, a in noisy)
                 + f": mostly noise at {batch_size} images per task; a larger "
                 f"{knob['batch_size']} narrows the intervals faster than more batches")
  elif conflicts.NOT_MEASURABLE in text or num_batches < FEW_BATCHES:
    widest, pair = conflicts_measure.widest_halfwidth(body, tasks)
    where = (f"the widest interval, {pair}, is +-{widest:.3f}" if np.isfinite(widest) else
             f"{pair} has no interval ({conflicts.NOT_MEASURABLE!r} or too few batches)")
    text += (f"\nafter {num_batches} fresh batches {where}; intervals narrow as 1/sqrt(batches): "
             f"measure more for a tighter noise floor, e.g. "
             f"{knob['num_batches']}={max(4 * num_batches, FEW_BATCHES)} or "
             f"{knob['halfwidth']}=0.02")
  return "\n".join(lines) + "\n" + text


# Each mode's own flags: given to the other mode, one would be silently ignored.
MODE_FLAGS = {
    "workdir": ("redraw a run's store", ("step_range", "window", "phases", "ema_beta")),
    "checkpoint": ("measure a saved model", ("config", "num_batches", "halfwidth", "max_batches",
                                             "batch_size", "out", "step", "knobs"))}


def _refuse_other_mode_flags(mode):
  """One line for a flag given that belongs to the mode other than `mode`."""
  for other, (what, names) in MODE_FLAGS.items():
    for name in names if other != mode else ():
      if flags.FLAGS[name].present:
        raise ValueError(f"--{name} belongs to --{other} mode ({what}), not --{mode}; drop it")


@cli.absl_main
def main():
  f = flags.FLAGS
  if f.checkpoint:
    if f.workdir:
      raise ValueError("pass --checkpoint (measure a saved model) or --workdir (redraw a run's "
                       "store), not both")
    _refuse_other_mode_flags("checkpoint")
    if not f.halfwidth < float("inf"):  # inf passes the flag's bound, and stops no measurement
      raise ValueError(f"--halfwidth={f.halfwidth} must be a finite number >= 0 (0.02: every "
                       "pair's interval within +-0.02; 0: --num_batches only)")
    if f.batch_size % 2:  # else the trainer's check names its own fields
      raise ValueError(f"--batch_size={f.batch_size} is odd; give an even number of images per "
                       "task (each batch is split into two halves, the noise floor)")
    if f.halfwidth > 0 and f.max_batches < f.num_batches:
      raise ValueError(f"--max_batches={f.max_batches} is below --num_batches={f.num_batches}; "
                       "it bounds all the batches measured")
    from mtl import xla_options
    config = _checkpoint_config(_run_dir(f.checkpoint), f.config)
    xla_options.set_cpu_threads(config.get("cpu_threads", 0))  # before JAX opens its backend
    print(measure(f.checkpoint, config, f.num_batches, f.out, f.batch_size, f.halfwidth,
                  f.max_batches, f.step, f.knobs), flush=True)
  elif f.workdir:
    _refuse_other_mode_flags("workdir")
    print(analyze(f.workdir, f.step_range, f.window, f.ema_beta, f.phases), flush=True)
  else:
    raise ValueError("pass --workdir=<run> (redraw its store) or --checkpoint=<run> (measure it)")


if __name__ == "__main__":
  app.run(main, argv=cli.json_config(sys.argv), flags_parser=cli.parse_flags)
