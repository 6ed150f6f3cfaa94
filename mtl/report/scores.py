"""The numbers of a study's tables: per (regime column, task) the chosen run of each seed and its scores.

For each seed, the run its sweep chose on validation (see mtl.study) is the one reported; a
RegimeScores holds those runs and their results.json, and gives mean +- std over seeds.
"""
import dataclasses
import os

import numpy as np

from mtl import conflicts


@dataclasses.dataclass
class RegimeScores:
  """One (regime column, task) over seeds: per-seed chosen runs and their test results."""
  task: str
  runs: list             # chosen StudyRun per seed (seeds that have a done run)
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
  runs, results, complete = [], [], []
  for seed in sorted(sweeps):
    chosen = study.select(sweeps[seed])
    if chosen is not None:
      runs.append(chosen.run)
      results.append(study.results(chosen.run.name))
      complete.append(chosen.complete)
  return RegimeScores(task, runs, results, complete)


def primary_test_set(study, task, c):
  """The first of study.test that `task` is scored on in cell `c` (None if none)."""
  for name in study.test_sets:
    if c is not None and c.values(name, "psnr_y"):
      return name
  return None



def pairwise_transfer(study):
  """{'a~b': dB} for every pair run of the study with results (see the module docstring)."""
  out = {}
  pair_columns = [c for c in dict.fromkeys(r.column for r in study.runs if r.regime == "pairs")]
  for col in pair_columns:
    a, b = col[len("pair:"):].split("+")
    gains = []
    for task in (a, b):
      base, c = regime_scores(study, "scratch", task), regime_scores(study, col, task)
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
  out = []
  for col in regime_columns(study):
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


