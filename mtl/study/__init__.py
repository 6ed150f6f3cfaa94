"""Studies: a grid of runs (regimes x tasks x learning rates x seeds), expanded and run in order.

  spec.py     the schema: fields, validation, expansion into runs and run configs
  workdir.py  a study bound to its directory: run states, results, learning-rate selection
  runner.py   running the runs (subprocesses, signals, resume) and dry runs
"""
from mtl.study.runner import Runner, dry_run, matching, summary_line
from mtl.study.spec import (BUDGETS, METRICS, STUDY_REGIMES, StudyRun, defaults, differences,
                            equal_flops_steps, eval_set_names, expand, format_lr, lr_grids_differ,
                            reference_source, regime_lrs, regime_steps, run_config, validate)
from mtl.study.workdir import Selection, Study, Waiting
