"""A study's tables and report, from the runs that are DONE (never trains anything).

  scores.py    the numbers: per (regime column, task) the chosen run of each seed, its scores
  tables.py    the tables built from them (display rows and CSV records); cells.py their cells
  render.py    Markdown, LaTeX and CSV renderers
  document.py  report.md with tables, method notes and figures: `write(workdir)`
"""
from mtl.report.document import write
