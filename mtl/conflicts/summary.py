"""Text and numbers of a conflict record for reports: window means, shares, top layers."""
import numpy as np

from mtl.conflicts.gramians import (cosines, nan_mean, norms, pair_names, pair_values,
                                    share_negative, update_cosines)


def _nan_extreme(fn, x):
  x = x[~np.isnan(x)]
  return float(fn(x)) if x.size else float("nan")


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
  return {
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
  }


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
  return "\n".join(lines)
