"""Figures of the gradient conflict between tasks (matplotlib, Agg, no pyplot state); mtl.draw
writes them to files and TensorBoard.

The window (last N probe steps) applies to the averaged figures; curves and layer x step
figures show every step of the record. Rows are leaves in network order when there are at
most MAX_ROWS of them, else sub-layers ('enc3 attn', 'dec1 norm2'...), else blocks.

Colours: red = conflict (cos < 0), blue = agreement, grey = undefined (a zero gradient, not
measurable, or a noise floor not resolved: the size not to be read). cos_matrix.png colours
the cosine on its whole range [-1, 1], so a near-orthogonal +0.03 stays near white however
small every pair is; a framed cell (and a '*' after its interval) is one whose 95% interval
excludes 0, and a caption under the matrix says so. The layer maps show where in the network
the cosine changes, so their scale is stretched to the COLOR_PERCENTILE-th percentile of the
figure's own |values|, and their colour bar states that bound. Titles carry the run's name
(its workdir's basename).

Every figure has a builder returning the matplotlib Figure (for tests and notebooks);
`to_png` turns one into PNG bytes.
"""
import io
import re
from typing import NamedTuple

import matplotlib
import numpy as np
from matplotlib import patches, ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mtl import conflicts, stats
from mtl.models import ipt

MAX_ROWS = 128
MAX_COLUMNS = 200        # layer x step maps: more probe steps are averaged into this many bins
LAYER_STEP_PROBES = 64   # a corrected layer x step column pools >= this many probes (>= 7 df)
FADE = 0.65              # layer maps: a cell whose interval holds 0 is blended this far to white
COLOR_PERCENTILE = 98    # layer maps' colour limit: this percentile of a figure's |values|
MATRIX_LIMIT = 1.0       # cos_matrix.png: the cosine's whole range, never stretched
SMOOTH_SHARE = 0.1       # conflict-fraction moving mean: this share of the probes (>= 1)
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


def symmetric_limit(values, percentile=COLOR_PERCENTILE):
  """A colour limit +-v for signed values: the `percentile`-th percentile of the finite
  |values| (1.0 when there is none, or it is 0)."""
  values = np.abs(np.asarray(values, np.float64))
  values = values[np.isfinite(values)]
  limit = float(np.percentile(values, percentile)) if values.size else 0.0
  return limit if limit > 0 else 1.0


def _title(record, text):
  return f"{record.name}: {text}" if record.name else text


def step_bins(num_steps, max_columns=MAX_COLUMNS):
  """Index arrays splitting num_steps consecutive steps into <= max_columns contiguous bins."""
  return np.array_split(np.arange(num_steps), min(num_steps, max_columns))


def moving_mean(x, width):
  """Trailing mean over the last `width` defined values at each step (NaN skipped)."""
  x = np.asarray(x, np.float64)
  ok = ~np.isnan(x)
  csum = np.concatenate([[0.0], np.cumsum(np.where(ok, x, 0.0))])
  ccount = np.concatenate([[0], np.cumsum(ok)])
  idx = np.arange(1, len(x) + 1)
  lo = np.maximum(0, idx - int(width))
  count = ccount[idx] - ccount[lo]
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(count > 0, (csum[idx] - csum[lo]) / np.maximum(count, 1), np.nan)


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


def _step_ticks(ax, edges, max_ticks=8):
  """Ticks at round steps on image columns whose k-th covers steps [edges[k], edges[k+1])
  (ascending ints): a tick sits where its step falls within its column (pixel k spans k +-
  0.5), so a change at a column's edge reads at the step where it happened."""
  last = edges[-1] - 1
  values = ticker.MaxNLocator(max_ticks, integer=True).tick_values(edges[0], last)
  values = values[(values >= edges[0]) & (values <= last)]
  ax.set_xticks(np.interp(values, edges, np.arange(len(edges))) - 0.5)
  ax.set_xticklabels([str(int(v)) for v in values], fontsize=8)


def _integer_steps(ax):
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{int(round(v))}"))


def _signed(value, digits=2):
  """'+0.12'; values that round to zero print as '+0.00', never '-0.00'."""
  return f"{np.round(value, digits) + 0.0:+.{digits}f}"


def _stretched(what, vmax):
  """A layer map's colour-bar label: its scale is stretched, and says to what."""
  return f"{what}; colour scale ±{vmax:.2g} (stretched: not ±1; beyond it clipped)"


def _text_color(value):
  return "white" if np.isfinite(value) and abs(value) > 0.55 else "black"


# ----------------------------------------------------------------------------- figures


def cosine_matrix_figure(record, window=None):
  """Task x task whole-body cosine over the last `window` probe steps: noise-corrected (pooled)
  with its 95% interval where the record has halves, else the raw window mean with its
  interval; the raw mean and the share of probes with raw cos < 0 below."""
  rec = record.last(window)
  names = list(rec.task_names)
  t = len(names)
  body = rec.grouped("body")[1][:, 0]
  cos = conflicts.cosines(body)
  raw = conflicts.nan_mean(cos, axis=0)
  share = conflicts.share_negative(cos, axis=0)
  mean_norm = conflicts.nan_mean(conflicts.norms(body), axis=0)
  agree = conflicts.nan_mean(rec.same_task_agreement("body")[:, 0], axis=0)
  intervals = rec.corrected_cosine_intervals() if rec.halves else rec.cosine_intervals()
  resolved = rec.resolved_pairs()
  shown = np.full((t, t), np.nan)
  cells, unresolved = {}, {}
  for k, (i, j) in enumerate(conflicts.pair_indices(t)):
    iv = intervals[k]
    # the size of a ratio whose denominator may be 0 is not to be read (Fieller)
    unresolved[i, j] = unresolved[j, i] = bool(
        rec.halves and np.isfinite(iv.low) and not resolved[k])
    shown[i, j] = shown[j, i] = np.nan if unresolved[i, j] else iv.estimate
    cells[i, j] = cells[j, i] = iv
  vmax = MATRIX_LIMIT
  # the pairs' tests as one family (Holm), as analyze's verdicts: a frame only where it holds
  held = stats.holm([iv.p for iv in intervals])
  held = {pair: p < 0.05 for pair, p in zip(conflicts.pair_indices(t), held)}

  # wide enough for the caption at two tasks too
  fig = Figure(figsize=(max(8.5, 3.0 + 1.75 * t), 2.4 + 1.1 * t), layout="constrained")
  ax = fig.add_subplot()
  image = ax.imshow(np.ma.masked_invalid(shown), cmap=_cmap(), vmin=-vmax, vmax=vmax)
  ax.set_xticks(np.arange(t))
  ax.set_xticklabels(names, rotation=30, ha="right")
  ax.set_yticks(np.arange(t))
  ax.set_yticklabels(names)
  for i in range(t):
    for j in range(t):
      if i == j:
        same = f"\nsame-task {_signed(agree[i])}" if np.isfinite(agree[i]) else ""
        ax.text(j, i, f"|g| {mean_norm[i]:.2g}{same}", ha="center", va="center", fontsize=7,
                color="#404040")
        continue
      iv = cells[i, j]
      beyond, digits = excludes_zero(iv), _cell_digits(iv)
      holds = beyond and held[min(i, j), max(i, j)]
      second = ((f"raw {_signed(raw[i, j], digits)}, " if rec.halves else "")
                + f"{100 * share[i, j]:.0f}% <0")
      bare = np.isfinite(iv.estimate) and not np.isfinite(iv.low)
      note = ("\nnoise floor not resolved" if unresolved[i, j] else " (no interval)" if bare
              else "" if not beyond or holds else "\nnot held over the pairs")
      # the interval on a line of its own: at 3 digits one line is wider than a cell
      shown_iv = iv.text(digits).replace(" [", "\n[", 1)
      ax.text(j, i, f"{shown_iv}{'*' if beyond else ''}{note}\n{second}",
              ha="center", va="center", fontsize=6.5 if beyond or unresolved[i, j] else 7.5,
              color="black" if unresolved[i, j] else _text_color(shown[i, j] / vmax),
              fontweight="bold" if holds else "normal")
      if beyond:  # solid: held over the pairs (Holm); dashed: its own interval only
        ax.add_patch(patches.Rectangle((j - 0.47, i - 0.47), 0.94, 0.94, fill=False,
                                       edgecolor="black", linewidth=2.2 if holds else 1.2,
                                       linestyle="-" if holds else "--"))
  what = "noise-corrected cos" if rec.halves else "mean cos"
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
               label=f"{what}, colour on its full range [-1, 1]")
  kind = ("noise-corrected whole-body gradient cosine" if rec.halves
          else "whole-body gradient cosine (no halves: no noise floor)")
  ax.set_title(_title(rec, f"{kind},\n{rec.window_label()}"), fontsize=10)
  fig.supxlabel(MATRIX_CAPTION, fontsize=7)  # constrained layout makes room for it
  return fig


MATRIX_CAPTION = ("cell: estimate [95% interval] ('no interval': fewer than 4 probes; n/a: not "
                  "measurable, a same-task agreement <= 0; uncoloured: a task's noise floor "
                  "not resolved,\nits same-task product's interval holding 0: the sign holds "
                  "as the interval says, not the size (Fieller 1954)); '*': the interval "
                  "excludes 0,\nframed bold where that holds over the pairs (Holm), dashed "
                  "where it does not. red < 0: conflict, blue > 0: agreement;\ncolour on the "
                  "cosine's full range [-1, 1]; |g|: whole-body gradient norm.")


def _cell_digits(interval):
  """2 digits, 3 for a small cosine, more where a bound of an interval that excludes 0 would
  print as 0 (its mark would seem to sit on an interval holding 0); 4 at most."""
  values = [v for v in interval[:3] if np.isfinite(v)]
  digits = 2 if values and max(map(abs, values)) >= 0.1 else 3
  while digits < 4 and excludes_zero(interval) and min(
      abs(interval.low), abs(interval.high)) < 0.5 * 10.0 ** -digits:
    digits += 1
  return digits


def excludes_zero(interval):
  """Whether an Interval lies entirely above or below 0 (False without an interval)."""
  return bool(np.isfinite(interval.low) and np.isfinite(interval.high)
              and (interval.low > 0 or interval.high < 0))


class LayerSteps(NamedTuple):
  """Every pair's layer x step map (binned_layer_maps): values, beyond and unresolved (P, rows,
  C); firsts: each column's first x (record.x_axis); corrected: values are noise-corrected."""
  names: tuple
  by: str
  values: np.ndarray
  beyond: np.ndarray
  unresolved: np.ndarray
  firsts: np.ndarray
  corrected: bool


def binned_layer_maps(record, rows="auto", max_columns=MAX_COLUMNS):
  """The layer x step maps of every pair, the probes split into contiguous columns.

  With halves each column pools >= LAYER_STEP_PROBES probes (one column in a shorter record)
  into each row's noise-corrected cosine (stats.corrected_cosine_grid, the record's
  interval_method): `beyond` where its 95% interval over the column's probes excludes 0,
  `unresolved` where a task's noise floor there is not resolved (its size not to be read).
  Without halves: the raw cosine's mean over <= max_columns columns, nothing marked.
  """
  by = rows_for(record.layer_names, rows)
  xs = record.x_axis()[0]
  if not record.halves:
    names, grams = record.grouped(by)
    cos = conflicts.pair_values(conflicts.cosines(grams))  # (S, rows, P): every pair at once
    bins = step_bins(record.num_steps, max_columns)
    values = np.moveaxis(np.stack([conflicts.nan_mean(cos[b], axis=0) for b in bins], -1), 1, 0)
    none = np.zeros(values.shape, bool)
    return LayerSteps(names, by, values, none, none, np.array([xs[b[0]] for b in bins]), False)
  names, halves = record.grouped_halves(by)
  bins = step_bins(record.num_steps, max(1, min(max_columns,
                                                record.num_steps // LAYER_STEP_PROBES)))
  pairs = conflicts.pair_indices(len(record.task_names))
  values, beyond, unresolved = [], [], []
  for b in bins:
    grid = stats.corrected_cosine_grid(halves[b], method=record.interval_method)
    values.append(grid["estimate"])
    beyond.append((grid["low"] > 0) | (grid["high"] < 0))
    floors = grid["resolved"]
    unresolved.append(np.stack([~(floors[:, i] & floors[:, j]) for i, j in pairs], -1))
  stack = lambda cells: np.moveaxis(np.stack(cells, -1), 1, 0)  # (C, rows, P) -> (P, rows, C)
  return LayerSteps(names, by, stack(values), stack(beyond), stack(unresolved),
                    np.array([xs[b[0]] for b in bins]), True)


def _cell_colours(values, faded, norm):
  """RGBA of a layer map's cells: NaN grey, `faded` cells blended FADE of the way to white."""
  colours = _cmap()(norm(np.ma.masked_invalid(values)))
  colours[faded, :3] = 1 - (1 - FADE) * (1 - colours[faded, :3])
  return colours


def _shown(maps):
  """The values a layer x step map colours: NaN where unresolved (grey)."""
  return np.where(maps.unresolved, np.nan, maps.values)


def layer_step_limit(maps):
  """One colour limit for every pair's layer x step map, so that the maps compare at a glance."""
  return symmetric_limit(_shown(maps))


def layer_step_figure(record, pair, rows="auto", vmax=None, maps=None):
  """Layer x step cosine of one task pair ('a~b' or (i, j)) over binned_layer_maps' columns
  (`maps`: those of this record, computed once for all pairs): noise-corrected per column where
  the record has halves, cells whose interval holds 0 faded and those whose noise floor is not
  resolved grey; else the raw cosine's column means."""
  k = _pair_index(record, pair)
  maps = maps or binned_layer_maps(record, rows)
  shown = _shown(maps)[k]
  vmax = vmax or symmetric_limit(shown)
  norm = matplotlib.colors.Normalize(-vmax, vmax)
  faded = maps.corrected & ~maps.beyond[k] & np.isfinite(shown)
  colours = _cell_colours(shown, faded, norm)
  fig = Figure(figsize=(10, _row_figure_height(len(maps.names)) + 0.3), layout="constrained")
  ax = fig.add_subplot()
  ax.imshow(colours, aspect="auto", interpolation="nearest")
  _label_rows(ax, maps.names, maps.by)
  _step_ticks(ax, np.append(maps.firsts, record.x_axis()[0][-1] + 1))
  per = record.num_steps / shown.shape[1]
  pooled = "pooled" if maps.corrected else "mean of"
  ax.set_xlabel(record.x_axis()[1]
                + (f" (each column: {pooled} ~{per:.0f} probes)" if per > 1 else ""))
  what = "noise-corrected cos" if maps.corrected else "raw cos"
  fig.colorbar(matplotlib.cm.ScalarMappable(norm, _cmap()), ax=ax, fraction=0.03, pad=0.02,
               label=_stretched(what, vmax))
  kind = "noise-corrected" if maps.corrected else "raw"
  ax.set_title(_title(record, f"{record.pair_names[k]}: per-{maps.by} {kind} gradient cosine, "
                      f"{record.window_label()}"), fontsize=10)
  signed = maps.unresolved[k] & maps.beyond[k]  # the sign alone, as cos_layers_pairs.png
  for marker, side in (("^", maps.values[k] > 0), ("v", maps.values[k] < 0)):
    rows, columns = np.nonzero(signed & side)
    if len(rows):
      ax.plot(columns, rows, marker=marker, markersize=3, color="black",
              markerfacecolor="white", linestyle="none")
  if maps.corrected:
    fig.supxlabel(
        "full colour: the column's 95% interval excludes 0 (each cell on its own: of cells "
        "without a true effect, 1 in 20 is); faded: it holds 0 (noise);\ngrey: a task's noise "
        "floor not resolved in that row and column (the cosine's size not to be read; Fieller "
        "1954; ▲/▼ its sign where the interval excludes 0), or not measurable"
        + ("; fewer than 4 probes: no interval" if record.num_steps < 4 else ""), fontsize=7)
  return fig


def layer_pair_intervals(record, rows="auto", level=0.95):
  """The layer x task-pair map's cells: (row names, grouping, (rows, P) values, (rows, P)
  whether each value's `level` interval over the probes excludes 0 (False without one), (rows,
  P) whether that holds over all the map's cells at family-wise level 1 - `level` (Holm),
  whether any cell has an interval, (rows, P) unresolved).

  Values: Record.layer_intervals' estimates (with halves each row's noise-corrected cosine,
  else the raw cosine's window mean).
  """
  from mtl import stats
  by = rows_for(record.layer_names, rows)
  names, cells, unresolved = record.layer_intervals(by, level=level)
  value = np.array([[iv.estimate for iv in row] for row in cells], np.float64)
  beyond = np.array([[excludes_zero(iv) for iv in row] for row in cells])
  p = np.array([[iv.p for iv in row] for row in cells], np.float64)
  measured = bool(any(np.isfinite(iv.low) for row in cells for iv in row))
  held = beyond & (stats.holm(p).reshape(p.shape) < 1 - level)  # NaN p: never held
  return names, by, value, beyond, held, measured, unresolved


def layer_pair_figure(record, window=None, rows="auto", vmax=None):
  """Layer x task-pair cosine over the last `window` probe steps (noise-corrected and pooled
  where the record has halves, else the raw window mean): cells whose 95% interval holds 0
  faded, those beyond noise over the whole map (Holm) marked, those whose size is not to be
  read (a noise floor unresolved at that row) grey with the sign alone."""
  rec = record.last(window)
  names, by, cos, beyond, held, measured, unresolved = layer_pair_intervals(rec, rows)
  shown = np.where(unresolved, np.nan, cos)
  vmax = vmax or symmetric_limit(shown)
  pnames = rec.pair_names
  norm = matplotlib.colors.Normalize(-vmax, vmax)
  faded = measured & ~beyond & np.isfinite(shown)
  colours = _cell_colours(shown, faded, norm)
  fig = Figure(figsize=(max(6.5, 3.2 + 0.75 * len(pnames)), _row_figure_height(len(names)) + 0.3),
               layout="constrained")  # at least as wide as the title and caption
  ax = fig.add_subplot()
  ax.imshow(colours, aspect="auto", interpolation="nearest")
  _label_rows(ax, names, by)
  ax.set_xticks(np.arange(len(pnames)))
  ax.set_xticklabels(pnames, rotation=40, ha="right", fontsize=8)
  numbers = len(names) * len(pnames) <= 300  # beyond, the cells are too small for text
  for r in range(len(names)):
    for c in range(len(pnames)):
      if unresolved[r, c]:  # the sign where the interval gives it, as the curves do
        if beyond[r, c]:
          ax.plot(c, r, marker="^" if cos[r, c] > 0 else "v", markersize=4, color="black",
                  markerfacecolor="black" if held[r, c] else "white", linestyle="none")
      elif numbers and np.isfinite(shown[r, c]):  # 3 digits below 0.1: +0.003 read "+0.00"
        ax.text(c, r, _signed(cos[r, c], 2 if abs(cos[r, c]) >= 0.1 else 3)
                + ("*" if held[r, c] else ""), ha="center", va="center", fontsize=6.5,
                color="#808080" if faded[r, c] else _text_color(cos[r, c] / vmax),
                fontweight="bold" if held[r, c] else "normal")
      elif held[r, c]:  # the caption's mark, without the number
        ax.plot(c, r, marker="*", markersize=4, color=_text_color(cos[r, c] / vmax),
                linestyle="none")
  what = "noise-corrected cos" if rec.halves else "mean raw cos"
  fig.colorbar(matplotlib.cm.ScalarMappable(norm, _cmap()), ax=ax, fraction=0.05, pad=0.03,
               label=_stretched(what, vmax))
  kind = (f"per-{by} noise-corrected gradient cosine,\npooled over" if rec.halves
          else f"per-{by} raw gradient cosine,\nmean over")
  ax.set_title(_title(rec, f"{kind} {rec.window_label()}"), fontsize=10)
  grey = ("\ngrey: not measurable (a same-task agreement <= 0), or a task's noise floor not "
          "resolved at that row:\nits sign alone (▲/▼ where the interval excludes 0, filled "
          "where that holds over the map; Fieller 1954)" if rec.halves else "")
  fig.supxlabel((f"full colour: the {'corrected cosine' if rec.halves else 'mean'}'s 95% "
                 "interval over the probes excludes 0, each cell on its own\n(of cells "
                 f"without a true effect, 1 in 20 is); {'bold, ' if numbers else ''}'*': that "
                 f"holds over all {cos.size} cells (Holm);\nfaded: it holds 0 (noise); "
                 f"{int(held.sum())} of {int(beyond.sum())} cells beyond noise hold{grey}")
                if measured else "fewer than 4 probes: no interval, nothing marked", fontsize=7)
  return fig


CURVE_PARTS = 10  # cos_curves.png: the corrected cosine per tenth of the probes


def _corrected_parts(ax, record, colors):
  """The noise-corrected whole-body cosine of each pair per tenth of the probes (fewer parts
  for short records: conflicts.split_phases), with its 95% interval; filled: excludes 0."""
  parts = [part for _, part in conflicts.split_phases(record, CURVE_PARTS)]
  intervals = [part.corrected_cosine_intervals() for part in parts]  # [part][pair]
  resolved = [part.resolved_pairs() for part in parts]  # [part][pair]
  num_pairs = len(record.pair_names)
  for k, name in enumerate(record.pair_names):
    for p, part in enumerate(parts):
      interval = intervals[p][k]
      width = part.steps[-1] - part.steps[0] if part.num_steps > 1 else 1
      x = 0.5 * (part.steps[0] + part.steps[-1]) + (k - (num_pairs - 1) / 2) * 0.5 * width / max(
          1, num_pairs)
      label = name if p == 0 else None  # the pair's first part names it, measurable or not
      if not np.isfinite(interval.estimate):  # a same-task agreement <= 0: no estimate
        ax.plot([x], [0.0], marker="x", markersize=6, color=colors[k], linestyle="none",
                label=label)
        continue
      low, high = interval.low, interval.high
      fill = colors[k] if excludes_zero(interval) else "white"
      if np.isfinite(low) and not resolved[p][k]:
        # a task's noise floor unresolved: the sign holds, the size is not to be read (Fieller)
        ax.plot([x], [0.0], marker="^" if interval.estimate > 0 else "v", markersize=6,
                color=colors[k], markerfacecolor=fill, linestyle="none", label=label)
        continue
      if np.isfinite(low):
        ax.plot([x, x], [max(low, -1.05), min(high, 1.05)], color=colors[k], linewidth=1.4)
      ax.plot([x], [interval.estimate], marker="o", markersize=5, color=colors[k],
              markerfacecolor=fill, label=label)
  ax.axhline(0, color="black", linewidth=0.7)
  ax.set_ylim(max(-1.05, ax.get_ylim()[0]), min(1.05, ax.get_ylim()[1]))
  ax.set_ylabel("corrected cos")
  what = ("tenth" if len(parts) == 10 else "part") + (
      f" of the probes ({len(parts)} parts)" if len(parts) > 1 else " (the probes, as one part)")
  ax.set_title(f"noise-corrected whole-body cosine per {what}, 95% interval (cut at ±1.05)\n"
               "filled: the interval excludes 0; ▲/▼ at 0: its sign only (a task's noise floor "
               "not resolved);\nx at 0: not measurable (a same-task agreement <= 0)", fontsize=9)


def curves_figure(record, ema_beta=0.1):
  """Over the probes: the noise-corrected whole-body cosine per tenth with its interval (with
  halves, along training), the raw cosine per pair (+ EMA), each task's same-task agreement,
  the conflict fraction (+ moving mean) and gradient norms. At one checkpoint (independent
  fresh batches) the x axis counts batches and nothing is smoothed over them as if in time."""
  xs, xlabel = record.x_axis()
  ema_beta = 0.0 if record.checkpoint else ema_beta
  body = record.grouped("body")[1][:, 0]
  pcos = conflicts.pair_values(conflicts.cosines(body))          # (S, P)
  leaf_pcos = conflicts.pair_values(conflicts.cosines(record.gramians))  # (S, L, P)
  marker = "o" if len(xs) < 30 else None
  # batches of one checkpoint have no order in time: markers, not lines, and no moving mean
  line = (dict(linestyle="none", marker="o", markersize=3.5) if record.checkpoint else
          dict(marker=marker, markersize=2.5))
  parts = record.halves and not record.checkpoint
  panels = ["corrected"] * parts + ["raw"] + ["agreement"] * record.halves + ["fraction", "norm"]
  fig = Figure(figsize=(10, 1.2 + 2.3 * len(panels)), layout="constrained")
  axes = dict(zip(panels, fig.subplots(len(panels), 1, sharex=True)))
  # tab20's dark hues first, then its light ones: ten pairs of distinct hues before any repeats
  palette = matplotlib.colormaps["tab20"]
  colors = [palette((2 * k) % 20 + (k // 10) % 2) for k in range(pcos.shape[1])]
  smooth = (lambda x: conflicts.ema(x, ema_beta, init=None)) if ema_beta else (lambda x: x)
  legend = dict(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))

  if parts:
    _corrected_parts(axes["corrected"], record, colors)
    axes["corrected"].legend(**legend)

  ax = axes["raw"]
  for k, name in enumerate(record.pair_names):
    if ema_beta:
      ax.plot(xs, pcos[:, k], color=colors[k], alpha=0.3, linewidth=0.8, marker=marker,
              markersize=2.5)
      ax.plot(xs, smooth(pcos[:, k]), color=colors[k], linewidth=1.8, label=name)
    else:
      ax.plot(xs, pcos[:, k], color=colors[k], linewidth=1.2, label=name, **line)
  ax.axhline(0, color="black", linewidth=0.7)
  ax.set_ylabel("raw cos")
  ax.set_title("raw whole-body gradient cosine per probe (not corrected for minibatch noise)"
               + (f"\nbold: GradVac EMA, beta={ema_beta:g}, from the first probe"
                  if ema_beta else ""), fontsize=9)
  ax.legend(**legend)

  if record.halves:  # a task's agreement with itself on the other half-batch: its signal share
    ax = axes["agreement"]
    agree = record.same_task_agreement("body")[:, 0]
    for t, name in enumerate(record.task_names):
      color = f"C{t % 10}"
      if ema_beta:
        ax.plot(xs, agree[:, t], color=color, alpha=0.3, linewidth=0.8)
      ax.plot(xs, smooth(agree[:, t]), color=color, linewidth=1.6 if ema_beta else 1.2,
              label=name, **line)
    ax.axhline(0, color="black", linewidth=0.7)
    ax.set_ylabel("same-task cos")
    ax.set_title("same-task agreement: cos of a task's two half-batch gradients\n(near 0: mostly "
                 "noise; the corrected cosine divides by it)"
                 + (f"; bold: EMA, beta={ema_beta:g}" if ema_beta else ""), fontsize=9)
    ax.legend(**legend)

  ax = axes["fraction"]
  fraction = conflicts.conflict_fraction(body)
  leaf_share = conflicts.share_negative(leaf_pcos.reshape(len(xs), -1), axis=1)
  if record.checkpoint:
    ax.plot(xs, fraction, color="C3", label="whole body: pairs with raw cos<0", **line)
    ax.plot(xs, leaf_share, color="C7", label="leaves: (leaf, pair) with raw cos<0", **line)
  else:
    width = max(1, int(round(SMOOTH_SHARE * len(xs))))
    ax.plot(xs, fraction, color="C3", alpha=0.3, linewidth=0.8, marker=marker, markersize=2.5)
    ax.plot(xs, moving_mean(fraction, width), color="C3", linewidth=1.8,
            label=f"whole body: pairs with raw cos<0\n(mean of the last {width} probes)")
    ax.plot(xs, moving_mean(leaf_share, width), color="C7", linewidth=1.4,
            label=f"leaves: (leaf, pair) with raw cos<0\n(mean of the last {width} probes)")
  ax.axhline(0.5, color="0.5", linestyle="--", linewidth=0.8, label="0.5: pure noise's share")
  ax.set_ylim(-0.03, 1.03)
  ax.set_ylabel("conflict fraction")
  ax.legend(**legend)

  ax = axes["norm"]
  body_norms = conflicts.norms(body)
  for t, name in enumerate(record.task_names):
    ax.plot(xs, body_norms[:, t], color=f"C{t % 10}", label=name, **line)
  if np.isfinite(body_norms).any() and np.all(body_norms[np.isfinite(body_norms)] > 0):
    _plain_log(ax)
  ax.set_ylabel("|g| (whole body)")
  ax.set_xlabel(xlabel)
  ax.legend(**legend)
  for ax in axes.values():
    ax.grid(alpha=0.3)
  _integer_steps(axes["norm"])
  what = "at one checkpoint" if record.checkpoint else "over training"
  fig.suptitle(_title(record, f"task conflict {what}, {record.window_label()}"), fontsize=11)
  return fig


def _plain_log(ax):
  """A log y axis labelled 20, 30, 40 (not 2x10^1, ...)."""
  ax.set_yscale("log")
  plain = ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5))
  ax.yaxis.set_major_formatter(plain)
  ax.yaxis.set_minor_formatter(plain)


def curves_png(steps, series, title="", xlabel="step", ylabel="", logy=False):
  """PNG bytes of lines_figure."""
  return to_png(lines_figure(steps, series, title, xlabel, ylabel, logy))


def lines_figure(steps, series, title="", xlabel="step", ylabel="", logy=False):
  """Line curves (e.g. losses).

  series: {name: values} sharing `steps`, {name: (steps, values)} with steps of its own, or
  {name: [(steps, values), ...]}: several lines (seeds) in the name's one colour.
  """
  fig = Figure(figsize=(8, 4.5), layout="constrained")
  ax = fig.add_subplot()
  for k, (name, values) in enumerate(series.items()):
    lines = values if isinstance(values, list) and isinstance(values[0], tuple) else [values]
    for i, line in enumerate(lines):
      xs, ys = line if isinstance(line, tuple) else (steps, line)
      ax.plot(np.asarray(xs), np.asarray(ys, np.float64), color=f"C{k % 10}",
              label=name if i == 0 else None, lw=1.2 if len(lines) == 1 else 0.9,
              alpha=1.0 if len(lines) == 1 else 0.7)
  if logy:
    _plain_log(ax)
  ax.set_title(title, fontsize=10)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  if series:
    ax.legend(fontsize=8)
  return fig
