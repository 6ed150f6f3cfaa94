"""The findings page's figures (matplotlib, Agg, no pyplot state), from findings.Findings:

  findings-delta.png     questions 2-4 as a dot plot: one row per task and comparison, the
                         paired Δ PSNR (dB) at its dot, its 95% interval as a bar, a line at 0;
                         a filled dot where the interval excludes 0, a hollow one where it does
                         not (or where one seed gives no interval); a row's label says where its
                         verdict did not hold over the question's other Δs (Holm)
  findings-conflict.png  question 1 as small multiples: a panel per task pair (and pre-training),
                         the training phases on x, the noise-corrected cosine with its 95%
                         interval (each seed's estimate beside it), a line at 0, the headline
                         phase named; every panel on the same y scale, which always holds 0

Scales are honest: 0 is always in view, the limits come from the intervals themselves (never
clipped: a corrected cosine's interval may pass +-1, and the figure shows it), and panels that
are compared share one axis. Every builder returns a Figure; `write` saves the PNGs.
"""
import io
import math
import os
import textwrap

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from mtl import files
from mtl.report import findings

DPI = 100
PAD = 0.08            # share of the data range added on each side of an axis
SIGNIFICANT = "#1f4e9c"
SEED_COLOR, SEED_MARKER = "0.45", "x"
COLUMNS = 3           # small multiples per row
LEGEND_INCHES = 0.35  # the legend's strip under the axes
# 9-point title text: characters per inch of figure width (margins kept), height of a line.
TITLE_CHARS_PER_INCH, TITLE_LINE_INCHES = 13, 0.17
FIGURE_DELTAS = "findings-delta.png"
FIGURE_CONFLICT = "findings-conflict.png"


def to_png(fig, dpi=DPI):
  """PNG bytes of a Figure (rendered with Agg whatever the global backend)."""
  if not isinstance(fig.canvas, FigureCanvasAgg):
    FigureCanvasAgg(fig)
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi)
  return buf.getvalue()


def _limits(intervals):
  """(low, high) holding 0 and every finite estimate and bound, padded."""
  values = [0.0] + [v for iv in intervals for v in (iv.estimate, iv.low, iv.high)
                    if math.isfinite(v)]
  lo, hi = min(values), max(values)
  span = hi - lo or 1.0
  return lo - PAD * span, hi + PAD * span


def _has_interval(iv):
  return math.isfinite(iv.low) and math.isfinite(iv.high)


def _excludes_zero(iv):
  return _has_interval(iv) and (iv.low > 0 or iv.high < 0)


def _dot(ax, x, y, iv, vertical):
  """The estimate and its interval bar; filled where the interval excludes 0."""
  if not math.isfinite(iv.estimate):  # said where the dot would be, on the zero line
    at = (x, 0.0) if vertical else (0.0, y)
    ax.plot(*at, **MISSING, zorder=3)
    ax.annotate("not measurable", at, xytext=(6, 5), textcoords="offset points", fontsize=8,
                color="0.3")
    return
  if _has_interval(iv):
    err = [[iv.estimate - iv.low], [iv.high - iv.estimate]]
    kw = dict(yerr=err) if vertical else dict(xerr=err)
    ax.errorbar([x], [y], fmt="none", ecolor="0.3", elinewidth=1.2, capsize=3, **kw)
    filled = _excludes_zero(iv)
    ax.plot([x], [y], "o", markersize=7, markeredgecolor=SIGNIFICANT,
            markerfacecolor=SIGNIFICANT if filled else "white", zorder=3)
  else:  # neither filled nor hollow: there is no interval to read
    ax.plot([x], [y], **BARE, zorder=3)


BARE = dict(marker="s", ls="", markersize=6, markerfacecolor="0.75", markeredgecolor="0.35")
MISSING = dict(marker="x", ls="", markersize=7, color="0.35")


def _bare(intervals):
  """Whether any of these estimates lacks an interval."""
  return any(math.isfinite(iv.estimate) and not _has_interval(iv) for iv in intervals)


def _legend(fig, seeds=False, bare=False):
  """Filled / hollow (a grey square: no interval; a seed's own estimate), under the axes (never
  over a dot), in rows of two where one row would not fit the figure; returns the rows."""
  handles = [Line2D([], [], marker="o", ls="", color=SIGNIFICANT, label="95% CI excludes 0"),
             Line2D([], [], marker="o", ls="", markerfacecolor="white",
                    markeredgecolor=SIGNIFICANT, label="95% CI holds 0: not enough evidence")]
  if bare:
    handles.append(Line2D([], [], **BARE, label="no CI: too few seeds or probes"))
  if seeds:
    handles.append(Line2D([], [], marker=SEED_MARKER, ls="", color=SEED_COLOR,
                          label="one seed's estimate"))
  # an entry takes about 2.6 inches at fontsize 8: four did not fit 7.5 (both ends cut off)
  ncol = len(handles) if 2.6 * len(handles) <= fig.get_figwidth() else 2
  fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
  return math.ceil(len(handles) / ncol)


def _zero_line(ax, vertical):
  (ax.axvline if vertical else ax.axhline)(0.0, color="0.15", lw=1, zorder=2)


def delta_figure(answers, label="PSNR"):
  """Dot plot of question 2-4 answers (findings.Answer): Δ (dB) with 95% intervals."""
  rows = [(_row_label(a), a.interval) for a in answers]
  fig = Figure(figsize=(8.5, 1.5 + 0.45 * max(len(rows), 1)))
  ax = fig.add_subplot()
  _zero_line(ax, vertical=True)
  for k, (_, iv) in enumerate(rows):
    y = len(rows) - 1 - k  # the first answer on top
    _dot(ax, iv.estimate, y, iv, vertical=False)
    if not _has_interval(iv) and math.isfinite(iv.estimate):
      ax.annotate(f"{iv.n} seed{'s' if iv.n != 1 else ''}: no CI", (iv.estimate, y),
                  xytext=(6, 5), textcoords="offset points", fontsize=8, color="0.3")
  ax.set_yticks(range(len(rows)), [r for r, _ in reversed(rows)], fontsize=8)
  ax.set_ylim(-0.7, len(rows) - 0.3)
  ax.set_xlim(*_limits([iv for _, iv in rows]))
  seeds = sorted({iv.n for _, iv in rows}) or [0]
  seeds = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
  ax.set_xlabel(f"paired Δ {label} (dB): mean of {seeds} paired seeds, 95% CI")
  # over the figure, not the axes: long row labels push the axes right, and its title off
  fig.suptitle("Paired Δ per task (Δ > 0: the first named does better)", fontsize=10)
  ax.grid(axis="x", color="0.9")
  legend_rows = _legend(fig, bare=_bare([iv for _, iv in rows]))
  fig.tight_layout(rect=(0, LEGEND_INCHES * legend_rows / fig.get_figheight(), 1, 1))
  return fig


def _row_label(answer):
  # a filled dot is no verdict where the arms are not compared alike, or where the question's
  # other Δs are counted (findings.family_verdicts): the label says so
  untuned = (" (lr sweeps incomplete)" if answer.verdict.startswith(findings.NOT_YET) else
             " (unequal budgets)"
             if answer.verdict.startswith(f"{findings.NO_VERDICT}: unequal budgets") else
             " (a seed left out: an arm diverged)"
             if answer.verdict.startswith(findings.NO_VERDICT) else
             " (not over the others: Holm)"
             if answer.verdict.startswith(findings.NOT_HELD) else "")
  task = f"{answer.subject} on {answer.test_set}" if answer.test_set else answer.subject
  if answer.question == 3:
    return f"{task}: from related − from unrelated{untuned}"
  if answer.question == 4:
    return f"{task}: {answer.source} − joint{untuned}"
  return f"{task}: {findings.finetune_words(answer.source)} − scratch{untuned}"


def conflict_figure(answers, note=""):
  """Small multiples of question 1 answers (findings.Answer with phases): a panel per pair."""
  n = len(answers)
  cols = min(COLUMNS, n)
  rows = math.ceil(n / cols)
  width = max(3.2 * cols + 0.6, 7.5)  # room for the note's lines beside one or two panels
  title = ("Noise-corrected cosine per training phase, 95% CI over seeds where there is one "
           "(< 0: conflict)")
  lines = [title] + textwrap.wrap(note, int(TITLE_CHARS_PER_INCH * width))
  fig = Figure(figsize=(width, 2.6 * rows + 0.6 + TITLE_LINE_INCHES * len(lines)))
  axes = fig.subplots(rows, cols, sharey=True, squeeze=False)
  limits = _limits([ph["interval"] for a in answers for ph in a.phases]
                   + [r._replace(low=r.estimate, high=r.estimate)  # the seeds' dots only
                      for a in answers for ph in a.phases for r in ph.get("per_run", ())])
  for k, ax in enumerate(axes.ravel()):
    if k >= n:
      ax.set_visible(False)
      continue
    a = answers[k]
    _zero_line(ax, vertical=False)
    for x, ph in enumerate(a.phases):
      _dot(ax, x, ph["interval"].estimate, ph["interval"], vertical=True)
      if _bare([ph["interval"]]):
        ax.annotate("no CI", (x, ph["interval"].estimate), xytext=(6, 5),
                    textcoords="offset points", fontsize=8, color="0.3")
      seeds = _seed_estimates(ph)
      if len(seeds) > 1:  # the spread the interval holds: seeds that differ show it
        ax.plot([x + 0.18] * len(seeds), seeds, SEED_MARKER, color=SEED_COLOR, markersize=5)
    # the headline in numbers too: a wider phase's interval can set the shared scale
    labels = [ph["label"] + _seed_count(ph) + (f"\n(headline)\n{ph['interval'].text(3)}"
                                              if x == len(a.phases) - 1 and len(a.phases) > 1
                                              else "")
              for x, ph in enumerate(a.phases)]
    ax.set_xticks(range(len(a.phases)), labels, fontsize=8)
    ax.set_xlim(-0.5, len(a.phases) - 0.5)
    ax.set_ylim(*limits)
    # a filled headline dot is no verdict where the other pairs are counted (Holm), or where
    # a pre-training sweep is not complete
    held = ("\nheadline not over the others: Holm" if a.verdict.startswith(findings.NOT_HELD)
            else "\nnot yet: lr sweep incomplete" if a.verdict.startswith(findings.NOT_YET)
            else "")
    ax.set_title(f"{a.subject} ({a.source}){held}", fontsize=9)
    ax.grid(axis="y", color="0.9")
    if k % cols == 0:
      ax.set_ylabel("corrected cosine")
  drawn_seeds = any(len(_seed_estimates(ph)) > 1 for a in answers for ph in a.phases)
  legend_rows = _legend(fig, seeds=drawn_seeds,
                        bare=_bare([ph["interval"] for a in answers for ph in a.phases]))
  fig.suptitle("\n".join(lines), fontsize=9)
  fig.tight_layout(rect=(0, LEGEND_INCHES * legend_rows / fig.get_figheight(), 1, 1))
  return fig


def _seed_estimates(phase):
  """The estimates of the seeds that measured a phase (a panel draws them as dots)."""
  return [r.estimate for r in phase.get("per_run", ()) if math.isfinite(r.estimate)]


def _seed_count(phase):
  """'\n(k of n seeds)' under a phase estimated from fewer seeds than the study ran (a seed's
  phase not measurable): its interval is then that of fewer seeds, or one seed's own."""
  k, n = len(_seed_estimates(phase)), len(phase.get("per_run", ()))
  return f"\n({k} of {n} seeds)" if 0 < k < n else ""


def write(findings, figures_dir, label="PSNR"):
  """Write the findings' figures into figures_dir; returns [(path, title)] of those drawn."""
  drawn = []
  deltas = findings.answers[2] + findings.answers[3] + findings.answers[4]
  if deltas:
    drawn.append((FIGURE_DELTAS, "paired Δ per task with 95% intervals",
                  delta_figure(deltas, label)))
  if findings.answers[1]:
    drawn.append((FIGURE_CONFLICT, "corrected cosine per training phase",
                  conflict_figure(findings.answers[1], findings.probe_note)))
  out = []
  os.makedirs(figures_dir, exist_ok=True)
  for name, title, fig in drawn:
    path = os.path.join(figures_dir, name)
    data = to_png(fig)
    files.write_atomic(path, lambda f, data=data: f.write(data))
    out.append((path, title))
  return out
