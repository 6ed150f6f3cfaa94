"""The all-in-one settings: their configs, and a tiny joint run over every task kind (synthetic
and real paired data, selective test sets) that trains, evaluates and is analyzed."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import analyze   # launch/analyze.py (tests/conftest.py puts launch/ on the path)
from experiments import allinone3, allinone5, tiny
from experiments.studies import allinone3 as study3
from mtl import conflicts, evaluate, study, tasks, train
from mtl.data import pipeline

ALL_KINDS = ("denoise_gray_25", "sr_x2", "derain", "dehaze", "deblur", "lowlight", "jpeg_20")


def test_configs_on_photographs_and_on_a_data_root():
  for module, names in ((allinone3, ("denoise_15", "denoise_25", "denoise_50", "derain", "dehaze")),
                        (allinone5, ("derain", "dehaze", "denoise_25", "deblur", "lowlight"))):
    config = module.get_config()
    assert config.tasks == names and config.data.source == "photos" and not config.data.pairs
    assert config.eval.sets == "photos"
    config = module.get_config("/data")
    specs = tasks.get_all(config.tasks)
    paired = dict(pipeline.parse_pairs(config.data.pairs))
    assert set(paired) == {s.kind for s in specs} - {"denoise"}   # noise stays synthetic
    assert config.data.folder == "/data/train/denoise"
    sets = evaluate.parse_sets(config.eval.sets)
    for spec in specs:   # every task is scored on exactly one benchmark, its own
      mine = [name for name, _, _, selector in sets if tasks.selects(selector, spec)]
      assert len(mine) == 1, (spec.name, mine)
    assert dict((n, k) for n, k, _, _ in sets)["SOTS"] == "paired"
  # The recorded 3-task averages are the means of their five columns (as published, 2 decimals).
  for method, row in allinone3.get_config().published.items():
    columns = [row[t] for t in allinone3.TASKS]
    assert abs(np.mean(columns) - row["average"]) < 0.006, method


def test_study_config_validates():
  for arg in (None, "/data"):
    config = study3.get_config(arg)
    study.validate(config)
    assert set(config.regimes) == {"scratch", "joint", "finetune", "pairs"}


def _paired_folder(root, photo_seed):
  """A LOL-style folder: three real-looking low / high pairs (random smooth images)."""
  rng = np.random.default_rng(photo_seed)
  for i in range(1, 4):
    clean = np.repeat(np.repeat(rng.integers(0, 256, (20, 25, 3)), 4, 0), 4, 1).astype(np.uint8)
    for sub, image in (("low", clean // 8), ("high", clean)):
      (root / sub).mkdir(parents=True, exist_ok=True)
      Image.fromarray(image).save(root / sub / f"{i}.png")
  return str(root)


@pytest.fixture(scope="module")
def all_kinds_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("allkinds")
  config = tiny.get_config()
  config.tasks = ALL_KINDS
  config.data.batch_size = 2
  config.data.pairs = f"lowlight={_paired_folder(tmp / 'lol_train', 0)}"
  config.mesh.data = 1
  config.total_steps = 2
  config.checkpoint_every = 2
  config.log_every = 1
  config.optim.warmup_steps = 0
  config.conflicts.every = 1
  config.eval.sets = (f"photos,LOL=for:lowlight:paired:{_paired_folder(tmp / 'lol_test', 1)},"
                      f"Grey=for:denoise_gray_25+jpeg:{tmp / 'lol_test' / 'high'}")
  config.eval.max_images = 1
  config.eval.max_side = 48
  config.eval.tile_overlap = 0
  workdir = str(tmp / "run")
  return workdir, train.train_and_evaluate(config, workdir)


def test_a_joint_run_over_every_task_kind_trains_and_evaluates(all_kinds_run):
  workdir, results = all_kinds_run
  assert json.load(open(os.path.join(workdir, "results.json")))["step"] == 2
  assert list(results["tasks"]) == list(ALL_KINDS)
  for name, sets in results["tasks"].items():
    expected = {"photos"} | ({"LOL"} if name == "lowlight" else set()) | (
        {"Grey"} if name in ("denoise_gray_25", "jpeg_20") else set())
    assert set(sets) == expected, name
    for entry in sets.values():
      assert np.isfinite(entry["psnr_y"]) and np.isfinite(entry["input_psnr_y"])
  # The real low-light input is the stored low image: 1/8 of the clean one, far below 20 dB.
  assert results["tasks"]["lowlight"]["LOL"]["input_psnr_y"] < 20.0


def test_grey_denoising_is_scored_on_the_grey_plane(all_kinds_run):
  # DnCNN's grey PSNR: the Y of the 3 equal channels would read 1.3 dB higher (16-235 range)
  _, results = all_kinds_run
  for entry in results["tasks"]["denoise_gray_25"].values():
    for key in ("psnr", "ssim", "input_psnr", "input_ssim"):
      assert entry[f"{key}_y"] == pytest.approx(entry[f"{key}_rgb"]), key


def test_conflict_analyzer_and_heatmaps_take_any_mix_of_kinds(all_kinds_run):
  workdir, _ = all_kinds_run
  record = conflicts.load(workdir)
  assert list(record.task_names) == list(ALL_KINDS) and list(record.steps) == [0, 1]
  cos = record.cosines(by="body")
  assert cos.shape[-2:] == (7, 7) and np.all(np.isfinite(cos))
  text = analyze.analyze(workdir)
  for name in ALL_KINDS:
    assert name in text
  assert os.path.exists(os.path.join(workdir, "conflicts", "cos_matrix.png"))
