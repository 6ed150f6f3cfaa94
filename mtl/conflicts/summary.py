"""Text and numbers of a conflict record for reports: window means, shares, top layers, and
per pair the noise floor: intervals, the corrected cosine and a verdict."""
import textwrap

import numpy as np

from mtl.gramians import (cosines, nan_mean, norms, pair_indices, pair_names,
                                    pair_values, share_negative, update_cosines)

LEVEL = 0.95
INTERVAL_METHOD = "batch_means"
CONFLICT = "conflict beyond noise"
AGREEMENT = "agreement beyond noise"
UNDETECTED = "no conflict detectable above the noise floor"
NOT_MEASURABLE = "not measurable"


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


def _interval(iv):
  return {"estimate": iv.estimate, "low": iv.low, "high": iv.high, "level": iv.level,
          "n": iv.n, "method": iv.method, "note": iv.note}


def noise_floor(record, window=None, level=LEVEL, method=INTERVAL_METHOD):
  """Per pair over the last `window` probe steps: raw cosine window mean, conflict fraction,
  corrected cosine (each with its interval), both tasks' same-task agreement, the verdict.

  Returns {'halves', 'level', 'interval_method', 'note', 'same_task_agreement': {task: mean},
  'pair': {'a~b': {'cos', 'conflict_fraction', 'corrected_cos': interval dicts,
  'same_task_agreement': [a_i, a_j], 'verdict'}}}.
  """
  rec = record.last(window)
  names = list(rec.task_names)
  agree = nan_mean(rec.same_task_agreement("body")[:, 0], axis=0)  # (T,) NaN without halves
  raw = rec.cosine_intervals(None, level, method)
  share = rec.conflict_fraction_intervals(None, level)
  corrected = rec.corrected_cosine_intervals(None, level, method)
  out = {"halves": rec.halves, "level": level, "interval_method": method,
         "note": "" if rec.halves else corrected[0].note if corrected else "",
         "same_task_agreement": {t: float(v) for t, v in zip(names, agree)}, "pair": {}}
  for k, (i, j) in enumerate(pair_indices(len(names))):
    out["pair"][f"{names[i]}~{names[j]}"] = {
        "cos": _interval(raw[k]), "conflict_fraction": _interval(share[k]),
        "corrected_cos": _interval(corrected[k]),
        "same_task_agreement": [float(agree[i]), float(agree[j])],
        "verdict": pair_verdict(corrected[k])}
  return out


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
                "count": int(rec.num_steps)},
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
  lines = [f"gradient conflict, whole body, steps {s['first']}-{s['last']} ({s['count']} probes)",
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
  lines = [f"noise floor per pair, whole body, steps {steps['first']}-{steps['last']} "
           f"({steps['count']} probes), {level} intervals:"]
  if not floor["halves"]:
    lines.append(f"  same-task agreement and corrected cosine {floor['note']}")
  for p, e in floor["pair"].items():
    a, b = p.split("~")
    agree = ", ".join(f"{t} {v:+.3f}" if np.isfinite(v) else f"{t} n/a"
                      for t, v in zip((a, b), e["same_task_agreement"]))
    corrected = _fmt(e["corrected_cos"]) if floor["halves"] else "n/a (no halves stored)"
    lines += [f"  {p}",
              f"    raw cos (window mean)  {_fmt(e['cos'])}",
              f"    same-task agreement    {agree}",
              f"    corrected cos          {corrected}",
              f"    conflict fraction      {_fmt(e['conflict_fraction'], percent=True)}",
              f"    verdict: {e['verdict']}"]
  lines += textwrap.wrap(
      f"intervals: {level}, {floor['interval_method'].replace('_', ' ')} (Flegal & Jones 2010): "
      "~sqrt(n) non-overlapping batches of consecutive probe steps give the standard error "
      "(t quantile), so autocorrelated steps are not counted as independent; corrected cos: "
      "pooled over the window, batch means + delta method; conflict fraction: share of probes "
      "with raw cos < 0, Wilson score interval at the batch-means effective n. same-task "
      "agreement: mean cos between a task's two half-batch gradients. verdict from the "
      "corrected interval: 'conflict beyond noise' only when it is entirely < 0.", width=96)
  return "\n".join(lines)
