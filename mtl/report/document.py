"""A study's report: every table in tables/, figures in figures/, and report.md.

  write(workdir) -> STUDY/tables/{main,transfer,conflicts,compute,selection}.{md,csv,tex},
                    STUDY/figures/{loss-<task>,findings-delta,findings-conflict}.png and
                    STUDY/report.md, which opens with the findings (the four questions,
                    answered: mtl.report.findings) (never trains anything)
  write_with_summary(workdir) -> that, and a few lines for a terminal (launch/report.py) that
                    start with the four answers
"""
import dataclasses
import os

from mtl import events, files, run_folder, stats
from mtl import study as study_lib
from mtl.report import accounting, figures, findings, remedies, render, tables
from mtl.report.scores import (conflict_records, conflict_summaries, final_conflict_records,
                               regime_columns, regime_scores)
from mtl.study.workdir import RUN_CONFIG, RUNS_DIR

TABLES_DIR = "tables"
FIGURES_DIR = "figures"
REPORT_FILE = "report.md"


def loss_series(study, task):
  """({'<column> (lr ...)': [(steps, losses)] a line per seed (its validation-chosen run)},
  seeds, whether a line is shifted): fine-tunes continue their pre-training run, so their steps
  are drawn after the pre-training's."""
  series, seeds, shifted = {}, set(), False
  for col in regime_columns(study):
    c = regime_scores(study, col, task)
    lines, lrs = [], []
    for spec in (c.runs if c is not None else []):
      logdir = os.path.join(study.run_dir(spec.name), run_folder.EVENTS_DIR)
      steps, values = events.read_scalars(logdir, f"train/loss/{task}")
      if not len(steps):
        continue
      lines.append((steps + spec.step_offset, values))
      shifted |= spec.step_offset > 0
      lrs.append(study_lib.format_lr(spec.lr))
      seeds.add(spec.seed)
    if lines:
      series[f"{col} (lr {', '.join(dict.fromkeys(lrs))})"] = lines
  return series, seeds, shifted


def loss_figures(study, figures_dir):
  """figures/loss-<task>.png: the task's training loss in each regime (loss_series), one colour
  per regime and a line per seed."""
  from mtl import plots
  written = []
  for task in study.tasks:
    series, seeds, shifted = loss_series(study, task)
    if not series:
      continue
    os.makedirs(figures_dir, exist_ok=True)
    path = os.path.join(figures_dir, f"loss-{task}.png")
    xlabel = "step" + (" (a fine-tune's after its pre-training's steps)" if shifted else "")
    data = plots.curves_png(None, series, xlabel=xlabel, ylabel="L1 loss ([0, 255] scale)",
                            logy=True,
                            title=f"training loss of {task}: "
                            + (f"seed {min(seeds)}" if len(seeds) == 1 else
                               f"{len(seeds)} seeds, a line each (lr chosen per seed)"))
    files.write_atomic(path, lambda f: f.write(data))
    written.append(path)
  return written


# ----------------------------------------------------------------------------- report


def _finetune_data(study):
  """How the study's finished fine-tunes drew their data: after their pre-training's steps, or
  (run before data.step_offset existed) its first steps again."""
  configs = [files.read_json(study.path(r.name, RUN_CONFIG)) for r in study.runs
             if r.regime.startswith("finetune") and study.is_done(r.name)
             and os.path.exists(study.path(r.name, RUN_CONFIG))]
  if any("step_offset" not in config.get("data", {}) for config in configs):
    return ("a fine-tune's data steps repeated its pre-training's first ones: these fine-tunes "
            "ran before data.step_offset")
  return "a fine-tune's data steps continue after its pre-training's, data.step_offset"


def _method_section(study):
  run, c = study.config["run"], study.config
  ev = run["eval"]
  crops = []
  if ev.get("max_side"):
    crops.append(f"centre crops of at most {ev['max_side']} px")
  if ev.get("max_images"):
    crops.append(f"the first {ev['max_images']} images of each set")
  label = tables.metric_names(study)[2]
  lines = [
      "## How the numbers were computed",
      "",
      f"- **Metrics**: {label} and SSIM"
      + (" on the Y channel (ITU-R BT.601, Y in [16, 235])" if study.metric == "psnr_y" else
         " on RGB") + " of outputs "
      "rounded to [0, 255], as BasicSR: crop border = scale for SR tasks, 0 otherwise; SSIM with "
      "an 11x11 Gaussian window (sigma 1.5). Whole images by overlapping "
      f"{run['model']['patch_size']}x{run['model']['patch_size']} tiles (overlap "
      f"{ev['tile_overlap']} px)" + (f"; {' and '.join(crops)}" if crops else "") + ".",
      f"- **Test sets**: {', '.join(study.test_sets)}. **Validation set**: {study.validation} "
      "(never reported as a result). Degraded inputs are identical for every run (keys per "
      "task and image).",
      f"- **Learning rates** are chosen per seed on the validation set: the run with the best "
      f"mean {label} on {study.validation} over its tasks. Fine-tunes start from the joint (or "
      "group) run chosen that way for the same seed. " + tables.lr_note(study),
      f"- **Seeds**: {', '.join(map(str, c['seeds']))}, paired across regimes (same seed: same "
      "init of the shared body and of a task's head, query and tail; same crops and "
      f"degradations of a task at a data step, all keyed by task name; {_finetune_data(study)})."
      " Cells are "
      "mean ± sample std over seeds (n shown); every Δ is paired over seeds: mean, paired t "
      "95% CI, two-sided p; 'gain' / 'loss' only when the CI excludes 0.",
      f"- **{tables.budget_note(study)}**",
      "- **Regimes**: scratch = each task alone from random init; joint = all tasks every "
      "step from random init (its per-task results are the joint row); finetune = each task "
      "from the chosen joint run; pair:a+b = two tasks jointly; group:g / finetune:g = a "
      "user group jointly, and fine-tuned from it.",
  ]
  return "\n".join(lines) + "\n"


def _figures_section(study, loss_paths, summaries):
  lines = ["## Figures", ""]
  for col, seed, name, _ in summaries:
    conflicts_dir = os.path.join(RUNS_DIR, name, run_folder.CONFLICTS_DIR)
    lines.append(f"### Conflicts in {col}, seed {seed} (`{name}`)")
    lines.append("")
    for fig, title in (("cos_matrix.png", "task x task cosine"),
                       ("cos_curves.png", "cosine over training"),
                       ("cos_layers_pairs.png", "layer x pair cosine")):
      if os.path.exists(os.path.join(study.workdir, conflicts_dir, fig)):
        lines.append(f"![{title}]({conflicts_dir}/{fig})")
    lines.append("")
  for path in loss_paths:
    rel = os.path.relpath(path, study.workdir)
    task = os.path.splitext(os.path.basename(path))[0][len("loss-"):]
    lines += [f"![training loss of {task}]({rel})", ""]
  return "\n".join(lines) + "\n"


def _status_section(study, warnings=()):
  done = [r for r in study.runs if study.is_done(r.name)]
  lines = [f"Runs done: {len(done)}/{len(study.runs)}."] + [f"\n**{w}**" for w in warnings]
  missing = [r for r in study.runs if not study.is_done(r.name)]
  if missing:
    lines.append("Missing (their cells are left out or have fewer seeds): " + ", ".join(
        f"{r.name} ({study.status(r.name)})" for r in missing) + ".")
  diverged = [r.name for r in done if study.diverged(r.name)]
  if diverged:
    lines.append("Diverged (a non-finite loss or output; done, never chosen by their sweep: the "
                 "selection table): " + ", ".join(diverged) + ".")
  return "\n".join(lines) + "\n"


def write(workdir):
  """Write tables/, figures/ and report.md for the study in workdir; returns report.md's path."""
  return write_with_summary(workdir)[0]


def write_with_summary(workdir):
  """`write`, and a short summary for a terminal: (report.md's path, text)."""
  study = study_lib.Study.load(workdir)
  tables_dir = os.path.join(study.workdir, TABLES_DIR)
  os.makedirs(tables_dir, exist_ok=True)
  records = conflict_records(study)
  summaries = conflict_summaries(study, records)
  built = [tables.main_table(study), tables.transfer_table(study),
           tables.conflict_table(study, summaries), accounting.compute_table(study),
           accounting.selection_table(study)]
  built += remedies.tables(study)  # acting on conflicts: only when the study has those runs
  final = final_conflict_records(study)
  if final:  # question 1's end-of-training figures, checkable in a table of their own
    built.append(tables.end_conflict_table(final))
  written = [p for table in built for p in render.write_table(table, tables_dir)]
  figures_dir = os.path.join(study.workdir, FIGURES_DIR)
  loss_paths = loss_figures(study, figures_dir)
  found = findings.build(study, built[1], records, final)
  drawn = figures.write(found, figures_dir, tables.metric_names(study)[2])
  stale = _remove_stale(tables_dir, figures_dir, written + loss_paths + [p for p, _ in drawn])
  warnings = list(built[0].warnings)
  lost = [r.name for r in study.runs
          if study.is_done(r.name) and not study.diverged(r.name) and study.results(r.name) is None]
  if lost:  # counted done above, scored nowhere
    warnings.append(
        f"{len(lost)} run(s) marked done have no {run_folder.RESULTS_FILE} "
        f"({files.field_list(lost, 3)}): their scores are left out; delete such a run's DONE and "
        "run the same launch/study.py command: it evaluates the run again from its last "
        "checkpoint.")
  pending = study.final_conflicts_pending()
  if pending:
    warnings.append(
        f"The end-of-training conflicts (final_conflicts) of {len(pending)} checkpoint(s) are not "
        "measured yet (" + ", ".join(f"{name} step {step}" for name, step, _ in pending[:4])
        + (" ..." if len(pending) > 4 else "") + "): question 1 reads the rest, or the "
        "training phases where a run has none; the same launch/study.py command measures them.")
  done = sum(study.is_done(r.name) for r in study.runs)
  status = (f"From the {done}/{len(study.runs)} runs done"
            + ("; the warnings below qualify these answers." if warnings else "."))
  parts = [f"# Study {study.name}\n",
           findings.markdown(found, [(os.path.relpath(p, study.workdir), t) for p, t in drawn],
                             status),
           _status_section(study, warnings)]
  for table in built:  # the warnings head the report once, not again under their table
    shown = dataclasses.replace(table, notes=[n for n in table.notes if n not in warnings])
    parts.append(f"## {table.title}\n\n(tables/{table.name}.md, .csv, .tex)\n\n"
                 + render.to_markdown(shown))
  parts += [_method_section(study), _figures_section(study, loss_paths, summaries)]
  path = os.path.join(study.workdir, REPORT_FILE)
  text = "\n".join(parts).encode()
  files.write_atomic(path, lambda f: f.write(text))
  summary = terminal_summary(study, built, path, warnings, found)
  if stale:
    summary += (f"\nremoved {len(stale)} file(s) an earlier report wrote that this one does not: "
                + ", ".join(os.path.relpath(p, study.workdir) for p in stale))
  return path, summary


def _remove_stale(tables_dir, figures_dir, written):
  """Remove the tables (.md .csv .tex) and figures (.png) an earlier report wrote that this one
  did not (e.g. end_conflicts after a final_conflicts change), so that no file in tables/ and
  figures/ contradicts report.md; returns their paths."""
  kept, made = set(written), ((tables_dir, (".md", ".csv", ".tex")), (figures_dir, (".png",)))
  stale = [os.path.join(folder, name) for folder, extensions in made
           if os.path.isdir(folder) for name in sorted(os.listdir(folder))
           if name.endswith(extensions) and os.path.join(folder, name) not in kept]
  for path in stale:
    os.remove(path)
  return stale


def terminal_summary(study, built, path, warnings, found=None):
  """A few lines: the four answers (`found`: findings.Findings), runs done, the warnings
  (once), per task the primary test set's PSNR of each regime with its verdict vs scratch, per
  task pair the conflict verdict (without `found`: its first answer has it), and the files."""
  main, conflict = built[0], built[2]
  done = sum(study.is_done(r.name) for r in study.runs)
  lines = findings.terminal_lines(found) if found is not None else []
  lines += [f"study {study.name}: {done}/{len(study.runs)} runs done"] + list(warnings)
  label = tables.metric_names(study)[2]
  first = {}
  for r in main.records:
    if r["regime"] != tables.INPUT_ROW and r.get("n_seeds"):
      first.setdefault(r["task"], r["test_set"])
  for task, test_set in first.items():
    cells = [f"{r['regime']} {r['psnr_mean']:.2f}"
             + (f" ({r['verdict_psnr']} vs scratch)" if r.get("verdict_psnr") else "")
             for r in main.records if r["task"] == task and r["test_set"] == test_set
             and r["regime"] != tables.INPUT_ROW and r.get("n_seeds")]
    lines.append(f"  {task} on {test_set}, {label}: " + ", ".join(cells))
  held = [a for q in (2, 3) for a in (found.answers[q] if found is not None else ())
          if a.verdict.startswith(findings.NOT_HELD)]
  if held:  # the verdicts above are per comparison; the findings' hold over their question
    lines.append("  (each verdict here is on its own 95% interval; held over its question's Δs "
                 "(Holm), " + ", ".join(f"{a.subject} {findings.finetune_words(a.source)}"
                                        if a.question == 2 else
                                        f"{a.subject} from related − from unrelated"
                                        for a in held)
                 + f" {'is' if len(held) == 1 else 'are'} {findings.NOT_ENOUGH}, as the "
                 "findings above say)")
  if found is None:  # the findings' first answer says this per phase
    for r in conflict.records:
      iv = stats.Interval(r["corrected_cos"], r["corrected_cos_low"], r["corrected_cos_high"],
                          0.95, r["n_seeds"])
      lines.append(f"  conflict {r['pair']} ({r['source']}): corrected cos "
                   f"{iv.text(3, missing='n/a')}, {r['verdict']}")
  names = ", ".join(t.name for t in built)
  lines.append(f"wrote {path}, {os.path.join(study.workdir, TABLES_DIR)}/ ({names}: .md .csv "
               f".tex) and {os.path.join(study.workdir, FIGURES_DIR)}/")
  return "\n".join(lines)
