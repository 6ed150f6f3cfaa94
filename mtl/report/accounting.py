"""The tables of what a study spent and chose: compute and lr selection (display rows + CSV).

  compute     compute.json of the runs: steps, images seen (batch x tasks per step x steps),
              training FLOPs (the model's per step, mtl/flops.py, x steps), wall seconds.
  selection   every sweep per seed: each lr's validation score and the one chosen.
"""
import math

import numpy as np

from mtl import files, run_folder
from mtl import study as study_lib
from mtl.report.cells import Table, _fmt
from mtl.report.tables import budget_note, lr_note, metric_names


def compute_table(study):
  """Per regime: runs done, steps, images seen, training FLOPs and wall time."""
  header = ["regime", "runs done", "steps / run", "images / run", "FLOPs / run", "total FLOPs",
            "train wall / run", "train wall", "run wall"]
  rows, records = [], []
  per_regime, methods = {}, set()
  regimes = [r for r in study_lib.STUDY_REGIMES if any(s.regime == r for s in study.runs)]
  regimes += list(dict.fromkeys(s.regime for s in study.runs if s.regime not in regimes))
  for regime in regimes:  # the named regimes in their order, then joint:<method> as they come
    specs = [r for r in study.runs if r.regime == regime]
    done = [(r, study.compute(r.name)) for r in specs]
    done = [(r, c) for r, c in done if c is not None]
    entry = {"regime": regime, "runs": len(specs), "runs_done": len(done),
             "steps_per_run": sorted({study.known_steps(r) or 0 for r in specs})}
    methods.update(run_folder.flops_counted_by(c) for _, c in done)
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
        "regime": "joint + finetune (one fine-tuned model: joint's every task, then one)",
        "runs": None, "runs_done": None,
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
        files.format_duration(entry["wall_seconds_per_run"]) if has else "–",
        files.format_duration(entry["wall_seconds_total"])
        if "wall_seconds_total" in entry else "",
        files.format_duration(entry["run_seconds_total"])
        if "run_seconds_total" in entry else ""])
    records.append(dict(entry, steps_per_run=" ".join(map(str, entry["steps_per_run"]))))
  derived = (" Scratch steps 0: derived from its fine-tune's FLOPs, not known yet."
             if study.config["budget"] == "equal_flops" else "")
  counted = {"model": "the model's training FLOPs per step, counted from its shapes "
                      "(mtl/flops.py: forward + backward = 3x forward; conflict probes, "
                      "aggregators' per-task backward passes and FAMO's forward after the "
                      "update not counted) x steps",
             "xla": "XLA's cost analysis of one training step x steps (it counts a scanned "
                    "layer loop's body once: runs of models with more than one layer per "
                    "stack are undercounted)"}
  if len(methods) > 1:
    flops_note = f"FLOPs: runs counted differently ({', '.join(sorted(methods))}): not comparable"
  else:
    flops_note = "FLOPs: " + counted[methods.pop() if methods else run_folder.FLOPS_COUNTED_BY]
  notes = [budget_note(study) + derived + " Images = batch x tasks per step x steps. "
           + flops_note + ". Train wall: the training loops' time (mean per run, sum); run "
           "wall: the whole runs' time with start-up, compilation and evaluation (sum)."]
  return Table("compute", "Compute", header, rows, records, notes)


def selection_table(study):
  """Every sweep per seed: the validation score of each lr and the one chosen."""
  header = ["sweep", "candidates (lr: validation PSNR)", "chosen", "complete"]
  rows, records = [], []
  for sweep, specs in study.sweeps.items():
    chosen = study.select(sweep)
    if chosen is None and not all(study.diverged(r.name) for r in specs):
      continue
    candidates = chosen.candidates if chosen else [(r, None) for r in specs]
    text = ", ".join(f"{study_lib.format_lr(r.lr)}: "
                     + ("diverged" if study.diverged(r.name) else _fmt(score, 2))
                     for r, score in candidates)
    edge = chosen.edge if chosen else ""
    ahead = "" if chosen is None or chosen.lead is None else (
        f", ahead of the next by {chosen.lead:.2f} dB")
    rows.append([sweep, text, (chosen.run.name + (f" (the grid's {edge} lr{ahead})" if edge else "")
                               if chosen else "none: every lr diverged"),
                 "yes" if chosen is None or chosen.complete else "no"])
    for r, score in candidates:
      is_chosen = chosen is not None and r.name == chosen.run.name
      records.append({"sweep": sweep, "run": r.name, "lr": r.lr,
                      f"validation_{study.metric}": score,  # the metric the lr is chosen on
                      "diverged": bool(study.diverged(r.name)), "chosen": is_chosen,
                      "grid_end": edge if is_chosen else "",
                      "grid_end_lead": chosen.lead if is_chosen else None})
  notes = [f"Validation score: mean {metric_names(study)[2]} on {study.validation} over the "
           "run's tasks; the best lr per seed is chosen (ties: the first listed). "
           + lr_note(study) + " (the grid's smallest / largest lr): the chosen lr is an end of "
           "its grid, which then does not bracket the best lr (it may lie beyond); its lead over "
           "the next lr inward says how flat the landscape is there."]
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

