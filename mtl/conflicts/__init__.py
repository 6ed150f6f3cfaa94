"""Gradient conflict between tasks on the shared body.

  record.py    the Record of a run's probe steps in memory, its statistics, step ranges
  store.py     the on-disk record of probe steps (format 2: half-split Gramians)
  summary.py   numbers and text of a record for reports, with the noise floor and verdicts,
               per training phase
  affinity.py  task affinity by lookahead (TAG): its measurement, store and groupings
The math (per-leaf Gramians -> cosines, norms, conflict shares, groups, EMA) is mtl/gramians.py's,
re-exported here.

`mtl.conflicts.load(workdir)` returns the Record of a run's probe steps.
"""
from mtl.gramians import (GROUPINGS, HALVES, conflict_fraction,
                                    corrected_cosine_pieces, corrected_cosines, cosines, ema,
                                    group, half_names, interleave_halves, leaf_gramians,
                                    nan_mean, norms, pair_indices, pair_names,
                                    pair_values, same_task_agreement, share_negative,
                                    task_gramian, update_cosines)
from mtl.conflicts.record import NO_HALVES, Record, format_range, parse_step_range
from mtl.conflicts.store import Store, append, load, store_dir, truncate_after
from mtl.conflicts.summary import (AGREEMENT, CONFLICT, NOT_MEASURABLE, PHASES, UNDETECTED,
                                   format_headline, format_layers_beyond_noise,
                                   format_noise_floor, format_phases, format_summary,
                                   headline_window, layers_beyond_noise, noise_floor, pair_verdict,
                                   phase_verdicts, split_phases, step_gaps, summarize,
                                   verdict_text)
