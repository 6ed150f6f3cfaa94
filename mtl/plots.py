"""Figures of the gradient conflict between tasks (matplotlib, Agg, no pyplot state).

`draw_all(record, out_dir)` writes these PNGs into out_dir (normally <workdir>/conflicts/):

  cos_matrix.png                 task x task whole-body cosine, mean over the window; cells
                                 also give the share of probes with cos < 0, the diagonal
                                 the mean gradient norm.
  cos_layers_pairs.png           layer x task-pair mean cosine over the window: where in the
                                 network the conflict lives.
  cos_curves.png                 whole-body cosine of every pair over steps (thin) and its
                                 GradVac EMA (bold, started from the first value); conflict
                                 fraction over steps (whole body, and over all leaves);
                                 gradient norm per task (log scale).
  cos_layers_steps-<a>~<b>.png   for each task pair a~b: layer x step cosine.

The window (last N probe steps) applies to the averaged figures; curves and layer x step
figures show every step of the record. Rows are leaves in network order when there are at
most MAX_ROWS of them, else sub-layers ('enc3 attn', 'dec1 norm2'...), else blocks; the
layer figures share one symmetric colour scale so pairs compare at a glance. Red = conflict
(cos < 0), blue = agreement, grey = undefined (a zero gradient).

Every figure has a builder returning the matplotlib Figure (for tests and notebooks);
`to_png` turns one into PNG bytes.
"""
import io
import os
import re

import matplotlib
import numpy as np
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mtl import conflicts
from mtl import io as io_lib
from mtl.models import ipt

MAX_ROWS = 128
CMAP = "RdBu"  # low (conflict) red, high blue
DPI = 100


# ----------------------------------------------------------------------------- helpers


def _cmap():
  return matplotlib.colormaps[CMAP].with_extremes(bad="#d0d0d0")


def to_png(fig, dpi=DPI):
  """PNG bytes of a Figure."""
  if not isinstance(fig.canvas, FigureCanvasAgg):
    FigureCanvasAgg(fig)  # render with Agg whatever the global backend
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi)
  return buf.getvalue()


def save_png(fig, path, dpi=DPI):
  """Write a Figure as PNG atomically; returns the path."""
  data = to_png(fig, dpi)
  io_lib.write_atomic(path, lambda f: f.write(data))
  return path


def short_name(name):
  """A compact row label: 'encoder/0/attn/query/kernel' -> 'enc0 attn.query.kernel'."""
  parts = name.split("/")
  if parts[0] in ("encoder", "decoder") and len(parts) > 1 and parts[1].isdigit():
    head, rest = parts[0][:3] + parts[1], ".".join(parts[2:])
    return f"{head} {rest}" if rest else head
  block = re.fullmatch(r"(encoder|decoder)_(\d+)", name)  # a block name: 'encoder_3' -> 'enc3'
  if block:
    return block.group(1)[:3] + block.group(2)
  return ".".join(parts)


def rows_for(layer_names, rows="auto"):
  """The grouping used for figure rows: 'auto' picks the finest with <= MAX_ROWS rows."""
  if rows != "auto":
    ipt.group_keys(layer_names, rows)  # validates
    return rows
  for by in ("layer", "module"):
    if len(set(ipt.group_keys(layer_names, by))) <= MAX_ROWS:
      return by
  return "block"


def symmetric_limit(values, floor=0.1):
  """A colour limit for cosines: the 99th percentile of |values|, up to a 0.1 step, <= 1."""
  values = np.abs(np.asarray(values, np.float64))
  values = values[np.isfinite(values)]
  if values.size == 0:
    return 1.0
  return float(min(1.0, max(floor, np.ceil(np.percentile(values, 99) * 10) / 10)))


def _pair_index(record, pair):
  pairs = conflicts.pair_indices(len(record.task_names))
  if isinstance(pair, str):
    names = record.pair_names
    if pair not in names:
      raise ValueError(f"pair {pair!r} not in this record; valid: {', '.join(names)}")
    return names.index(pair)
  i, j = sorted(pair)
  if (i, j) not in pairs:
    raise ValueError(f"pair {pair!r}; valid: index pairs (i, j), i != j, below "
                     f"{len(record.task_names)}")
  return pairs.index((i, j))


def _row_figure_height(num_rows):
  return max(3.2, 1.6 + 0.14 * num_rows)


def _label_rows(ax, names, by):
  size = 8 if len(names) <= 40 else 6.5 if len(names) <= 90 else 5.5
  ax.set_yticks(np.arange(len(names)))
  ax.set_yticklabels([short_name(n) for n in names], fontsize=size)
  if by in ("layer", "module"):  # lines between blocks keep the network's structure visible
    blocks = [ipt.block_of(n) for n in names]
    for r in range(1, len(blocks)):
      if blocks[r] != blocks[r - 1]:
        ax.axhline(r - 0.5, color="black", linewidth=0.6)


def _step_ticks(ax, steps, max_ticks=8):
  if len(steps) == 0:
    return
  where = np.unique(np.linspace(0, len(steps) - 1, min(max_ticks, len(steps))).round().astype(int))
  ax.set_xticks(where)
  ax.set_xticklabels([str(int(steps[k])) for k in where], fontsize=8)


def _signed(value, digits=2):
  """'+0.12'; values that round to zero print as '+0.00', never '-0.00'."""
  return f"{np.round(value, digits) + 0.0:+.{digits}f}"


def _text_color(value):
  return "white" if np.isfinite(value) and abs(value) > 0.55 else "black"


# ----------------------------------------------------------------------------- figures


def cosine_matrix_figure(record, window=None):
  """Task x task whole-body cosine averaged over the last `window` probe steps."""
  rec = record.last(window)
  names = list(rec.task_names)
  t = len(names)
  body = rec.grouped("body")[1][:, 0]
  cos = conflicts.cosines(body)
  mean = conflicts.nan_mean(cos, axis=0)
  share = conflicts.share_negative(cos, axis=0)
  mean_norm = conflicts.nan_mean(conflicts.norms(body), axis=0)
  shown = mean.copy()
  shown[np.diag_indices(t)] = np.nan  # the diagonal is 1 by definition; it shows norms instead

  fig = Figure(figsize=(2.6 + 1.15 * t, 1.9 + 1.0 * t), layout="constrained")
  ax = fig.add_subplot()
  image = ax.imshow(np.ma.masked_invalid(shown), cmap=_cmap(), vmin=-1, vmax=1)
  ax.set_xticks(np.arange(t))
  ax.set_xticklabels(names, rotation=30, ha="right")
  ax.set_yticks(np.arange(t))
  ax.set_yticklabels(names)
  for i in range(t):
    for j in range(t):
      if i == j:
        ax.text(j, i, f"|g|\n{mean_norm[i]:.2g}", ha="center", va="center", fontsize=7.5,
                color="#404040")
      elif np.isfinite(mean[i, j]):
        ax.text(j, i, f"{_signed(mean[i, j])}\n{100 * share[i, j]:.0f}% <0", ha="center",
                va="center", fontsize=8.5, color=_text_color(mean[i, j]))
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="cos(g_i, g_j)")
  ax.set_title(f"whole-body gradient cosine, mean over {rec.window_label()}", fontsize=10)
  return fig


def layer_step_figure(record, pair, rows="auto", vmax=None):
  """Layer x step cosine of one task pair ('a~b' or (i, j))."""
  k = _pair_index(record, pair)
  by = rows_for(record.layer_names, rows)
  names, grams = record.grouped(by)
  cos = conflicts.pair_values(conflicts.cosines(grams))[..., k].T  # (rows, S)
  vmax = vmax or symmetric_limit(cos)
  fig = Figure(figsize=(10, _row_figure_height(len(names))), layout="constrained")
  ax = fig.add_subplot()
  image = ax.imshow(np.ma.masked_invalid(cos), cmap=_cmap(), vmin=-vmax, vmax=vmax,
                    aspect="auto", interpolation="nearest")
  _label_rows(ax, names, by)
  _step_ticks(ax, record.steps)
  ax.set_xlabel("step")
  fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02,
               label=f"cos (colours clipped at ±{vmax:g})")
  ax.set_title(f"{record.pair_names[k]}: per-{by} gradient cosine, {record.window_label()}",
               fontsize=10)
  return fig


def layer_pair_figure(record, window=None, rows="auto", vmax=None):
  """Layer x task-pair mean cosine over the last `window` probe steps."""
  rec = record.last(window)
  by = rows_for(rec.layer_names, rows)
  names, grams = rec.grouped(by)
  cos = conflicts.nan_mean(conflicts.pair_values(conflicts.cosines(grams)), axis=0)  # (rows, P)
  vmax = vmax or symmetric_limit(cos)
  pnames = rec.pair_names
  fig = Figure(figsize=(3.2 + 0.75 * len(pnames), _row_figure_height(len(names))),
               layout="constrained")
  ax = fig.add_subplot()
  image = ax.imshow(np.ma.masked_invalid(cos), cmap=_cmap(), vmin=-vmax, vmax=vmax,
                    aspect="auto", interpolation="nearest")
  _label_rows(ax, names, by)
  ax.set_xticks(np.arange(len(pnames)))
  ax.set_xticklabels(pnames, rotation=40, ha="right", fontsize=8)
  if len(names) * len(pnames) <= 300:
    for r in range(len(names)):
      for c in range(len(pnames)):
        if np.isfinite(cos[r, c]):
          ax.text(c, r, _signed(cos[r, c]), ha="center", va="center", fontsize=6.5,
                  color=_text_color(cos[r, c] / vmax))
  fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03,
               label=f"mean cos (colours clipped at ±{vmax:g})")
  ax.set_title(f"per-{by} gradient cosine,\nmean over {rec.window_label()}", fontsize=10)
  return fig


def curves_figure(record, ema_beta=0.1):
  """Whole-body cosine per pair (+ EMA), conflict fraction and gradient norms over steps."""
  steps = record.steps
  body = record.grouped("body")[1][:, 0]
  pcos = conflicts.pair_values(conflicts.cosines(body))          # (S, P)
  leaf_pcos = conflicts.pair_values(conflicts.cosines(record.gramians))  # (S, L, P)
  marker = "o" if len(steps) < 30 else None
  fig = Figure(figsize=(10, 8.2), layout="constrained")
  axes = fig.subplots(3, 1, sharex=True)
  palette = matplotlib.colormaps["tab10" if pcos.shape[1] <= 10 else "tab20"]
  colors = [palette(k % palette.N) for k in range(pcos.shape[1])]

  ax = axes[0]
  for k, name in enumerate(record.pair_names):
    if ema_beta:
      ax.plot(steps, pcos[:, k], color=colors[k], alpha=0.3, linewidth=0.8, marker=marker,
              markersize=2.5)
      ax.plot(steps, conflicts.ema(pcos[:, k], ema_beta, init=None), color=colors[k], linewidth=1.8,
              label=name)
    else:
      ax.plot(steps, pcos[:, k], color=colors[k], linewidth=1.2, marker=marker, markersize=2.5,
              label=name)
  ax.axhline(0, color="black", linewidth=0.7)
  ax.set_ylabel("whole-body cos")
  ax.set_title("gradient cosine per task pair" + (f" (bold: GradVac EMA, beta={ema_beta:g})"
                                                   if ema_beta else ""), fontsize=10)
  ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))

  ax = axes[1]
  ax.plot(steps, conflicts.conflict_fraction(body), color="C3", marker=marker, markersize=2.5,
          label="whole body: pairs with cos<0")
  leaf_share = conflicts.share_negative(leaf_pcos.reshape(len(steps), -1), axis=1)
  ax.plot(steps, leaf_share, color="C7", marker=marker, markersize=2.5,
          label="leaves: (leaf, pair) with cos<0")
  ax.set_ylim(-0.03, 1.03)
  ax.set_ylabel("conflict fraction")
  ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))

  ax = axes[2]
  body_norms = conflicts.norms(body)
  for t, name in enumerate(record.task_names):
    ax.plot(steps, body_norms[:, t], marker=marker, markersize=2.5, label=name)
  if np.isfinite(body_norms).any() and np.all(body_norms[np.isfinite(body_norms)] > 0):
    ax.set_yscale("log")
    plain = ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5))  # 40, not 4x10^1
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
  ax.set_ylabel("|g| (whole body)")
  ax.set_xlabel("step")
  ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
  for ax in axes:
    ax.grid(alpha=0.3)
  fig.suptitle(f"task conflict over training, {record.window_label()}", fontsize=11)
  return fig


def curves_png(steps, series, title="", xlabel="step", ylabel="", logy=False):
  """PNG bytes of line curves (e.g. losses).

  series: {name: values} sharing `steps`, or {name: (steps, values)} with steps of its own.
  """
  fig = Figure(figsize=(8, 4.5), layout="constrained")
  ax = fig.add_subplot()
  for name, values in series.items():
    xs, ys = values if isinstance(values, tuple) else (steps, values)
    ax.plot(np.asarray(xs), np.asarray(ys, np.float64), label=name)
  if logy:
    ax.set_yscale("log")
  ax.set_title(title, fontsize=10)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  if series:
    ax.legend(fontsize=8)
  return to_png(fig)


# ----------------------------------------------------------------------------- all


def pair_file_name(pair_name):
  return f"cos_layers_steps-{pair_name}.png"


def figures(record, window=None, ema_beta=0.1, rows="auto"):
  """[(file name, PNG bytes)] of every figure of a record (see the module docstring)."""
  if record.num_steps == 0:
    raise ValueError("no probe steps to draw")
  by = rows_for(record.layer_names, rows)
  layer_cos = conflicts.pair_values(conflicts.cosines(record.grouped(by)[1]))
  vmax = symmetric_limit(layer_cos)  # one scale for every layer figure
  drawn = [("cos_matrix.png", cosine_matrix_figure(record, window)),
           ("cos_layers_pairs.png", layer_pair_figure(record, window, by, vmax)),
           ("cos_curves.png", curves_figure(record, ema_beta))]
  drawn += [(pair_file_name(name), layer_step_figure(record, name, by, vmax))
            for name in record.pair_names]
  return [(name, to_png(fig)) for name, fig in drawn]


def _write(out_dir, drawn):
  os.makedirs(out_dir, exist_ok=True)
  paths = [os.path.join(out_dir, name) for name, _ in drawn]
  for path, (_, data) in zip(paths, drawn):
    io_lib.write_atomic(path, lambda f, data=data: f.write(data))
  return paths


def draw_all(record, out_dir, window=None, ema_beta=0.1, rows="auto"):
  """Write every figure into out_dir (atomically); returns the written paths."""
  return _write(out_dir, figures(record, window, ema_beta, rows))


def draw_and_log(record, out_dir, writer, window=None, ema_beta=0.1):
  """Figures into out_dir and TensorBoard (images at the last probe step), and per probe step
  the whole-body cosine of every pair and the conflict fraction as scalars; returns the paths."""
  drawn = figures(record, window, ema_beta)
  paths = _write(out_dir, drawn)
  last = int(record.steps[-1])
  for name, data in drawn:
    writer.image(last, "conflicts/" + os.path.splitext(name)[0], data)
  body = conflicts.pair_values(record.cosines("body")[:, 0])
  fraction = record.conflict_fraction("body")[:, 0]
  for s, step in enumerate(record.steps):
    values = {f"conflicts/cos/{p}": body[s, k] for k, p in enumerate(record.pair_names)}
    values["conflicts/conflict_fraction"] = fraction[s]
    writer.scalars(int(step), values)
  return paths
