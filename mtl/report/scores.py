"""The numbers of a study's tables: per (regime column, task) the chosen run of each seed and its
scores, and the paired differences between regimes over seeds.

For each seed, the run its sweep chose on validation (see mtl.study) is the one reported; a
RegimeScores holds those runs and their results.json, and gives mean +- std over seeds. Two
regimes are compared seed by seed (the same seed starts them from the same shared init and
feeds them the same crops): `paired` gives the mean difference, its paired t interval and p.
"""
import dataclasses
import math
import os

import numpy as np

from mtl import conflicts, stats
from mtl.conflicts import summary as conflict_summary
from mtl.study.runs import sweep_runs


@dataclasses.dataclass
class RegimeScores:
  """One (regime column, task) over seeds: per-seed chosen runs and their test results."""
  task: str
  runs: list             # chosen StudyRun per seed (seeds that have a done run)
  results: list          # their results.json
  complete: list         # whether each seed's sweep was complete
  # {seed: the sweep whose every lr diverged (Study.dead_end)}: seeds that can never have a run
  dead: dict = dataclasses.field(default_factory=dict)
  # per run: 'smallest' / 'largest' where its lr is an end of its sweep's grid (Selection.edge)
  edges: list = dataclasses.field(default_factory=list)
  # per run: its validation lead over the next lr inward where it is at an end (Selection.lead)
  leads: list = dataclasses.field(default_factory=list)
  # per run: what its training gave the task in the study's budget measure (task_budget);
  # none under budget 'steps'
  budgets: list = dataclasses.field(default_factory=list)
  budget_unit: str = "images"
  planned: tuple = ()    # the seeds the study plans for this column and task

  def by_seed(self, test_set, metric):
    """{seed: value} of the seeds scored on test_set."""
    return {spec.seed: r["tasks"][self.task][test_set][metric]
            for spec, r in zip(self.runs, self.results)
            if test_set in r["tasks"].get(self.task, {})}

  def values(self, test_set, metric):
    return list(self.by_seed(test_set, metric).values())

  def incomplete_seeds(self):
    """The seeds whose sweep is not complete (not every lr done): their lr choice may change."""
    return {spec.seed for spec, done in zip(self.runs, self.complete) if not done}

  def stats(self, test_set, metric):
    """(mean, std, n) over seeds; std is NaN for one seed; None if no value."""
    values = self.values(test_set, metric)
    if not values:
      return None
    std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
    return float(np.mean(values)), std, len(values)


def paired(a, b, level=0.95):
  """b - a over the seeds both {seed: value} maps hold with finite values: stats.paired_interval,
  or a NaN interval with a note when fewer than 2 seeds pair up (the estimate is then the 1-seed
  difference, or NaN). Seeds left out for a NaN or infinite value are said in the note."""
  both = sorted(set(a) & set(b))
  seeds = [k for k in both if math.isfinite(a[k]) and math.isfinite(b[k])]
  left = (f"{len(both) - len(seeds)} seed(s) with a NaN or infinite score left out"
          if len(seeds) < len(both) else "")
  x, y = [a[k] for k in seeds], [b[k] for k in seeds]
  if len(seeds) < 2:
    estimate = y[0] - x[0] if seeds else float("nan")
    note = f"{len(seeds)} paired seed(s): no interval (needs >= 2)"
    return stats.Interval(float(estimate), math.nan, math.nan, level, len(seeds), math.nan,
                          "paired t", f"{note}; {left}" if left else note)
  iv = stats.paired_interval(x, y, level)
  return iv._replace(note="; ".join(filter(None, (iv.note, left))))


def untuned_seeds(a, b):
  """The seeds two RegimeScores both report where either one's lr sweep is incomplete: there
  the two are not tuned alike yet (one has tried fewer lrs), so a Δ over them is not the study's
  fair comparison; and the seeds one reports where the other has neither a run nor a dead end
  (no lr of its sweep done yet: pending or failed), or that both plan and neither has (the
  study's last seed still training), which a Δ would otherwise leave out unsaid."""
  have = lambda c: {spec.seed for spec in c.runs}
  both = have(a) & have(b)
  missing = (have(a) - have(b) - set(b.dead)) | (have(b) - have(a) - set(a.dead))
  neither = (set(a.planned) & set(b.planned)) - have(a) - have(b) - (set(a.dead) & set(b.dead))
  return sorted((both & (a.incomplete_seeds() | b.incomplete_seeds())) | missing | neither)


def dead_seeds(a, b):
  """The seeds where one of two RegimeScores has a run and the other diverged at every lr: left
  out of their Δ, where that arm lost outright, so a Δ over the rest is not the comparison."""
  have = lambda c: {spec.seed for spec in c.runs}
  return sorted((set(a.dead) & have(b)) | (set(b.dead) & have(a)))


def left_out(a, b):
  """dead_seeds(a, b) in words: 'every lr of scratch-derain-lr*-s1 diverged: seed 1 left out of
  the Δ, where the other arm trained'; '' where there are none."""
  dead = dead_seeds(a, b)
  if not dead:
    return ""
  sweeps = [sweep_runs(c.dead[k]) for k in dead for c in (a, b) if k in c.dead]
  return (f"every lr of {', '.join(sweeps)} diverged: seed{'s' if len(dead) > 1 else ''} "
          f"{', '.join(map(str, dead))} left out of the Δ, where the other arm trained")


# A table's verdict of a Δ whose arms are not compared alike, whatever its interval: a seed left
# out (left_out), a paired seed's lr sweep not complete (untuned_seeds), or the arms trained the
# task on other budgets (unequal_budgets); a note says which.
UNLIKE = ("no verdict: a seed left out", "not yet: lr sweeps incomplete",
          "no verdict: unequal budgets")


def table_verdict(a, b, iv):
  """The verdict a table gives the Δ b - a with paired interval `iv`: UNLIKE where its arms are
  not compared alike, else stats.verdict(iv)."""
  return (UNLIKE[0] if dead_seeds(a, b) else UNLIKE[1] if untuned_seeds(a, b)
          else UNLIKE[2] if unequal_budgets(a, b) else stats.verdict(iv))


def regime_columns(study):
  """Regime columns of the main and transfer tables, in order (pairs have their own table)."""
  seen = []
  for spec in study.runs:
    if spec.regime != "pairs" and spec.column not in seen:
      seen.append(spec.column)
  return seen


def regime_scores(study, column, task):
  """The RegimeScores of `task` in `column`, or None when that column has no run for the task."""
  sweeps = {}
  for spec in study.runs:
    if spec.column == column and task in spec.tasks:
      sweeps.setdefault(spec.seed, spec.sweep)
  if not sweeps:
    return None
  runs, results, complete, dead, edges, leads = [], [], [], {}, [], []
  for seed in sorted(sweeps):
    chosen = study.select(sweeps[seed])
    if chosen is not None:
      runs.append(chosen.run)
      results.append(study.results(chosen.run.name))
      complete.append(chosen.complete)
      edges.append(chosen.edge)
      leads.append(chosen.lead)
    elif dead_end := study.dead_end(sweeps[seed]):
      dead[seed] = dead_end
  flops = study.config["budget"] == "equal_flops"
  # budget 'steps' equalizes nothing (the tables say so): its Δs are compared as set
  budgets = ([task_budget(study, spec, flops) for spec in runs]
             if study.config["budget"] != "steps" else [])
  return RegimeScores(task, runs, results, complete, dead, edges, leads, budgets,
                      "training FLOPs" if flops else "images", tuple(sorted(sweeps)))


def task_budget(study, spec, flops=False):
  """What a done run's training gave each of its tasks, from compute.json: images seen (or
  training FLOPs), a multi-task run's total over its tasks (as budget 'equal_flops' charges
  pre-training), plus, for a fine-tune, its starting run's; None where a compute.json lacks."""
  compute = study.compute(spec.name)
  if compute is None:
    return None
  own = compute["train_flops" if flops else "images_seen"] / len(spec.tasks)
  if not spec.source:
    return own
  chosen = study.select(spec.source)
  start = task_budget(study, chosen.run, flops) if chosen is not None else None
  return None if start is None else own + start


# Budgets within this share count as equal (equal_flops rounds scratch to whole steps).
BUDGET_RTOL = 0.01


def unequal_budgets(a, b, names=("scratch", "the other arm")):
  """'scratch trained derain on 3,000 images, joint on 2,400' where two RegimeScores' chosen
  runs gave the task budgets (the study's measure: mean over seeds) more than BUDGET_RTOL
  apart: a Δ between them is not the comparison a budget-equalizing study makes; '' where
  alike or not known (budget 'steps')."""
  if None in a.budgets + b.budgets or not a.budgets or not b.budgets:
    return ""
  x, y = float(np.mean(a.budgets)), float(np.mean(b.budgets))
  if abs(x - y) <= BUDGET_RTOL * max(x, y):
    return ""
  amount = lambda v: f"{v:.3g}" if a.budget_unit != "images" else f"{v:,.0f}"
  return (f"{names[0]} trained {a.task} on {amount(x)} {a.budget_unit}, {names[1]} on "
          f"{amount(y)}")


def primary_test_set(study, task, c):
  """The first of study.test that `task` is scored on in cell `c` (None if none)."""
  for name in study.test_sets:
    if c is not None and c.values(name, study.metric):
      return name
  return None


def pairwise_transfer(study):
  """{'a~b': Interval} for every pair run of the study with results: per seed, the mean over a
  and b of (pair run - scratch run) on each task's primary test set; the paired interval of
  that over seeds (estimate: its mean)."""
  out = {}
  pair_columns = [c for c in dict.fromkeys(r.column for r in study.runs if r.regime == "pairs")]
  for col in pair_columns:
    a, b = col[len("pair:"):].split("+")
    per_task = []
    for task in (a, b):
      base, c = regime_scores(study, "scratch", task), regime_scores(study, col, task)
      s = primary_test_set(study, task, base)
      if s is None or c is None or not c.values(s, study.metric):
        continue
      per_task.append((base.by_seed(s, study.metric), c.by_seed(s, study.metric)))
    if not per_task:
      continue
    seeds = sorted(set.intersection(*[set(x) & set(y) for x, y in per_task]))
    if not seeds:
      continue
    scratch = {k: float(np.mean([x[k] for x, _ in per_task])) for k in seeds}
    pair = {k: float(np.mean([y[k] for _, y in per_task])) for k in seeds}
    out[f"{a}~{b}"] = paired(scratch, pair)
  return out


def conflict_records(study):
  """[(column, seed, run name, conflicts.Record)] of the chosen multi-task pre-training runs
  (joint and groups) of each seed that recorded conflicts while training, in run order."""
  return [(col, seed, chosen.run.name, conflicts.load(study.run_dir(chosen.run.name)))
          for col, seed, chosen in study.pretraining_choices()
          if os.path.isdir(conflicts.store_dir(study.run_dir(chosen.run.name)))]


def final_conflict_records(study):
  """[(column, seed, run name, [(step, conflicts.Record)])] of those runs' conflicts measured at
  their last saved steps on fresh batches (study.final_conflicts), oldest first, where measured."""
  out = []
  for col, seed, chosen in study.pretraining_choices():
    measured = [(step, conflicts.load(where))
                for step, where in study.final_conflicts_dirs(chosen.run.name)
                if os.path.isdir(conflicts.store_dir(where))]
    if measured:
      out.append((col, seed, chosen.run.name, measured))
  return out


def conflict_summaries(study, records=None):
  """[(column, seed, run name, conflicts.summarize dict)] of `conflict_records` (computed if
  None), each over its headline training phase (conflicts.headline_window: the last third of
  its probe steps, as analyze.py and the run read it; the last of `_phase_counts`' phases where
  a run of its column holds too few probes for three, as conflict_phases splits them)."""
  records = conflict_records(study) if records is None else records
  counts = _phase_counts(records)
  return [(col, seed, name,
           conflicts.summarize(record, conflicts.headline_window(record, counts[col])))
          for col, seed, name, record in records]


def _phase_counts(records):
  """{column: phases}: the fewest any run of the column allows (conflicts.summary.phase_count),
  so every seed's last phase is its headline window in the table and in the findings alike."""
  return {col: min(conflict_summary.phase_count(r.num_steps) for _, _, r in runs)
          for col, runs in _by_column(records).items()}


def conflict_phases(records, level=0.95):
  """Per (column, pair) of `conflict_records`, the noise-corrected cosine of every training
  phase combined over the seeds (stats.mean_of_runs of each run's phase interval).

  Every run of a column is split into the same number of phases (`_phase_counts`), so the last
  phase is each run's headline window (conflict_summaries').
  Returns {(column, pair): {'phases': [{'label', 'first', 'last', 'count' (of the first
  seed's run), 'interval': stats.Interval, 'per_run': [each seed's], 'verdict'}] in training
  order, 'seeds': [seed], 'runs': [run name]}}.
  """
  out = {}
  counts = _phase_counts(records)
  for col, runs in _by_column(records).items():
    count = counts[col]
    phased = [conflict_summary.phase_verdicts(r, count, level) for _, _, r in runs]
    for pair in phased[0]["phases"][0]["pair"]:
      phases = []
      for k, first in enumerate(phased[0]["phases"]):
        per_run = [_interval(p["phases"][k]["pair"][pair]["corrected_cos"]) for p in phased]
        iv = stats.mean_of_runs(per_run, level)
        phases.append({"label": first["label"], "first": first["first"], "last": first["last"],
                       "count": first["count"], "interval": iv, "per_run": per_run,
                       "verdict": conflict_summary.pair_verdict(iv)})
      out[col, pair] = {"phases": phases, "seeds": [s for s, _, _ in runs],
                        "runs": [n for _, n, _ in runs]}
  return out


def final_conflicts(records, level=0.95):
  """Per (column, pair) of `final_conflict_records`, the corrected cosine at the end of training
  combined over the seeds: each seed's the mean of its last checkpoints' (stats.mean_of_estimates
  of each checkpoint's interval over all its batches; those without an estimate left out), then
  stats.mean_of_runs over the seeds. Returns {(column, pair): {'interval', 'verdict', 'per_run'
  (each seed's), 'per_checkpoint' (each seed's [(step, interval)]), 'seeds', 'runs', as text
  (min-max over the runs) 'batches' per checkpoint, 'checkpoints', 'steps' (first and last);
  'measured' and 'total': the checkpoints with an estimate and all; 'size' (images/task, as
  'batches')}}."""
  out = {}
  for col, runs in _by_column(records).items():
    per_checkpoint = [[(step, _whole(r, level)) for step, r in measured] for *_, measured in runs]
    batches = _span(r.num_steps for *_, measured in runs for _, r in measured)
    checkpoints = _span(len(measured) for *_, measured in runs)
    first, last = _span(m[0][0] for *_, m in runs), _span(m[-1][0] for *_, m in runs)
    # a study whose final_conflicts changed keeps the measurements made: their span
    sizes = [r.probe_batch["size"] for *_, measured in runs for _, r in measured if r.probe_batch]
    for pair in per_checkpoint[0][0][1]:
      each = [[(step, c[pair]) for step, c in run] for run in per_checkpoint]
      per_run = [stats.mean_of_estimates([iv for _, iv in run], level) for run in each]
      iv = stats.mean_of_runs(per_run, level)
      out[col, pair] = {"interval": iv, "verdict": conflict_summary.pair_verdict(iv),
                        "per_run": per_run, "per_checkpoint": each,
                        "seeds": [s for s, _, _ in runs], "runs": [n for _, n, _ in runs],
                        "batches": batches, "checkpoints": checkpoints,
                        "steps": first if first == last else f"{first} to {last}",
                        "measured": sum(math.isfinite(c.estimate) for run in each for _, c in run),
                        "total": sum(len(run) for run in each),
                        "size": _span(sizes) if sizes else None}
  return out


def layer_conflicts(records, final=(), by="module", level=0.95):
  """Per column, where in the body its pairs differ: each (group, pair) cell's corrected cosine
  (Record.layer_intervals) combined over the seeds as the column's question-1 headline is: at
  the end of training where the study measured it (a seed's figure the mean over its last
  checkpoints, stats.mean_of_estimates), else over each seed's headline phase
  (`conflict_summaries`' window); then stats.mean_of_runs.

  Returns {column: {'by', 'at_end': bool, 'seeds', 'measured_seeds' (those with an estimate in
  any cell: a store without halves has none), 'cells': {(group, pair): Interval} in network
  then pair order, 'sign_only': {(group, pair): bool} (a seed's or a checkpoint's noise floor
  there not resolved: its size is not to be read)}}.
  """
  ended, phased = _by_column(final), _by_column(records)
  counts = _phase_counts(records) if records else {}
  out = {}
  for col in dict.fromkeys(list(phased) + list(ended)):
    if col in ended:  # [seed][checkpoint] (names, cells, unresolved)
      per_seed = [[_corrected_layers(r, by, None, level) for _, r in measured]
                  for _, _, measured in ended[col]]
      seeds = [seed for seed, _, _ in ended[col]]
    else:
      per_seed = [[_corrected_layers(r, by, conflicts.headline_window(r, counts[col]), level)]
                  for _, _, r in phased[col]]
      seeds = [seed for seed, _, _ in phased[col]]
    names, pairs = per_seed[0][0][0], _pair_names(phased.get(col) or ended[col])
    cells, sign_only = {}, {}
    for g, group in enumerate(names):
      for k, pair in enumerate(pairs):
        runs = [stats.mean_of_estimates([cell[g][k] for _, cell, _ in seed], level)
                for seed in per_seed]
        cells[group, pair] = stats.mean_of_runs(runs, level)
        sign_only[group, pair] = any(bool(u[g, k]) for seed in per_seed for _, _, u in seed)
    measured = [seed for seed, each in zip(seeds, per_seed)
                if any(math.isfinite(iv.estimate) for _, c, _ in each for row in c for iv in row)]
    out[col] = {"by": by, "at_end": col in ended, "seeds": seeds, "measured_seeds": measured,
                "cells": cells, "sign_only": sign_only}
  return out


def _corrected_layers(record, by, window, level):
  """Record.layer_intervals of the corrected cosine; a record without halves has none (NaN
  cells, as its whole-body figure: left out of the seeds' combination, not read raw)."""
  if record.halves:
    return record.layer_intervals(by, window, level)
  names = record.grouped(by)[0]
  missing = stats.Interval(math.nan, math.nan, math.nan, level, 0, note=conflicts.NO_HALVES)
  pairs = len(record.pair_names)
  return names, [[missing] * pairs for _ in names], np.zeros((len(names), pairs), bool)


def _pair_names(runs):
  """The pair names of a column's first record (training probes or a final measurement)."""
  record = runs[0][2]
  return (record[0][1] if isinstance(record, list) else record).pair_names


def _whole(record, level):
  """{pair: corrected-cosine Interval} over all of a record's probes (one phase)."""
  pairs = conflict_summary.phase_verdicts(record, 1, level)["phases"][0]["pair"]
  return {pair: _interval(d["corrected_cos"]) for pair, d in pairs.items()}


def _span(values):
  """'3' or '2-4': the range of some counts, as text."""
  values = sorted(values)
  return f"{values[0]}" if values[0] == values[-1] else f"{values[0]}-{values[-1]}"


def _by_column(records):
  """{column: [(seed, run name, Record)]} of conflict records, in their order."""
  by_column = {}
  for col, seed, name, record in records:
    by_column.setdefault(col, []).append((seed, name, record))
  return by_column


def _interval(d):
  return stats.Interval(d["estimate"], d["low"], d["high"], d["level"], d["n"], math.nan,
                        d.get("method", ""), d.get("note", ""))
