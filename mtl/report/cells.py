"""Table cells and number formats of the report: bold cells, a Table (display rows, one value
per cell, + CSV records; a paper layout for its .tex), means +- std, signed deltas with their
intervals, p-values."""
import dataclasses
import math


class Bold(str):
  """A table cell shown in bold."""


@dataclasses.dataclass
class Table:
  name: str
  title: str
  header: list
  rows: list             # display cells (str or Bold), one value per cell
  records: list          # CSV rows (dicts of raw values)
  notes: list = dataclasses.field(default_factory=list)
  csv_columns: list = None   # None: the records' keys in order of appearance
  spearman: object = None    # conflicts: the stats.Spearman of cosine vs transfer, when n >= 3
  warnings: list = dataclasses.field(default_factory=list)  # lines the report shows first
  column_groups: list = None  # LaTeX: [(label, span)] over the header (first: the row labels)
  latex: "Table" = None       # the table the .tex file holds instead (a paper's layout)


def _fmt(value, digits):
  return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _signed(value, digits):
  return "–" if value is None or not math.isfinite(value) else f"{value:+.{digits}f}"


def _pm(stats_, digits):
  mean, std, n = stats_
  return _fmt(mean, digits) + (f" ± {std:.{digits}f}" if n > 1 else "")


def format_p(p):
  """'p = 0.031', 'p < 0.001' (never 'p = 0.0'), '–' for NaN."""
  if p is None or not math.isfinite(p):
    return "–"
  return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def delta_text(iv, digits=2):
  """'+0.42 [+0.10, +0.74], p = 0.031' or '+0.42 (1 seed: no CI)'."""
  if not math.isfinite(iv.low):
    return f"{_signed(iv.estimate, digits)} ({iv.n} seed{'s' if iv.n != 1 else ''}: no CI)"
  return (f"{_signed(iv.estimate, digits)} [{_signed(iv.low, digits)}, "
          f"{_signed(iv.high, digits)}], {format_p(iv.p)}")
