"""Conflict figures: files, labels, sizes, legibility for many leaves; launch/analyze.py."""
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mtl import conflicts, plots

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


def record(steps=12, layers=None, tasks=TASKS, seed=0):
  layers = layers or layer_names()
  rng = np.random.default_rng(seed)
  j = rng.normal(size=(steps, len(layers), len(tasks), 8))
  j[:, :, 1] -= 0.8 * j[:, :, 0]  # the first pair conflicts
  grams = np.einsum("sltd,slud->sltu", j, j).astype(np.float32)
  return conflicts.Record(steps=np.arange(0, 3 * steps, 3, dtype=np.int64), gramians=grams,
                          layer_names=tuple(layers), task_names=tuple(tasks))


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
  assert "steps 21-33 (5 probes)" in ax.get_title()
  image = ax.get_images()[0]
  assert image.get_clim() == (-1, 1)
  mean = conflicts.nan_mean(conflicts.cosines(rec.last(5).grouped("body")[1][:, 0]), axis=0)
  assert image.get_array()[0, 1] == pytest.approx(mean[0, 1])
  assert mean[0, 1] < -0.3
  assert f"{np.round(mean[0, 1], 2) + 0.0:+.2f}\n100% <0" in [t.get_text() for t in ax.texts]
  assert len(fig.axes) == 2  # the colorbar
  width, height = png_size(plots.to_png(fig))
  assert 300 < width < 1200 and 250 < height < 1000


def test_layer_figures_rows_and_labels():
  rec = record()
  fig = plots.layer_pair_figure(rec)
  ax = fig.axes[0]
  assert labels(ax.get_xticklabels()) == PAIRS
  rows = labels(ax.get_yticklabels())
  assert len(rows) == len(rec.layer_names)
  assert rows[3] == "enc0 attn.key.kernel" and rows[-1] == "out_mlp.fc2.kernel"
  fig = plots.layer_step_figure(rec, "sr_x2~derain")
  ax = fig.axes[0]
  data = ax.get_images()[0].get_array()
  assert data.shape == (len(rec.layer_names), rec.num_steps)
  cos = conflicts.cosines(rec.gramians)[:, :, 1, 2]
  np.testing.assert_allclose(data.filled(np.nan), cos.T, rtol=1e-6)
  assert labels(ax.get_xticklabels())[0] == "0" and labels(ax.get_xticklabels())[-1] == "33"
  with pytest.raises(ValueError, match="valid: denoise_30~sr_x2"):
    plots.layer_step_figure(rec, "sr_x2~rain")


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
  rec = record()
  fig = plots.curves_figure(rec, ema_beta=0.2)
  top, middle, bottom = fig.axes[:3]
  assert [t.get_text() for t in top.get_legend().get_texts()] == PAIRS
  ema_line = [l for l in top.get_lines() if l.get_label() == PAIRS[0]][0]
  body = conflicts.pair_values(rec.cosines("body")[:, 0])
  np.testing.assert_allclose(ema_line.get_ydata(), conflicts.ema(body[:, 0], 0.2, init=None))
  np.testing.assert_allclose(middle.get_lines()[0].get_ydata(),
                             rec.conflict_fraction("body")[:, 0])
  assert [t.get_text() for t in bottom.get_legend().get_texts()] == TASKS
  png = plots.curves_png([0, 1, 2], {"loss/a": [3.0, 2.0, 1.0], "loss/b": ([0, 2], [1.0, 0.5])},
                         title="loss", logy=True)
  assert png.startswith(b"\x89PNG") and png_size(png)[0] > 300


def test_draw_all_writes_the_documented_files(tmp_path):
  rec = record(layers=layer_names()[:20])
  paths = plots.draw_all(rec, str(tmp_path / "conflicts"), window=4)
  names = [os.path.basename(p) for p in paths]
  assert names == ["cos_matrix.png", "cos_layers_pairs.png", "cos_curves.png"] + [
      f"cos_layers_steps-{p}.png" for p in PAIRS]
  for path in paths:
    with open(path, "rb") as f:
      width, height = png_size(f.read())
    assert 250 < width < 2000 and 250 < height < 3000, (path, width, height)
  assert sorted(os.listdir(tmp_path / "conflicts")) == sorted(names)  # no temporary files left


def write_store(workdir, steps=8):
  rec = record(steps=steps, layers=layer_names()[:12])
  conflicts.append(workdir, rec.steps, rec.gramians, rec.layer_names, rec.task_names)


def run_analyze(*args):
  return subprocess.run([sys.executable, "launch/analyze.py", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)


def test_analyze_script(tmp_path):
  wd = str(tmp_path)
  write_store(wd)
  result = run_analyze(f"--workdir={wd}", "--step_range=3:", "--window=4")
  assert result.returncode == 0, result.stderr
  assert "steps 12-21 (4 probes)" in result.stdout and "denoise_30~sr_x2" in result.stdout
  assert os.path.exists(os.path.join(wd, "conflicts", "cos_matrix.png"))
  assert os.path.exists(os.path.join(wd, "conflicts", "cos_layers_steps-sr_x2~derain.png"))
  events = os.listdir(os.path.join(wd, "events", "analyze"))
  assert len(events) == 1 and events[0].startswith("events.out.tfevents.")


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
