"""The tables of a study's scores: main, transfer, conflicts (display rows + CSV records);
mtl.report.accounting holds the compute and lr-selection tables.

How each number is computed (report.md repeats it):
  cell        for each seed, the run its sweep chose on validation (see mtl.study); the test
              score of that run (study.metric and its SSIM); mean +- sample std (ddof 1) over
              the seeds that are done.
  delta       regime - scratch of the same task, test set and seed, over the seeds both have:
              mean, paired t 95% interval (n - 1 degrees of freedom) and two-sided p
              (mtl.stats.paired_interval). Seeds are paired: the same seed gives the same body
              init and the same crops and degradations of a task at a data step (a
              fine-tune's continue after its pre-training's steps: data.step_offset).
  verdict     'gain' / 'loss' only when the interval excludes 0 (mtl.stats.verdict); else 'no
              detectable difference' (always so with one seed: no interval).
  bold        a trained regime's mean, only when it is the best of the task and significantly
              better than every other trained regime (paired interval of best - other > 0).
  conflicts   per task pair, in the chosen joint (or group) run of each seed: the mean over
              probe steps of the whole-body cosine between the two task gradients (raw), each
              task's same-task agreement (the noise floor), the noise-corrected cosine, and the
              share of probe steps where raw cos < 0; each with the seeds' batch-means intervals
              combined (stats.mean_of_runs); the verdict from the corrected interval.
  pairwise    transfer of a pair a~b: per seed the mean over a and b of (PSNR of the chosen pair
  transfer    run - scratch PSNR), each on the task's primary test set (the first of study.test
              it is scored on); its paired interval over seeds. Spearman's rank correlation with
              the mean cosine: mtl.stats.spearman (exact permutation p for n <= 9 pairs, n >= 3).
"""
import math

import numpy as np

from mtl import conflicts, stats
from mtl import study as study_lib
from mtl.conflicts import summary as conflict_summary
from mtl.report.cells import Bold, Table, _fmt, _pm, _signed, delta_text, format_p
from mtl.report.scores import (conflict_summaries, dead_seeds, final_conflicts, left_out,
                               paired, pairwise_transfer, regime_columns, regime_scores,
                               table_verdict, unequal_budgets, untuned_seeds, UNLIKE)
from mtl.study.runs import sweep_runs

FIGURES_DIR = "figures"
REPORT_FILE = "report.md"
INPUT_ROW = "input"  # main-table row of the degraded input's own scores
MAIN_COLUMNS = ("task", "regime", "test_set", "metric", "n_seeds", "psnr_mean", "psnr_std",
                "ssim_mean", "ssim_std", "delta_psnr", "delta_psnr_low", "delta_psnr_high",
                "delta_psnr_p", "delta_psnr_n", "verdict_psnr", "delta_ssim", "delta_ssim_low",
                "delta_ssim_high", "delta_ssim_p", "verdict_ssim", "best_psnr", "best_ssim",
                "budget", "lrs", "runs", "complete_sweeps")
LEVEL = 0.95
PAIRED_NOTE = ("Δ = regime − scratch, seed by seed (the same seed: same body init, same crops "
               "and degradations); mean over the seeds both have, paired t "
               "95% CI [low, high] (n − 1 degrees of freedom) and two-sided p. Verdict 'gain' / "
               "'loss' only when the CI excludes 0, else 'no detectable difference' (always so "
               "with one seed, which has no CI).")

UNEQUAL_NOTE = ("No verdict where scratch and the other arm trained the task on budgets more "
                "than 1% apart (images seen; training FLOPs under budget 'equal_flops'; a "
                "fine-tune's include its pre-training's share), whatever the interval: the "
                "budget equalizes scratch with pre-train + fine-tune only: ")
INCOMPLETE_NOTE = ("Some sweeps are incomplete (not every lr done): their choice may change, and "
                   "a Δ with such a seed has no verdict yet (its arms are not tuned alike).")


def _run_interval(entry, key):
  """One run's interval of `key` in its conflict summary; NaN where the record lacks it."""
  d = entry.get(key)
  if not d:
    return stats.Interval(float("nan"), float("nan"), float("nan"), 0.95, 0)
  return stats.Interval(d["estimate"], d["low"], d["high"], d["level"], d["n"])


def _lrs(c):
  return ",".join(study_lib.format_lr(r.lr) for r in c.runs)


def metric_names(study):
  """(PSNR key, SSIM key, PSNR label) of the study's metric."""
  m = study.metric
  return m, study_lib.METRICS[m], "Y-PSNR" if m == "psnr_y" else "RGB-PSNR"


def budget_note(study):
  """One line: which budget the study used and what it equalizes."""
  c = study.config
  steps = {r: study_lib.regime_steps(c, r) for r in c["regimes"]}
  given = ", ".join(f"{r} {s}" for r, s in steps.items() if s)
  if c["budget"] == "equal_images":
    return (f"Budget 'equal_images': scratch sees as many images of its task as pre-training + "
            f"fine-tuning (steps per run: {given}).")
  if c["budget"] == "equal_flops":
    return (f"Budget 'equal_flops': scratch costs as many training FLOPs as its "
            f"fine-tune plus the pre-training run's FLOPs / the number of tasks it trains "
            f"(steps per run: {given}; scratch derived per task: compute table).")
  return f"Budget 'steps': every regime runs the steps set for it ({given}); nothing equalized."


def lr_note(study):
  """One line: the lr grid every regime swept, or that the grids differ (and how)."""
  c = study.config
  grids = {r: ", ".join(study_lib.format_lr(x) for x in study_lib.regime_lrs(c, r))
           for r in c["regimes"]}
  if not study_lib.lr_grids_differ(c):
    return (f"Learning rate chosen per seed on {study.validation} from one grid for every "
            f"regime: {next(iter(grids.values()))}.")
  return ("Learning-rate grids DIFFER between regimes (lrs_override): "
          + "; ".join(f"{r}: {g}" for r, g in grids.items()) + f"; chosen per seed on "
          f"{study.validation}.")


def edge_note(study, arms):
  """Which arms chose an lr at an end of their grid, and on how many seeds: there the grid does
  not bracket the best lr, which may lie beyond it (a wider grid would show); or that every
  chosen lr lies inside its grid. Beside each, the chosen lr's validation lead over the next lr
  inward: a lead of hundredths of a dB says the landscape is flat there. A pre-training is named
  once (its choice is over its tasks)."""
  parts, edges, leads = {}, set(), []
  for col, task in arms:
    c = regime_scores(study, col, task)
    if c is None or not c.runs:
      continue
    edges.update(c.edges)
    ends = [(edge, sum(e == edge for e in c.edges)) for edge in ("smallest", "largest", "only")]
    ends = [f"the {edge} lr on {k}" for edge, k in ends if k]
    name = col if col.startswith(("joint", "group:")) else f"{col} {task}"
    if ends and name not in parts:
      leads += c.leads
      parts[name] = (f"{name}: {' and '.join(ends)} of {len(c.runs)} seeds"
                     + _lead(c.leads, study))
  if not parts:
    return "Every chosen lr lies inside its grid."
  if edges == {"only"}:
    return "Every arm had one lr: none was tuned (a grid of 2 or more lrs would tune them)."
  if len(edges) == 1:  # every arm, every seed, the same end
    edge = edges.pop()
    return (f"Every arm chose its grid's {edge} lr on every seed{_lead(leads, study)}: the "
            f"grid brackets none of their best lrs, which may lie "
            f"{'below' if edge == 'smallest' else 'above'} it (a wider grid would show).")
  return ("Chosen at an end of the lr grid (the best lr may lie beyond it; a wider grid would "
          "show): " + "; ".join(parts.values()) + ".")


def _lead(leads, study):
  """' (ahead of the next lr by A-B dB on <validation>)' over the leads that are known."""
  known = sorted(x for x in leads if x is not None)
  if not known:
    return ""
  low, high = f"{known[0]:.2f}", f"{known[-1]:.2f}"
  return (f" (ahead of the next lr by {low if low == high else f'{low}-{high}'} dB on "
          f"{study.validation})")


# ----------------------------------------------------------------------------- tables


def _best(cells, s, m):
  """The column whose mean is highest on (s, m) and that is significantly better than every
  other trained column (paired interval of best - other > 0), each compared alike (no seed left
  out, every paired sweep complete: table_verdict); None if there is no such one."""
  means = {col: c.stats(s, m)[0] for col, c in cells.items() if c.stats(s, m)}
  if len(means) < 2:
    return None
  top = max(means, key=means.get)
  for col in means:
    if col != top:
      iv = paired(cells[col].by_seed(s, m), cells[top].by_seed(s, m))
      if table_verdict(cells[col], cells[top], iv) in UNLIKE or not (
          math.isfinite(iv.low) and iv.low > 0):
        return None
  return top


def main_table(study):
  """Tasks x regimes: PSNR / SSIM per test set, paired Δ vs scratch with CI, p and verdict."""
  columns, test_sets = regime_columns(study), study.test_sets
  psnr_key, ssim_key, label = metric_names(study)
  ref = study.config["reference"]
  header = ["task", "regime", "n"] + [h for s in test_sets for h in (
      f"{s} {label}", f"{s} SSIM", f"{s} Δ {label} vs scratch [95% CI], p", f"{s} verdict")]
  rows, records, warnings, dead, unequal = [], [], [], [], []
  paper = {}  # {row label: {(task, test set): (PSNR cell, SSIM cell)}}
  for task in study.tasks:
    cells = {col: regime_scores(study, col, task) for col in columns}
    dead += [f"{task} {col}: every lr of {', '.join(sweep_runs(w) for w in c.dead.values())} "
             "diverged." for col, c in cells.items() if c is not None and c.dead]
    cells = {col: c for col, c in cells.items() if c is not None and c.runs}
    best = {(s, m): _best(cells, s, m) for s in test_sets for m in (psnr_key, ssim_key)}
    base = cells.get("scratch")
    unequal += [f"{task} {col}: {why}." for col, c in cells.items() if col != "scratch"
                and base is not None and (why := unequal_budgets(base, c, ("scratch", col)))]
    for col, c in cells.items():
      row = [task, col, str(len(c.runs))]
      for s in test_sets:
        psnr, ssim = c.stats(s, psnr_key), c.stats(s, ssim_key)
        if psnr is None:
          row += ["–", "–", "–", ""]
          continue
        deltas = {m: paired(base.by_seed(s, m), c.by_seed(s, m))
                  if base is not None and col != "scratch" else None for m in (psnr_key,
                                                                               ssim_key)}
        verdicts = {m: table_verdict(base, c, iv) if iv is not None else ""
                    for m, iv in deltas.items()}
        dp, ds = deltas[psnr_key], deltas[ssim_key]
        cells_ = (_bold_if(_pm(psnr, 2), best[s, psnr_key] == col),
                  _bold_if(_pm(ssim, 4), best[s, ssim_key] == col))
        paper.setdefault(col, {})[task, s] = cells_
        row += [*cells_, "" if dp is None else delta_text(dp), verdicts[psnr_key]]
        records.append({
            "task": task, "regime": col, "test_set": s, "metric": psnr_key,
            "n_seeds": psnr[2], "psnr_mean": psnr[0], "psnr_std": psnr[1],
            "ssim_mean": ssim[0], "ssim_std": ssim[1],
            "delta_psnr": dp.estimate if dp else None, "delta_psnr_low": dp.low if dp else None,
            "delta_psnr_high": dp.high if dp else None, "delta_psnr_p": dp.p if dp else None,
            "delta_psnr_n": dp.n if dp else None, "verdict_psnr": verdicts[psnr_key],
            "delta_ssim": ds.estimate if ds else None, "delta_ssim_low": ds.low if ds else None,
            "delta_ssim_high": ds.high if ds else None, "delta_ssim_p": ds.p if ds else None,
            "verdict_ssim": verdicts[ssim_key],
            "best_psnr": best[s, psnr_key] == col, "best_ssim": best[s, ssim_key] == col,
            "budget": study.config["budget"], "lrs": _lrs(c),
            "runs": " ".join(r.name for r in c.runs), "complete_sweeps": all(c.complete)})
      rows.append(row)
    inputs = _input_scores(cells.values(), task, test_sets, psnr_key, ssim_key)
    if inputs:  # the degraded input itself (SR: bicubic): what a restoration has to beat
      row = [task, INPUT_ROW, "–"]
      for s in test_sets:
        if s not in inputs:
          row += ["–", "–", "", ""]
          continue
        p, q = inputs[s]
        row += [_fmt(p, 2), _fmt(q, 4), "", ""]
        paper.setdefault(INPUT_ROW, {})[task, s] = (_fmt(p, 2), _fmt(q, 4))
        records.append({"task": task, "regime": INPUT_ROW, "test_set": s, "metric": psnr_key,
                        "n_seeds": 0, "psnr_mean": p, "ssim_mean": q, "best_psnr": False,
                        "best_ssim": False, "complete_sweeps": True})
        trained = [(c.stats(s, psnr_key)[0], col) for col, c in cells.items()
                   if c.stats(s, psnr_key)]
        if trained and p is not None and max(trained)[0] <= p:
          top, col = max(trained)
          warnings.append(f"WARNING: {task} on {s}: no trained regime beats the input "
                          f"({label} {p:.2f} dB; best: {col} {top:.2f} dB). The runs are too "
                          "short or the lr grid misses: these Δs compare models that do not "
                          "restore yet.")
        elif p is not None and any(m <= p for m, _ in trained):
          behind = ", ".join(f"{col} {m:.2f} dB" for m, col in sorted(trained) if m <= p)
          warnings.append(f"WARNING: {task} on {s}: not every regime beats the input ({label} "
                          f"{p:.2f} dB): {behind}. Δs involving them compare a model that does "
                          "not restore yet.")
      rows.append(row)
    ref_psnr = ref[psnr_key].get(task, {}) if _reference_applies(study, task) else {}
    if ref["label"] and ref_psnr:
      row = [task, ref["label"], "–"]
      for s in test_sets:
        p, q = ref_psnr.get(s), ref[ssim_key].get(task, {}).get(s)
        if p is None:
          row += ["–", "–", "", ""]
          continue
        row += [f"{p:.2f}", _fmt(q, 4), "", ""]
        paper.setdefault(ref["label"], {})[task, s] = (f"{p:.2f}", _fmt(q, 4))
        records.append({"task": task, "regime": ref["label"], "test_set": s,
                        "metric": psnr_key, "n_seeds": 0, "psnr_mean": p, "ssim_mean": q,
                        "best_psnr": False, "best_ssim": False, "complete_sweeps": True})
      rows.append(row)
  notes = [f"{label} (dB) and SSIM on the test sets, mean ± std over seeds (n = seeds done); "
           "each seed's run chosen on the validation set. " + PAIRED_NOTE,
           "Bold: the best trained regime of a task and test set, only when it is significantly "
           "better than every other trained regime (paired 95% CI of best − other excludes 0); "
           "otherwise nothing is bold. 'input': the degraded input itself (SR: its bicubic "
           "upsampling), the baseline to beat; published rows have no Δ (no seeds to pair).",
           budget_note(study), lr_note(study)]
  if any(not r["complete_sweeps"] for r in records):
    notes.append(INCOMPLETE_NOTE)
  if dead:  # a seed it lost outright: not in its mean, n or Δs (a regime with none has no row)
    notes.append("Seeds left out where every lr diverged: " + " ".join(dead))
  if unequal:
    notes.append(UNEQUAL_NOTE + " ".join(unequal))
  if ref["label"] and ref["note"]:
    notes.append(f"{ref['label']}: {ref['note']}")
  notes += warnings
  table = Table("main", "Main table", header, rows, records, notes, list(MAIN_COLUMNS),
                warnings=warnings)
  table.latex = _paper_table(study, paper, label, columns)
  return table


def _bold_if(text, bold):
  return Bold(text) if bold else text


def _paper_table(study, paper, label, columns):
  """main.tex as a paper prints it: a row per regime (the input first, published last), a
  column pair (PSNR, SSIM) per task (and test set), mean ± std over seeds, bold as in main."""
  groups = [(task, s) for task in study.tasks for s in study.test_sets
            if any((task, s) in cells for cells in paper.values())]
  order = [r for r in [INPUT_ROW, *columns] if r in paper]
  order += [r for r in paper if r not in order]
  rows = [[regime] + [c for g in groups for c in paper[regime].get(g, ("–", "–"))]
          for regime in order]
  multi = len(study.test_sets) > 1
  column_groups = [("", 1)] + [(f"{t} ({s})" if multi else t, 2) for t, s in groups]
  header = ["regime"] + [h for _ in groups for h in (f"{label} (dB)", "SSIM")]
  notes = [f"{label} (dB) and SSIM, mean ± std over seeds; bold: significantly best trained "
           "regime (paired 95% CI); the Δs, CIs and verdicts are in main.md and transfer.tex."]
  return Table("main", "Main table", header, rows, [], notes, column_groups=column_groups)


def _reference_applies(study, task):
  """False when reference.requires names a run-config field that a run of `task` leaves unset
  (e.g. Rain100L's published number needs derain trained on real streak layers)."""
  field = study.config["reference"]["requires"].get(task)
  if not field:
    return True
  for spec in study.runs:
    if task in spec.tasks:
      value = study_lib.run_config(study.config, spec)
      for key in field.split("."):
        value = value.get(key) if isinstance(value, dict) else None
      if not value:
        return False
  return True


def _input_scores(cells, task, test_sets, psnr_key, ssim_key):
  """{test set: (input PSNR, input SSIM)} of the degraded inputs (the same in every run);
  None for a metric the results do not hold."""
  out = {}
  for c in cells:
    for results in c.results:
      for s in test_sets:
        e = results["tasks"].get(task, {}).get(s)
        if e is not None and s not in out:
          out[s] = (e.get(f"input_{psnr_key}"), e.get(f"input_{ssim_key}"))
  return out


def transfer_table(study):
  """Per task and test set: each regime's paired difference to scratch and its verdict."""
  psnr_key, _, label = metric_names(study)
  header = ["task", "test set", "regime", f"scratch {label}", f"regime {label}", "n pairs",
            "Δ", "95% CI", "p", "verdict"]
  rows, records, dead, unequal = [], [], [], []
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
      if why := left_out(base, c):
        dead.append(f"{task} {col}: {why}.")
      if why := unequal_budgets(base, c, ("scratch", col)):
        unequal.append(f"{task} {col}: {why}.")
      for s in study.test_sets:
        a, b = base.stats(s, psnr_key), c.stats(s, psnr_key)
        if a is None or b is None:
          continue
        iv = paired(base.by_seed(s, psnr_key), c.by_seed(s, psnr_key))
        verdict = table_verdict(base, c, iv)
        ci = (f"[{_signed(iv.low, 2)}, {_signed(iv.high, 2)}]" if math.isfinite(iv.low)
              else "– (no spread)" if iv.note.startswith(stats.NO_SPREAD)
              else "– (needs 2 seeds)")
        rows.append([task, s, col, _pm(a, 2), _pm(b, 2), str(iv.n), _signed(iv.estimate, 2),
                     ci, format_p(iv.p), Bold(verdict) if verdict in ("gain", "loss")
                     else verdict])
        records.append({"task": task, "test_set": s, "regime": col, "metric": psnr_key,
                        "scratch_mean": a[0], "scratch_std": a[1], "regime_mean": b[0],
                        "regime_std": b[1], "n_pairs": iv.n, "delta": iv.estimate,
                        "delta_low": iv.low, "delta_high": iv.high, "p": iv.p,
                        "delta_note": iv.note,
                        "verdict": verdict, "budget": study.config["budget"],
                        "complete_sweeps": not untuned_seeds(base, c),
                        "left_out_seeds": dead_seeds(base, c)})
  notes = [f"{label} (dB). " + PAIRED_NOTE, budget_note(study), lr_note(study)]
  if any(not r["complete_sweeps"] for r in records):
    notes.append(INCOMPLETE_NOTE)
  if dead:
    notes.append("No verdict where an arm diverged at every lr on a seed the other trained: "
                 + " ".join(dead))
  if unequal:
    notes.append(UNEQUAL_NOTE + " ".join(unequal))
  return Table("transfer", "Transfer vs scratch", header, rows, records, notes)


def conflict_table(study, summaries=None, transfer=None):
  """Per task pair of the joint (and groups): mean cosine, conflict fraction, pairwise
  transfer with its paired interval, and Spearman's rank correlation between cosine and
  transfer (mtl.stats.spearman: exact permutation p).

  summaries: conflict_summaries(study); transfer: pairwise_transfer(study), {pair: Interval}
  (computed if None).
  """
  summaries = conflict_summaries(study) if summaries is None else summaries
  transfer = pairwise_transfer(study) if transfer is None else transfer
  header = ["source", "pair", "n", "raw cos [95% CI]", "same-task agreement",
            "corrected cos [95% CI]", "conflict fraction [95% CI]", "verdict",
            "pairwise transfer (dB) [95% CI], p"]
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
    raw, corrected = (stats.mean_of_runs([_run_interval(e, key) for e in entries])
                      for key in ("cos_interval", "corrected_cos"))
    share = stats.mean_of_shares(  # a proportion: Wilson, within [0, 1]
        *zip(*[(d.get("estimate"), d.get("n_eff"), d.get("df"))
               for d in (e.get("conflict_fraction_interval") or {} for e in entries)]))
    agree = conflicts.nan_mean([e.get("same_task_agreement", [np.nan] * 2) for e in entries], 0)
    verdict = conflict_summary.pair_verdict(corrected)
    t = transfer.get(pair)
    rows.append([col, pair, str(len(entries)), raw.text(3, missing="–"),
                 f"{_fmt(agree[0], 2)} / {_fmt(agree[1], 2)}", corrected.text(3, missing="–"),
                 share.text(1, percent=True, missing="–"), verdict,
                 "–" if t is None else delta_text(t)])
    records.append({"source": col, "pair": pair, "n_seeds": len(entries), "mean_cos": mean_cos,
                    "mean_cos_std": std_cos, "mean_cos_low": raw.low, "mean_cos_high": raw.high,
                    "same_task_agreement_a": float(agree[0]),
                    "same_task_agreement_b": float(agree[1]),
                    "corrected_cos": corrected.estimate, "corrected_cos_low": corrected.low,
                    "corrected_cos_high": corrected.high, "verdict": verdict,
                    "conflict_fraction": float(np.mean(frac)),
                    "conflict_fraction_low": share.low, "conflict_fraction_high": share.high,
                    "pairwise_transfer_db": None if t is None else t.estimate,
                    "pairwise_transfer_low": None if t is None else t.low,
                    "pairwise_transfer_high": None if t is None else t.high,
                    "pairwise_transfer_p": None if t is None else t.p})
    if col == "joint" and t is not None:
      joint_points.append((mean_cos, t.estimate))
  notes = ["raw cos: whole-body cosine between the two tasks' gradients, the mean over the "
           "probe steps of the headline phase (the last third of the probes; the last half, or all "
           "of them, where too few probes split the run in three; launch/analyze.py shows "
           "every phase) of the chosen run of each seed, then over seeds. same-task "
           "agreement: cosine between the two half-batches of one task (a / b), the noise floor. "
           "corrected cos: the cosine between the tasks' expected gradients, from independent "
           "halves only (mtl.gramians). conflict fraction: share of probe steps with raw cos < 0. "
           "Intervals: each run's 95% batch-means interval over its probe steps (which respects "
           "their autocorrelation), combined over the independent seeds "
           "(mtl.stats.mean_of_runs); the conflict fraction's a Wilson score interval at the "
           "seeds' combined effective n, widened where the seeds differ more "
           "(mtl.stats.mean_of_shares), within [0, 100]%. Verdict "
           "from the corrected interval: 'conflict beyond noise' only when it lies below 0.",
           "pairwise transfer of a~b: per seed, mean over a and b of (PSNR of the two trained "
           "jointly as a pair − scratch PSNR) on each task's primary test set; mean over seeds, "
           "paired t 95% CI and p."]
  if not transfer:
    notes.append("Pairwise transfer: not measured (add 'pairs' to the study's regimes).")
  else:  # a pair run's steps need not be scratch's (equal_images gives scratch more)
    notes.append(f"Pairwise transfer's runs: {budget_note(study)}")
  rank = None
  if joint_points:
    x, y = zip(*joint_points)
    rank = stats.spearman(x, y)
    if math.isfinite(rank.p):
      notes.append(
          f"Spearman rank correlation (joint mean cos vs pairwise transfer): rho = "
          f"{rank.rho:+.3f}, {format_p(rank.p)} ({rank.method}, two-sided), n = {rank.n} "
          f"pairs; the smallest p possible with {rank.n} pairs is {rank.min_p:.3g} (a test "
          f"needs n >= {stats.SPEARMAN_MIN_N}; n <= 4 can never reach p < 0.05).")
    else:
      notes.append(f"Spearman rank correlation: not computed ({rank.note}).")
      rank = None
  return Table("conflicts", "Gradient conflict during multi-task training", header, rows, records,
               notes, spearman=rank)


def end_conflict_table(final_records):
  """Per (source, task pair): the conflict at the end of training that question 1 answers with
  (scores.final_conflicts of `final_records`, scores.final_conflict_records): each seed's figure
  (the mean of its last checkpoints' fresh-batch measurements) and their combination."""
  header = ["source", "pair", "seeds", "steps", "batches per checkpoint",
            "per seed: corrected cos [95% CI]", "corrected cos [95% CI]", "verdict"]
  rows, records = [], []
  for (col, pair), end in final_conflicts(final_records).items():
    iv = end["interval"]
    rows.append([col, pair, str(len(end["seeds"])), str(end["steps"]), str(end["batches"]),
                 "; ".join(f"seed {s}: {r.text(3, missing='–')}"
                           for s, r in zip(end["seeds"], end["per_run"])),
                 iv.text(3, missing="–"), end["verdict"]])
    records.append({"source": col, "pair": pair, "n_seeds": len(end["seeds"]),
                    "steps": end["steps"], "batches": end["batches"], "size": end["size"],
                    **{f"seed{s}_corrected_cos": r.estimate
                       for s, r in zip(end["seeds"], end["per_run"])},
                    "corrected_cos": iv.estimate, "corrected_cos_low": iv.low,
                    "corrected_cos_high": iv.high, "verdict": end["verdict"]})
  notes = ["The end-of-training measurement question 1 answers with (study.final_conflicts): "
           "each seed's chosen pre-training run, its last checkpoints each on fresh batches of "
           "their own (launch/analyze.py --checkpoint); a seed's figure is their mean "
           "(mtl.stats.mean_of_estimates), combined over the seeds (mtl.stats.mean_of_runs)."]
  return Table("end_conflicts", "Gradient conflict at the end of training", header, rows, records,
               notes)
