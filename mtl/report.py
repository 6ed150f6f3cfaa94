"""The tables and report of a study, from the runs that are DONE (never trains anything).

  write(workdir) -> STUDY/tables/{main,transfer,conflicts,compute,selection}.{md,csv,tex},
                    STUDY/figures/loss-<task>.png and STUDY/report.md

How each number is computed (report.md repeats it):
  cell        for each seed, the run its sweep chose on validation (see mtl.study); the test
              score of that run; mean +- sample std (ddof 1) over the seeds that are done.
  delta       regime mean - scratch mean of the same task and test set.
  transfer    'negative transfer' where a regime is below scratch by more than the seed spread
              (the larger of the two standard deviations over seeds); needs >= 2 seeds each.
  conflicts   per task pair, the mean over probe steps of the whole-body cosine between the two
              task gradients, and the share of probe steps where it is < 0 (conflict fraction),
              in the chosen joint (or group) run of each seed; mean (+- std) over seeds.
  pairwise    transfer of a pair a~b: the mean over a and b of (PSNR of the chosen pair run -
  transfer    scratch PSNR), each on the task's primary test set (the first of study.test it is
              scored on), means over seeds; Spearman's rank correlation with the mean cosine.
  compute     compute.json of the runs: steps, images seen (batch x tasks per step x steps),
              XLA-counted training FLOPs (one step's cost analysis x steps), wall seconds.
"""
import csv
import dataclasses
import math
import os

import numpy as np

from mtl import study as study_lib

TABLES_DIR = "tables"
FIGURES_DIR = "figures"
REPORT_FILE = "report.md"
METRICS = ("psnr_y", "ssim_y")
INPUT_ROW = "input"  # main-table row of the degraded input's own scores
MAIN_COLUMNS = ("task", "regime", "test_set", "n_seeds", "psnr_y_mean", "psnr_y_std",
                "ssim_y_mean", "ssim_y_std", "delta_psnr_y", "delta_ssim_y", "best_psnr_y",
                "lrs", "runs", "complete_sweeps")


class Bold(str):
  """A table cell shown in bold."""


@dataclasses.dataclass
class Cells:
  """'PSNR / SSIM' in one table cell, either part possibly in bold."""
  psnr: str
  psnr_bold: bool
  ssim: str
  ssim_bold: bool

  def render(self, bold, plain=str):
    part = lambda text, is_bold: bold(text) if is_bold else plain(text)
    return f"{part(self.psnr, self.psnr_bold)} / {part(self.ssim, self.ssim_bold)}"


@dataclasses.dataclass
class Table:
  name: str
  title: str
  header: list
  rows: list             # display cells (str, Bold or Cells)
  records: list          # CSV rows (dicts of raw values)
  notes: list = dataclasses.field(default_factory=list)
  csv_columns: list = None   # None: the records' keys in order of appearance
  spearman: tuple = None     # conflicts: (rho, p, number of pairs), when defined


# ----------------------------------------------------------------------------- numbers


@dataclasses.dataclass
class Cell:
  """One (regime column, task) over seeds: per-seed chosen runs and their test results."""
  task: str
  runs: list             # chosen RunSpec per seed (seeds that have a done run)
  results: list          # their results.json
  complete: list         # whether each seed's sweep was complete

  def values(self, test_set, metric):
    return [r["tasks"][self.task][test_set][metric] for r in self.results
            if test_set in r["tasks"].get(self.task, {})]

  def stats(self, test_set, metric):
    """(mean, std, n) over seeds; std is NaN for one seed; None if no value."""
    values = self.values(test_set, metric)
    if not values:
      return None
    std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
    return float(np.mean(values)), std, len(values)


def _columns(study):
  """Regime columns of the main and transfer tables, in order (pairs have their own table)."""
  seen = []
  for spec in study.runs:
    if spec.regime != "pairs" and spec.column not in seen:
      seen.append(spec.column)
  return seen


def cell(study, column, task):
  """The Cell of `task` in `column`, or None when that column has no run for the task."""
  sweeps = {}
  for spec in study.runs:
    if spec.column == column and task in spec.tasks:
      sweeps.setdefault(spec.seed, spec.sweep)
  if not sweeps:
    return None
  runs, results, complete = [], [], []
  for seed in sorted(sweeps):
    chosen = study.select(sweeps[seed])
    if chosen is not None:
      runs.append(chosen.run)
      results.append(study.results(chosen.run.name))
      complete.append(chosen.complete)
  return Cell(task, runs, results, complete)


def primary_test_set(study, task, c):
  """The first of study.test that `task` is scored on in cell `c` (None if none)."""
  for name in study.test_sets:
    if c is not None and c.values(name, "psnr_y"):
      return name
  return None


def _fmt(value, digits):
  return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _signed(value, digits):
  return "–" if value is None or not math.isfinite(value) else f"{value:+.{digits}f}"


def _pm(stats, digits):
  mean, std, n = stats
  return _fmt(mean, digits) + (f" ± {std:.{digits}f}" if n > 1 else "")


def _lrs(c):
  return ",".join(study_lib.format_lr(r.lr) for r in c.runs)


# ----------------------------------------------------------------------------- tables


def main_table(study):
  """Tasks x regimes: Y-PSNR / SSIM per test set, delta to scratch, best per task in bold."""
  columns, test_sets = _columns(study), study.test_sets
  ref = study.config["reference"]
  header = ["task", "regime", "n"] + [h for s in test_sets for h in (f"{s} PSNR / SSIM",
                                                                      f"{s} Δ vs scratch")]
  rows, records = [], []
  for task in study.tasks:
    cells = {col: cell(study, col, task) for col in columns}
    cells = {col: c for col, c in cells.items() if c is not None}
    stats = {(col, s, m): c.stats(s, m) for col, c in cells.items() for s in test_sets
             for m in METRICS}
    best = {}
    for s in test_sets:
      for m in METRICS:
        scored = [(stats[col, s, m][0], col) for col in cells if stats[col, s, m]]
        if scored:
          best[s, m] = max(scored)[1]
    for col, c in cells.items():
      row = [task, col, str(len(c.runs))]
      for s in test_sets:
        psnr, ssim = stats[col, s, "psnr_y"], stats[col, s, "ssim_y"]
        base = {m: stats.get(("scratch", s, m)) for m in METRICS}
        delta = {m: (stats[col, s, m][0] - base[m][0]
                     if stats[col, s, m] and base[m] and col != "scratch" else None)
                 for m in METRICS}
        if psnr is None:
          row += ["–", "–"]
          continue
        row += [Cells(_pm(psnr, 2), best.get((s, "psnr_y")) == col,
                      _pm(ssim, 4), best.get((s, "ssim_y")) == col),
                "" if col == "scratch" else
                f"{_signed(delta['psnr_y'], 2)} / {_signed(delta['ssim_y'], 4)}"]
        records.append({
            "task": task, "regime": col, "test_set": s, "n_seeds": psnr[2],
            "psnr_y_mean": psnr[0], "psnr_y_std": psnr[1], "ssim_y_mean": ssim[0],
            "ssim_y_std": ssim[1], "delta_psnr_y": delta["psnr_y"],
            "delta_ssim_y": delta["ssim_y"], "best_psnr_y": best.get((s, "psnr_y")) == col,
            "lrs": _lrs(c), "runs": " ".join(r.name for r in c.runs),
            "complete_sweeps": all(c.complete)})
      rows.append(row)
    inputs = _input_scores(cells.values(), task, test_sets)
    if inputs:  # the degraded input itself (SR: bicubic): what a restoration has to beat
      row = [task, INPUT_ROW, "–"]
      for s in test_sets:
        if s not in inputs:
          row += ["–", ""]
          continue
        p, q = inputs[s]
        base, sbase = stats.get(("scratch", s, "psnr_y")), stats.get(("scratch", s, "ssim_y"))
        row += [f"{p:.2f} / {q:.4f}",
                f"{_signed(p - base[0], 2)} / {_signed(q - sbase[0], 4)}" if base else ""]
        records.append({"task": task, "regime": INPUT_ROW, "test_set": s, "n_seeds": 0,
                        "psnr_y_mean": p, "ssim_y_mean": q, "best_psnr_y": False,
                        "delta_psnr_y": p - base[0] if base else None,
                        "delta_ssim_y": q - sbase[0] if base else None,
                        "complete_sweeps": True})
      rows.append(row)
    ref_psnr = ref["psnr_y"].get(task, {})
    if ref["label"] and ref_psnr:
      row = [task, ref["label"], "–"]
      for s in test_sets:
        p, q = ref_psnr.get(s), ref["ssim_y"].get(task, {}).get(s)
        if p is None:
          row += ["–", ""]
          continue
        base = stats.get(("scratch", s, "psnr_y"))
        row += [f"{p:.2f} / {_fmt(q, 4)}",
                f"{_signed(p - base[0], 2)} / –" if base else ""]
        records.append({"task": task, "regime": ref["label"], "test_set": s, "n_seeds": 0,
                        "psnr_y_mean": p, "psnr_y_std": None, "ssim_y_mean": q,
                        "ssim_y_std": None, "delta_psnr_y": p - base[0] if base else None,
                        "delta_ssim_y": None, "best_psnr_y": False, "lrs": "", "runs": "",
                        "complete_sweeps": True})
      rows.append(row)
  notes = ["Y-PSNR (dB) / SSIM on the test sets, mean ± std over seeds (n = seeds done); "
           "each seed's run chosen on the validation set. Best per task and test set in bold "
           "(trained regimes only). Δ = regime − scratch. 'input': the degraded input itself "
           "(SR: its bicubic upsampling), the baseline to beat."]
  if any(not r["complete_sweeps"] for r in records):
    notes.append("Some sweeps are incomplete (not every lr done); their choice may change.")
  if ref["label"] and ref["note"]:
    notes.append(f"{ref['label']}: {ref['note']}")
  return Table("main", "Main table", header, rows, records, notes, list(MAIN_COLUMNS))


def _input_scores(cells, task, test_sets):
  """{test set: (input Y-PSNR, input SSIM)} of the degraded inputs (the same in every run)."""
  out = {}
  for c in cells:
    for results in c.results:
      for s in test_sets:
        e = results["tasks"].get(task, {}).get(s)
        if e is not None and s not in out:
          out[s] = (e["input_psnr_y"], e["input_ssim_y"])
  return out


def transfer_table(study):
  """Per task and test set: each regime's gain or loss vs scratch, against the seed spread."""
  header = ["task", "test set", "regime", "scratch PSNR", "regime PSNR", "Δ PSNR", "spread",
            "verdict"]
  rows, records = [], []
  for task in study.tasks:
    base = cell(study, "scratch", task)
    if base is None:
      continue
    for col in _columns(study):
      if col == "scratch":
        continue
      c = cell(study, col, task)
      if c is None:
        continue
      for s in study.test_sets:
        a, b = base.stats(s, "psnr_y"), c.stats(s, "psnr_y")
        if a is None or b is None:
          continue
        delta = b[0] - a[0]
        spread = max(a[1], b[1]) if min(a[2], b[2]) > 1 else float("nan")
        verdict = _verdict(delta, spread)
        rows.append([task, s, col, _pm(a, 2), _pm(b, 2), _signed(delta, 2), _fmt(spread, 2),
                     Bold(verdict) if verdict == "negative transfer" else verdict])
        records.append({"task": task, "test_set": s, "regime": col, "scratch_psnr_y": a[0],
                        "scratch_std": a[1], "regime_psnr_y": b[0], "regime_std": b[1],
                        "delta_psnr_y": delta, "spread": spread, "verdict": verdict,
                        "n_seeds": min(a[2], b[2])})
  notes = ["Δ = regime − scratch (Y-PSNR, dB, means over seeds). spread = the larger of the two "
           "standard deviations over seeds. 'negative transfer': Δ < −spread; 'positive "
           "transfer': Δ > spread; else 'within seed spread'. With one seed there is no spread."]
  return Table("transfer", "Transfer vs scratch", header, rows, records, notes)


def _verdict(delta, spread):
  if not math.isfinite(spread):
    return "loss (1 seed: no spread)" if delta < 0 else "gain (1 seed: no spread)"
  if delta < -spread:
    return "negative transfer"
  if delta > spread:
    return "positive transfer"
  return "within seed spread"


def pairwise_transfer(study):
  """{'a~b': dB} for every pair run of the study with results (see the module docstring)."""
  out = {}
  pair_columns = [c for c in dict.fromkeys(r.column for r in study.runs if r.regime == "pairs")]
  for col in pair_columns:
    a, b = col[len("pair:"):].split("+")
    gains = []
    for task in (a, b):
      base, c = cell(study, "scratch", task), cell(study, col, task)
      s = primary_test_set(study, task, base)
      if s is None or c is None or not c.values(s, "psnr_y"):
        continue
      gains.append(c.stats(s, "psnr_y")[0] - base.stats(s, "psnr_y")[0])
    if gains:
      out[f"{a}~{b}"] = float(np.mean(gains))
  return out


def conflict_summaries(study):
  """[(column, seed, run name, conflicts.summarize dict)] of the chosen multi-task
  pre-training runs (joint and groups) that recorded conflicts."""
  from mtl import conflicts
  out = []
  for col in _columns(study):
    if col != "joint" and not col.startswith("group:"):
      continue
    sweeps = dict.fromkeys((r.seed, r.sweep) for r in study.runs if r.column == col)
    for seed, sweep in sweeps:
      chosen = study.select(sweep)
      if chosen is None:
        continue
      workdir = study.run_dir(chosen.run.name)
      if not os.path.isdir(conflicts.store_dir(workdir)):
        continue
      out.append((col, seed, chosen.run.name, conflicts.summarize(conflicts.load(workdir))))
  return out


def conflict_table(study, summaries=None, transfer=None):
  """Per task pair of the joint (and groups): mean cosine, conflict fraction, pairwise
  transfer, and Spearman's rank correlation between cosine and transfer.

  summaries: conflict_summaries(study); transfer: pairwise_transfer(study) (computed if None).
  """
  from scipy import stats as scipy_stats
  summaries = conflict_summaries(study) if summaries is None else summaries
  transfer = pairwise_transfer(study) if transfer is None else transfer
  header = ["source", "pair", "n", "mean cos", "conflict fraction", "pairwise transfer (dB)"]
  rows, records = [], []
  by_source = {}
  for col, seed, name, s in summaries:
    for pair, e in s["pair"].items():
      by_source.setdefault((col, pair), []).append(e)
  joint_points = []
  for (col, pair), entries in by_source.items():
    cos = [e["mean_cos"] for e in entries]
    frac = [e["conflict_fraction"] for e in entries]
    mean_cos = float(np.mean(cos))
    std_cos = float(np.std(cos, ddof=1)) if len(cos) > 1 else float("nan")
    t = transfer.get(pair)
    cos_text = _signed(mean_cos, 3) + (f" ± {std_cos:.3f}" if len(cos) > 1 else "")
    rows.append([col, pair, str(len(entries)), cos_text,
                 f"{100 * np.mean(frac):.1f}%", _signed(t, 2)])
    records.append({"source": col, "pair": pair, "n_seeds": len(entries), "mean_cos": mean_cos,
                    "mean_cos_std": std_cos, "conflict_fraction": float(np.mean(frac)),
                    "pairwise_transfer_db": t})
    if col == "joint" and t is not None:
      joint_points.append((mean_cos, t))
  notes = ["mean cos: whole-body cosine between the two tasks' gradients, averaged over the "
           "probe steps of the chosen run of each seed, then over seeds (± std over seeds). "
           "conflict fraction: share of probe steps with cos < 0.",
           "pairwise transfer of a~b: mean over a and b of (PSNR of the two trained jointly as "
           "a pair − scratch PSNR), on each task's primary test set, means over seeds."]
  if not transfer:
    notes.append("Pairwise transfer: not measured (add 'pairs' to the study's regimes).")
  spearman = None
  if len(joint_points) >= 3:
    x, y = zip(*joint_points)
    if len(set(x)) > 1 and len(set(y)) > 1:
      result = scipy_stats.spearmanr(x, y)
      spearman = (float(result.statistic), float(result.pvalue), len(joint_points))
      notes.append(f"Spearman rank correlation (joint mean cos vs pairwise transfer): "
                   f"rho = {spearman[0]:+.3f}, p = {spearman[1]:.3g}, n = {spearman[2]} pairs.")
    else:
      notes.append("Spearman rank correlation: undefined (constant values).")
  elif transfer:
    notes.append(f"Spearman rank correlation: needs >= 3 pairs with both numbers, have "
                 f"{len(joint_points)}.")
  return Table("conflicts", "Gradient conflict during multi-task training", header, rows, records,
               notes, spearman=spearman)


def compute_table(study):
  """Per regime: runs done, steps, images seen, training FLOPs and wall time."""
  header = ["regime", "runs done", "steps / run", "images / run", "FLOPs / run", "total FLOPs",
            "train wall / run", "train wall", "run wall"]
  rows, records = [], []
  per_regime = {}
  for regime in study_lib.REGIMES:
    specs = [r for r in study.runs if r.regime == regime]
    if not specs:
      continue
    done = [(r, study.compute(r.name)) for r in specs]
    done = [(r, c) for r, c in done if c is not None]
    entry = {"regime": regime, "runs": len(specs), "runs_done": len(done),
             "steps_per_run": sorted({r.steps for r in specs})}
    if done:
      for key in ("images_seen", "train_flops", "wall_seconds"):
        entry[f"{key}_per_run"] = float(np.mean([c[key] for _, c in done]))
        entry[f"{key}_total"] = float(np.sum([c[key] for _, c in done]))
      run_seconds = [study.done_info(r.name).get("seconds", float("nan")) for r, _ in done]
      entry["run_seconds_total"] = float(np.sum(run_seconds))
    per_regime[regime] = entry
  if "joint" in per_regime and "finetune" in per_regime and "images_seen_per_run" in \
      per_regime["joint"] and "images_seen_per_run" in per_regime["finetune"]:
    j, f = per_regime["joint"], per_regime["finetune"]
    per_regime["joint + finetune"] = {
        "regime": "joint + finetune (one task's model)", "runs": None, "runs_done": None,
        "steps_per_run": [a + b for a in j["steps_per_run"] for b in f["steps_per_run"]],
        **{f"{k}_per_run": j[f"{k}_per_run"] + f[f"{k}_per_run"]
           for k in ("images_seen", "train_flops", "wall_seconds")}}
  for entry in per_regime.values():
    has = "images_seen_per_run" in entry
    rows.append([
        entry["regime"],
        "" if entry["runs"] is None else f"{entry['runs_done']}/{entry['runs']}",
        ", ".join(map(str, entry["steps_per_run"])),
        _count(entry.get("images_seen_per_run")) if has else "–",
        _flops(entry.get("train_flops_per_run")) if has else "–",
        _flops(entry.get("train_flops_total")) if "train_flops_total" in entry else "",
        study_lib.format_duration(entry["wall_seconds_per_run"]) if has else "–",
        study_lib.format_duration(entry["wall_seconds_total"])
        if "wall_seconds_total" in entry else "",
        study_lib.format_duration(entry["run_seconds_total"])
        if "run_seconds_total" in entry else ""])
    records.append(dict(entry, steps_per_run=" ".join(map(str, entry["steps_per_run"]))))
  budget = ("equal compute: scratch runs as many steps as pre-training + fine-tuning together"
            if study.config["equal_compute"] else "budgets as set per regime (equal_compute off)")
  notes = [f"Steps per run are the study's budgets ({budget}). Images = batch x tasks per step "
           "x steps. FLOPs: XLA's cost analysis of one training step x steps (joint runs count "
           "their probe step). Train wall: the training loops' time (mean per run, sum); run "
           "wall: the whole runs' time with start-up, compilation and evaluation (sum)."]
  return Table("compute", "Compute", header, rows, records, notes)


def selection_table(study):
  """Every sweep per seed: the validation score of each lr and the one chosen."""
  header = ["sweep", "candidates (lr: validation PSNR)", "chosen", "complete"]
  rows, records = [], []
  for sweep, specs in study.sweeps.items():
    chosen = study.select(sweep)
    if chosen is None:
      continue
    text = ", ".join(f"{study_lib.format_lr(r.lr)}: {_fmt(score, 2)}"
                     for r, score in chosen.candidates)
    rows.append([sweep, text, chosen.run.name, "yes" if chosen.complete else "no"])
    for r, score in chosen.candidates:
      records.append({"sweep": sweep, "run": r.name, "lr": r.lr, "validation_psnr_y": score,
                      "chosen": r.name == chosen.run.name})
  notes = [f"Validation score: mean Y-PSNR on {study.validation} over the run's tasks; the best "
           "lr per seed is chosen (ties: the first listed)."]
  return Table("selection", "Learning rates chosen on validation", header, rows, records, notes)


def _count(value):
  return "–" if value is None else f"{value:,.0f}"


def _flops(value):
  if value is None or not math.isfinite(value):
    return "–"
  for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9)):
    if value >= scale:
      return f"{value / scale:.3g} {unit}"
  return f"{value:.3g}"


# ----------------------------------------------------------------------------- writers


def to_markdown(table):
  bold = lambda x: f"**{x}**"

  def text(x):
    if isinstance(x, Cells):
      return x.render(bold)
    return bold(x) if isinstance(x, Bold) else str(x)
  lines = ["| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
  lines += ["| " + " | ".join(text(x) for x in row) + " |" for row in table.rows]
  return "\n".join(lines) + "\n" + "".join(f"\n{n}\n" for n in table.notes)


def _tex_escape(text):
  text = str(text)
  for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"),
               ("#", r"\#"), ("~", r"$\sim$")):
    text = text.replace(a, b)
  return (text.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("–", "--")
          .replace("−", "$-$"))


def to_latex(table):
  bold = lambda x: rf"\textbf{{{_tex_escape(x)}}}"

  def text(x):
    if isinstance(x, Cells):
      return x.render(bold, _tex_escape)
    return bold(x) if isinstance(x, Bold) else _tex_escape(x)
  lines = [rf"% {table.title}; generated by launch/report.py",
           r"\begin{tabular}{" + "l" * len(table.header) + "}", r"\toprule",
           " & ".join(_tex_escape(h) for h in table.header) + r" \\", r"\midrule"]
  lines += [" & ".join(text(x) for x in row) + r" \\" for row in table.rows]
  lines += [r"\bottomrule", r"\end{tabular}"]
  return "\n".join(lines) + "\n"


def to_csv(table, path):
  fields = table.csv_columns
  if fields is None:
    fields = list(dict.fromkeys(k for r in table.records for k in r)) or ["empty"]
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    for record in table.records:
      writer.writerow({k: ("" if v is None else v) for k, v in record.items()})


def write_table(table, tables_dir):
  base = os.path.join(tables_dir, table.name)
  with open(base + ".md", "w") as f:
    f.write(f"## {table.title}\n\n" + to_markdown(table))
  with open(base + ".tex", "w") as f:
    f.write(to_latex(table))
  to_csv(table, base + ".csv")
  return [base + ext for ext in (".md", ".csv", ".tex")]


# ----------------------------------------------------------------------------- figures


def read_scalars(events_dir, tag):
  """(steps, values) of a scalar in a run's TensorBoard events (last value per step)."""
  from tensorboard.backend.event_processing import event_accumulator
  if not os.path.isdir(events_dir):
    return np.zeros(0, np.int64), np.zeros(0)
  acc = event_accumulator.EventAccumulator(events_dir,
                                           size_guidance={event_accumulator.SCALARS: 0})
  acc.Reload()
  if tag not in acc.Tags().get("scalars", []):
    return np.zeros(0, np.int64), np.zeros(0)
  by_step = {e.step: e.value for e in acc.Scalars(tag)}  # a resumed run re-logs some steps
  steps = np.array(sorted(by_step), np.int64)
  return steps, np.array([by_step[s] for s in steps], np.float64)


def loss_figures(study, figures_dir):
  """figures/loss-<task>.png: the task's training loss in each regime (first seed with runs);
  fine-tunes are drawn after their pre-training run's steps."""
  from mtl import plots
  written = []
  for task in study.tasks:
    series, seed = {}, None
    for col in _columns(study):
      c = cell(study, col, task)
      if c is None or not c.runs:
        continue
      if seed is None:
        seed = c.runs[0].seed
      spec = next((r for r in c.runs if r.seed == seed), None)
      if spec is None:
        continue
      steps, values = read_scalars(os.path.join(study.run_dir(spec.name), "events"),
                                   f"train/loss/{task}")
      if not len(steps):
        continue
      # A fine-tune continues its pre-training run: draw it after the pre-training steps.
      offset = study.sweeps[spec.source][0].steps if spec.regime == "finetune" else 0
      series[f"{col} (lr {study_lib.format_lr(spec.lr)})"] = (steps + offset, values)
    if not series:
      continue
    os.makedirs(figures_dir, exist_ok=True)
    path = os.path.join(figures_dir, f"loss-{task}.png")
    with open(path, "wb") as f:
      f.write(plots.curves_png(None, series, title=f"training loss of {task} (L1), seed {seed}",
                               ylabel="loss", logy=True))
    written.append(path)
  return written


# ----------------------------------------------------------------------------- report


def _method_section(study):
  run, c = study.config["run"], study.config
  ev = run["eval"]
  crops = []
  if ev.get("max_side"):
    crops.append(f"centre crops of at most {ev['max_side']} px")
  if ev.get("max_images"):
    crops.append(f"the first {ev['max_images']} images of each set")
  steps = {r: study_lib.regime_steps(c, r) for r in c["regimes"]}
  lrs = {r: ", ".join(study_lib.format_lr(x) for x in study_lib.regime_lrs(c, r))
         for r in c["regimes"]}
  lines = [
      "## How the numbers were computed",
      "",
      "- **Metrics**: PSNR and SSIM on the Y channel (ITU-R BT.601, Y in [16, 235]) of outputs "
      "rounded to [0, 255], as BasicSR: crop border = scale for SR tasks, 0 otherwise; SSIM with "
      "an 11x11 Gaussian window (sigma 1.5). Whole images by overlapping "
      f"{run['model']['patch_size']}x{run['model']['patch_size']} tiles (overlap "
      f"{ev['tile_overlap']} px)" + (f"; {' and '.join(crops)}" if crops else "") + ".",
      f"- **Test sets**: {', '.join(study.test_sets)}. **Validation set**: {study.validation} "
      "(never reported as a result). Degraded inputs are identical for every run (keys per "
      "task and image).",
      f"- **Learning rates** ({'; '.join(f'{r}: {v}' for r, v in lrs.items())}) are chosen per "
      f"seed on the validation set: the run with the best mean Y-PSNR on {study.validation} "
      "over its tasks. Fine-tunes start from the joint (or group) run chosen that way for the "
      "same seed.",
      f"- **Seeds**: {', '.join(map(str, c['seeds']))}; cells are mean ± sample std over "
      "seeds (n shown).",
      f"- **Budgets** (steps per run): {'; '.join(f'{r}: {s}' for r, s in steps.items())}"
      + (" — equal compute: scratch = pre-training + fine-tuning steps."
         if c["equal_compute"] else "."),
      f"- **Regimes**: scratch = each task alone from random init; joint = all tasks every "
      "step from random init (its per-task results are the joint row); finetune = each task "
      "from the chosen joint run; pair:a+b = two tasks jointly; group:g / finetune:g = a "
      "user group jointly, and fine-tuned from it.",
  ]
  return "\n".join(lines) + "\n"


def _figures_section(study, loss_paths, summaries):
  lines = ["## Figures", ""]
  for col, seed, name, _ in summaries:
    conflicts_dir = os.path.join(study_lib.RUNS_DIR, name, "conflicts")
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


def _status_section(study):
  done = [r for r in study.runs if study.is_done(r.name)]
  lines = [f"Runs done: {len(done)}/{len(study.runs)}."]
  missing = [r for r in study.runs if not study.is_done(r.name)]
  if missing:
    lines.append("Missing (their cells are left out or have fewer seeds): " + ", ".join(
        f"{r.name} ({study.status(r.name)})" for r in missing) + ".")
  return "\n".join(lines) + "\n"


def write(workdir):
  """Write tables/, figures/ and report.md for the study in workdir; returns report.md's path."""
  study = study_lib.Study.load(workdir)
  tables_dir = os.path.join(study.workdir, TABLES_DIR)
  os.makedirs(tables_dir, exist_ok=True)
  summaries = conflict_summaries(study)
  tables = [main_table(study), transfer_table(study), conflict_table(study, summaries),
            compute_table(study), selection_table(study)]
  for table in tables:
    write_table(table, tables_dir)
  loss_paths = loss_figures(study, os.path.join(study.workdir, FIGURES_DIR))
  parts = [f"# Study {study.name}\n", _status_section(study)]
  for table in tables:
    parts.append(f"## {table.title}\n\n(tables/{table.name}.md, .csv, .tex)\n\n"
                 + to_markdown(table))
  parts += [_method_section(study), _figures_section(study, loss_paths, summaries)]
  path = os.path.join(study.workdir, REPORT_FILE)
  with open(path, "w") as f:
    f.write("\n".join(parts))
  return path
