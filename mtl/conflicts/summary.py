"""Text and numbers of a conflict record for reports: window means, shares, top layers, and
per pair the noise floor: intervals, the corrected cosine and a verdict, per training phase.

Phases: the probe steps split into PHASES contiguous parts of equal probe count (early,
middle, late). The headline verdict is the LAST phase's: what training settled into, with
the warm-up and the first transients (which can carry a verdict of their own) left out.
A pair whose verdict differs between phases gets one warning line.

Each verdict is on its own interval; the pairs of one window are also held together (Holm 1979:
a verdict beyond noise whose Holm-adjusted p over the window's pairs is not below 1 - level
says that it does not hold over them, verdict_text), as a study's findings hold them.
"""
import textwrap

import numpy as np

from mtl.gramians import (cosines, nan_mean, norms, pair_indices, pair_names,
                                    pair_values, share_negative, update_cosines)

LEVEL = 0.95
CONFLICT = "conflict beyond noise"
AGREEMENT = "agreement beyond noise"
UNDETECTED = "no conflict detectable above the noise floor"
NOT_MEASURABLE = "not measurable"
PHASES = 3             # early, middle, late; the headline is the last
MIN_PHASE_PROBES = 9   # a phase's batch-means interval from >= 3 batches of >= 3 probes
PHASE_LABELS = {1: ("whole run",), 2: ("first half", "second half"),
                3: ("early", "middle", "late")}


def _nan_extreme(fn, x):
  x = x[~np.isnan(x)]
  return float(fn(x)) if x.size else float("nan")


def pair_verdict(corrected):
  """The verdict on one pair from its corrected-cosine Interval (mtl.stats).

  'conflict beyond noise' only when the whole interval is < 0, 'agreement beyond noise' when
  it is > 0; 'not measurable' when the estimate is NaN (a pooled same-task product <= 0, or no
  halves); otherwise (the interval holds 0, or is too short to have one) 'no conflict
  detectable above the noise floor'.
  """
  if np.isnan(corrected.estimate):
    return NOT_MEASURABLE
  if corrected.high < 0:
    return CONFLICT
  if corrected.low > 0:
    return AGREEMENT
  return UNDETECTED


def phase_count(num_steps, phases=PHASES):
  """How many phases `num_steps` probes split into: `phases`, fewer when a phase would hold
  fewer than MIN_PHASE_PROBES probes (at least 1)."""
  if phases < 1:
    raise ValueError(f"phases={phases}; valid: a positive number of training phases")
  return max(1, min(phases, num_steps // MIN_PHASE_PROBES))


def phase_label(k, count):
  return PHASE_LABELS[count][k] if count in PHASE_LABELS else f"phase {k + 1}/{count}"


def step_gaps(steps):
  """[(first, last)] missing probe steps inside `steps` (ascending): stretches longer than twice
  the usual spacing (a deleted store chunk, say), in the usual spacing's grid."""
  steps = np.asarray(steps)
  if len(steps) < 3:
    return []
  spacing = int(np.median(np.diff(steps)))
  return [(int(a) + spacing, int(b) - spacing) for a, b in zip(steps[:-1], steps[1:])
          if b - a > 2 * spacing]


def _the_phase(label):
  """'the late phase', 'the phase 10/10': a label read in a sentence."""
  return f"the {label}" if label.startswith("phase") else f"the {label} phase"


def split_phases(record, phases=PHASES):
  """[(label, Record)]: the record's probe steps in `phase_count` contiguous parts of equal
  probe count, in training order."""
  count = phase_count(record.num_steps, phases)
  parts = np.array_split(np.arange(record.num_steps), count)
  return [(phase_label(k, count), record._take(idx)) for k, idx in enumerate(parts)]


def headline_window(record, phases=PHASES):
  """The probe count of the headline (last) phase; 0 (all probes) when there is one phase."""
  parts = split_phases(record, phases)
  return 0 if len(parts) == 1 else parts[-1][1].num_steps


def phase_verdicts(record, phases=PHASES, level=LEVEL, method=None):
  """The corrected cosine and verdict of every pair in each training phase.

  Returns {'phases': [{'label', 'first', 'last', 'count', 'pair': {'a~b': {'corrected_cos':
  interval dict, 'verdict'}}}] in training order, 'headline': the label of the last phase,
  'disagree': {'a~b': [verdict per phase]} for the pairs whose measurable verdicts differ,
  'asked': `phases`}.
  """
  out = {"phases": [], "headline": None, "disagree": {}, "probes": record.window_label(),
         "batch": record.batch_label(), "asked": int(phases)}
  names = pair_names(record.task_names)
  for label, rec in split_phases(record, phases):
    ivs = rec.corrected_cosine_intervals(None, level, method)
    out["phases"].append({
        "label": label, "first": int(rec.steps[0]), "last": int(rec.steps[-1]),
        "count": int(rec.num_steps),
        "pair": _hold_over_pairs({p: {"corrected_cos": _interval(iv), "verdict": pair_verdict(iv)}
                                  for p, iv in zip(names, ivs)})})
  out["headline"] = out["phases"][-1]["label"]
  for p in names:
    verdicts = [ph["pair"][p]["verdict"] for ph in out["phases"]]
    if len({v for v in verdicts if v != NOT_MEASURABLE}) > 1:
      out["disagree"][p] = verdicts
  return out


def format_phases(phased):
  """Per pair and phase: steps, corrected cosine [95% interval] and verdict; which phase the
  headline uses; one WARNING line per pair whose verdict changes between phases."""
  count = len(phased["phases"])
  one = "one phase" + (" (too few probes to split)" if phased.get("asked", 1) > 1 else "")
  what = {1: one, 2: "halves of the probe steps",
          3: "thirds of the probe steps"}.get(count, f"{count} equal parts of the probe steps")
  lines = [f"verdict per training phase ({what}), corrected cos [95% interval]; probes: "
           f"{phased['probes']}"]
  width = max(len(ph["label"]) for ph in phased["phases"])
  steps = [f"steps {ph['first']}-{ph['last']} ({ph['count']})" for ph in phased["phases"]]
  swidth = max(len(x) for x in steps)
  for p in phased["phases"][0]["pair"]:
    lines.append(f"  {p}")
    for ph, where in zip(phased["phases"], steps):
      e = ph["pair"][p]
      mark = "  <- headline" if ph["label"] == phased["headline"] and count > 1 else ""
      lines.append(f"    {ph['label']:<{width}}  {where:<{swidth}}  {_fmt(e['corrected_cos'])}"
                   f"  {verdict_text(e, ph['pair'])}{mark}")
  if count > 1:
    part = {2: "half", 3: "third"}.get(count, "part")
    lines.append(f"headline: {_the_phase(phased['headline'])} (the last {part} of the probe steps: "
                 "what training settled into; earlier ones hold the warm-up and first transients)")
  for p, verdicts in phased["disagree"].items():
    lines.append(f"WARNING: {p} changes verdict between phases: " + ", ".join(
        f"{ph['label']} '{v}'" for ph, v in zip(phased["phases"], verdicts))
                 + f"; the headline reads {_the_phase(phased['headline'])}")
  return "\n".join(lines)


def format_headline(phased):
  """The headline verdicts in a few lines: per pair the corrected cosine [95% interval] and
  verdict of the headline phase, then the phase-disagreement WARNING lines."""
  ph = phased["phases"][-1]
  batch = f", {phased['batch']}" if phased.get("batch") else ""
  where = f"steps {ph['first']}-{ph['last']} ({ph['count']} probes{batch})"
  if len(phased["phases"]) > 1:
    where = f"the {ph['label']} phase, {where}"
  lines = [f"task conflict: noise-corrected whole-body gradient cosine [95% interval], {where}:"]
  width = max(len(p) for p in ph["pair"])
  for p, e in ph["pair"].items():
    lines.append(f"  {p:<{width}}  {_fmt(e['corrected_cos'])}  {verdict_text(e, ph['pair'])}")
  lines += [line for line in format_phases(phased).splitlines() if line.startswith("WARNING")]
  return "\n".join(lines)


def _interval(iv):
  return {"estimate": iv.estimate, "low": iv.low, "high": iv.high, "level": iv.level,
          "n": iv.n, "p": iv.p, "method": iv.method, "note": iv.note}


def _hold_over_pairs(pairs):
  """{pair: entry} of one window, each entry given 'p_holm': its corrected cosine's p adjusted
  over the window's pairs that have one (Holm 1979; NaN without a p)."""
  from mtl import stats
  for e, p in zip(pairs.values(), stats.holm([e["corrected_cos"]["p"] for e in pairs.values()])):
    e["p_holm"] = float(p)
  return pairs


def verdict_text(entry, pairs):
  """A pair's verdict on its own interval, and where it does not hold over its window's `pairs`
  (Holm): 'conflict beyond noise; not held over the 3 pairs (Holm p 0.090)'."""
  family = sum(bool(np.isfinite(e["p_holm"])) for e in pairs.values())
  if (entry["verdict"] in (CONFLICT, AGREEMENT) and family > 1
      and not entry["p_holm"] < 1 - entry["corrected_cos"]["level"]):
    return f"{entry['verdict']}; not held over the {family} pairs (Holm p {entry['p_holm']:.3f})"
  return entry["verdict"]


def _n_eff(x, method):
  """The conflict fraction's effective number of draws and its df (None: independent draws;
  NaN below 4 defined values), which let independent runs' fractions be combined
  (stats.mean_of_shares)."""
  from mtl import stats
  if int(np.sum(~np.isnan(x))) < 4:
    return {"n_eff": float("nan"), "df": float("nan")}
  n_eff, df = stats.negative_share_draws(x, method)
  return {"n_eff": n_eff, "df": df}


def noise_floor(record, window=None, level=LEVEL, method=None):
  """Per pair over the last `window` probe steps: raw cosine window mean, conflict fraction,
  corrected cosine (each with its interval), both tasks' same-task agreement, the verdict.

  Returns {'halves', 'level', 'interval_method', 'note', 'same_task_agreement': {task: mean},
  'pair': {'a~b': {'cos', 'conflict_fraction' (with 'n_eff', 'df'), 'corrected_cos': interval dicts,
  'same_task_agreement': [a_i, a_j], 'floor_resolved': [both tasks'
  (stats.resolved_noise_floors)], 'verdict'}}}.
  """
  rec = record.last(window)
  method = method or rec.interval_method
  names = list(rec.task_names)
  agree = nan_mean(rec.same_task_agreement("body")[:, 0], axis=0)  # (T,) NaN without halves
  floors = rec.resolved_noise_floors(None, level, method)
  raw = rec.cosine_intervals(None, level, method)
  share = rec.conflict_fraction_intervals(None, level, method)
  corrected = rec.corrected_cosine_intervals(None, level, method)
  pcos = pair_values(rec.cosines("body")[:, 0])
  out = {"halves": rec.halves, "level": level, "interval_method": method,
         "note": "" if rec.halves else corrected[0].note if corrected else "",
         "same_task_agreement": {t: float(v) for t, v in zip(names, agree)}, "pair": {}}
  for k, (i, j) in enumerate(pair_indices(len(names))):
    out["pair"][f"{names[i]}~{names[j]}"] = {
        "cos": _interval(raw[k]),
        "conflict_fraction": dict(_interval(share[k]), **_n_eff(pcos[:, k], method)),
        "corrected_cos": _interval(corrected[k]),
        "same_task_agreement": [float(agree[i]), float(agree[j])],
        "floor_resolved": [bool(floors[i]), bool(floors[j])],
        "verdict": pair_verdict(corrected[k])}
  _hold_over_pairs(out["pair"])
  return out


def beyond_noise(cells, sign_only, level=LEVEL):
  """{'conflict': [key], 'agreement': [key]}: the keys of `cells` ({key: stats.Interval})
  whose interval lies below (above) 0 and holds over all of them (Holm; a NaN p never does),
  those whose bound nearest 0 lies farthest from it first (a noisy ratio past +-1 does not
  come first), those in `sign_only` ({key: bool}: a size not to be read) last."""
  from mtl import stats
  adjusted = dict(zip(cells, stats.holm([iv.p for iv in cells.values()])))
  near = lambda key: min(abs(cells[key].low), abs(cells[key].high))
  out = {}
  for side, beyond in (("conflict", lambda iv: iv.high < 0), ("agreement", lambda iv: iv.low > 0)):
    held = [key for key, iv in cells.items() if beyond(iv) and adjusted[key] < 1 - level]
    out[side] = sorted(held, key=lambda key: (bool(sign_only[key]), -near(key)))
  return out


def layers_beyond_noise(record, by="module", level=LEVEL, top=5):
  """Where in the body the pairs differ beyond noise: every (group, pair) cell of
  Record.layer_intervals (the corrected cosine with halves, else the raw mean) whose interval
  excludes 0 and holds over all the cells (Holm).

  Returns {'by', 'cells' (their number), 'measured' (whether any has an interval), 'value'
  ('corrected cos' | 'raw cos'), 'conflict' and 'agreement': up to `top` cells [{'group',
  'pair', 'cos': interval dict, 'size_readable'}], sized ones first, those whose bound nearest
  0 lies farthest from it first, then those whose size is not to be read (a task's noise floor
  at that group unresolved: the sign alone), 'conflict_count', 'agreement_count'}.
  """
  names, rows, unresolved = record.layer_intervals(by, level=level)
  cells = {(r, k): iv for r, row in enumerate(rows) for k, iv in enumerate(row)}
  out = {"by": by, "cells": len(cells), "value": "corrected cos" if record.halves else "raw cos",
         "measured": any(np.isfinite(iv.low) for iv in cells.values())}
  for side, held in beyond_noise(cells, {key: unresolved[key] for key in cells}, level).items():
    out[f"{side}_count"] = len(held)
    out[side] = [{"group": names[r], "pair": record.pair_names[k],
                  "cos": _interval(cells[r, k]), "size_readable": not unresolved[r, k]}
                 for r, k in held[:top]]
  return out


def format_layers_beyond_noise(layers, level=LEVEL):
  """The conflicts and the agreements `layers_beyond_noise` found, a line each."""
  lines = [f"per-{layers['by']} {layers['value']} beyond noise over all {layers['cells']} "
           f"({layers['by']}, pair) cells ({100 * level:.0f}% intervals, Holm):"]
  if not layers["measured"]:
    return lines[0] + " no cell has an interval (fewer than 4 probes, or none measurable)"
  for side in ("conflict", "agreement"):
    count, shown = layers[f"{side}_count"], layers[side]
    more = f", the {len(shown)} strongest" if count > len(shown) else ""
    lines.append(f"  {side}: " + (f"{count}{more}" if count else "none"))
    width = max([len(c["group"]) + len(c["pair"]) + 1 for c in shown] + [0])
    for c in shown:
      value = (_fmt(c["cos"]) if c["size_readable"] else
               f"{'< 0' if side == 'conflict' else '> 0'}: its sign alone (a noise floor there "
               "not resolved)")
      lines.append(f"    {c['group'] + ' ' + c['pair']:<{width}}  {value}")
  return "\n".join(lines)


def summarize(record, window=None, top_layers=5):
  """The numbers a report wants over the last `window` probe steps (all for None/0).

  Returns a JSON-friendly dict:
    steps: {first, last, count}; task_names; pairs: the 'a~b' names
    mean_cos: T x T whole-body cosine, mean over steps
    pair: {'a~b': {mean_cos, min_cos, max_cos, last_cos, conflict_fraction}} where
      conflict_fraction is the share of probe steps with whole-body cos < 0
    conflict_fraction: share of (step, pair) with whole-body cos < 0
    layer_conflict_fraction: share of (step, leaf, pair) with per-leaf cos < 0
    mean_norm: {task: mean whole-body gradient norm}; norm_ratio: max/min of those
    mean_update_cos: {task: mean cos(g_i, sum_j g_j)}
    most_conflicted_layers: up to `top_layers` [leaf, share of (step, pair) with cos < 0],
      most often conflicted first (Recon's per-layer count)
    layers_beyond_noise: `layers_beyond_noise` per module, up to `top_layers` a side
    noise_floor: `noise_floor`'s dict (intervals, corrected cosines, verdicts per pair); the
      same numbers also sit in each pair's entry: cos_interval, conflict_fraction_interval,
      corrected_cos (interval dict), same_task_agreement, verdict
  """
  rec = record.last(window)
  names = list(rec.task_names)
  pnames = pair_names(names)
  body = rec.grouped("body")[1][:, 0]
  cos = cosines(body)                                    # (S, T, T)
  pcos = pair_values(cos)                                # (S, P)
  leaf_pcos = pair_values(cosines(rec.gramians))         # (S, L, P)
  mean_norms = nan_mean(norms(body), axis=0)
  with np.errstate(invalid="ignore", divide="ignore"):
    ratio = float(np.max(mean_norms) / np.min(mean_norms)) if len(names) else float("nan")
  per_layer = share_negative(leaf_pcos.transpose(1, 0, 2).reshape(len(rec.layer_names), -1),
                              axis=1)
  order = sorted((i for i in range(len(per_layer)) if not np.isnan(per_layer[i])),
                 key=lambda i: -per_layer[i])[:top_layers]
  floor = noise_floor(rec)
  out = {
      "steps": {"first": int(rec.steps[0]), "last": int(rec.steps[-1]),
                "count": int(rec.num_steps), "label": rec.window_label()},
      "task_names": names,
      "pairs": pnames,
      "mean_cos": nan_mean(cos, axis=0).tolist(),
      "pair": {p: {"mean_cos": float(nan_mean(pcos[:, k])),
                   "min_cos": _nan_extreme(np.min, pcos[:, k]),
                   "max_cos": _nan_extreme(np.max, pcos[:, k]),
                   "last_cos": float(pcos[-1, k]),
                   "conflict_fraction": float(share_negative(pcos[:, k]))}
               for k, p in enumerate(pnames)},
      "conflict_fraction": float(share_negative(pcos)),
      "layer_conflict_fraction": float(share_negative(leaf_pcos)),
      "mean_norm": {t: float(v) for t, v in zip(names, mean_norms)},
      "norm_ratio": ratio,
      "mean_update_cos": {t: float(v) for t, v in
                          zip(names, nan_mean(update_cosines(body), axis=0))},
      "most_conflicted_layers": [[rec.layer_names[i], float(per_layer[i])] for i in order],
      "layers_beyond_noise": layers_beyond_noise(rec, top=top_layers),
      "noise_floor": floor,
  }
  for p, entry in out["pair"].items():
    extra = floor["pair"][p]
    entry.update(cos_interval=extra["cos"], conflict_fraction_interval=extra["conflict_fraction"],
                 corrected_cos=extra["corrected_cos"],
                 same_task_agreement=extra["same_task_agreement"], verdict=extra["verdict"])
  return out


def format_summary(summary):
  """A short text report of `summarize`'s dict."""
  names, s = summary["task_names"], summary["steps"]
  width = max([len(n) for n in names] + [7])
  lines = [f"gradient conflict, whole body, {s['label']}",
           "mean cos(g_i, g_j):",
           " " * (width + 1) + " ".join(f"{n:>{width}}" for n in names)]
  for name, row in zip(names, summary["mean_cos"]):
    cells = (f"{np.round(v, 3) + 0.0:>+{width}.3f}" for v in row)  # no '-0.000'
    lines.append(f"{name:<{width}} " + " ".join(cells))
  lines.append("per pair: mean cos [min, max], share of probes with cos < 0:")
  pw = max([len(p) for p in summary["pairs"]] + [4])
  for p in summary["pairs"]:
    e = summary["pair"][p]
    lines.append(f"  {p:<{pw}} {e['mean_cos']:+.3f} [{e['min_cos']:+.3f}, {e['max_cos']:+.3f}]"
                 f"  {100 * e['conflict_fraction']:5.1f}%")
  lines.append(f"conflicting (step, pair): {100 * summary['conflict_fraction']:.1f}% whole body, "
               f"{100 * summary['layer_conflict_fraction']:.1f}% of (step, leaf, pair)")
  lines.append("mean gradient norm: " + ", ".join(
      f"{t} {v:.3g}" for t, v in summary["mean_norm"].items())
               + f" (max/min {summary['norm_ratio']:.2f})")
  lines.append("mean cos with the summed update: " + ", ".join(
      f"{t} {v:+.3f}" for t, v in summary["mean_update_cos"].items()))
  if summary["most_conflicted_layers"]:
    lines.append("most often conflicting leaves (share of (step, pair) with cos < 0): " + ", ".join(
        f"{n} {100 * v:.0f}%" for n, v in summary["most_conflicted_layers"]))
  if "noise_floor" in summary:
    lines.append(format_noise_floor(summary["noise_floor"], summary["steps"]))
  if "layers_beyond_noise" in summary:
    lines.append(format_layers_beyond_noise(summary["layers_beyond_noise"]))
  return "\n".join(lines)


def _fmt(iv, percent=False):
  """'+0.123 [+0.080, +0.166]' (or '12.0% [5.1%, 25.3%]'); the note where there is no interval."""
  if percent:
    text = f"{100 * iv['estimate']:5.1f}%"
    bounds = f"[{100 * iv['low']:.1f}%, {100 * iv['high']:.1f}%]"
  else:
    text = "   nan" if np.isnan(iv["estimate"]) else f"{np.round(iv['estimate'], 3) + 0.0:+.3f}"
    bounds = f"[{iv['low']:+.3f}, {iv['high']:+.3f}]"
  if np.isnan(iv["low"]) or np.isnan(iv["high"]):
    return f"{text} (no interval: {iv['note']})" if iv["note"] else text
  return f"{text} {bounds}"


def format_noise_floor(floor, steps):
  """Per pair: raw cos, same-task agreements, corrected cos, conflict fraction, verdict."""
  level = f"{100 * floor['level']:.0f}%"
  lines = [f"noise floor per pair, whole body, {steps['label']}, {level} intervals:"]
  if not floor["halves"]:
    lines.append(f"  same-task agreement and corrected cosine {floor['note']}")
  for p, e in floor["pair"].items():
    a, b = p.split("~")
    agree = ", ".join(f"{t} {v:+.3f}" if np.isfinite(v) else f"{t} n/a"
                      for t, v in zip((a, b), e["same_task_agreement"]))
    corrected = _fmt(e["corrected_cos"]) if floor["halves"] else "n/a (no halves stored)"
    unresolved = [t for t, ok in zip((a, b), e["floor_resolved"]) if not ok]
    if floor["halves"] and unresolved and np.isfinite(e["corrected_cos"]["low"]):
      corrected += f" (its sign, not its size: {' and '.join(unresolved)}'s floor not resolved)"
    lines += [f"  {p}",
              f"    raw cos (window mean)  {_fmt(e['cos'])}",
              f"    same-task agreement    {agree}",
              f"    corrected cos          {corrected}",
              f"    conflict fraction      {_fmt(e['conflict_fraction'], percent=True)}",
              f"    verdict: {verdict_text(e, floor['pair'])}"]
  if floor["interval_method"] == "independent":
    how = ("independent probes (fresh probe batches: their noise is independent given the "
           "parameters): every probe its own term of the standard error (t quantile, n - 1 df); "
           "corrected cos: pooled over the window, + delta method")
  else:
    how = ("batch means (Flegal & Jones 2010): ~sqrt(n) non-overlapping batches of consecutive "
           "probe steps give the standard error (t quantile), so autocorrelated steps are not "
           "counted as independent; corrected cos: pooled over the window, batch means + delta "
           "method")
  lines += textwrap.wrap(
      f"intervals: {level}, {how}; conflict fraction: share of probes "
      "with raw cos < 0, Wilson score interval at the batch-means effective n. same-task "
      "agreement: mean cos between a task's two half-batch gradients; a task's floor is not "
      "resolved where the interval of its same-task product holds 0 (Fieller 1954). verdict "
      "from the corrected interval: 'conflict beyond noise' only when it is entirely < 0.",
      width=96)
  return "\n".join(lines)
