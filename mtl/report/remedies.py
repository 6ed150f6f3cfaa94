"""The remedies tables of a study: joint training with aggregators / loss weightings against
scratch, and how well conflict measures predict the measured pairwise transfer.

remedies    per method column ('joint', 'joint:<method>') and task: the mean test PSNR over
            seeds; delta = method - scratch and (each 'joint:<method>') method - plain joint,
            paired by seed, each with its 95% paired t interval (mtl.stats.paired_interval) and
            verdict; per method, Delta_m% (Maninis et al. 2019; mtl.stats.delta_m) per seed over
            tasks, its mean over seeds with a t interval. A Delta whose arms are not compared
            alike (an lr sweep not complete, or an arm diverged at every lr on a seed the other
            trained: scores.left_out) has no verdict.
predictors  per task pair: the measured transfer (scratch -> pair run, mtl.report.scores), the
            raw whole-body gradient cosine and the noise-corrected one (when the probe stored
            half-batch Gramians) of the chosen joint run, and the symmetrised TAG affinity
            (Z_ij + Z_ji) / 2 (Fifty et al. 2021); each predictor's Spearman rho with transfer
            (exact permutation p for <= 9 pairs, mtl.stats.spearman), and the split of the tasks
            into 2 groups each one's point values would give (max sum over tasks of the mean
            score with its group-mates, mtl.conflicts.affinity.best_grouping; untested) beside
            the split the measured transfer supports, only where a pair's transfer interval
            holds over the pairs (Holm). The TAG affinity is, at its automatic step, to first
            order lr <g_i, g_j> / L_j: the cosine's sign, scaled by norms and losses.
"""
import math
import os

import numpy as np

from mtl import conflicts, stats
from mtl.conflicts import affinity as affinity_lib
from mtl.report.scores import (UNLIKE, left_out, paired, pairwise_transfer, primary_test_set,
                               regime_columns, regime_scores, table_verdict)
from mtl.report.cells import Table, _fmt, _signed
from mtl.report.tables import edge_note, metric_names


def method_columns(study):
  """'joint' and every 'joint:<method>' column, in study order."""
  return [c for c in regime_columns(study) if c == "joint" or c.startswith("joint:")]


def _paired(base, cell, s, metric):
  """(paired interval of cell - base over their common seeds or None, its text, verdict)."""
  iv = paired(base.by_seed(s, metric), cell.by_seed(s, metric))
  if not math.isfinite(iv.low):
    unlike = table_verdict(base, cell, iv)
    return None, "–", (unlike if unlike in UNLIKE else "no spread between seeds"
                       if iv.note.startswith(stats.NO_SPREAD) else "needs 2 seeds")
  return (iv, f"{iv.estimate:+.2f} [{iv.low:+.2f}, {iv.high:+.2f}]",
          table_verdict(base, cell, iv))


def remedies_table(study):
  metric, _, label = metric_names(study)
  header = ["method", "task", "test set", label, "Δ vs scratch [95% CI]", "verdict",
            "Δ vs joint [95% CI]", "verdict vs joint", "Δm% [95% CI]"]
  rows, records, unlike = [], [], []
  for col in method_columns(study):
    per_seed_dm = {}
    col_rows = []
    for task in study.tasks:
      base, cell = regime_scores(study, "scratch", task), regime_scores(study, col, task)
      s = primary_test_set(study, task, base)
      if s is None or cell is None:
        continue
      a, b = base.by_seed(s, metric), cell.by_seed(s, metric)
      seeds = sorted(set(a) & set(b))
      mean = float(np.mean([b[k] for k in seeds])) if seeds else float("nan")
      iv, delta, verdict = _paired(base, cell, s, metric)
      for k in seeds:
        per_seed_dm.setdefault(k, {})[task] = (b[k], a[k])
      # a remedy's question is whether it beats plain joint training: paired with it by seed
      joint = regime_scores(study, "joint", task) if col != "joint" else None
      jv, jtext, jverdict = (_paired(joint, cell, s, metric) if joint is not None
                             else (None, "–", ""))
      for other, against in ((base, "scratch"), (joint, "joint")):
        if other is not None and (why := left_out(other, cell)):
          unlike.append(f"{col} vs {against} on {task}: {why}.")
      col_rows.append([col, task, s, _fmt(mean, 2), delta, verdict, jtext, jverdict])
      records.append(dict(method=col, task=task, test_set=s, n_seeds=len(seeds), metric=metric,
                          psnr=mean,
                          delta=None if iv is None else iv.estimate,
                          delta_low=None if iv is None else iv.low,
                          delta_high=None if iv is None else iv.high,
                          p=None if iv is None else iv.p, verdict=verdict,
                          delta_joint=None if jv is None else jv.estimate,
                          delta_joint_low=None if jv is None else jv.low,
                          delta_joint_high=None if jv is None else jv.high,
                          p_joint=None if jv is None else jv.p, verdict_joint=jverdict))
    if not col_rows:
      continue
    n_tasks = len(col_rows)
    seeds_all = [k for k, v in per_seed_dm.items() if len(v) == n_tasks]
    dm_seeds = [float(stats.delta_m([v[0] for v in per_seed_dm[k].values()],
                                    [v[1] for v in per_seed_dm[k].values()], [False] * n_tasks))
                for k in sorted(seeds_all)]
    # the mean of the per-seed Δm%, the centre of their t interval (not Δm% of the seed means)
    dm = float(np.mean(dm_seeds)) if dm_seeds else math.nan
    if len(dm_seeds) >= 2:
      div = stats.paired_interval(np.zeros(len(dm_seeds)), dm_seeds)
      dm_text = (f"{dm:+.2f} [{div.low:+.2f}, {div.high:+.2f}]" if math.isfinite(div.low)
                 else f"{dm:+.2f} (no spread between seeds)")
    else:
      div, dm_text = None, _signed(dm, 2)
    for r in col_rows:
      rows.append(r + [dm_text])
    records.append(dict(method=col, task="Δm%", test_set="", n_seeds=len(dm_seeds),
                        metric=metric, psnr=None, delta=dm,
                        delta_low=None if div is None else div.low,
                        delta_high=None if div is None else div.high,
                        p=None if div is None else div.p, verdict=""))
  notes = [f"Δ: method - scratch {label} (dB, study.metric) on the task's primary test set, "
           "paired by seed; 95% paired t interval; verdict 'gain'/'loss' where it excludes 0.",
           "Δ vs joint: the same for method - plain summed joint training (same lrs, steps and "
           "seeds).",
           "Δm%: per seed that has every task, the mean over tasks of (PSNR - scratch PSNR) / "
           "scratch PSNR x 100; their mean over seeds, with a t interval."]
  if any(r["verdict"] in UNLIKE or r["verdict_joint"] in UNLIKE
         for r in records if r["task"] != "Δm%"):
    notes.append("No verdict where a Δ's arms are not compared alike: a paired seed's lr sweep "
                 "not complete (its choice may change), or an arm diverged at every lr on a "
                 "seed the other trained. " + " ".join(unlike))
  arms = [(col, task) for col in ["scratch"] + method_columns(study) for task in study.tasks]
  notes.append(edge_note(study, arms))
  notes.append(arguments_note(study))
  return Table("remedies", "Acting on conflicts: aggregators and loss weightings vs scratch "
               "and plain joint",
               header, rows, records, notes)


def arguments_note(study):
  """Each method's own arguments (per_regime['joint:<method>']), or that it runs its defaults."""
  given = []  # per_regime['joint:<method>'] = {'mtl': {'aggregator_args': {...}}}
  for col in method_columns(study):
    groups = study.config["per_regime"].get(col, {}).get("mtl", {})
    args = sorted((k, v) for group in groups.values() for k, v in group.items())
    if args:
      given.append(f"{col} " + ", ".join(f"{k}={v}" for k, v in args) + "; ")
  return ("Method arguments: " + "".join(given)
          + ("the other methods" if given else "every method")
          + " with mtl.aggregators' defaults (per_regime['joint:<method>'] sets them).")


def _joint_runs(study):
  sweeps = dict.fromkeys((r.seed, r.sweep) for r in study.runs if r.column == "joint")
  out = []
  for _, sweep in sweeps:
    chosen = study.select(sweep)
    if chosen is not None:
      out.append(study.run_dir(chosen.run.name))
  return out


def predictor_matrices(study):
  """{'raw cosine' | 'corrected cosine' | 'TAG affinity': (T, T) or None}, seed means."""
  raw, corrected, aff = [], [], []
  for workdir in _joint_runs(study):
    if os.path.isdir(conflicts.store_dir(workdir)):
      rec = conflicts.load(workdir)
      if rec.halves:  # half-batch Gramians stored: the corrected cosine is measurable
        corrected.append(rec.corrected_cosines("body")[0])
      raw.append(conflicts.nan_mean(conflicts.cosines(rec.grouped("body")[1][:, 0]), axis=0))
    stored = affinity_lib.load(workdir)
    if stored is not None:
      z = stored[1].mean(0)
      aff.append((z + z.T) / 2)
  mean = lambda xs: np.mean(xs, axis=0) if xs else None
  return {"raw cosine": mean(raw), "corrected cosine": mean(corrected),
          "TAG affinity": mean(aff)}


def _grouping_text(names, m):
  if m is None or len(names) < 3 or not np.all(np.isfinite(m[~np.eye(len(names), dtype=bool)])):
    return "–"
  part, _ = affinity_lib.best_grouping(m, 2)
  return " | ".join(", ".join(names[i] for i in g) for g in part)


def transfer_grouping(names, measured, intervals, level=0.95):
  """The note on the grouping the measured transfer supports: none unless some pair's paired
  interval holds over the pairs (Holm), as affinity's groupings need (affinity.supported)."""
  p = [iv.p if iv is not None else np.nan for iv in intervals]
  held = int(np.sum(stats.holm(p) < 1 - level))
  if not held:
    return (f"measured transfer supports no grouping: no pair's transfer holds over the "
            f"{len(p)} pairs (Holm).")
  return (f"measured transfer supports {_grouping_text(names, measured)} ({held} of the {len(p)} "
          "pairs' transfer held over the pairs, Holm).")


def predictors_table(study):
  names = list(study.tasks)
  t = len(names)
  transfer = pairwise_transfer(study)
  mats = predictor_matrices(study)
  pairs = conflicts.pair_indices(t)
  keys = [f"{names[i]}~{names[j]}" for i, j in pairs]
  measured = np.full((t, t), np.nan)
  for (i, j), k in zip(pairs, keys):
    measured[i, j] = measured[j, i] = transfer[k].estimate if k in transfer else np.nan
  header = ["pair", "measured transfer (dB)"] + list(mats)
  rows, records = [], []
  for (i, j), k in zip(pairs, keys):
    vals = {p: (None if m is None else float(m[i, j])) for p, m in mats.items()}
    rows.append([k, _signed(measured[i, j], 2)] +
                [("n/a" if v is None else f"{v:+.3g}") for v in vals.values()])
    records.append(dict(pair=k, transfer=float(measured[i, j]), **vals))
  notes, summary = [], {}
  y = np.array([measured[i, j] for i, j in pairs])
  for p, m in mats.items():
    if m is None:
      why = ("not available: the probe stored no half-batch Gramians" if p == "corrected cosine"
             else "not available: no joint run recorded it")
      notes.append(f"{p}: {why}.")
      continue
    x = np.array([m[i, j] for i, j in pairs])
    ok = np.isfinite(x) & np.isfinite(y)
    sp = stats.spearman(x[ok], y[ok])
    summary[p] = sp
    notes.append(f"{p}: Spearman rho = {sp.rho:+.3f}, p = {sp.p:.3g} ({sp.method}, n = {sp.n} "
                 f"pairs); its point values would group {_grouping_text(names, m)} (untested).")
  notes.append(transfer_grouping(names, measured, [transfer.get(k) for k in keys]))
  notes.append("Groupings: the split into 2 groups maximising the sum over tasks of the mean "
               "pair score with the task's group-mates (TAG's rule, Fifty et al. 2021).")
  table = Table("predictors", "Predicting pairwise transfer: cosines and TAG affinity", header,
                rows, records, notes)
  table.spearman_by_predictor = summary
  return table


def tables(study):
  """The remedies table when the study has 'joint:<method>' runs; the predictors table when it
  has pair runs (the measured transfer)."""
  out = []
  if any(c.startswith("joint:") for c in method_columns(study)):
    out.append(remedies_table(study))
  if any(r.regime == "pairs" for r in study.runs):
    out.append(predictors_table(study))
  return out
