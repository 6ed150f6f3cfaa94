"""Studies: a grid of runs (regimes x tasks x learning rates x seeds), expanded and run in order.

  spec.py     the schema: fields and their validation
  runs.py     its expansion into runs and their run configs
  workdir.py  a study bound to its directory: run states, results, learning-rate selection
  runner.py   running the runs (subprocesses, signals, resume) and dry runs
"""
from mtl.study.runner import Runner, dry_run, matching, summary_line
from mtl.study.runs import StudyRun, expand, run_config
from mtl.study.spec import (BUDGETS, METRICS, STUDY_REGIMES, defaults, differences,
                            equal_flops_steps, eval_set_names, format_lr, lr_grids_differ,
                            reference_source, regime_lrs, regime_steps, validate)
from mtl.study.workdir import Selection, Study, Waiting
