"""Conflict figures: files, labels, sizes, legibility for many leaves; launch/analyze.py."""
import dataclasses
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mtl import conflicts, draw, plots, stats
from test_conflicts import known_halves, phased_store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ["denoise_30", "sr_x2", "derain"]
PAIRS = ["denoise_30~sr_x2", "denoise_30~derain", "sr_x2~derain"]


def layer_names(encoders=1, decoders=1):
  """Body leaves in the trainer's network order (as in mtl/models/ipt.py)."""
  names = ["token_embed/bias", "token_embed/kernel", "pos_embed"]
  for k in range(encoders):
    names += [f"encoder/{k}/attn/{m}/kernel" for m in ("key", "out", "query", "value")]
    names += [f"encoder/{k}/mlp/fc{i}/{p}" for i in (1, 2) for p in ("bias", "kernel")]
    names += [f"encoder/{k}/norm{i}/{p}" for i in (1, 2) for p in ("bias", "scale")]
  for k in range(decoders):
    names += [f"decoder/{k}/cross_attn/{m}/kernel" for m in ("key", "out", "query", "value")]
    names += [f"decoder/{k}/mlp/fc{i}/{p}" for i in (1, 2) for p in ("bias", "kernel")]
    names += [f"decoder/{k}/norm{i}/{p}" for i in (1, 2, 3) for p in ("bias", "scale")]
    names += [f"decoder/{k}/self_attn/{m}/kernel" for m in ("key", "out", "query", "value")]
  return names + [f"out_mlp/fc{i}/{p}" for i in (1, 2) for p in ("bias", "kernel")]


def record(steps=12, layers=None, tasks=TASKS, seed=0, halves=True, name="run7", noise=0.5):
  """Halves = task means + noise; the first pair conflicts. halves=False: a version-1 record."""
  layers = layers or layer_names()
  rng = np.random.default_rng(seed)
  mu = rng.normal(size=(steps, len(layers), len(tasks), 1, 8))
  mu[:, :, 1] -= 0.8 * mu[:, :, 0]
  j = (mu + noise * rng.normal(size=mu.shape[:3] + (2, 8))).reshape(steps, len(layers), -1, 8)
  grams = np.einsum("sltd,slud->sltu", j, j).astype(np.float32)
  steps = np.arange(0, 3 * steps, 3, dtype=np.int64)
  rec = conflicts.Record.from_halves(steps, grams, layers, tasks, name)
  if not halves:
    rec = conflicts.Record(steps=rec.steps, gramians=rec.gramians, layer_names=rec.layer_names,
                           task_names=rec.task_names, name=name)
  return rec


def labels(ticks):
  return [t.get_text() for t in ticks]


def png_size(data):
  with Image.open(io.BytesIO(data)) as im:
    return im.size


def test_cosine_matrix_figure():
  rec = record()
  fig = plots.cosine_matrix_figure(rec, window=5)
  ax = fig.axes[0]
  assert labels(ax.get_xticklabels()) == TASKS
  assert labels(ax.get_yticklabels()) == TASKS
  assert ax.get_title().startswith("run7: noise-corrected")
  assert "steps 21-33 (5 probes)" in ax.get_title()
  image = ax.get_images()[0]
  body2 = rec.last(5).grouped_halves("body")[1][:, 0]
  corrected = stats.corrected_cosine_intervals(body2)
  assert image.get_array()[0, 1] == pytest.approx(corrected[0].estimate)
  assert corrected[0].high < 0  # the constructed conflict, beyond noise
  assert image.get_clim() == (-1.0, 1.0)  # the cosine's whole range, never stretched
  raw = conflicts.nan_mean(conflicts.cosines(rec.last(5).grouped("body")[1][:, 0]), axis=0)
  iv = corrected[0]
  cell = (f"{plots._signed(iv.estimate)}\n[{plots._signed(iv.low)}, {plots._signed(iv.high)}]*\n"
          f"raw {plots._signed(raw[0, 1])}, 100% <0")
  assert cell in [t.get_text() for t in ax.texts]
  assert len(fig.axes) == 2  # the colorbar
  width, height = png_size(plots.to_png(fig))
  assert 300 < width < 1400 and 250 < height < 1000
  # A version-1 record: the raw window mean and its batch-means interval, and the title says so.
  fig = plots.cosine_matrix_figure(record(halves=False), window=5)
  assert "no noise floor" in fig.axes[0].get_title()
  raw_iv = record(halves=False).cosine_intervals(5)[0]
  assert fig.axes[0].get_images()[0].get_array()[0, 1] == pytest.approx(raw_iv.estimate)


def test_cosine_matrix_colours_the_full_range_and_frames_cells_beyond_noise():
  rec = conflicts.Record.from_halves(np.arange(40), known_halves(40, (-0.6, 0.03, 0.4)),
                                     ["pos_embed"], ["a", "b", "c"], "known")
  ivs = rec.corrected_cosine_intervals()
  # a~b: a conflict beyond noise; a~c: a near-orthogonal small positive whose interval holds 0
  assert ivs[0].high < 0 and ivs[2].low > 0
  assert 0 < ivs[1].estimate < 0.15 and ivs[1].low < 0 < ivs[1].high
  fig = plots.cosine_matrix_figure(rec)
  ax = fig.axes[0]
  image = ax.get_images()[0]
  assert image.get_clim() == (-1.0, 1.0)
  # the small positive is drawn at its own share of the full scale: near white, not deep blue
  rgba = image.cmap(image.norm(ivs[1].estimate))
  assert min(rgba[:3]) > 0.75
  framed = {(round(p.get_x() + p.get_width() / 2), round(p.get_y() + p.get_height() / 2))
            for p in ax.patches}
  assert framed == {(1, 0), (0, 1), (2, 1), (1, 2)}  # a~b and b~c, both halves of the matrix
  texts = {(round(t.get_position()[0]), round(t.get_position()[1])): t for t in ax.texts}
  assert texts[1, 0].get_text().split("\n")[1].endswith("]*")
  assert " ".join(texts[2, 0].get_text().split("\n")[:2]) == ivs[1].text(2)  # no mark
  assert "[-1, 1]" in fig.axes[1].get_ylabel()
  assert "excludes 0" in fig._supxlabel.get_text()


def test_symmetric_limit_is_the_percentile():
  values = np.array([-0.02, 0.01, 0.05, -0.3, np.nan, 0.004])
  assert plots.symmetric_limit(values) == pytest.approx(
      np.percentile([0.02, 0.01, 0.05, 0.3, 0.004], 98))
  assert plots.symmetric_limit([np.nan]) == 1.0 and plots.symmetric_limit([0.0, 0.0]) == 1.0


def test_a_layer_map_too_large_for_numbers_still_marks_what_holds():
  """Beyond 300 cells no number is written; the caption still promised '*' where a cell holds
  over the map (Holm), and none was drawn."""
  rec = record(steps=40, layers=layer_names(encoders=4, decoders=4))  # 127 rows x 3 pairs
  fig = plots.layer_pair_figure(rec, rows="layer")
  ax = fig.axes[0]
  _, _, _, _, held, _, _ = plots.layer_pair_intervals(rec.last(None), "layer")
  assert held.size > 300 and held.sum() > 0 and not ax.texts
  stars = [tuple(l.get_xydata()[0]) for l in ax.get_lines() if l.get_marker() == "*"]
  assert sorted(stars) == sorted((float(c), float(r)) for r, c in zip(*np.nonzero(held)))
  assert f"'*': that holds over all {held.size} cells (Holm)" in fig._supxlabel.get_text()


def test_layer_figures_rows_and_labels():
  # without halves, the raw means (with halves:
  # test_the_layer_map_is_each_row_s_corrected_cosine_its_sign_alone_where_unresolved)
  # ~6 batch means a cell: enough df for Holm to hold some of them
  rec = record(steps=40, halves=False)
  fig = plots.layer_pair_figure(rec)
  ax = fig.axes[0]
  assert labels(ax.get_xticklabels()) == PAIRS
  rows = labels(ax.get_yticklabels())
  assert len(rows) == len(rec.layer_names)
  assert rows[3] == "enc0 attn.key.kernel" and rows[-1] == "out_mlp.fc2.kernel"
  mean = conflicts.nan_mean(conflicts.pair_values(conflicts.cosines(rec.gramians)), axis=0)
  norm = fig.axes[1]._colorbar.mappable.norm
  limit = np.percentile(np.abs(mean), 98)
  assert (norm.vmin, norm.vmax) == pytest.approx((-limit, limit))
  assert ax.get_title().startswith("run7: ")
  # Significance: a cell whose interval over the 40 probes excludes 0 is in full colour, one
  # that holds 0 faded toward white; bold, '*' where that holds over the map's cells (Holm);
  # the constructed conflict (pair 0) is marked most.
  cos = conflicts.pair_values(conflicts.cosines(rec.gramians))  # (S, L, P)
  texts = {(round(t.get_position()[0]), round(t.get_position()[1])): t for t in ax.texts}
  pixels = ax.get_images()[0].get_array()
  ivs = [[stats.window_mean_interval(cos[:, r, c], 0.95, rec.interval_method)
          for c in range(len(PAIRS))] for r in range(len(rows))]
  adjusted = stats.holm([iv.p for row in ivs for iv in row]).reshape(len(rows), len(PAIRS))
  faded = held = 0
  for r in range(len(rows)):
    for c in range(len(PAIRS)):
      beyond = plots.excludes_zero(ivs[r][c])
      holds = beyond and adjusted[r, c] < 0.05
      held += holds
      assert texts[c, r].get_text().endswith("*") == holds
      assert (texts[c, r].get_fontweight() == "bold") == holds
      full = np.asarray(plots._cmap()(norm(mean[r, c]))[:3])
      if beyond:
        np.testing.assert_allclose(pixels[r, c, :3], full)
      else:
        faded += 1
        np.testing.assert_allclose(pixels[r, c, :3], 1 - (1 - plots.FADE) * (1 - full))
  marked = [sum(texts[c, r].get_text().endswith("*") for r in range(len(rows)))
            for c in range(len(PAIRS))]
  assert marked[0] > max(marked[1:])
  assert faded > 0 and "faded" in fig._supxlabel.get_text()
  # Holm holds fewer cells than their own intervals mark, and the caption counts both
  assert 0 < held < len(rows) * len(PAIRS) - faded
  assert f"{held} of {len(rows) * len(PAIRS) - faded} cells beyond noise hold" in (
      fig._supxlabel.get_text())
  rec = record(halves=False)  # a store without halves: the raw cosine
  fig = plots.layer_step_figure(rec, "sr_x2~derain")
  ax = fig.axes[0]
  maps = plots.binned_layer_maps(rec)
  assert maps.values.shape == (3, len(rec.layer_names), rec.num_steps)  # 12 steps: a column each
  cos = conflicts.cosines(rec.gramians)[:, :, 1, 2]
  np.testing.assert_allclose(maps.values[2], cos.T, rtol=1e-6)
  norm = fig.axes[1]._colorbar.mappable.norm
  assert norm.vmax == pytest.approx(np.percentile(np.abs(cos), 98))
  np.testing.assert_allclose(ax.get_images()[0].get_array()[..., :3],  # nothing faded
                             plots._cmap()(norm(cos.T))[..., :3], rtol=1e-6)
  assert "raw gradient cosine" in ax.get_title() and fig._supxlabel is None
  # steps 0, 3, ..., 33 a column each: ticks at round steps, placed where those steps fall
  ticks = [int(t) for t in labels(ax.get_xticklabels())]
  assert ticks[0] == 0 and len(set(np.diff(ticks))) == 1 and ticks[-1] <= 33
  np.testing.assert_allclose(ax.get_xticks(), np.array(ticks) / 3 - 0.5)  # a column's left edge
  with pytest.raises(ValueError, match="valid: denoise_30~sr_x2"):
    plots.layer_step_figure(rec, "sr_x2~rain")


def test_layer_step_map_bins_long_runs_into_window_means():
  rec = record(steps=450, layers=layer_names()[:5], halves=False)
  fig = plots.layer_step_figure(rec, PAIRS[0])
  ax = fig.axes[0]
  data = plots.binned_layer_maps(rec).values[0]
  assert data.shape == (5, plots.MAX_COLUMNS) == ax.get_images()[0].get_array().shape[:2]
  cos = conflicts.cosines(rec.gramians)[:, :, 0, 1]  # (450, 5)
  # 450 steps in 200 contiguous bins: the first 50 hold 3 steps, the rest 2
  np.testing.assert_allclose(data[:, 0], cos[0:3].mean(0), rtol=1e-6)
  np.testing.assert_allclose(data[:, -1], cos[-2:].mean(0), rtol=1e-6)
  ticks = [int(t) for t in labels(ax.get_xticklabels())]
  assert ticks[0] == 0 and len(set(np.diff(ticks))) == 1 and ticks[-1] <= rec.steps[-1]
  edges = np.append(rec.steps[[b[0] for b in plots.step_bins(rec.num_steps)]], rec.steps[-1] + 1)
  np.testing.assert_allclose(ax.get_xticks(), np.interp(ticks, edges, np.arange(201)) - 0.5)
  assert "mean of ~2 probes" in ax.get_xlabel()


def test_many_leaves_use_coarser_rows_and_taller_figures():
  paper = layer_names(12, 12)  # IPT as published: 367 leaves
  assert len(paper) == 367
  assert plots.rows_for(paper) == "module"
  assert plots.rows_for(layer_names(30, 30)) == "block"
  assert plots.rows_for(layer_names(2, 2)) == "layer"
  rec = record(steps=4, layers=paper)
  fig = plots.layer_step_figure(rec, PAIRS[0])
  rows = labels(fig.axes[0].get_yticklabels())
  assert len(rows) == 2 + 12 * 4 + 12 * 6 + 1 and "dec11 norm3" in rows
  assert fig.get_figheight() > plots.layer_step_figure(record(steps=4), PAIRS[0]).get_figheight()
  width, height = png_size(plots.to_png(fig))
  assert width < 1300 and 1200 < height < 2400  # ~14 px a row
  fig = plots.layer_pair_figure(rec, rows="block")
  assert len(fig.axes[0].get_yticklabels()) == 26


def test_curves_figure():
  rec = record(steps=40)
  fig = plots.curves_figure(rec, ema_beta=0.2)
  corrected, raw, agreement, fraction_ax, norms = fig.axes[:5]
  # The corrected cosine per part of the probes (40 probes: 4 parts of >= 9), its interval.
  parts = [part for _, part in conflicts.split_phases(rec, plots.CURVE_PARTS)]
  assert len(parts) == 4
  dots = [l for l in corrected.get_lines() if l.get_marker() == "o"]
  assert len(dots) == 4 * len(PAIRS)
  first = parts[0].corrected_cosine_intervals()[0]
  assert dots[0].get_ydata()[0] == pytest.approx(first.estimate)
  assert (dots[0].get_markerfacecolor() == dots[0].get_color()) == plots.excludes_zero(first)
  assert [t.get_text() for t in corrected.get_legend().get_texts()] == PAIRS
  assert [t.get_text() for t in raw.get_legend().get_texts()] == PAIRS
  ema_line = [l for l in raw.get_lines() if l.get_label() == PAIRS[0]][0]
  body = conflicts.pair_values(rec.cosines("body")[:, 0])
  np.testing.assert_allclose(ema_line.get_ydata(), conflicts.ema(body[:, 0], 0.2, init=None))
  assert "not corrected" in raw.get_title()
  floor = [l for l in agreement.get_lines() if l.get_label() == "sr_x2"][0]
  np.testing.assert_allclose(floor.get_ydata(), conflicts.ema(
      rec.same_task_agreement("body")[:, 0, 1], 0.2, init=None))
  fraction = rec.conflict_fraction("body")[:, 0]
  np.testing.assert_allclose(fraction_ax.get_lines()[0].get_ydata(), fraction)
  width = 4  # SMOOTH_SHARE of 40 probes
  np.testing.assert_allclose(fraction_ax.get_lines()[1].get_ydata()[width - 1:],
                             np.convolve(fraction, np.ones(width) / width, mode="valid"))
  assert [t.get_text() for t in norms.get_legend().get_texts()] == TASKS
  plots.to_png(fig)  # ticks exist once drawn
  ticks = [t.get_text() for t in norms.get_xticklabels() if t.get_text()]
  assert ticks and all(t.lstrip("-").isdigit() for t in ticks)  # integer steps
  assert fig._suptitle.get_text().startswith("run7: task conflict over training")
  png = plots.curves_png([0, 1, 2], {"loss/a": [3.0, 2.0, 1.0], "loss/b": ([0, 2], [1.0, 0.5])},
                         title="loss", logy=True)
  assert png.startswith(b"\x89PNG") and png_size(png)[0] > 300
  # several lines under one name (a regime's seeds): one colour, one legend entry
  fig = plots.lines_figure(None, {"joint": [([0, 1], [2.0, 1.0]), ([0, 1], [2.5, 1.5])],
                                 "scratch": ([0, 1], [3.0, 2.0])})
  joint_a, joint_b, scratch = fig.axes[0].get_lines()
  assert joint_a.get_color() == joint_b.get_color() != scratch.get_color()
  assert list(joint_b.get_ydata()) == [2.5, 1.5]
  assert labels(fig.axes[0].get_legend().get_texts()) == ["joint", "scratch"]


def test_six_tasks_pairs_get_fifteen_colours_the_first_ten_of_distinct_hues():
  import matplotlib
  six = ["denoise_30", "denoise_50", "sr_x2", "sr_x3", "sr_x4", "derain"]
  raw = plots.curves_figure(record(steps=6, tasks=six), ema_beta=0).axes[1]
  colours = [matplotlib.colors.to_hex(l.get_color()) for l in raw.get_lines()
             if not l.get_label().startswith("_")]
  assert len(colours) == 15 and len(set(colours)) == 15
  tab10 = [matplotlib.colors.to_hex(matplotlib.colormaps["tab10"](k)) for k in range(10)]
  assert colours[:10] == tab10  # light variants only for the pairs past ten


def test_a_pair_not_measurable_is_still_named_in_the_corrected_panel_s_legend():
  import warnings
  rec = record(steps=4, noise=5.0, seed=4)  # 4 probes, one part: 2 of its 3 pairs unmeasurable
  (part,) = [part for _, part in conflicts.split_phases(rec, plots.CURVE_PARTS)]
  assert [np.isfinite(i.estimate) for i in part.corrected_cosine_intervals()] == [
      True, False, False]
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # matplotlib warns of a legend with no labelled artists
    fig = plots.curves_figure(rec)
  corrected = fig.axes[0]
  assert [t.get_text() for t in corrected.get_legend().get_texts()] == PAIRS
  # the measurable pair's sign only: a task's noise floor is unresolved at this noise
  assert not part.resolved_noise_floors().all()
  assert [l.get_marker() for l in corrected.get_lines() if l.get_label() in PAIRS] == [
      "^" if part.corrected_cosine_intervals()[0].estimate > 0 else "v", "x", "x"]


def test_curves_at_one_checkpoint_count_batches_and_smooth_nothing():
  """Fresh batches at one saved step are independent draws, not a trajectory: the x axis counts
  them, no EMA runs over them, and there are no tenths of training."""
  rec = record(steps=6)
  rec = dataclasses.replace(rec, steps=rec.steps + 10**7, probe_batch={
      "size": 8, "fresh": True, "checkpoint": {"run": "run7", "step": 400}})
  fig = plots.curves_figure(rec, ema_beta=0.2)
  raw = fig.axes[0]
  assert len(fig.axes) == 4  # raw, agreement, fraction, norms
  assert [l.get_label() for l in raw.get_lines()][:len(PAIRS)] == PAIRS  # one line each
  assert raw.get_lines()[0].get_xdata().tolist() == [1, 2, 3, 4, 5, 6]
  assert "EMA" not in raw.get_title()
  assert fig.axes[-1].get_xlabel() == "fresh probe batch (one checkpoint)"
  assert fig._suptitle.get_text() == (
      "run7: task conflict at one checkpoint, checkpoint step 400, 6 fresh batches of 8/task")


def write_store(workdir, steps=8):
  rec = record(steps=steps, layers=layer_names()[:12])
  conflicts.append(workdir, rec.steps, rec.half_gramians, rec.layer_names, rec.task_names)


def run_analyze(*args):
  return subprocess.run([sys.executable, "launch/analyze.py", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)


def test_analyze_smooths_the_curves_as_the_run_s_trainer_did(tmp_path, monkeypatch):
  # It redrew a run's cos_curves.png at beta 0.1 whatever the run's conflicts.ema_beta.
  import analyze   # launch/analyze.py (tests/conftest.py puts launch/ on the path)
  from mtl import draw, run_defaults, run_folder
  wd = str(tmp_path)
  write_store(wd)
  assert analyze.run_ema_beta(wd) == run_defaults.get_config().conflicts.ema_beta == 0.1
  config = run_defaults.get_config("tiny")
  config.conflicts.ema_beta = 0.5
  run_folder.check_or_write_config(wd, config.to_dict())
  drawn_with = []
  real = draw.figures
  monkeypatch.setattr(draw, "figures", lambda rec, window, beta: drawn_with.append(beta) or
                      real(rec, window, beta))
  analyze.analyze(wd)
  analyze.analyze(wd, ema_beta=0.0)
  assert drawn_with == [0.5, 0.0]
  # a window past the stored probes reads them all, and says so (it said "the last 100")
  assert "read all 8 probe steps (--window=100 reaches past them)" in analyze.analyze(
      wd, window=100)


def test_analyze_script(tmp_path):
  wd = str(tmp_path)
  write_store(wd)
  result = run_analyze(f"--workdir={wd}", "--step_range=3:", "--window=4")
  assert result.returncode == 0, result.stderr
  assert "steps 12-21 (4 probes)" in result.stdout and "denoise_30~sr_x2" in result.stdout
  # Per pair: raw cos with its interval, same-task agreements, corrected cos, conflict
  # fraction, verdict; the footer names the interval method.
  out = result.stdout
  rec = conflicts.load(wd).select((3, None)).last(4)
  raw = rec.cosine_intervals()[0]
  assert f"raw cos (window mean)  {raw.estimate:+.3f} [{raw.low:+.3f}, {raw.high:+.3f}]" in out
  corrected = rec.corrected_cosine_intervals()[0]
  assert (f"corrected cos          {corrected.estimate:+.3f} [{corrected.low:+.3f}, "
          f"{corrected.high:+.3f}]") in out
  agree = conflicts.nan_mean(rec.same_task_agreement()[:, 0], axis=0)
  assert f"same-task agreement    denoise_30 {agree[0]:+.3f}, sr_x2 {agree[1]:+.3f}" in out
  assert out.count("conflict fraction  ") == 3 and out.count("    verdict: ") == 3
  assert "verdict: conflict beyond noise" in out  # the constructed conflict (pair 0)
  assert "batch means" in out.split("verdict:")[-1]
  assert os.path.exists(os.path.join(wd, "conflicts", "cos_matrix.png"))
  assert os.path.exists(os.path.join(wd, "conflicts", "cos_layers_steps-sr_x2~derain.png"))
  events = os.listdir(os.path.join(wd, "events", "analyze"))
  assert len(events) == 1 and events[0].startswith("events.out.tfevents.")
  # A rerun replaces its TensorBoard events (which TensorBoard would merge), as its figures.
  again = run_analyze(f"--workdir={wd}")
  assert again.returncode == 0, again.stderr
  assert "replaced events/analyze/'s earlier event file (1) and figures" in again.stdout
  assert os.listdir(os.path.join(wd, "events", "analyze")) != events
  assert len(os.listdir(os.path.join(wd, "events", "analyze"))) == 1


def test_analyze_reads_the_late_phase_by_default_and_warns_when_phases_disagree(tmp_path):
  wd = str(tmp_path)
  phased_store(wd)  # a~c agrees early only (see test_conflicts)
  result = run_analyze(f"--workdir={wd}")
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert out.startswith("gradient conflict, whole body, steps 600-890 (30 probes)")
  assert "read the headline phase (late)" in out
  late = conflicts.load(wd).last(30).corrected_cosine_intervals()[1]
  assert "a~c\n    raw cos" in out and (
      f"corrected cos          {late.estimate:+.3f} [{late.low:+.3f}, {late.high:+.3f}]") in out
  assert "    late    steps 600-890 (30)" in out
  assert [l.split(":")[0] for l in out.splitlines() if l.startswith("WARNING")] == [
      "WARNING"] and "WARNING: a~c changes verdict" in out
  # --phases=1: one phase, the whole run, and nothing to disagree with
  whole = run_analyze(f"--workdir={wd}", "--phases=1").stdout
  assert whole.startswith("gradient conflict, whole body, steps 0-890 (90 probes)")
  assert "WARNING" not in whole and "read all probe steps (one phase)" in whole


def test_analyze_script_bad_input(tmp_path):
  result = run_analyze(f"--workdir={tmp_path}")
  assert result.returncode != 0
  assert result.stderr.strip().count("\n") == 0
  assert result.stderr.startswith("error: no conflict store in")
  assert os.listdir(tmp_path) == []
  write_store(str(tmp_path))
  result = run_analyze(f"--workdir={tmp_path}", "--step_range=100:200")
  assert result.returncode != 0 and "outside the stored steps 0..21" in result.stderr
  assert result.stderr.strip().count("\n") == 0
  assert sorted(os.listdir(tmp_path / "conflicts")) == ["store"]


def outputs(workdir):
  """{path: bytes} of what analyze writes: figures and TensorBoard event files."""
  found = {}
  for folder in ("conflicts", os.path.join("events", "analyze")):
    for name in os.listdir(os.path.join(workdir, folder)):
      path = os.path.join(workdir, folder, name)
      if os.path.isfile(path):
        with open(path, "rb") as f:
          found[os.path.relpath(path, workdir)] = f.read()
  return found


def test_analyze_bad_input_leaves_the_earlier_figures_and_events(tmp_path):
  from mtl.conflicts import affinity
  wd = str(tmp_path)
  write_store(wd)
  assert run_analyze(f"--workdir={wd}").returncode == 0
  with open(affinity.path_of(wd), "wb") as f:
    f.write(b"not an npz")  # read after the store: the figures are drawn by then
  before = outputs(wd)
  assert any(p.startswith("events") for p in before) and "conflicts/cos_matrix.png" in before
  result = run_analyze(f"--workdir={wd}")
  assert result.returncode == 1 and result.stderr.strip().count("\n") == 0
  assert result.stderr.startswith(f"error: corrupt TAG affinity file {affinity.path_of(wd)}: ")
  assert outputs(wd) == before


def test_analyze_prints_no_affinity_for_a_file_of_no_steps(tmp_path):
  from mtl.conflicts import affinity
  wd = str(tmp_path)
  write_store(wd)
  np.savez(affinity.path_of(wd), steps=np.zeros(0, np.int64), affinity=np.zeros((0, 3, 3)),
           tasks=np.array(TASKS))
  result = run_analyze(f"--workdir={wd}")
  assert result.returncode == 0, result.stderr
  assert "task affinity" not in result.stdout


def test_analyze_refuses_a_flag_of_the_other_mode(tmp_path):
  wd = str(tmp_path)
  write_store(wd)
  result = run_analyze(f"--workdir={wd}", f"--out={tmp_path / 'x'}", "--num_batches=3",
                       "--step=5")
  assert result.returncode == 1
  assert result.stderr == ("error: --num_batches belongs to --checkpoint mode (measure a saved "
                           "model), not --workdir; drop it\n")
  assert os.listdir(tmp_path) == ["conflicts"] and os.listdir(tmp_path / "conflicts") == ["store"]
  result = run_analyze(f"--workdir={wd}", "--step=5")
  assert result.returncode == 1 and "error: --step belongs to --checkpoint mode" in result.stderr
  result = run_analyze(f"--checkpoint={wd}", "--window=4")
  assert result.returncode == 1
  assert result.stderr == ("error: --window belongs to --workdir mode (redraw a run's store), "
                           "not --checkpoint; drop it\n")
  # NaN passed the flag's bound and wrote a measurement that no target stopped
  result = run_analyze(f"--checkpoint={wd}", "--halfwidth=nan")
  assert result.returncode == 1 and result.stderr == (
      "error: --halfwidth=nan is not a number; give a finite value\n"), result.stderr
  # an odd batch was refused under the trainer's field names (data.batch_size, conflicts.every)
  result = run_analyze(f"--checkpoint={wd}", "--batch_size=3")
  assert result.returncode == 1 and result.stderr == (
      "error: --batch_size=3 is odd; give an even number of images per task (each batch is "
      "split into two halves, the noise floor)\n"), result.stderr
  assert os.listdir(tmp_path) == ["conflicts"]


def test_analyze_checkpoint_refuses_a_measured_default_out_before_measuring(tmp_path):
  # A rerun for a step already measured: refused at once, not after up to --max_batches.
  from mtl import run_folder
  run = tmp_path / "run"
  (run / "checkpoints" / "7").mkdir(parents=True)  # no parameters: measuring it would fail
  done = run_folder.analysis_dir(str(run), 7)
  write_store(done)
  for args in ((f"--checkpoint={run}",), (f"--checkpoint={run / 'checkpoints'}", "--step=7")):
    result = run_analyze(*args, "--config=experiments/tiny.py")
    assert result.returncode == 1
    assert result.stderr == (f"error: {done} (the default --out) already holds a conflict store; "
                             "choose another --out\n")


def cell_texts(ax):
  return {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text()
          for t in ax.texts}


def test_cosine_matrix_marks_hold_over_the_pairs_and_unresolved_cells_stay_uncoloured():
  # noise 3: a~b's conflict is beyond noise; c's expected gradient (norm 0.05) is lost in its
  # noise: its same-task product's interval holds 0, so the size of a~c and b~c is not to be
  # read (Fieller), a~c's interval as narrow as it is notwithstanding
  halves = known_halves(8, (-0.6, 0.03, 0.4), noise=3.0, norms=(1.0, 1.0, 0.05))
  rec = conflicts.Record.from_halves(np.arange(8), halves, ["pos_embed"], ["a", "b", "c"], "known")
  ivs = rec.corrected_cosine_intervals()
  assert ivs[0].high < 0 and -0.5 < ivs[1].low < ivs[1].high < 0.5
  assert list(rec.resolved_noise_floors()) == [True, True, False]
  held = stats.holm([iv.p for iv in ivs])
  fig = plots.cosine_matrix_figure(rec)
  ax = fig.axes[0]
  image = ax.get_images()[0]
  assert not np.ma.is_masked(image.get_array()[1, 0])
  assert np.ma.is_masked(image.get_array()[2, 0]) and np.ma.is_masked(image.get_array()[1, 2])
  texts = cell_texts(ax)
  assert "noise floor not resolved" in texts[0, 2] and "noise floor not resolved" in texts[2, 1]
  assert "not resolved" not in texts[0, 1]
  frames = {(round(p.get_x() + p.get_width() / 2), round(p.get_y() + p.get_height() / 2)):
            p.get_linestyle() for p in ax.patches}
  assert frames[1, 0] == ("-" if held[0] < 0.05 else "--")  # solid only where Holm holds
  # analyze's text says it too, beside the corrected cosine whose size is not to be read
  text = conflicts.format_noise_floor(conflicts.noise_floor(rec), {"label": "all"}).splitlines()
  corrected = [line for line in text if line.startswith("    corrected cos")]
  assert [line.endswith("(its sign, not its size: c's floor not resolved)")
          for line in corrected] == [False, True, True]


def test_the_curves_show_only_the_sign_of_a_part_whose_noise_floor_is_unresolved():
  # as the matrix and TensorBoard: a point at its size and an interval bar were drawn anyway
  halves = known_halves(40, (-0.6, 0.03, 0.4), noise=3.0, norms=(1.0, 1.0, 0.05))
  rec = conflicts.Record.from_halves(np.arange(40), halves, ["pos_embed"], ["a", "b", "c"], "known")
  fig = plots.curves_figure(rec, ema_beta=0)
  [ax] = [a for a in fig.axes if a.get_title().startswith("noise-corrected whole-body cosine")]
  assert "▲/▼ at 0: its sign only (a task's noise floor not resolved)" in ax.get_title()
  parts = [part for _, part in conflicts.split_phases(rec, plots.CURVE_PARTS)]
  assert len(parts) == 4   # at least 10 probes a part
  drawn = {}   # pair colour -> [(marker, y)] in part order
  for line in ax.get_lines():
    if line.get_marker() in ("o", "^", "v", "x"):
      drawn.setdefault(line.get_color(), []).append((line.get_marker(), line.get_ydata()[0]))
  by_pair = list(drawn.values())   # the pairs' first points come in pair order
  seen = set()
  for p, part in enumerate(parts):
    floors, ivs = part.resolved_noise_floors(), part.corrected_cosine_intervals()
    for k, (i, j) in enumerate(conflicts.pair_indices(3)):
      marker, y = by_pair[k][p]
      if not np.isfinite(ivs[k].estimate):   # a same-task agreement <= 0: not measurable
        assert (marker, y) == ("x", 0.0)
      elif floors[i] and floors[j]:
        assert (marker, y) == ("o", pytest.approx(ivs[k].estimate))
      else:
        assert (marker, y) == ("^" if ivs[k].estimate > 0 else "v", 0.0)
      seen.add(marker == "o")
  assert seen == {True, False}   # c's floor unresolved, a~b's resolved somewhere
  assert all(m == "o" for m, _ in by_pair[0])


def test_a_precise_cosine_near_one_is_coloured_though_its_interval_passes_one():
  # b and c nearly the same task (cos 0.99): every noise floor resolved, b~c's interval ~+-0.03
  halves = known_halves(12, (-0.6, -0.6, 0.99), noise=1.0)
  rec = conflicts.Record.from_halves(np.arange(12), halves, ["pos_embed"], ["a", "b", "c"], "near")
  b_c = rec.corrected_cosine_intervals()[2]
  assert b_c.low > 0.9 and b_c.high > 1 and b_c.high - b_c.low < 0.1
  ax = plots.cosine_matrix_figure(rec).axes[0]
  assert ax.get_images()[0].get_array()[1, 2] == pytest.approx(b_c.estimate)
  assert "not resolved" not in cell_texts(ax)[2, 1]
  last = draw.probe_scalars(rec)[-1][1]
  assert last["conflicts/corrected_cos_high/b~c"] == pytest.approx(b_c.high)
  # a bound that would round to 0.00 gets the digits to show it is not 0
  assert plots._cell_digits(stats.Interval(-0.2, -0.398, -0.003, 0.95, 8)) == 3
  assert plots._cell_digits(stats.Interval(-0.2, -0.3998, -0.0004, 0.95, 8)) == 4
  assert plots._cell_digits(stats.Interval(0.3, 0.1, 0.5, 0.95, 8)) == 2


def test_the_layer_map_is_each_row_s_corrected_cosine_its_sign_alone_where_unresolved():
  # two leaves of known cosines (a~b, a~c, b~c): at pos_embed every task's expected gradient
  # stands out of its noise; at token_embed/bias c's is lost in it (norm 0.05, noise 3), so the
  # size of a~c and b~c is not to be read there. The map showed the raw cosine, which the noise
  # shrinks toward 0 (the whole-body matrix beside it was corrected)
  clear = known_halves(40, (-0.6, 0.3, 0.2), noise=1.0)
  lost = known_halves(40, (-0.5, 0.6, -0.4), noise=3.0, norms=(1.0, 1.0, 0.05), seed=1)
  rec = conflicts.Record.from_halves(np.arange(40), np.concatenate([clear, lost], axis=1),
                                     ["token_embed/bias", "pos_embed"], ["a", "b", "c"], "known")
  names, _, value, beyond, held, measured, unresolved = plots.layer_pair_intervals(rec, "layer")
  assert names == ["token_embed/bias", "pos_embed"] and measured
  for r in range(2):  # each row is the corrected cosine of its own leaf, with its interval
    row = conflicts.Record.from_halves(rec.steps, rec.half_gramians[:, r:r + 1], names[r:r + 1],
                                       rec.task_names)
    ivs = row.corrected_cosine_intervals()
    np.testing.assert_allclose(value[r], [iv.estimate for iv in ivs], rtol=1e-12)
    assert list(beyond[r]) == [plots.excludes_zero(iv) for iv in ivs]
    assert list(unresolved[r]) == [not ok for ok in row.resolved_pairs()]
  assert list(unresolved[0]) == [False] * 3 and list(unresolved[1]) == [False, True, True]
  # the clear leaf's corrected cosines are its true ones; its raw means shrink them by
  # |mu|^2 / (|mu|^2 + |noise|^2 / 2) = 1 / 1.5 (a task's gradient: the mean of its two halves)
  np.testing.assert_allclose(value[0], (-0.6, 0.3, 0.2), atol=0.1)
  raw = plots.layer_pair_intervals(dataclasses.replace(rec, half_gramians=None), "layer")[2]
  np.testing.assert_allclose(raw[0], value[0] / 1.5, rtol=0.05)
  fig = plots.layer_pair_figure(rec, rows="layer")
  ax = fig.axes[0]
  texts = cell_texts(ax)
  assert set(texts) == {(0, 0), (1, 0), (2, 0), (0, 1)}  # no number where unresolved
  assert texts[0, 0].startswith("-0.") and texts[0, 0].endswith("*") == bool(held[0, 0])
  colours = ax.get_images()[0].get_array()
  grey = np.array(plots._cmap().get_bad()[:3])
  for c in (1, 2):
    np.testing.assert_allclose(colours[1, c, :3], grey)
  marks = {(round(l.get_xdata()[0]), round(l.get_ydata()[0])): l.get_marker()
           for l in ax.get_lines()}
  assert marks == {(c, 1): "^" if value[1, c] > 0 else "v" for c in (1, 2) if beyond[1, c]}
  assert "noise-corrected" in ax.get_title() and "pooled over" in ax.get_title()
  assert "its sign alone" in fig._supxlabel.get_text()
  # without halves: the raw means, and nothing said of noise floors
  fig = plots.layer_pair_figure(dataclasses.replace(rec, half_gramians=None), rows="layer")
  assert "raw gradient cosine" in fig.axes[0].get_title()
  assert "sign alone" not in fig._supxlabel.get_text()


def test_the_layer_step_map_is_each_column_s_corrected_cosine_grey_where_unresolved():
  # a~b turns from +0.5 to -0.5 halfway at pos_embed, a~c is 0 there; at token_embed/bias c's
  # expected gradient is lost in its noise. The map showed each bin's raw cosine, which noise
  # shrinks toward 0 by an amount that changes over training: a change in noise read as one in
  # conflict.
  per = plots.LAYER_STEP_PROBES
  clear = np.concatenate([known_halves(2 * per, (0.5, 0.0, 0.2), noise=1.0),
                          known_halves(2 * per, (-0.5, 0.0, 0.2), noise=1.0, seed=2)])
  lost = known_halves(4 * per, (-0.5, 0.6, -0.4), noise=3.0, norms=(1.0, 1.0, 0.2), seed=1)
  rec = conflicts.Record.from_halves(np.arange(4 * per), np.concatenate([lost, clear], axis=1),
                                     ["token_embed/bias", "pos_embed"], ["a", "b", "c"], "known")
  maps = plots.binned_layer_maps(rec, "layer")
  assert maps.corrected and maps.values.shape == (3, 2, 4)
  assert list(maps.firsts) == [0, per, 2 * per, 3 * per]
  for c in range(4):  # each cell: its leaf's corrected cosine over the column's probes
    for r in range(2):
      cell = conflicts.Record.from_halves(rec.steps[c * per:(c + 1) * per],
                                          rec.half_gramians[c * per:(c + 1) * per, r:r + 1],
                                          maps.names[r:r + 1], rec.task_names)
      ivs = cell.corrected_cosine_intervals()
      np.testing.assert_allclose(maps.values[:, r, c], [iv.estimate for iv in ivs], rtol=1e-9)
      assert list(maps.beyond[:, r, c]) == [plots.excludes_zero(iv) for iv in ivs]
      assert list(maps.unresolved[:, r, c]) == [not ok for ok in cell.resolved_pairs()]
  # the clear leaf: the true cosines, the turn where it happened; the raw means 1/1.5 of them
  np.testing.assert_allclose(maps.values[0, 1], [0.5, 0.5, -0.5, -0.5], atol=0.15)
  assert maps.beyond[0, 1].all() and not maps.unresolved[:, 1].any()
  raw = plots.binned_layer_maps(dataclasses.replace(rec, half_gramians=None), "layer",
                                max_columns=4).values
  np.testing.assert_allclose(raw[0, 1], maps.values[0, 1] / 1.5, rtol=0.1)
  assert maps.unresolved[1:, 0].all() and not maps.unresolved[0, 0].any()
  assert maps.beyond[1, 0].any() and not maps.beyond[1, 1].any()  # a~c: sign only; noise
  fig = plots.layer_step_figure(rec, "a~c", "layer", maps=maps)
  ax = fig.axes[0]
  pixels = ax.get_images()[0].get_array()
  norm = fig.axes[1]._colorbar.mappable.norm
  np.testing.assert_allclose(pixels[0, :, :3], np.tile(plots._cmap().get_bad()[:3], (4, 1)))
  for c in range(4):  # a resolved row: faded where the interval holds 0
    full = np.asarray(plots._cmap()(norm(maps.values[1, 1, c]))[:3])
    np.testing.assert_allclose(pixels[1, c, :3], 1 - (1 - plots.FADE) * (1 - full))
  fig_ab = plots.layer_step_figure(rec, "a~b", "layer", maps=maps)  # and full colour beyond it
  norm_ab = fig_ab.axes[1]._colorbar.mappable.norm
  np.testing.assert_allclose(fig_ab.axes[0].get_images()[0].get_array()[1, :, :3],
                             plots._cmap()(norm_ab(maps.values[0, 1]))[:, :3])
  marks = {(round(x), round(y)): l.get_marker() for l in ax.get_lines()
           for x, y in zip(l.get_xdata(), l.get_ydata())}
  assert marks == {(c, 0): "^" if maps.values[1, 0, c] > 0 else "v" for c in range(4)
                   if maps.beyond[1, 0, c]}
  assert "noise-corrected gradient cosine" in ax.get_title()
  assert f"pooled ~{per} probes" in ax.get_xlabel()
  ticks = [int(t) for t in labels(ax.get_xticklabels())]  # step s at its place in its column
  assert ticks[0] == 0 and ticks[-1] > 3 * per
  np.testing.assert_allclose(ax.get_xticks(), np.array(ticks) / per - 0.5)
  assert "not resolved" in fig._supxlabel.get_text()
  # one colour scale for every pair's map: the resolved cells of all of them
  assert plots.layer_step_limit(maps) == pytest.approx(plots.symmetric_limit(
      maps.values[~maps.unresolved]))
