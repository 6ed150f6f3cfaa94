"""Restoring folders and scoring them: restore equals evaluation's output, scores equal mtl.metrics."""
import csv
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mtl import evaluate, files, metrics, restoration, run_state, tasks
from mtl.models import ipt_import

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "ipt_pretrain6.pt")


def _png(path, image):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("ipt") / "imported")
  cfg, names, params = ipt_import.load(FIXTURE, num_heads=2)
  run_state.write_workdir(params, cfg, names, path)
  return path


def test_restore_equals_evaluation_on_an_odd_sized_image(workdir, tmp_path):
  rng = np.random.default_rng(0)
  rainy = rng.integers(0, 256, (23, 37, 3), dtype=np.uint8)   # odd sides, not multiples of 12
  clean = rng.integers(0, 256, (23, 37, 3), dtype=np.uint8)
  _png(str(tmp_path / "Rain" / "rain-001.png"), rainy)
  _png(str(tmp_path / "Rain" / "norain-001.png"), clean)
  (tmp_path / "inputs").mkdir()
  _png(str(tmp_path / "inputs" / "rain-001.png"), rainy)
  (tmp_path / "inputs" / "broken.png").write_bytes(b"not an image")

  err = io.StringIO()
  written, skipped = restoration.restore_folder(workdir, "derain", str(tmp_path / "inputs"),
                                            str(tmp_path / "out"), err=err)
  assert [os.path.basename(p) for p in written] == ["rain-001.png"]
  assert [os.path.basename(p) for p in skipped] == ["broken.png"]
  assert "warning: skipped" in err.getvalue() and "image 2/2" in err.getvalue()
  assert "ETA" in err.getvalue()

  # Evaluation of the same model on the same input, with its PNGs saved (config.eval.save_images).
  config, model, params, step = restoration.load_model(workdir)
  config.eval.sets = f"Rain=paired:{tmp_path / 'Rain'}"
  config.eval.save_images = True
  results = evaluate.evaluate(model, params, config, evaluate.load_testsets(config), workdir, step)
  saved = os.path.join(workdir, "restored", "0", "derain", "Rain", "norain-001.png")
  ours = np.asarray(Image.open(written[0]))
  assert ours.shape == (23, 37, 3)
  np.testing.assert_array_equal(ours, np.asarray(Image.open(saved)))
  assert results["tasks"]["derain"]["Rain"]["psnr_y"] == pytest.approx(
      metrics.psnr(ours, clean, 0, y_channel=True), abs=1e-9)


def test_restore_upscales_and_refuses_unknown_tasks(workdir, tmp_path):
  image = np.random.default_rng(1).integers(0, 256, (13, 29, 3), dtype=np.uint8)
  _png(str(tmp_path / "a.png"), image)
  written, _ = restoration.restore_folder(workdir, "sr_x3", str(tmp_path / "a.png"),
                                      str(tmp_path / "out"), err=io.StringIO())
  assert np.asarray(Image.open(written[0])).shape == (39, 87, 3)
  with pytest.raises(ValueError, match="its tasks: sr_x2, sr_x3"):
    restoration.restore_folder(workdir, "sr_x8", str(tmp_path / "a.png"), str(tmp_path / "o"))
  with pytest.raises(ValueError, match="step 7 has no checkpoint in .*; saved steps: 0"):
    restoration.load_model(workdir, step=7)


def test_restore_says_what_it_drops_and_feeds_a_grey_model_its_grey_plane(tmp_path):
  # Transparency was dropped, and a grey model given colour restored colour, without a word.
  cfg, names, params = ipt_import.load(FIXTURE, num_heads=2)
  names = tuple("denoise_gray_25" if n == "denoise_30" else n for n in names)
  params = {group: ({("denoise_gray_25" if k == "denoise_30" else k): v for k, v in p.items()}
                    if group != "body" else p) for group, p in params.items()}
  workdir = str(tmp_path / "grey")
  run_state.write_workdir(params, cfg, names, workdir)
  rng = np.random.default_rng(7)
  colour = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
  rgba = np.concatenate([colour, np.full((20, 24, 1), 255, np.uint8)], -1)
  rgba[:, 12:, 3] = 0
  (tmp_path / "in").mkdir()
  Image.fromarray(colour).save(tmp_path / "in" / "colour.png")
  Image.fromarray(rgba).save(tmp_path / "in" / "clear.png")
  err = io.StringIO()
  restoration.restore_folder(workdir, "denoise_gray_25", str(tmp_path / "in"),
                             str(tmp_path / "out"), err=err)
  warnings = [l for l in err.getvalue().splitlines() if l.startswith("warning: ")]
  assert sum("its transparency is dropped" in l for l in warnings) == 1
  assert sum("a colour image given to denoise_gray_25, a grey model: restored on its grey "
             "plane" in l for l in warnings) == 2
  assert not any("16-bit" in l or "EXIF" in l for l in warnings)
  # 16-bit samples written as 8-bit, and an EXIF turn not applied, were said nowhere either
  (tmp_path / "more").mkdir()
  Image.fromarray(np.full((20, 24), 40000, np.uint16)).save(tmp_path / "more" / "deep.png")
  turned = Image.fromarray(colour)
  exif = turned.getexif()
  exif[0x0112] = 6  # shown turned 90 degrees clockwise
  turned.save(tmp_path / "more" / "turned.jpg", exif=exif)
  err = io.StringIO()
  restoration.restore_folder(workdir, "denoise_gray_25", str(tmp_path / "more"),
                             str(tmp_path / "out_more"), err=err)
  assert ("deep.png: its 16-bit samples are restored and written as 8-bit (as the model and the "
          "metrics read every image)") in err.getvalue()
  assert ("turned.jpg: its EXIF orientation (6) is not applied: the output is written as the "
          "pixels are stored, which a viewer may show turned") in err.getvalue()
  out = np.asarray(Image.open(tmp_path / "out" / "colour.png"))
  grey = np.repeat(metrics.grey_plane(colour).astype(np.uint8), 3, axis=-1)
  Image.fromarray(grey).save(tmp_path / "grey.png")
  again, _ = restoration.restore_folder(workdir, "denoise_gray_25", str(tmp_path / "grey.png"),
                                        str(tmp_path / "out2"), err=io.StringIO())
  np.testing.assert_array_equal(np.asarray(Image.open(again[0])), out)  # its grey plane went in


def _snapshot(folder):
  return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("task", ["sr_x2", "derain"])
def test_the_tile_count_a_restore_reports_progress_by_is_the_tiles_it_runs(workdir, task):
  # a large image with --self_ensemble restores for minutes: its progress counts tiles of this
  config, model, params, _ = restoration.load_model(workdir)
  image = np.random.default_rng(7).integers(0, 256, (30, 71, 3), dtype=np.uint8)
  for tiling in evaluate.TILINGS:
    config.eval.tiling = tiling
    for ensemble in (False, True):
      counted = []
      restoration.restorer(model, params, config, task, ensemble,
                           lambda n, total: counted.append((n, total)))(image)
      want = evaluate.tile_count(30, 71, config.model.patch_size, config.eval.tile_overlap,
                                 tiling, ensemble, tasks.get(task).kind)
      assert sum(n for n, _ in counted) == want, (tiling, ensemble)
      assert {total for _, total in counted} == {want}, (tiling, ensemble)


def test_restore_never_writes_into_its_input_or_one_output_twice(workdir, tmp_path):
  inputs = tmp_path / "photos"
  rng = np.random.default_rng(4)
  _png(str(inputs / "x.png"), rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
  Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(inputs / "y.jpg")
  before = _snapshot(tmp_path)
  refusals = [
      (str(inputs), str(inputs), "is --input"),  # x.png would be replaced by its own result
      (str(inputs), str(inputs / "restored"), "is inside --input"),
      (str(inputs / "x.png"), str(inputs), "would replace --input"),
  ]
  for source, output, why in refusals:
    with pytest.raises(ValueError) as error:
      restoration.restore_folder(workdir, "derain", source, output, err=io.StringIO())
    assert why in str(error.value) and "\n" not in str(error.value), (source, output)
  # Same stem, two formats: both would be <stem>.png.
  Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(inputs / "x.jpg")
  with pytest.raises(ValueError) as error:
    restoration.restore_folder(workdir, "derain", str(inputs), str(tmp_path / "out"))
  assert "x.jpg, x.png -> x.png" in str(error.value) and "\n" not in str(error.value)
  assert _snapshot(tmp_path) == {**before, inputs / "x.jpg": (inputs / "x.jpg").read_bytes()}
  assert not (tmp_path / "out").exists() and not (inputs / "restored").exists()
  # an input that links into --output: b.png's result would replace a.png's pixels, --overwrite
  # or not (the input folder is elsewhere)
  (tmp_path / "kept").mkdir()
  _png(str(tmp_path / "kept" / "b.png"), rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
  (tmp_path / "linked").mkdir()
  (tmp_path / "linked" / "a.png").symlink_to(tmp_path / "kept" / "b.png")
  _png(str(tmp_path / "linked" / "b.png"), rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
  before = _snapshot(tmp_path)
  with pytest.raises(ValueError) as error:
    restoration.restore_folder(workdir, "derain", str(tmp_path / "linked"),
                               str(tmp_path / "kept"), err=io.StringIO(), overwrite=True)
  assert str(error.value) == (
      f"--output={tmp_path / 'kept'} would replace an input, even with --overwrite: "
      f"{tmp_path / 'linked' / 'a.png'} -> {tmp_path / 'kept' / 'b.png'} (an input links to "
      "that file); choose another --output")
  assert _snapshot(tmp_path) == before


class _AnotherWriter(io.StringIO):
  """The restore's progress stream; once it starts restoring, another process writes `clash`."""

  def __init__(self, clash):
    super().__init__()
    self.clash = clash

  def write(self, text):
    if text.startswith("restoring") and not os.path.exists(self.clash):
      _png(self.clash, np.full((4, 4, 3), 7, np.uint8))
    return super().write(text)


def test_a_file_another_process_writes_into_output_meanwhile_is_kept(workdir, tmp_path):
  # two restores into one --output: the later write replaced the earlier one's images unsaid
  inputs = tmp_path / "photos"
  rng = np.random.default_rng(5)
  for name in ("a", "b"):
    _png(str(inputs / f"{name}.png"), rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
  output = tmp_path / "out"
  err = _AnotherWriter(str(output / "b.png"))
  with pytest.raises(ValueError) as error:
    restoration.restore_folder(workdir, "derain", str(inputs), str(output), err=err)
  assert str(error.value) == (
      f"{output / 'b.png'} appeared while this restore ran (another process writes into "
      f"--output={output}?); it is kept and nothing more is written (1 image(s) written before "
      "it): choose another --output, or pass --overwrite")
  assert np.array_equal(np.asarray(Image.open(output / "b.png")), np.full((4, 4, 3), 7, np.uint8))
  assert sorted(os.listdir(output)) == ["a.png", "b.png"]  # no temporary file left
  written, _ = restoration.restore_folder(workdir, "derain", str(inputs), str(output),
                                          err=io.StringIO(), overwrite=True)  # asked for
  assert len(written) == 2 and np.asarray(Image.open(output / "b.png")).shape == (12, 12, 3)


def test_restore_refuses_a_file_as_output_and_a_lone_unreadable_input_before_loading(tmp_path):
  (tmp_path / "out").write_text("x")
  (tmp_path / "junk.png").write_bytes(b"not a png")
  _png(str(tmp_path / "ok.png"), np.zeros((8, 8, 3), np.uint8))
  no_model = str(tmp_path / "no_such_run")  # loading it would fail otherwise: nothing got that far
  with pytest.raises(ValueError, match=r"--output=.*out is a file; give a folder"):
    restoration.restore_folder(no_model, "derain", str(tmp_path / "ok.png"), str(tmp_path / "out"))
  with pytest.raises(ValueError, match=r"cannot read image .*junk.png"):
    restoration.restore_folder(no_model, "derain", str(tmp_path / "junk.png"),
                               str(tmp_path / "new"))
  assert not (tmp_path / "new").exists()


def test_restore_refuses_a_non_finite_output_naming_the_image(tmp_path, monkeypatch):
  # A NaN restoration was cast to arbitrary uint8 and written as a PNG.
  _png(str(tmp_path / "in" / "a.png"), np.zeros((10, 10, 3), np.uint8))
  from experiments import tiny
  monkeypatch.setattr(restoration, "load_model", lambda *args: (tiny.get_config(), None, None, 0))
  nan = lambda tiles: np.full(tiles.shape, np.nan, np.float32)
  monkeypatch.setattr(restoration, "restorer", lambda *args: lambda image: evaluate.restore_image(
      nan, image, 1, tile=8, overlap=2))
  with pytest.raises(ValueError, match=r"a.png: the model's output holds 300 non-finite values"):
    restoration.restore_folder("run", "derain", str(tmp_path / "in"), str(tmp_path / "out"),
                               err=io.StringIO())
  assert not os.listdir(tmp_path / "out")


def test_restore_replaces_existing_outputs_only_when_asked(workdir, tmp_path):
  rng = np.random.default_rng(5)
  _png(str(tmp_path / "in" / "a.png"), rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
  _png(str(tmp_path / "in" / "b.png"), rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "b.png").write_bytes(b"an earlier result")
  proc = _run("restore.py", f"--workdir={workdir}", "--task=derain", f"--input={tmp_path}/in",
              f"--output={tmp_path}/out")
  assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0, proc.stderr
  assert "already holds b.png (1 of the 2 outputs)" in proc.stderr and "--overwrite" in proc.stderr
  assert sorted(os.listdir(tmp_path / "out")) == ["b.png"]
  assert (tmp_path / "out" / "b.png").read_bytes() == b"an earlier result"
  err = io.StringIO()
  written, _ = restoration.restore_folder(workdir, "derain", str(tmp_path / "in"),
                                      str(tmp_path / "out"), err=err, overwrite=True)
  assert len(written) == 2 and "replacing 1 existing file(s)" in err.getvalue()
  assert np.asarray(Image.open(tmp_path / "out" / "b.png")).shape == (12, 12, 3)
  # An unreadable input: the rest are restored, and the exit status says not all were.
  (tmp_path / "in" / "c.png").write_bytes(b"not a png")
  proc = _run("restore.py", f"--workdir={workdir}", "--task=derain", f"--input={tmp_path}/in",
              f"--output={tmp_path}/out2")
  assert proc.returncode == 1, proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      f"error: wrote 2 image(s) to {tmp_path}/out2; 1 of the inputs unreadable, skipped: c.png")
  assert sorted(os.listdir(tmp_path / "out2")) == ["a.png", "b.png"]


def test_score_pairs_each_reference_once_and_names_the_unscored(tmp_path):
  image = np.random.default_rng(6).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  for name in ("a.png", "ax2.png"):
    _png(str(tmp_path / "out" / name), image)
  for name in ("a.png", "b.png"):
    _png(str(tmp_path / "ref" / name), image)
  # ax2 would pair with a (EDSR naming), but a is a's own reference; b has no restored image.
  with pytest.raises(ValueError) as error:
    restoration.score_folders(str(tmp_path / "out"), str(tmp_path / "ref"), err=io.StringIO())
  assert "ax2.png has no partner" in str(error.value) and "a.png is paired with a.png" in str(
      error.value)
  _png(str(tmp_path / "out" / "b.bmp"), image)   # and b.png would score twice against one b
  _png(str(tmp_path / "out" / "b.png"), image)
  with pytest.raises(ValueError, match=r"--restored holds b.bmp and b.png: one name, two images"):
    restoration.score_folders(str(tmp_path / "out"), str(tmp_path / "ref"), err=io.StringIO())
  os.remove(tmp_path / "out" / "b.bmp")
  os.remove(tmp_path / "out" / "b.png")
  os.remove(tmp_path / "out" / "a.png")  # now ax2 pairs with a, and b is named as unscored
  err = io.StringIO()
  rows, _ = restoration.score_folders(str(tmp_path / "out"), str(tmp_path / "ref"), err=err)
  assert [r["image"] for r in rows] == ["ax2"]
  assert "1 of 2 reference image(s) have no restored partner and are not scored: b.png" in (
      err.getvalue())


def test_score_equals_metrics_on_known_pairs(tmp_path):
  flat_ref = np.broadcast_to(np.array([100, 120, 90], np.uint8), (20, 24, 3))  # colour: not grey
  flat_out = flat_ref + np.uint8(10)
  rng = np.random.default_rng(2)
  ref = rng.integers(0, 256, (32, 30, 3), dtype=np.uint8)
  out = np.clip(ref + rng.normal(0, 8, ref.shape), 0, 255).astype(np.uint8)
  _png(str(tmp_path / "restored" / "flat.png"), flat_out)
  _png(str(tmp_path / "restored" / "noisyx2.png"), out)       # EDSR LR naming pairs with 'noisy'
  _png(str(tmp_path / "reference" / "flat.png"), flat_ref)
  _png(str(tmp_path / "reference" / "noisy.png"), ref)
  rows, mean = restoration.score_folders(str(tmp_path / "restored"), str(tmp_path / "reference"),
                                     crop_border=2, y_channel=False)
  by_name = {r["image"]: r for r in rows}
  # A constant error of 10 in every channel: MSE 100, PSNR 10 log10(255^2 / 100).
  assert by_name["flat"]["psnr"] == pytest.approx(10 * np.log10(255 ** 2 / 100), abs=1e-9)
  assert by_name["noisyx2"]["psnr"] == pytest.approx(metrics.psnr(out, ref, 2, y_channel=False))
  assert by_name["noisyx2"]["ssim"] == pytest.approx(metrics.ssim(out, ref, 2, y_channel=False))
  assert mean["psnr"] == pytest.approx((by_name["flat"]["psnr"] + by_name["noisyx2"]["psnr"]) / 2)
  rows_y, _ = restoration.score_folders(str(tmp_path / "restored"), str(tmp_path / "reference"))
  # Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255: a step of 10 in R, G and B moves Y by
  # 10 * 219 / 255.
  assert rows_y[0]["psnr"] == pytest.approx(10 * np.log10(255 ** 2 / (10 * 219 / 255) ** 2))
  assert [r["channel"] for r in rows + rows_y] == ["RGB", "RGB", "Y", "Y"]


def _noisy(clean, sigma, seed):
  noise = np.random.default_rng(seed).normal(0, sigma, clean.shape)
  return np.clip(np.round(clean + noise), 0, 255).astype(np.uint8)


def test_grey_plane_scores_a_grey_pair_as_evaluation_scores_grey_denoising(tmp_path):
  from skimage import data
  clean = data.camera()
  noisy = _noisy(clean, 10, 7)
  _png(str(tmp_path / "ref" / "camera.png"), clean)   # grey files (PIL mode L)
  _png(str(tmp_path / "out" / "camera.png"), noisy)
  as_rgb = lambda x: np.repeat(x[..., None], 3, axis=-1)
  _png(str(tmp_path / "ref" / "rgb.png"), as_rgb(clean))  # RGB files with R == G == B
  _png(str(tmp_path / "out" / "rgb.png"), as_rgb(noisy))
  mse = np.mean((noisy.astype(np.float64) - clean) ** 2)
  grey_psnr = 10 * np.log10(255 ** 2 / mse)
  y_psnr = metrics.psnr(as_rgb(noisy), as_rgb(clean), y_channel=True)
  # Y of equal channels is 16 + 219/255 v: every error shrinks by 219/255, +1.32 dB.
  assert y_psnr - grey_psnr == pytest.approx(20 * np.log10(255 / 219))
  for y_channel in (True, False):
    rows, mean = restoration.score_folders(str(tmp_path / "out"), str(tmp_path / "ref"),
                                           crop_border=4, y_channel=y_channel, grey_plane=True)
    want = evaluate.score(as_rgb(noisy), as_rgb(clean), 4, gray=True)
    for row in rows:
      assert row["channel"] == "grey"
      assert row["psnr"] == pytest.approx(want["psnr_y"], abs=1e-12)
      assert row["ssim"] == pytest.approx(want["ssim_y"], abs=1e-12)
      assert row["psnr"] == pytest.approx(metrics.psnr(noisy, clean, 4), abs=1e-12)
  assert rows[0]["psnr"] == pytest.approx(28.244, abs=1e-3)   # its Y: 29.566 (+1.32 dB)
  assert rows[0]["ssim"] == pytest.approx(0.6083, abs=1e-4)   # its Y: 0.6499
  assert metrics.psnr(as_rgb(noisy), as_rgb(clean), 4) == pytest.approx(29.566, abs=1e-3)
  # Uncropped, the grey-plane figure is the plain grey PSNR, and not the Y one.
  rows, _ = restoration.score_folders(str(tmp_path / "out"), str(tmp_path / "ref"),
                                      grey_plane=True)
  assert rows[0]["psnr"] == pytest.approx(grey_psnr) and abs(rows[0]["psnr"] - y_psnr) > 1.3
  # A grey task's RGB output is near grey, not exactly: its grey plane (rounded luma) against a
  # grey reference, as evaluation scores it (on Y it read 1.3 dB higher).
  jitter = np.random.default_rng(3).integers(-1, 2, clean.shape + (3,))
  near = np.clip(as_rgb(noisy).astype(np.int64) + jitter, 0, 255).astype(np.uint8)
  _png(str(tmp_path / "out" / "rgb.png"), near)
  rows, _ = restoration.score_folders(str(tmp_path / "out"), str(tmp_path / "ref"),
                                      grey_plane=True)
  assert rows[1]["channel"] == "grey" and not metrics.is_grey(near)
  assert rows[1]["psnr"] == pytest.approx(
      evaluate.score(near, as_rgb(clean), 0, gray=True)["psnr_y"], abs=1e-12)
  assert metrics.psnr(near, as_rgb(clean)) - rows[1]["psnr"] > 1.2
  _png(str(tmp_path / "out" / "rgb.png"), as_rgb(noisy))
  # One grey image against a colour one is a colour pair: Y as before.
  _png(str(tmp_path / "ref" / "rgb.png"), data.astronaut()[:512, :512])
  rows, _ = restoration.score_folders(str(tmp_path / "out"), str(tmp_path / "ref"),
                                      grey_plane=True)
  assert [r["channel"] for r in rows] == ["grey", "Y"]
  assert rows[1]["psnr"] == pytest.approx(
      metrics.psnr(as_rgb(noisy), data.astronaut()[:512, :512]))
  proc = _run("score.py", f"--restored={tmp_path}/out", f"--reference={tmp_path}/ref",
              "--grey_plane")
  assert proc.returncode == 0, proc.stderr
  assert f"camera                       {rows[0]['psnr']:.2f}" in proc.stdout
  assert "1 of 2 pair(s) grey: scored on the grey plane" in proc.stdout


def test_a_grey_reference_is_scored_on_y_by_default_as_evaluation_scores_sr(tmp_path):
  """Set14's grey images (BasicSR reads them as three equal channels): score.py's SR figure is
  evaluation's, not the grey plane's 1.32 dB lower one."""
  from skimage import data
  from mtl import degradations, tasks
  clean = np.repeat(data.camera()[:254, :300, None], 3, axis=-1)
  spec = tasks.get("sr_x2")
  low = np.asarray(np.clip(np.round(degradations.imresize(clean.astype(np.float32), 0.5)),
                           0, 255)).astype(np.uint8)
  up = evaluate.input_baseline(spec, low)   # the bicubic output stands in for a model's
  _png(str(tmp_path / "ref" / "camera.png"), clean[..., 0])
  _png(str(tmp_path / "out" / "camera.png"), up)
  rows, mean = restoration.score_folders(str(tmp_path / "out"), str(tmp_path / "ref"),
                                         crop_border=2, mod_crop=2)
  want = evaluate.score(up, clean, 2, spec.gray)
  assert rows[0]["channel"] == "Y" and mean["grey"] == 1
  assert rows[0]["psnr"] == pytest.approx(want["psnr_y"], abs=1e-12)
  assert rows[0]["ssim"] == pytest.approx(want["ssim_y"], abs=1e-12)
  plane, _ = restoration.score_folders(str(tmp_path / "out"), str(tmp_path / "ref"),
                                       crop_border=2, mod_crop=2, grey_plane=True)
  # Y of equal channels shrinks every error by 219/255; the output is near grey, not exactly.
  assert rows[0]["psnr"] - plane[0]["psnr"] == pytest.approx(20 * np.log10(255 / 219), abs=0.05)
  proc = _run("score.py", f"--restored={tmp_path}/out", f"--reference={tmp_path}/ref",
              "--crop_border=2", "--mod_crop=2")
  assert proc.returncode == 0, proc.stderr
  assert f"camera                       {rows[0]['psnr']:.2f}" in proc.stdout
  assert "1 of 1 reference(s) grey: scored on the Y of their three equal channels" in proc.stdout
  assert "pass --grey_plane" in proc.stdout


def test_identical_pairs_count_at_the_cap_in_the_mean_psnr_and_are_counted(tmp_path):
  from skimage import data
  clean = data.astronaut()[:128, :160]
  noisy = _noisy(clean, 5, 8)
  for name, out in (("a", clean), ("b", noisy), ("c", clean)):
    _png(str(tmp_path / "ref" / f"{name}.png"), clean)
    _png(str(tmp_path / "out" / f"{name}.png"), out)
  rows, mean = restoration.score_folders(str(tmp_path / "out"), str(tmp_path / "ref"))
  assert [r["psnr"] for r in rows][::2] == [float("inf")] * 2
  assert rows[1]["psnr"] == pytest.approx(metrics.psnr(noisy, clean)) and rows[1]["psnr"] < 40
  # at the cap: left out, one nearly exact pair would read above two exact ones
  assert mean["psnr"] == pytest.approx((2 * metrics.PSNR_CAP + rows[1]["psnr"]) / 3)
  assert mean["identical"] == 2
  assert mean["ssim"] == pytest.approx((2 + rows[1]["ssim"]) / 3)
  text = restoration.format_scores(rows, mean)
  assert f"mean (3 images)              {mean['psnr']:.2f}" in text
  assert "2 of 3 pair(s) identical (PSNR inf): 100 dB each in the mean PSNR" in text
  os.remove(tmp_path / "out" / "b.png")
  rows, mean = restoration.score_folders(str(tmp_path / "out"), str(tmp_path / "ref"),
                                         err=io.StringIO())
  assert mean["psnr"] == metrics.PSNR_CAP and mean["identical"] == 2
  assert "2 of 2 pair(s) identical" in restoration.format_scores(rows, mean)


def test_score_refuses_a_float_image_in_one_line_writing_nothing(tmp_path):
  from skimage import data
  clean = data.camera()[:64, :64]
  _png(str(tmp_path / "ref" / "a.png"), clean)
  os.makedirs(tmp_path / "out")
  Image.fromarray(clean.astype(np.float32) / 255).save(tmp_path / "out" / "a.tif")  # 0..1
  proc = _run("score.py", f"--restored={tmp_path}/out", f"--reference={tmp_path}/ref",
              f"--csv={tmp_path}/s.csv")
  assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
  assert f"cannot read image {tmp_path}/out/a.tif: its samples are floating-point" in proc.stderr
  assert "8- or 16-bit" in proc.stderr and not (tmp_path / "s.csv").exists()


def _run(script, *args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch", script), *args],
                        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT),
                        timeout=120)


def test_score_names_the_flag_of_a_missing_folder_or_a_file(tmp_path):
  (tmp_path / "a.png").write_bytes(b"x")
  for args, line in (
      ([f"--restored={tmp_path}", f"--reference={tmp_path}/a.png"],
       f"--reference={tmp_path}/a.png is a file; give the folder that holds it"),
      ([f"--restored={tmp_path}/none", f"--reference={tmp_path}"],
       f"--restored={tmp_path}/none is not a folder")):
    proc = _run("score.py", *args)  # it said "image folder .../a.png does not exist"
    assert proc.returncode == 1 and proc.stderr == f"error: {line}\n", proc.stderr


@pytest.mark.parametrize("script, args, flag", [
    ("score.py", ["--restored=", "--reference=/tmp"], "--restored"),
    ("restore.py", ["--workdir=/tmp", "--task=sr_x2", "--input=/tmp", "--output="], "--output"),
    ("import_ipt.py", [f"--checkpoint={FIXTURE}", "--workdir="], "--workdir"),
])
def test_an_empty_path_is_one_line_not_an_errno(script, args, flag):
  proc = _run(script, *args)  # it gave "[Errno 2] No such file or directory: ''"
  assert proc.returncode == 1
  assert proc.stderr == f"error: flag {flag}=: {flag} is empty; give a path\n"


def test_score_launcher_csv_and_one_line_errors(tmp_path):
  rng = np.random.default_rng(3)
  ref = rng.integers(0, 256, (25, 25, 3), dtype=np.uint8)
  _png(str(tmp_path / "out" / "img.png"), ref)
  _png(str(tmp_path / "ref" / "img.png"), ref[:24, :24])
  proc = _run("score.py", f"--restored={tmp_path}/out", f"--reference={tmp_path}/ref")
  assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0
  assert "25x25" in proc.stderr and "24x24" in proc.stderr and "--mod_crop=SCALE" in proc.stderr
  with pytest.raises(ValueError, match="20x20 after --mod_crop=5: is 5 these images' SR scale"):
    restoration.score_folders(str(tmp_path / "out"), str(tmp_path / "ref"), mod_crop=5)
  _png(str(tmp_path / "ref" / "img.png"), ref)
  _png(str(tmp_path / "out" / "orphan.png"), ref)
  with pytest.raises(ValueError) as error:
    restoration.score_folders(str(tmp_path / "out"), str(tmp_path / "ref"))
  assert "orphan.png has no partner" in str(error.value) and "\n" not in str(error.value)
  os.remove(tmp_path / "out" / "orphan.png")
  noisy = np.clip(ref + rng.normal(0, 5, ref.shape), 0, 255).astype(np.uint8)
  _png(str(tmp_path / "out" / "img.png"), noisy)
  proc = _run("score.py", f"--restored={tmp_path}/out", f"--reference={tmp_path}/ref", "--rgb",
              f"--csv={tmp_path}/s.csv")
  assert proc.returncode == 0, proc.stderr
  with open(tmp_path / "s.csv") as f:
    (row,) = list(csv.DictReader(f))
  assert float(row["psnr"]) == pytest.approx(metrics.psnr(noisy, ref, 0, y_channel=False))
  assert "mean (1 images)" in proc.stdout
  # An existing file is kept: refused, unless --overwrite; never a file inside an input folder.
  reference = (tmp_path / "ref" / "img.png").read_bytes()
  for target, extra, why in (("s.csv", (), "already exists; pass --overwrite"),
                             ("ref/img.png", ("--overwrite",), "is inside --reference"),
                             ("out/new.csv", (), "is inside --restored")):
    proc = _run("score.py", f"--restored={tmp_path}/out", f"--reference={tmp_path}/ref",
                f"--csv={tmp_path}/{target}", *extra)
    assert proc.returncode == 1 and why in proc.stderr and proc.stderr.count("\n") == 1
  assert (tmp_path / "ref" / "img.png").read_bytes() == reference
  assert not (tmp_path / "out" / "new.csv").exists()
  proc = _run("score.py", f"--restored={tmp_path}/out", f"--reference={tmp_path}/ref",
              f"--csv={tmp_path}/s.csv", "--overwrite")
  assert proc.returncode == 0, proc.stderr
  with open(tmp_path / "s.csv") as f:  # Y now: the file was replaced
    (row,) = list(csv.DictReader(f))
  assert float(row["psnr"]) == pytest.approx(metrics.psnr(noisy, ref, 0, y_channel=True))


def test_published_table_from_an_imported_workdir(tmp_path):
  from mtl import published
  cfg, names, params = ipt_import.load(FIXTURE.replace("pretrain6", "finetune1"), num_heads=2)
  workdir = str(tmp_path / "sr2")
  run_state.write_workdir(params, cfg, names, workdir)
  rng = np.random.default_rng(4)
  for name in ("a", "b"):
    _png(str(tmp_path / "bench" / "Set5" / "HR" / f"{name}.png"),
         rng.integers(0, 256, (26, 30, 3), dtype=np.uint8))
  rows = published.evaluate_workdir(workdir, str(tmp_path / "bench"), save_images=True)
  by_set = {name: (result, paper) for task, name, result, paper in rows}
  assert by_set["Set5"][1] == 38.37 and by_set["Set5"][0]["num_images"] == 2
  assert by_set["Set14"][0] is None
  assert os.path.isfile(os.path.join(workdir, "restored", "0", "sr_x2", "Set5", "a.png"))
  written = os.path.join(workdir, "results-000000000-sr_x2.json")
  assert files.read_json(written)["tasks"]["sr_x2"]["Set5"] == by_set["Set5"][0]
  assert sorted(f for f in os.listdir(workdir) if f.startswith("results")) == [
      "results-000000000-sr_x2.json"]  # the only results file: a run's own are not touched
  table = published.format_table([(published.weights_label(workdir), rows)])
  assert f"{by_set['Set5'][0]['psnr_y']:>7.2f}" in table and "(no data)" in table
  set5 = [line for line in table.splitlines() if " Set5 " in line]
  assert len(set5) == 1 and set5[0].split()[:3] == ["sr2", "sr_x2", "Set5"]  # weights named
  # A second scoring keeps the first, unless asked.
  with pytest.raises(ValueError, match="already holds results-000000000-sr_x2.json; pass "
                     "--overwrite"):
    published.evaluate_workdir(workdir, str(tmp_path / "bench"), max_images=1)
  assert files.read_json(written)["tasks"]["sr_x2"]["Set5"]["num_images"] == 2
  published.evaluate_workdir(workdir, str(tmp_path / "bench"), max_images=1, overwrite=True)
  assert files.read_json(written)["tasks"]["sr_x2"]["Set5"]["num_images"] == 1
  # Saved images are a run's evaluation's folder too: not replaced without a word.
  saved = os.path.join(workdir, "restored", "0", "sr_x2", "Set5", "a.png")
  before = open(saved, "rb").read()
  with pytest.raises(ValueError, match=r"already holds results-000000000-sr_x2.json, "
                     r"restored/0/sr_x2/; pass --overwrite"):
    published.evaluate_workdir(workdir, str(tmp_path / "bench"), save_images=True)
  assert open(saved, "rb").read() == before


def test_published_scores_whole_images_whatever_the_run_s_crop(tmp_path):
  from mtl import published
  cfg, names, params = ipt_import.load(FIXTURE.replace("pretrain6", "finetune1"), num_heads=2)
  workdir = str(tmp_path / "sr2")
  run_state.write_workdir(params, cfg, names, workdir)
  config_path = os.path.join(workdir, "config.json")
  config = files.read_json(config_path)
  config["eval"]["max_side"] = 16  # a trained run's crop (tiny.py: 256) read 1 dB off
  files.write_json(config_path, config)
  _png(str(tmp_path / "bench" / "Set5" / "HR" / "a.png"),
       np.random.default_rng(6).integers(0, 256, (26, 30, 3), dtype=np.uint8))
  published.evaluate_workdir(workdir, str(tmp_path / "bench"), save_images=True)
  restored = np.asarray(Image.open(os.path.join(workdir, "restored", "0", "sr_x2", "Set5",
                                                "a.png")))
  assert restored.shape == (26, 30, 3)  # the whole mod-cropped image, not a 16-pixel crop


def test_published_refuses_every_workdir_before_scoring_any(tmp_path):
  # A later workdir's earlier results (or a workdir given twice) are refused before the first
  # workdir is scored: nothing is written, and a rerun with the right flags is not refused.
  cfg, names, params = ipt_import.load(FIXTURE.replace("pretrain6", "finetune1"), num_heads=2)
  first, second = str(tmp_path / "first"), str(tmp_path / "second")
  for workdir in (first, second):
    run_state.write_workdir(params, cfg, names, workdir)
  files.write_json(os.path.join(second, "results-000000000-sr_x2.json"), {"kept": True})
  _png(str(tmp_path / "bench" / "Set5" / "HR" / "a.png"),
       np.random.default_rng(5).integers(0, 256, (26, 30, 3), dtype=np.uint8))
  launcher = os.path.join(ROOT, "launch", "ipt_published.py")
  for workdirs, message in (([first, second], f"{second} already holds"),
                            ([first, first], "is given twice"),
                            ([first, str(tmp_path / "nope")], "nope holds no config.json")):
    proc = subprocess.run([sys.executable, launcher, f"--benchmark={tmp_path / 'bench'}"]
                          + [f"--workdir={w}" for w in workdirs], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert not any(f.startswith("results") for f in os.listdir(first))
  assert files.read_json(os.path.join(second, "results-000000000-sr_x2.json")) == {"kept": True}


def test_restore_of_an_imported_workdir_tiles_as_the_official_test(workdir, tmp_path):
  # An imported IPT restores whole images with the official test's tiling (forward_chop, which
  # eval.tiling='ipt' reproduces: tests/test_evaluate.py), not mtl's default centre tiling.
  image = np.random.default_rng(6).integers(0, 256, (29, 41, 3), dtype=np.uint8)  # > one tile
  _png(str(tmp_path / "in" / "x.png"), image)
  (written,), _ = restoration.restore_folder(workdir, "sr_x2", str(tmp_path / "in"),
                                             str(tmp_path / "out"), err=io.StringIO())
  config, model, params, _ = restoration.load_model(workdir)
  assert config.eval.tiling == "ipt"
  apply_tiles = evaluate.tile_runner(model, evaluate.local_params(params, evaluate.local_mesh()),
                                     "sr_x2", config.eval.tile_batch, evaluate.local_mesh())
  official = evaluate.restore_image(apply_tiles, image, 2, config.model.patch_size,
                                    config.eval.tile_overlap, "ipt")
  np.testing.assert_array_equal(np.asarray(Image.open(written)), official)


def test_published_sets_are_found_where_ipt_puts_them(tmp_path):
  # benchmark/<Set>/HR (EDSR's bundle) or benchmark/<Set>; Rain100L also beside benchmark/
  # (IPT's README: $DATA_PATH/Rain100L); a clean-image set only under benchmark/.
  from mtl import published
  bench = tmp_path / "data" / "benchmark"
  for folder in (bench / "Set5" / "HR", tmp_path / "data" / "Rain100L", tmp_path / "data" / "B100"):
    folder.mkdir(parents=True)
  assert published.find_set(str(bench), "Set5") == str(bench / "Set5" / "HR")
  assert published.find_set(str(bench) + "/", "Rain100L") == str(tmp_path / "data" / "Rain100L")
  assert published.find_set(str(bench), "B100") is None
