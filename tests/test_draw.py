"""A record's figures to files (the documented names) and its probe scalars for TensorBoard."""
import os

import pytest

from mtl import conflicts, draw
from test_plots import PAIRS, TASKS, layer_names, png_size, record


def test_probe_scalars_per_flush():
  rec = record(steps=10)
  out = draw.probe_scalars(rec)
  assert [s for s, _ in out] == rec.steps.tolist()
  body = conflicts.pair_values(rec.cosines("body")[:, 0])
  assert out[3][1][f"conflicts/cos/{PAIRS[1]}"] == pytest.approx(body[3, 1])
  last = out[-1][1]
  corrected = conflicts.pair_values(conflicts.corrected_cosines(
      rec.grouped_halves("body")[1][:, 0], axis=0))
  interval = rec.corrected_cosine_intervals()[0]
  assert -1 < interval.low < interval.high < 1  # the constructed conflict: resolved
  assert last[f"conflicts/corrected_cos/{PAIRS[0]}"] == pytest.approx(corrected[0])
  assert (last[f"conflicts/corrected_cos_low/{PAIRS[0]}"],
          last[f"conflicts/corrected_cos_high/{PAIRS[0]}"]) == (interval.low, interval.high)
  assert last[f"conflicts/conflict_fraction/{PAIRS[0]}"] == pytest.approx((body[:, 0] < 0).mean())
  assert f"conflicts/same_task/{TASKS[2]}" in last
  assert "conflicts/corrected_cos/" + PAIRS[0] not in out[0][1]  # windowed values: last step only
  assert not any("corrected" in k for k in draw.probe_scalars(record(halves=False))[-1][1])
  # Over a window (analyze's figures'): the last 4 probes' values, at the last step, under tags
  # of their own (the trainer's, over another window at the same step, shared a chart with them)
  windowed = draw.probe_scalars(rec, window=4, summary="conflicts/figure_window")[-1][1]
  assert windowed[f"conflicts/figure_window/conflict_fraction/{PAIRS[0]}"] == pytest.approx(
      (body[-4:, 0] < 0).mean())
  assert windowed[f"conflicts/figure_window/corrected_cos/{PAIRS[0]}"] == pytest.approx(
      rec.last(4).corrected_cosine_intervals()[0].estimate)
  assert f"conflicts/corrected_cos/{PAIRS[0]}" not in windowed
  assert windowed[f"conflicts/cos/{PAIRS[1]}"] == pytest.approx(body[-1, 1])  # per probe: one tag
  # One checkpoint's fresh batches (x: the batch, no training step): tags of their own.
  import dataclasses
  at_checkpoint = dataclasses.replace(rec, probe_batch={"size": 8, "fresh": True,
                                                        "checkpoint": {"run": "r", "step": 120}})
  at = draw.probe_scalars(at_checkpoint)[-1][1]
  assert sorted({k.split("/")[1] for k in at}) == ["at_checkpoint"], sorted(at)


def test_an_unresolved_corrected_cosine_is_not_logged():
  """Tasks whose half-batch gradients are noise (same-task agreement near 0): the corrected
  cosine divides by nearly 0, and its interval is not to be read; no scalar (its spike would
  set the chart's scale), where the raw cosines are still logged."""
  rec = record(steps=10, noise=50.0)
  assert not rec.resolved_noise_floors().any()
  last = draw.probe_scalars(rec)[-1][1]
  for pair in PAIRS:
    assert f"conflicts/corrected_cos/{pair}" not in last
    assert f"conflicts/cos/{pair}" in last
  resolved = draw.probe_scalars(record(steps=10))[-1][1]  # noise 0.5: every floor resolved
  assert all(f"conflicts/corrected_cos/{pair}" in resolved for pair in PAIRS)


def test_draw_all_writes_the_documented_files(tmp_path):
  rec = record(layers=layer_names()[:20])
  paths = draw.draw_all(rec, str(tmp_path / "conflicts"), window=4)
  names = [os.path.basename(p) for p in paths]
  assert names == ["cos_matrix.png", "cos_layers_pairs.png", "cos_curves.png"] + [
      f"cos_layers_steps-{p}.png" for p in PAIRS]
  for path in paths:
    with open(path, "rb") as f:
      width, height = png_size(f.read())
    assert 250 < width < 2000 and 250 < height < 3000, (path, width, height)
  assert sorted(os.listdir(tmp_path / "conflicts")) == sorted(names)  # no temporary files left
