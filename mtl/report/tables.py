"""The tables of a study: main, transfer, conflicts, compute, selection (display rows + CSV records).

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
import dataclasses
import math

import numpy as np

from mtl import io
from mtl import study as study_lib
from mtl.report.scores import (conflict_summaries, pairwise_transfer, regime_columns,
                               regime_scores)

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
class PsnrSsimText:
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
  rows: list             # display cells (str, Bold or PsnrSsimText)
  records: list          # CSV rows (dicts of raw values)
  notes: list = dataclasses.field(default_factory=list)
  csv_columns: list = None   # None: the records' keys in order of appearance
  spearman: tuple = None     # conflicts: (rho, p, number of pairs), when defined



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
  columns, test_sets = regime_columns(study), study.test_sets
  ref = study.config["reference"]
  header = ["task", "regime", "n"] + [h for s in test_sets for h in (f"{s} PSNR / SSIM",
                                                                      f"{s} Δ vs scratch")]
  rows, records = [], []
  for task in study.tasks:
    cells = {col: regime_scores(study, col, task) for col in columns}
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
        row += [PsnrSsimText(_pm(psnr, 2), best.get((s, "psnr_y")) == col,
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
    base = regime_scores(study, "scratch", task)
    if base is None:
      continue
    for col in regime_columns(study):
      if col == "scratch":
        continue
      c = regime_scores(study, col, task)
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
  for regime in study_lib.STUDY_REGIMES:
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
        io.format_duration(entry["wall_seconds_per_run"]) if has else "–",
        io.format_duration(entry["wall_seconds_total"])
        if "wall_seconds_total" in entry else "",
        io.format_duration(entry["run_seconds_total"])
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

