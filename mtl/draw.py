"""A record's conflict figures (mtl.plots) written to files and TensorBoard, and its probe scalars.

`draw_all(record, out_dir)` writes these PNGs into out_dir (normally <workdir>/conflicts/):

  cos_matrix.png                 task x task whole-body cosine over the window: with halves the
                                 noise-corrected cosine and its 95% interval ("+0.01 [-0.02,
                                 +0.04]") and the raw window mean below it; without, the raw
                                 mean and its interval. The diagonal: mean gradient norm and
                                 the same-task agreement (the noise floor).
  cos_layers_pairs.png           layer x task-pair cosine over the window, noise-corrected per
                                 row where the record has halves (else the raw mean): where in
                                 the network the tasks' gradients differ; cells whose 95%
                                 interval holds 0 faded, those beyond noise in full colour,
                                 bold with '*' where that holds over the map (Holm); grey with
                                 its sign alone (▲/▼) where a task's noise floor at that row is
                                 not resolved.
  cos_curves.png                 over the probes: the noise-corrected whole-body cosine of every
                                 pair per tenth of the probes with its 95% interval (filled:
                                 excludes 0); the raw cosine per probe (thin) and its GradVac
                                 EMA (bold, started from the first value); each task's same-task
                                 agreement (the corrected cosine's denominator); conflict
                                 fraction (thin) and its moving mean (bold); gradient norms. At
                                 one checkpoint (analyze --checkpoint) the x axis counts fresh
                                 batches, nothing is smoothed and there are no tenths.
  cos_layers_steps-<a>~<b>.png   for each task pair a~b: layer x step cosine on one colour
                                 scale for all pairs. With halves each column pools
                                 >= plots.LAYER_STEP_PROBES probes into each row's
                                 noise-corrected cosine (faded where its 95% interval holds 0,
                                 grey where a task's noise floor there is not resolved); else
                                 the raw cosine, steps binned into at most plots.MAX_COLUMNS
                                 columns of window means.
"""
import os

import numpy as np

from mtl import conflicts, files
from mtl.plots import (binned_layer_maps, cosine_matrix_figure, curves_figure, layer_pair_figure,
                       layer_step_figure, layer_step_limit, rows_for, to_png)


def pair_file_name(pair_name):
  return f"cos_layers_steps-{pair_name}.png"


def file_names(pair_names):
  """The files `figures` draws for a record of these task pairs, in the order written."""
  return (["cos_matrix.png", "cos_layers_pairs.png", "cos_curves.png"]
          + [pair_file_name(name) for name in pair_names])


def figures(record, window=None, ema_beta=0.1, rows="auto"):
  """[(file name, PNG bytes)] of every figure of a record (see the module docstring)."""
  if record.num_steps == 0:
    raise ValueError("no probe steps to draw")
  by = rows_for(record.layer_names, rows)
  maps = binned_layer_maps(record, by)
  vmax = layer_step_limit(maps)  # one scale: the pairs' maps compare at a glance
  drawn = [cosine_matrix_figure(record, window), layer_pair_figure(record, window, by),
           curves_figure(record, ema_beta)] + [layer_step_figure(record, name, by, vmax, maps)
                                                for name in record.pair_names]
  return [(name, to_png(fig)) for name, fig in zip(file_names(record.pair_names), drawn,
                                                   strict=True)]


def write_figures(out_dir, drawn):
  """Write `figures`' [(file name, PNG bytes)] into out_dir (atomically); returns the paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = [os.path.join(out_dir, name) for name, _ in drawn]
  for path, (_, data) in zip(paths, drawn):
    files.write_atomic(path, lambda f, data=data: f.write(data))
  return paths


def draw_all(record, out_dir, window=None, ema_beta=0.1, rows="auto"):
  """Write every figure into out_dir (atomically); returns the written paths."""
  return write_figures(out_dir, figures(record, window, ema_beta, rows))


def probe_scalars(record, window=None, summary="conflicts"):
  """[(x, {tag: value})] TensorBoard scalars of a record's probes (x: record.x_axis, the
  training step or, at one checkpoint, the batch number).

  Every probe: conflicts/cos/<pair> (whole-body raw cosine) and conflicts/conflict_fraction
  (share of pairs with cos < 0). At the record's last probe, over its last `window` probes,
  under `summary`/ (the trainer: conflicts/, over the probes since the previous checkpoint;
  analyze: conflicts/figure_window/, over its figures' window, so that the two never share a
  chart): <summary>/conflict_fraction/<pair> (share of probes with cos < 0),
  <summary>/same_task/<task> (mean same-task agreement) and <summary>/corrected_cos/<pair> with
  its 95% interval's ends (corrected_cos_low/<pair>, corrected_cos_high/<pair>), only where that
  interval exists and both tasks' noise floors are resolved (mtl.stats.resolved_noise_floors:
  a ratio whose denominator may be 0 has a size not to be read, and its spikes would set the
  chart's scale). A record of one checkpoint's fresh batches (x: the batch) logs every tag under
  conflicts/at_checkpoint/ instead: its batches are no training steps.
  """
  xs = record.x_axis()[0]
  base = "conflicts/at_checkpoint" if record.checkpoint else "conflicts"
  summary = base if record.checkpoint else summary
  body = conflicts.pair_values(record.cosines("body")[:, 0])
  fraction = record.conflict_fraction("body")[:, 0]
  out = []
  for s, x in enumerate(xs):
    values = {f"{base}/cos/{p}": float(body[s, k]) for k, p in enumerate(record.pair_names)}
    values[f"{base}/conflict_fraction"] = float(fraction[s])
    out.append((int(x), values))
  rec, last = record.last(window), out[-1][1]
  window_body = body[-rec.num_steps:]
  for k, p in enumerate(record.pair_names):
    last[f"{summary}/conflict_fraction/{p}"] = float(conflicts.share_negative(window_body[:, k]))
  if record.halves:
    agree = conflicts.nan_mean(rec.same_task_agreement("body")[:, 0], axis=0)
    for p, interval, resolved in zip(record.pair_names, rec.corrected_cosine_intervals(),
                                     rec.resolved_pairs()):
      if np.isfinite(interval.low) and resolved:
        last[f"{summary}/corrected_cos/{p}"] = interval.estimate
        last[f"{summary}/corrected_cos_low/{p}"] = interval.low
        last[f"{summary}/corrected_cos_high/{p}"] = interval.high
    for t, name in enumerate(record.task_names):
      last[f"{summary}/same_task/{name}"] = float(agree[t])
  return out


def log_probe_scalars(record, writer, window=None):
  """Write `probe_scalars` to a TensorBoard writer (the trainer calls it at every flush)."""
  if record.num_steps == 0:
    return
  for step, values in probe_scalars(record, window):
    writer.scalars(step, values)


def log_figures(writer, record, drawn, scalars=()):
  """`figures`' PNGs as TensorBoard images at the record's last probe, then `scalars`
  (probe_scalars' [(x, {tag: value})])."""
  last = int(record.x_axis()[0][-1])
  for name, data in drawn:
    writer.image(last, "conflicts/" + os.path.splitext(name)[0], data)
  for x, values in scalars:
    writer.scalars(x, values)


def draw_and_log(record, out_dir, writer, window=None, ema_beta=0.1, scalars=True):
  """Figures into out_dir and TensorBoard (images at the last probe); with `scalars`, also
  `probe_scalars` over the figures' window (the trainer logs those per flush instead).
  Returns the paths."""
  drawn = figures(record, window, ema_beta)
  paths = write_figures(out_dir, drawn)
  log_figures(writer, record, drawn, probe_scalars(record, window) if scalars else ())
  return paths
