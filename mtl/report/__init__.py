"""A study's tables and report, from the runs that are DONE (never trains anything).

  scores.py    the numbers: per (regime column, task) the chosen run of each seed, its scores
  tables.py    the tables built from them (display rows and CSV records); cells.py their cells
  accounting.py  the compute and lr-selection tables
  render.py    Markdown, LaTeX and CSV renderers
  remedies.py  the remedies tables: aggregators / loss weightings against scratch, predictors
  findings.py  the findings page: the four questions, each answered from the tables
  figures.py   its figures (paired Δ dot plot, corrected cosine per phase)
  document.py  report.md with tables, method notes and figures: `write(workdir)`
"""
from mtl.report.document import write
