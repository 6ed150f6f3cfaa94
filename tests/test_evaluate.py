"""Whole-image evaluation: tiling without seams, IPT's test tiling, the x8 self-ensemble, and the
tile loop on the devices (equal to one device's plain apply), with EMA parameters beside."""
import functools
import io
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments import tiny
from mtl import evaluate, metrics, run_defaults, tasks
from mtl.models import ipt

# float32 outputs in [0, 255] of sums over ~10^3 terms whose order XLA may choose by shape (a
# tile vs the whole image, 1 vs 8 devices): differences of a few ulp of 255 per term, << 1e-2.
TOL = 1e-2


def _conv(kernel):
  """A convolution on NHWC float32 numpy batches of any size (zero 'SAME' padding)."""
  fn = jax.jit(lambda x: jax.lax.conv_general_dilated(
      x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
  return lambda x: np.asarray(fn(jnp.asarray(x, jnp.float32)))


def _model(tasks_=("sr_x2",), patch_size=48):
  config = tiny.get_config()
  config.tasks, config.model.patch_size = tasks_, patch_size
  model = ipt.IPT(ipt.ModelConfig.from_config(config.model), tasks.get_all(config.tasks))
  return config, model, model.init(jax.random.key(0))


def test_centre_tiling_equals_the_untiled_image_where_the_margin_covers_the_receptive_field():
  # IPT's head and tail without the body are convolutions of any input size: a receptive field
  # of 11 input pixels (head 3x3 + four 5x5: 9; x2 tail 3x3 before and after the shuffle: 2).
  _, model, params = _model()
  head_tail = jax.jit(lambda x: model.tail(params["tails"]["sr_x2"], 2,
                                           model.head(params["heads"]["sr_x2"], x)))
  apply = lambda x: np.asarray(head_tail(jnp.asarray(x)))
  image = np.random.default_rng(0).integers(0, 256, (101, 77, 3), dtype=np.uint8)
  untiled = apply(image[None].astype(np.float32))[0]
  tiled = evaluate.tiled_restore(apply, image, 2, tile=48, overlap=22, tiling="centre")
  assert tiled.shape == untiled.shape == (202, 154, 3)
  np.testing.assert_allclose(tiled, untiled, atol=TOL, rtol=0)
  # Averaged tiles (the former evaluation) see too little context at their seams.
  mean = evaluate.tiled_restore(apply, image, 2, tile=48, overlap=22, tiling="mean")
  assert np.abs(mean - untiled).max() > 10 * TOL
  # A margin short of the receptive field leaves seams too: the test can fail.
  short = evaluate.tiled_restore(apply, image, 2, tile=48, overlap=12, tiling="centre")
  assert np.abs(short - untiled).max() > 10 * TOL


def _origin_map(tiling, h, w, tile):
  """Each output pixel's weighted mean over the origins (row, col) of the tiles it comes from."""
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  coords = np.stack([rows, cols, np.zeros((h, w))], -1).astype(np.uint8)
  origin = lambda tiles: np.broadcast_to(tiles[:, :1, :1], tiles.shape).copy()
  return evaluate.tiled_restore(origin, coords, 1, tile=tile, overlap=0, tiling=tiling)


def test_ipt_tiling_takes_each_pixel_from_the_tiles_forward_chop_takes_it_from():
  # forward_chop at tile 16: stride = margin = 16 // 2 // 2 = 4. h = 61: (61 - 16) % 4 = 1 row
  # left over, so one more tile at 45 takes over at (61 - 1) - (16 - 1) // 2 = 53. w = 64: no
  # row left over; the grid's last tile (48) takes over at 64 - 16 // 2 = 56.
  rows = _origin_map("ipt", 61, 64, 16)[..., 0]
  cols = _origin_map("ipt", 61, 64, 16)[..., 1]
  assert rows[2, 30] == 0                  # the first tile's outer margin is kept
  assert rows[20, 30] == 14                # centres of the tiles at 12 and 16, averaged
  assert rows[52, 30] == 44                # only the grid's last tile's centre covers row 52
  assert np.all(rows[53:, 30] == 45)       # the extra tile flush with the bottom border
  assert cols[30, 55] == 46 and np.all(cols[30, 56:] == 48)
  # forward_chop writes its left tile column over its top tile row: rows 0-3 of columns 4-15
  # come from the corner tile alone (averaged centres would give (0 + 4) / 2 at column 10).
  assert cols[1, 10] == 0 and cols[5, 10] == 2
  # Away from that strip a local model gives the untiled output (margin 4 >= radius 3).
  kernel = np.random.default_rng(1).normal(size=(7, 7, 3, 3)).astype(np.float32) / 50
  apply = _conv(kernel)
  image = np.random.default_rng(2).integers(0, 256, (61, 64, 3), dtype=np.uint8)
  untiled = apply(image[None].astype(np.float32))[0]
  tiled = evaluate.tiled_restore(apply, image, 1, tile=16, overlap=0, tiling="ipt")
  error = np.abs(tiled - untiled).max(-1)
  assert error[:4, 4:16].max() > 10 * TOL
  error[:4, 4:16] = 0
  assert error.max() < TOL


@pytest.mark.parametrize("tiling", evaluate.TILINGS)
def test_tiles_go_through_in_groups_of_bounded_output_and_give_the_same_image(tiling, monkeypatch):
  # All of an image's tile outputs were held at once: 34 GiB for a 12-megapixel x4 image under
  # IPT's tiling. Groups of 5 tiles (IPT's corner strip included) give the one-call image exactly.
  kernel = np.random.default_rng(4).normal(size=(7, 7, 3, 3)).astype(np.float32) / 50
  conv = _conv(kernel)
  calls = []
  apply = lambda tiles: (calls.append(len(tiles)), conv(tiles))[1]
  image = np.random.default_rng(5).integers(0, 256, (61, 64, 3), dtype=np.uint8)
  whole = evaluate.tiled_restore(apply, image, 1, tile=16, overlap=4, tiling=tiling)
  assert len(calls) == 1 and calls[0] > 10
  calls.clear()
  monkeypatch.setattr(evaluate, "GROUP_BYTES", 5 * 16 * 16 * 3 * 4)
  grouped = evaluate.tiled_restore(apply, image, 1, tile=16, overlap=4, tiling=tiling)
  assert max(calls) == 5 and len(calls) > 2
  np.testing.assert_array_equal(grouped, whole)


@pytest.mark.parametrize("tiling", evaluate.TILINGS)
def test_every_tiling_weights_sum_to_one(tiling):
  for size in (48, 49, 61, 97, 256):
    for scale in (1, 2, 3):
      _, weights, _ = evaluate.axis_windows(size, 48, scale, 8, tiling)
      np.testing.assert_allclose(weights.sum(0), 1.0, rtol=1e-12)
  constant = evaluate.tiled_restore(lambda t: np.full(t.shape[:1] + (96, 96, 3), 7.0), np.zeros(
      (61, 130, 3), np.uint8), 2, tile=48, overlap=8, tiling=tiling)
  np.testing.assert_allclose(constant, 7.0, rtol=1e-6)


def test_the_eight_transforms_invert_exactly_and_are_distinct():
  image = np.random.default_rng(3).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  seen = set()
  for k, flip in evaluate.ENSEMBLE:
    moved = evaluate.transform(image, k, flip)
    np.testing.assert_array_equal(evaluate.invert(moved, k, flip), image)
    seen.add(moved.tobytes() + bytes(moved.shape[:2]))
  assert len(evaluate.ENSEMBLE) == len(seen) == 8


def test_self_ensemble_of_an_equivariant_model_is_the_model():
  # A kernel symmetric under the square's eight symmetries makes the convolution commute with
  # them: each of the eight restorations transformed back is the plain one, and so is their mean.
  raw = np.random.default_rng(4).normal(size=(5, 5, 3, 3)).astype(np.float32) / 30
  sym = np.mean([evaluate.transform(raw, k, f) for k, f in evaluate.ENSEMBLE], axis=0)
  image = np.random.default_rng(5).integers(0, 256, (53, 70, 3), dtype=np.uint8)
  plain = evaluate.restore_float(_conv(sym), image, 1, tile=24, overlap=4)
  ensemble = evaluate.restore_float(_conv(sym), image, 1, tile=24, overlap=4, self_ensemble=True)
  np.testing.assert_allclose(ensemble, plain, atol=TOL, rtol=0)
  # Without the symmetry the ensemble is another (smoother) model: the test can fail.
  other = evaluate.restore_float(_conv(raw), image, 1, tile=24, overlap=4, self_ensemble=True)
  assert np.abs(other - evaluate.restore_float(_conv(raw), image, 1, 24, 4)).max() > 10 * TOL


def test_oriented_degradations_keep_their_orientation_in_the_self_ensemble():
  # Rain streaks near vertical and haze far at the top: only the image and its left-right mirror.
  image = np.zeros((6, 4, 3), np.uint8)
  image[:, 1] = 255  # a vertical streak
  for kind in evaluate.ORIENTED_KINDS:
    for k, flip in evaluate.ensemble_of(kind):
      moved = evaluate.transform(image, k, flip)
      assert moved.shape == image.shape and (moved[:, :, 0] == 255).sum(axis=0).max() == 6
  assert evaluate.ensemble_of("derain") == ((0, False), (0, True))
  assert evaluate.ensemble_of("sr") == evaluate.ENSEMBLE
  # A model that only removes vertical streaks, run on a transposed image, would not remove them:
  # the derain ensemble never shows it one.
  assert not any(k % 2 for k, _ in evaluate.ensemble_of("derain"))


def test_tile_runner_on_all_local_devices_equals_one_device_apply():
  config, model, params = _model(("sr_x2",), patch_size=24)
  mesh = evaluate.local_mesh()
  assert mesh.devices.size == jax.local_device_count() == 8   # conftest's fake CPU devices
  with jax.set_mesh(mesh):
    run = evaluate.tile_runner(model, evaluate.local_params(params, mesh), "sr_x2", 4, mesh)
    tiles = np.random.default_rng(6).uniform(0, 255, (75, 24, 24, 3)).astype(np.float32)
    # tile_batch 4 -> 8 (one per device): 10 chunks, as one call of 8 and one of 2.
    ours = run(tiles)
  one = jax.jit(model.apply, static_argnums=1)
  host = jax.device_get(params)
  reference = np.concatenate([np.asarray(one(host, "sr_x2", tiles[i:i + 25]))
                              for i in range(0, 75, 25)])
  assert ours.shape == (75, 48, 48, 3)
  np.testing.assert_allclose(ours, reference, atol=TOL, rtol=0)


def _former_restore(model, params, task, image, scale, tile, overlap, tile_batch):
  """The evaluation before the device runner: parameters on the host, one jitted apply per
  fixed-size tile batch, overlapping tiles averaged (tiling='mean')."""
  apply = functools.partial(jax.jit(model.apply, static_argnums=1), jax.device_get(params), task)
  h, w = image.shape[:2]
  ys, xs = evaluate.tile_starts(h, tile, overlap), evaluate.tile_starts(w, tile, overlap)
  origins = [(y, x) for y in ys for x in xs]
  tiles = np.stack([image[y:y + tile, x:x + tile] for y, x in origins]).astype(np.float32)
  canvas = np.zeros((h * scale, w * scale, 3))
  weight = np.zeros((h * scale, w * scale, 1))
  t = tile * scale
  for start in range(0, len(tiles), tile_batch):
    full = np.zeros((tile_batch,) + tiles.shape[1:], np.float32)
    chunk = tiles[start:start + tile_batch]
    full[:len(chunk)] = chunk
    for (y, x), o in zip(origins[start:], np.asarray(apply(full))[:len(chunk)]):
      canvas[y * scale:y * scale + t, x * scale:x * scale + t] += o
      weight[y * scale:y * scale + t, x * scale:x * scale + t] += 1
  return canvas / weight


def test_evaluation_on_the_devices_equals_the_former_one_and_reports_ema_and_x8(tmp_path):
  config, model, params = _model(("denoise_30", "sr_x2"), patch_size=24)
  config.eval.update(max_images=1, max_side=64, tile_overlap=4, tile_batch=4, samples=0,
                     tiling="mean", self_ensemble=True)
  config.optim.ema_decay = 0.9
  testsets = evaluate.load_testsets(config)
  results = evaluate.evaluate(model, params, config, testsets, str(tmp_path), 3, ema_params=params)
  spec = tasks.get("sr_x2")
  name, degraded, clean = evaluate.test_pairs(spec, testsets[0], config)[0]
  former = _former_restore(model, params, "sr_x2", degraded, 2, 24, 4, 4)
  ours = evaluate.restore_float(evaluate.tile_runner(model, params, "sr_x2", 4), degraded, 2,
                                24, 4, "mean")
  np.testing.assert_allclose(ours, former, atol=TOL, rtol=0)
  output = np.clip(np.round(former), 0, 255).astype(np.uint8)
  # Rounding may flip where the two differ by ~1e-4 at a .5: PSNR moves by << 0.01 dB.
  assert results["tasks"]["sr_x2"]["photos"]["psnr_y"] == pytest.approx(
      evaluate.score(output, clean, 2)["psnr_y"], abs=0.01)
  assert set(results["variants"]) == {"self_ensemble", "ema", "ema+self_ensemble"}
  assert results["ema_decay"] == 0.9
  # EMA parameters equal to the raw ones score the same, to the bit; x8 scores differently.
  assert results["variants"]["ema"]["tasks"] == results["tasks"]
  assert results["variants"]["ema+self_ensemble"]["tasks"] == \
      results["variants"]["self_ensemble"]["tasks"]
  x8 = results["variants"]["self_ensemble"]["tasks"]["sr_x2"]["photos"]
  assert x8["psnr_y"] != results["tasks"]["sr_x2"]["photos"]["psnr_y"]
  assert x8["input_psnr_y"] == results["tasks"]["sr_x2"]["photos"]["input_psnr_y"]
  table = evaluate.format_table(results)
  assert "PSNR x8" in table and "PSNR EMA x8" in table and "decay 0.9" in table


def test_an_evaluation_image_in_tensorboard_names_its_panels_and_their_psnr(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator
  from mtl import events
  config, model, params = _model(("sr_x2",), patch_size=24)
  config.eval.update(max_images=1, max_side=40, tile_batch=4, samples=1)
  testsets = evaluate.load_testsets(config)
  with events.Writer(str(tmp_path / "events")) as writer:
    results = evaluate.evaluate(model, params, config, testsets, str(tmp_path), 3, writer=writer)
  spec = tasks.get("sr_x2")
  name, degraded, clean = evaluate.test_pairs(spec, testsets[0], config)[0]
  clean = clean[:degraded.shape[0] * 2, :degraded.shape[1] * 2]
  shown = evaluate.input_baseline(spec, degraded)
  entry = results["tasks"]["sr_x2"]["photos"]
  acc = event_accumulator.EventAccumulator(str(tmp_path / "events"), {"images": 0})
  acc.Reload()
  [logged] = acc.Images(f"eval/sr_x2/photos/{name}")
  image = np.asarray(Image.open(io.BytesIO(logged.encoded_image_string)))
  h, w = clean.shape[:2]
  assert image.shape == (evaluate.LABEL_HEIGHT + h, 3 * (w + 4), 3)
  # each panel under its strip, as scored: the input (bicubic for SR), the output, the target
  panels = [image[evaluate.LABEL_HEIGHT:, k * (w + 4):k * (w + 4) + w] for k in range(3)]
  np.testing.assert_array_equal(panels[0], shown)
  np.testing.assert_array_equal(panels[2], clean)
  assert evaluate.score(panels[1], clean, 2)["psnr_y"] == pytest.approx(entry["psnr_y"], abs=1e-9)
  # the strips hold text, and differ: 'bicubic 25.31 dB', 'output 27.12 dB', 'target'
  strips = [image[:evaluate.LABEL_HEIGHT, k * (w + 4):k * (w + 4) + w] for k in range(3)]
  assert all(strip.max() > 127 for strip in strips)  # white text, antialiased or not
  assert not np.array_equal(strips[1], strips[2])
  label = evaluate.labelled_panels([(f"output {entry['psnr_y']:.2f} dB", panels[1])])
  np.testing.assert_array_equal(label[:evaluate.LABEL_HEIGHT, :w], strips[1])


def test_the_results_table_widens_its_columns_for_long_names():
  entry = {"input_psnr_y": 20.0, "psnr_y": 25.0, "ssim_y": 0.8}
  results = {"step": 3, "tasks": {"denoise_gray_25": {"BSD68_grey_test": entry},
                                  "sr_x2": {"Set5": entry}}}
  header, *rows = evaluate.format_table(results).splitlines()[1:]
  end = header.index("input PSNR") + len("input PSNR")  # right-aligned under their header
  assert [r.index("20.00") + len("20.00") for r in rows] == [end, end]


def test_an_evaluation_image_too_small_to_score_is_refused_before_training(tmp_path):
  from PIL import Image
  for name, side in (("small", 12), ("large", 40)):
    Image.fromarray(np.zeros((side, side + 3, 3), np.uint8)).save(tmp_path / f"{name}.png")
  config = run_defaults.get_config("tiny")
  config.eval.sets = f"S={tmp_path}"
  config.tasks = ("denoise_30",)  # SSIM's 11x11 window fits 12 pixels
  assert [item[0] for item in evaluate.load_testsets(config)[0].items] == ["large", "small"]
  # x4: a side mod-cropped to a multiple of 4 must keep 11 after the 2 x 4 border: 20 (19
  # mod-crops to 16, which keeps 8)
  config.tasks = ("denoise_30", "sr_x4")
  with pytest.raises(ValueError, match=r"eval.sets S: small is 12x15 pixels; scoring needs at "
                                       r"least 20x20"):
    evaluate.load_testsets(config)
  Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "small.png")
  assert len(evaluate.load_testsets(config)[0].items) == 2
  # a set only a scale-1 task reads needs only SSIM's window
  Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "small.png")
  config.eval.sets = f"S=for:denoise:{tmp_path}"
  assert len(evaluate.load_testsets(config)[0].items) == 2
  # an SR task does not score degraded / clean pairs: it degrades a clean set itself
  config.eval.sets = f"S=for:sr_x4:paired:{tmp_path}"
  with pytest.raises(ValueError, match=r"eval.sets S: sr_x4 would score a paired set"):
    evaluate.load_testsets(config)


def test_a_non_finite_output_is_refused_naming_the_task_set_and_image(tmp_path):
  # NaN cast to uint8 is an arbitrary value: it was scored (and saved) as if it were an image.
  nan = lambda tiles: np.full(tiles.shape, np.nan, np.float32)
  with pytest.raises(evaluate.NonFiniteOutput, match=r"output holds 300 non-finite values"):
    evaluate.restore_image(nan, np.zeros((10, 10, 3), np.uint8), 1, tile=8, overlap=2)
  config, model, params = _model(("denoise_30",), patch_size=24)
  config.eval.update(max_images=1, max_side=24, tile_overlap=4, tile_batch=4, samples=0)
  overflowing = jax.tree_util.tree_map(lambda x: x * 1e30, params)
  with pytest.raises(evaluate.NonFiniteOutput, match=r"step 5: task denoise_30, test set photos, "
                                                     r"image chelsea: the model's output holds"):
    evaluate.evaluate(model, overflowing, config, evaluate.load_testsets(config), str(tmp_path), 5)
  assert not list(tmp_path.iterdir())   # no results.json


def test_a_colour_denoising_task_on_a_grey_set_is_warned_about(tmp_path, capsys):
  # BSD68 (grey) is not CBSD68: denoise_30 adds noise per channel and scores Y, a figure no
  # grey benchmark reports; denoise_gray_30 is the grey protocol
  from PIL import Image
  from skimage import data
  (tmp_path / "set").mkdir()
  (tmp_path / "w").mkdir()
  Image.fromarray(data.camera()[:48, :48]).save(tmp_path / "set" / "camera.png")
  config, model, params = _model(("denoise_30", "denoise_gray_30"), patch_size=24)
  config.eval.update(sets=f"G={tmp_path / 'set'}", max_images=1, max_side=24, tile_overlap=4,
                     tile_batch=4, samples=0)
  evaluate.evaluate(model, params, config, evaluate.load_testsets(config), str(tmp_path / "w"), 1)
  out = capsys.readouterr().out
  assert ("warning: denoise_30 on G: every image is grey; a colour task adds noise per channel "
          "and scores Y, which no grey benchmark reports (grey protocol: denoise_gray_30)") in out
  assert "warning: denoise_gray_30" not in out


def test_an_image_equal_to_its_target_counts_at_the_cap_in_the_mean_psnr_and_is_counted(tmp_path):
  # A flat image's bicubic input is exact (PSNR inf): in the mean it hid the set's other images,
  # and results.json held Infinity, which strict JSON readers refuse. At the cap, the output's
  # and the input's means cover the same images, and an exact output never reads below a nearly
  # exact one.
  import json
  from skimage import data
  (tmp_path / "set").mkdir()
  (tmp_path / "w").mkdir()
  Image.fromarray(np.full((48, 48, 3), 90, np.uint8)).save(tmp_path / "set" / "flat.png")
  Image.fromarray(data.astronaut()[:48, :48]).save(tmp_path / "set" / "texture.png")
  config, model, params = _model(("sr_x2",), patch_size=24)
  config.eval.update(sets=f"S={tmp_path / 'set'}", max_images=2, max_side=48, tile_overlap=4,
                     tile_batch=4, samples=0)
  testsets = evaluate.load_testsets(config)
  results = evaluate.evaluate(model, params, config, testsets, str(tmp_path / "w"), 1)
  spec = tasks.get("sr_x2")
  scores = {name: evaluate.score(evaluate.input_baseline(spec, degraded), clean, 2)
            for name, degraded, clean in evaluate.test_pairs(spec, testsets[0], config)}
  assert scores["flat"]["psnr_y"] == float("inf") and np.isfinite(scores["texture"]["psnr_y"])
  entry = results["tasks"]["sr_x2"]["S"]
  cap = metrics.PSNR_CAP
  assert entry["input_psnr_y"] == pytest.approx((cap + scores["texture"]["psnr_y"]) / 2)
  assert entry["input_psnr_rgb"] == pytest.approx((cap + scores["texture"]["psnr_rgb"]) / 2)
  assert entry["input_ssim_y"] == pytest.approx((1 + scores["texture"]["ssim_y"]) / 2)
  assert entry["input_identical"] == 1 and entry["num_images"] == 2
  assert "identical" not in entry   # the untrained model's outputs differ from their targets
  def refuse(name):
    raise ValueError(f"{name} in results.json")
  [saved] = [json.loads(p.read_text(), parse_constant=refuse) for p in (tmp_path / "w").iterdir()]
  assert saved["tasks"]["sr_x2"]["S"]["input_identical"] == 1
  assert ("sr_x2 on S: 1 of 2 inputs equal their target (PSNR inf; 100 dB each in its mean)"
          in evaluate.format_table(results))
  # a variant's own count is said too
  results["variants"] = {"ema": {"tasks": {"sr_x2": {"S": dict(entry, identical=2)}}}}
  results["ema_decay"] = 0.9
  assert ("sr_x2 on S: 1 of 2 inputs and 2 of 2 outputs (EMA) equal their target"
          in evaluate.format_table(results))


def test_derain_trained_on_real_streaks_and_tested_on_drawn_rain_is_warned_about(tmp_path, capsys):
  # A clean test set gets mtl's drawn rain whatever degrade.rain.streak_dir holds: the score is
  # of other rain than training's, which only a paired set of real rain avoids.
  config = run_defaults.get_config("tiny")
  config.tasks = ("derain", "sr_x2")
  config.eval.max_images = 1
  evaluate.load_testsets(config)
  assert "warning" not in capsys.readouterr().out
  config.degrade.rain.streak_dir = str(tmp_path)
  evaluate.load_testsets(config)
  assert capsys.readouterr().out.count(
      "warning: derain on photos: trained on degrade.rain.streak_dir's real streak layers, "
      "tested on this clean set with mtl's drawn rain; a paired set tests real rain "
      "(e.g. Rain100L=for:derain:paired:<folder of rain / norain pairs>)") == 1
  (tmp_path / "set").mkdir()
  Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(tmp_path / "set" / "a.png")
  config.eval.sets = f"S=for:sr_x2:{tmp_path / 'set'}"
  evaluate.load_testsets(config)
  assert "warning" not in capsys.readouterr().out


def test_folder_val_scores_the_images_held_out_of_the_training_folder(tmp_path, monkeypatch):
  # data.validation_fraction held images out of training that no eval set could score
  from skimage import data
  from mtl import run_config
  from mtl.data import folder as folder_lib
  photo = data.astronaut()
  (tmp_path / "train" / "sub").mkdir(parents=True)
  for k in range(10):
    where = tmp_path / "train" / ("sub" if k % 3 == 0 else "")
    Image.fromarray(photo[16 * k:16 * k + 64, 8 * k:8 * k + 64]).save(where / f"im{k}.png")
  config = run_defaults.get_config("tiny")
  config.tasks = ("denoise_30",)
  config.data.source, config.data.folder = "folder", str(tmp_path / "train")
  config.eval.update(sets="folder_val", max_images=0, max_side=0)
  with pytest.raises(ValueError, match=r"eval.sets: folder_val scores the images held out of "
                                       r"data.folder, but no images are held out of data.folder "
                                       r"\(data.source='folder', data.validation_fraction=0.0\)"):
    run_config.validate(config)
  config.data.validation_fraction = 0.2
  run_config.validate(config)
  [testset] = evaluate.load_testsets(config)
  splits = folder_lib.split_paths(
      folder_lib.FolderConfig(str(tmp_path / "train"), 0.2, 0),
      folder_lib.list_images(str(tmp_path / "train")))
  held_out = splits["validation"]
  assert len(held_out) == 2 and not {n for n, _ in held_out} & {n for n, _ in splits["train"]}
  assert [name for name, _ in testset.items] == [os.path.splitext(n)[0] for n, _ in held_out]
  for (_, image), (_, path) in zip(testset.items, held_out):
    np.testing.assert_array_equal(image, np.asarray(Image.open(path).convert("RGB")))
  # eval.max_images: only those are decoded (a held-out share of a large folder is large)
  read = []
  real = folder_lib.read_rgb
  monkeypatch.setattr(folder_lib, "read_rgb", lambda path: read.append(path) or real(path))
  config.eval.max_images = 1
  [testset] = evaluate.load_testsets(config)
  assert len(testset.items) == len(read) == 1
  monkeypatch.undo()
  # two held-out images of one stem keep their extensions (their saved outputs would collide)
  config.eval.max_images = 0
  for k in range(10):
    Image.fromarray(photo[:64, :64]).save(tmp_path / "train" / f"im{k}.jpg")
  config.data.validation_fraction = 0.9
  names = [name for name, _ in evaluate.load_testsets(config)[0].items]
  stems = [os.path.splitext(n)[0] for n in names]
  assert len(set(names)) == len(names) == 18 and len(set(stems)) < len(stems)
  assert all(n.endswith((".png", ".jpg")) == (stems.count(s) > 1) for n, s in zip(names, stems))
  config.data.source = "photos"
  with pytest.raises(ValueError, match=r"data.source='photos'"):
    run_config.validate(config)


def test_test_images_are_centre_cropped_then_mod_cropped_to_the_scale(tmp_path):
  # a left-aligned crop, or a mod-crop of the height alone, went unnoticed: every test image
  # was square and even at x2
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (50, 67, 3), dtype=np.uint8)
  (tmp_path / "T").mkdir()
  Image.fromarray(image).save(tmp_path / "T" / "a.png")
  config = tiny.get_config()
  config.tasks, config.eval.sets, config.eval.max_images = ("sr_x3",), f"T={tmp_path / 'T'}", 1
  for side, kept in ((0, image), (40, image[5:45, 13:53])):  # (50 - 40) // 2, (67 - 40) // 2
    config.eval.max_side = side
    (testset,) = evaluate.load_testsets(config)
    np.testing.assert_array_equal(testset.items[0][1], kept)
    _, degraded, clean = evaluate.test_pairs(tasks.get("sr_x3"), testset, config)[0]
    height, width = (s - s % 3 for s in kept.shape[:2])
    assert clean.shape == (height, width, 3) and degraded.shape == (height // 3, width // 3, 3)
    np.testing.assert_array_equal(clean, kept[:height, :width])


def test_a_set_s_scores_are_the_means_of_its_images_scores():
  # per image, then averaged (IPT, BasicSR): with one or two images a median passed as a mean
  rows = [{"psnr_y": 30.0, "ssim_y": 0.1}, {"psnr_y": 31.0, "ssim_y": 0.2},
          {"psnr_y": 38.0, "ssim_y": 0.9}]
  assert evaluate.mean_entry(rows) == {"psnr_y": pytest.approx(33.0),
                                       "ssim_y": pytest.approx(0.4)}
