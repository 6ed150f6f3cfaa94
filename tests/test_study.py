"""Studies: expansion, validation, dry run, refusal of a changed study, and a real interrupted
study (launch/study.py running launch/train.py) that resumes without redoing finished runs."""
import fnmatch
import importlib
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from mtl import files, run_defaults
from mtl import study as study_lib
from micro_study import MICRO_STUDY, cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def micro(**fields):
  """The micro study as a ConfigDict (for the library tests)."""
  study = study_lib.defaults()
  study.tasks = ("denoise_30", "sr_x2", "derain")
  study.regimes = ("scratch", "joint", "finetune")
  study.seeds = (0, 1)
  study.steps.scratch, study.steps.joint, study.steps.finetune = 6, 5, 3
  study.lrs = (1e-3, 2e-4)
  run = run_defaults.get_config("tiny")
  run.eval.sets = "photos,photos_val"
  study.run = run
  for key, value in fields.items():
    study[key] = value
  return study


@pytest.fixture(scope="module")
def study_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("studies") / "micro.py"
  path.write_text(MICRO_STUDY)
  return str(path)


# ----------------------------------------------------------------------------- expansion



@pytest.mark.parametrize("name, arg, runs", [
    ("mini", None, 51), ("mini", "gpu", 51), ("related_vs_unrelated", None, 54),
    ("related_vs_unrelated", "device=gpu", 54), ("related_vs_unrelated", "/data", 45),
    ("allinone3", None, 126), ("allinone3", "/data", 126),
    ("ipt_paper", "/data", 117), ("remedies", None, 33), ("remedies_gpu", "/data/DIV2K", 105)])
def test_every_shipped_study_config_validates_and_expands(name, arg, runs):
  module = importlib.import_module(f"experiments.studies.{name}")
  study = module.get_config(arg) if arg else module.get_config()
  study_lib.validate(study)
  assert len(study_lib.expand(study)) == runs  # a changed grid changes the cost its docs state

def test_expansion_names_counts_and_order():
  runs = study_lib.expand(micro())
  names = [r.name for r in runs]
  # per seed: 3 scratch x 2 lrs + 2 joint lrs + 3 fine-tunes x 2 lrs = 14
  assert len(runs) == 28 and len(set(names)) == 28
  assert names[:14] == [
      "scratch-denoise_30-lr1e-3-s0", "scratch-denoise_30-lr2e-4-s0",
      "scratch-sr_x2-lr1e-3-s0", "scratch-sr_x2-lr2e-4-s0",
      "scratch-derain-lr1e-3-s0", "scratch-derain-lr2e-4-s0",
      "joint-lr1e-3-s0", "joint-lr2e-4-s0",
      "finetune-denoise_30-lr1e-3-s0", "finetune-denoise_30-lr2e-4-s0",
      "finetune-sr_x2-lr1e-3-s0", "finetune-sr_x2-lr2e-4-s0",
      "finetune-derain-lr1e-3-s0", "finetune-derain-lr2e-4-s0"]
  joint = next(r for r in runs if r.name == "joint-lr2e-4-s0")
  assert joint.tasks == ("denoise_30", "sr_x2", "derain") and joint.steps == 5
  assert joint.lr == 2e-4 and joint.sweep == "joint-s0"
  ft = next(r for r in runs if r.name == "finetune-sr_x2-lr2e-4-s1")
  assert ft.source == "joint-s1" and ft.steps == 3 and ft.tasks == ("sr_x2",)


def test_defaults_three_seeds_and_one_lr_grid_for_every_regime():
  assert tuple(study_lib.defaults().seeds) == (0, 1, 2)
  study = micro(regimes=("scratch", "joint", "finetune", "pairs"))
  study.seeds = study_lib.defaults().seeds
  runs = study_lib.expand(study)
  grids = {}
  for r in runs:
    grids.setdefault(r.regime, set()).add(r.lr)
  assert grids == {r: {1e-3, 2e-4} for r in ("scratch", "joint", "finetune", "pairs")}
  assert {r.seed for r in runs} == {0, 1, 2}
  assert not study_lib.lr_grids_differ(study)
  study.lrs_override.finetune = (1e-4,)
  assert study_lib.lr_grids_differ(study)
  assert {r.lr for r in study_lib.expand(study) if r.regime == "finetune"} == {1e-4}


def test_pairs_and_groups_expand():
  study = micro(regimes=("scratch", "pairs", "groups", "finetune"), seeds=(0,))
  study.groups.related = ("sr_x2", "sr_x3")
  names = [r.name for r in study_lib.expand(study)]
  assert [n for n in names if n.startswith("pair-")] == [
      "pair-denoise_30+sr_x2-lr1e-3-s0", "pair-denoise_30+sr_x2-lr2e-4-s0",
      "pair-denoise_30+derain-lr1e-3-s0", "pair-denoise_30+derain-lr2e-4-s0",
      "pair-sr_x2+derain-lr1e-3-s0", "pair-sr_x2+derain-lr2e-4-s0"]
  assert "group-related-lr1e-3-s0" in names
  # fine-tunes from a group only for the study's tasks that are in the group
  assert [n for n in names if n.startswith("finetune-")] == [
      "finetune-sr_x2-from-related-lr1e-3-s0", "finetune-sr_x2-from-related-lr2e-4-s0"]
  # a sweep's pattern (the messages name sweeps by it) matches its runs and no other run
  runs = study_lib.expand(study)
  for sweep in {r.sweep for r in runs}:
    pattern = study_lib.runs.sweep_runs(sweep)
    assert {r.name for r in runs if fnmatch.fnmatchcase(r.name, pattern)} == {
        r.name for r in runs if r.sweep == sweep}, pattern
  assert study_lib.runs.sweep_runs("finetune-sr_x2-from-related-s0") == (
      "finetune-sr_x2-from-related-lr*-s0")


def test_equal_images_gives_scratch_the_images_of_pretraining_plus_finetuning():
  study = micro(budget="equal_images")
  study.steps.scratch = 0
  runs = study_lib.expand(study)
  assert {r.steps for r in runs if r.regime == "scratch"} == {5 + 3}
  assert {r.steps for r in runs if r.regime == "joint"} == {5}
  # IPT's schedule 'one' trains a given task on 1 step in 3 (3 tasks): round(5 / 3) + 3
  study.run.schedule = "one"
  assert {r.steps for r in study_lib.expand(study) if r.regime == "scratch"} == {2 + 3}
  with pytest.raises(ValueError, match="leave steps.scratch 0"):
    study_lib.validate(micro(budget="equal_images"))
  # A fine-tune of batch 8 sees twice the images per step: steps would not equal images.
  for regime in ("finetune", "joint", "scratch"):
    bad = micro(budget="equal_images")
    bad.steps.scratch = 0
    bad.per_regime[regime] = {"data": {"batch_size": 8}}
    with pytest.raises(ValueError, match=re.escape(
        f"per_regime.{regime}.data.batch_size makes them differ")):
      study_lib.validate(bad)


def _write(study, name, **files):
  os.makedirs(study.run_dir(name), exist_ok=True)
  for filename, obj in files.items():
    with open(study.path(name, filename.replace("_json", ".json")), "w") as f:
      json.dump(obj, f)


def test_equal_flops_scratch_costs_its_finetune_plus_a_share_of_pretraining(tmp_path):
  # the arithmetic on compute.json alone: (joint FLOPs / 3 tasks + fine-tune FLOPs) / step FLOPs
  joint = {"steps": 5, "flops_per_step": 9.6e9, "train_flops": 4.8e10}
  fine = {"steps": 3, "flops_per_step": 2e9, "train_flops": 6e9}
  assert study_lib.equal_flops_steps(joint, fine, 3) == (1.6e10 + 6e9) / 2e9 == 11
  # compute.json written before mtl counted the model's FLOPs holds XLA's count: never mixed
  with pytest.raises(ValueError, match=r"count FLOPs differently \(model and xla\)"):
    study_lib.equal_flops_steps(joint, dict(fine, flops_counted_by="model"), 3)
  study = micro(budget="equal_flops", seeds=(0,))
  study.steps.scratch = 0
  s = study_lib.Study(study, str(tmp_path))
  names = [r.name for r in s.runs]
  assert names.index("scratch-sr_x2-lr1e-3-s0") > names.index("finetune-derain-lr2e-4-s0")
  spec = s.by_name["scratch-sr_x2-lr1e-3-s0"]
  with pytest.raises(study_lib.Waiting, match="not done yet: joint-lr1e-3-s0"):
    s.write_run_config(spec)
  for name in ("joint-lr1e-3-s0", "joint-lr2e-4-s0"):
    _write(s, name, DONE={}, compute_json=joint)
  for name in ("finetune-sr_x2-lr1e-3-s0", "finetune-sr_x2-lr2e-4-s0"):
    _write(s, name, DONE={}, compute_json=fine)
  assert s.write_run_config(spec)["total_steps"] == 11
  with pytest.raises(ValueError, match="per_regime.scratch.data.batch_size makes them differ"):
    bad = micro(budget="equal_flops")
    bad.steps.scratch = 0
    bad.per_regime.scratch = {"data": {"batch_size": 8}}
    study_lib.validate(bad)


def test_run_config_sets_what_the_study_controls():
  study = micro()
  study.per_regime.finetune = {"optim": {"warmup_steps": 7}}
  spec = next(r for r in study_lib.expand(study) if r.name == "finetune-derain-lr2e-4-s1")
  config = study_lib.run_config(study, spec, init_from="/x/joint")
  assert config["tasks"] == ["derain"] and config["regime"] == "finetune"
  assert config["seed"] == 1 and config["total_steps"] == 3 and config["optim"]["lr"] == 2e-4
  assert config["init_from"] == "/x/joint" and config["optim"]["warmup_steps"] == 7
  assert config["conflicts"]["every"] == 0  # a single task has no pairs to probe
  assert config["mesh"]["data"] == -1


def test_a_finetunes_data_continues_after_its_pretraining_runs_steps():
  """data.step_offset = the steps of the run a fine-tune starts from (joint or group): its step
  k draws a scratch run's step k + those steps, so under equal_images pre-training + fine-tune
  and scratch see one stream of the task's samples; every other run starts at 0."""
  study = micro(regimes=("scratch", "joint", "finetune", "groups"), seeds=(0,),
                budget="equal_images")
  study.steps.scratch, study.steps.groups = 0, 4
  study.groups.related = ("sr_x2", "derain")
  study.run.data.step_offset = 99  # the study sets it for every run
  offsets = {}
  for spec in study_lib.expand(study):
    config = study_lib.run_config(study, spec, init_from="/x/source")
    offsets[spec.sweep] = config["data"]["step_offset"]
    assert spec.step_offset == offsets[spec.sweep]
  assert offsets["finetune-sr_x2-s0"] == 5 and offsets["finetune-sr_x2-from-related-s0"] == 4
  assert {s: o for s, o in offsets.items() if not s.startswith("finetune-")} == {
      "scratch-denoise_30-s0": 0, "scratch-sr_x2-s0": 0, "scratch-derain-s0": 0, "joint-s0": 0,
      "group-related-s0": 0}
  # scratch's 8 steps = the joint run's 5 (its data steps 0-4) + the fine-tune's 3 (5-7)
  assert study_lib.regime_steps(study, "scratch") == 5 + 3
  bad = micro()
  bad.per_regime.finetune = {"data": {"step_offset": 0}}
  with pytest.raises(ValueError, match="per_regime.finetune.data.step_offset is set by the "
                                       "study for each run; remove it"):
    study_lib.validate(bad)


@pytest.mark.parametrize("fields, message", [
    (dict(tasks=()), "tasks=() names no task"),
    (dict(regimes=("scratch", "bogus")), "unknown regime 'bogus'"),
    (dict(regimes=("scratch", "finetune")), "'finetune' needs a pre-training regime"),
    (dict(validation="photos"), "also the validation set"),
    (dict(test=("Set5",)), "'Set5' is not among run.eval.sets"),
    (dict(seeds=(0, 0)), "lists a seed twice"),
    (dict(seeds=(2**32,)), "give one or more integers in [0, 2**32)"),  # the step's 32 bits
    (dict(lrs=(float("inf"),)), "give one or more positive learning rates"),
    (dict(metric="psnr"), "metric='psnr'; valid: psnr_y, psnr_rgb"),
    (dict(budget="equal_compute"), "budget='equal_compute'; valid: steps, equal_images"),
    (dict(lrs=()), "give one or more positive learning rates"),
    (dict(final_conflicts=dict(batch_size=3, halfwidth=0.02, max_batches=64, checkpoints=1)),
     "final_conflicts.batch_size=3; give an even number of images per task"),
    (dict(final_conflicts=dict(batch_size=128, halfwidth=0.02, max_batches=1, checkpoints=1)),
     "final_conflicts.max_batches=1; give at least 2"),
    (dict(final_conflicts=dict(batch_size=128, halfwidth=0.02, max_batches=64)),
     "final_conflicts has no checkpoints; set its fields one by one"),
    (dict(final_conflicts=dict(batch_size=128, halfwidth=0.02, max_batches=64, checkpoints=0)),
     "final_conflicts.checkpoints=0; give the number of last saved steps to measure (>= 1)"),
    # micro: joint runs of 5 steps, saved at the last only (checkpoint_every=250), 2 kept
    (dict(final_conflicts=dict(batch_size=2, halfwidth=0.0, max_batches=3, checkpoints=2)),
     "final_conflicts.checkpoints=2 but the joint runs save 1 (steps 5: checkpoint_every=250); "
     "lower per_regime.joint.checkpoint_every or measure fewer"),
    (dict(final_conflicts=dict(batch_size=2, halfwidth=0.0, max_batches=3, checkpoints=2),
          per_regime=dict(joint=dict(checkpoint_every=2, keep_checkpoints=1))),
     "final_conflicts.checkpoints=2 but the joint runs keep 1 (keep_checkpoints); set "
     "per_regime.joint.keep_checkpoints = 2 or measure fewer"),
])
def test_bad_studies_are_refused_with_one_line(fields, message):
  with pytest.raises(ValueError, match=re.escape(message)) as error:
    study_lib.validate(micro(**fields))
  assert "\n" not in str(error.value)


def test_unknown_fields_are_refused():
  study = micro()
  study.sedds = (0,)
  with pytest.raises(ValueError, match="unknown study field sedds"):
    study_lib.validate(study)
  study = micro()
  study.per_regime.finetune = {"optim": {"lr_warmup": 3}}
  with pytest.raises(ValueError, match="per_regime.finetune.optim.lr_warmup is not a run"):
    study_lib.validate(study)
  study = micro()
  study.per_regime.finetune = {"optim": {"lr": 3e-4}}
  with pytest.raises(ValueError, match="set by the study"):
    study_lib.validate(study)


def test_test_and_validation_sets_must_be_other_images(tmp_path):
  # other names, the same folder: the lr would be chosen on the test images
  val, train = tmp_path / "val", tmp_path / "train"
  for folder in (val, train / "test"):
    folder.mkdir(parents=True)
  study = micro()
  study.run.eval.sets = f"photos,V={val},T={tmp_path / 'x' / '..' / 'val'}"
  study.validation, study.test = "V", ("T",)
  with pytest.raises(ValueError, match=f"test set 'T' is the validation set's folder {val}"):
    study_lib.validate(study)
  study.run.eval.sets = f"V={val},T={train}"
  study.per_regime.scratch = {"data": {"source": "folder", "folder": str(train)}}
  with pytest.raises(ValueError, match=f"T={train} shares images with data.folder={train}"):
    study_lib.validate(study)
  study.run.eval.sets = f"V={val},T={train / 'test'}"   # read recursively: trained on too
  with pytest.raises(ValueError, match=f"T={train / 'test'} shares images with data.folder"):
    study_lib.validate(study)
  # folder_val: the images held out of each regime's own folder
  study.run.eval.sets, study.test = f"V={val},folder_val", ("folder_val",)
  study.run.data.source, study.run.data.folder = "folder", str(tmp_path / "other")
  study.run.data.validation_fraction = 0.1
  with pytest.raises(ValueError, match=r"test set 'folder_val' holds other images in regime "
                                       r"scratch \(its data.folder differs from run.data's\)"):
    study_lib.validate(study)
  study.per_regime.scratch = {}
  study_lib.validate(study)


# ----------------------------------------------------------------------------- selection


def _fake_done(study, name, val_psnr, test_psnr):
  """A finished run's files (selection reads results.json and DONE only)."""
  spec = study.by_name[name]
  os.makedirs(study.run_dir(name), exist_ok=True)
  results = {"step": spec.steps, "tasks": {t: {
      "photos_val": {"psnr_y": val_psnr, "ssim_y": 0.5},
      "photos": {"psnr_y": test_psnr, "ssim_y": 0.5}} for t in spec.tasks}}
  for filename, obj in (("results.json", results), ("DONE", {})):
    with open(study.path(name, filename), "w") as f:
      json.dump(obj, f)


def test_finetune_starts_from_the_joint_lr_best_on_validation_not_test(tmp_path):
  study = study_lib.Study(micro(), str(tmp_path))
  spec = study.by_name["finetune-sr_x2-lr1e-3-s0"]
  _fake_done(study, "joint-lr1e-3-s0", val_psnr=25.0, test_psnr=30.0)
  with pytest.raises(study_lib.Waiting, match="not done yet: joint-lr2e-4-s0"):
    study.init_from(spec)
  _fake_done(study, "joint-lr2e-4-s0", val_psnr=26.0, test_psnr=20.0)
  assert study.init_from(spec) == os.path.join(str(tmp_path), "runs", "joint-lr2e-4-s0")
  assert study.write_run_config(spec)["init_from"] == study.run_dir("joint-lr2e-4-s0")
  # seed 1 has its own joint runs: not done
  with pytest.raises(study_lib.Waiting):
    study.init_from(study.by_name["finetune-sr_x2-lr1e-3-s1"])


def test_lr_is_chosen_on_the_study_metric(tmp_path):
  study = study_lib.Study(micro(metric="psnr_rgb"), str(tmp_path))
  for name, y, rgb in (("joint-lr1e-3-s0", 30.0, 20.0), ("joint-lr2e-4-s0", 20.0, 30.0)):
    spec = study.by_name[name]
    _write(study, name, DONE={}, results_json={"step": 5, "tasks": {t: {
        "photos_val": {"psnr_y": y, "psnr_rgb": rgb}} for t in spec.tasks}})
  assert study.select("joint-s0").run.name == "joint-lr2e-4-s0"
  # the mean over the run's tasks, not its first task's score
  study = study_lib.Study(micro(), str(tmp_path / "mean"))
  for name, first, others in (("joint-lr1e-3-s0", 30.0, 20.0), ("joint-lr2e-4-s0", 25.0, 25.0)):
    tasks = study.by_name[name].tasks
    assert len(tasks) > 2
    _write(study, name, DONE={}, results_json={"step": 5, "tasks": {t: {
        "photos_val": {"psnr_y": first if t == tasks[0] else others}} for t in tasks}})
  assert study.select("joint-s0").run.name == "joint-lr2e-4-s0"  # means 23.3 and 25.0
  # a NaN validation score is never the best (max kept a first NaN: no score compares above it)
  study = study_lib.Study(micro(), str(tmp_path / "nan"))
  for name, score in (("joint-lr1e-3-s0", float("nan")), ("joint-lr2e-4-s0", 20.0)):
    _write(study, name, DONE={}, results_json={"step": 5, "tasks": {t: {
        "photos_val": {"psnr_y": score}} for t in study.by_name[name].tasks}})
  assert study.select("joint-s0").run.name == "joint-lr2e-4-s0"


def test_a_study_saved_by_an_older_mtl_still_loads(tmp_path):
  old = json.loads(json.dumps(study_lib.Study(micro(), str(tmp_path)).config))
  del old["budget"], old["lrs_override"], old["metric"], old["reference"]["requires"]
  old["lrs"] = {"scratch": [1e-3], "joint": [1e-3, 2e-4], "finetune": [1e-4], "pairs": [],
                "groups": []}
  old["equal_compute"] = True
  old["steps"]["scratch"] = 0
  with open(tmp_path / "study.json", "w") as f:
    json.dump({"version": 1, "study": old, "runs": []}, f)
  loaded = study_lib.Study.load(str(tmp_path))
  assert loaded.config["budget"] == "equal_images"
  assert [r.name for r in loaded.runs][:5] == [
      "scratch-denoise_30-lr1e-3-s0", "scratch-sr_x2-lr1e-3-s0", "scratch-derain-lr1e-3-s0",
      "joint-lr1e-3-s0", "joint-lr2e-4-s0"]


def _fake_finished(study, name):
  os.makedirs(study.run_dir(name), exist_ok=True)
  study.write_run_config(study.by_name[name])
  with open(study.path(name, "DONE"), "w") as f:
    json.dump({"seconds": 1.0}, f)


def test_changed_study_is_refused_naming_the_field_and_the_finished_runs(tmp_path, capsys):
  study = study_lib.Study(micro(), str(tmp_path))
  study.prepare()
  saved = (tmp_path / "study.json").read_text()
  _fake_finished(study, "joint-lr1e-3-s0")
  changed = micro()
  changed.steps.joint = 50
  with pytest.raises(ValueError, match=r"holds a different study: steps.joint \(5 -> 50\); it "
                                       r"changes the finished run\(s\) joint-lr1e-3-s0: use a new"):
    study_lib.Study(changed, str(tmp_path)).prepare()
  # A change that no finished run sees (here: scratch's steps) is the fix of a failed run.
  fixed = micro()
  fixed.steps.scratch = 7
  study_lib.Study(fixed, str(tmp_path)).prepare()
  assert "the study changed (steps.scratch); no finished run changes" in capsys.readouterr().out
  assert json.loads((tmp_path / "study.json").read_text())["study"]["steps"]["scratch"] == 7
  study_lib.Study(micro(), str(tmp_path)).prepare()  # back to the saved study
  # report-only fields may change; runs are untouched by them
  renamed = micro(name="renamed")
  study_lib.Study(renamed, str(tmp_path)).prepare()
  assert json.loads((tmp_path / "study.json").read_text())["study"]["name"] == "renamed"
  assert json.loads(saved)["runs"] == json.loads((tmp_path / "study.json").read_text())["runs"]
  # Without its study.json, the finished run is still checked against the study that finds it.
  os.remove(tmp_path / "study.json")
  with pytest.raises(ValueError, match=r"holds no study.json but finished runs this study would "
                                       r"configure differently \(joint-lr1e-3-s0; "
                                       r"joint-lr1e-3-s0: total_steps \(5 -> 50\)\)"):
    study_lib.Study(changed, str(tmp_path)).prepare()
  assert not (tmp_path / "study.json").exists()
  study_lib.Study(micro(), str(tmp_path)).prepare()  # the study it ran with takes it back
  assert json.loads((tmp_path / "study.json").read_text())["runs"] == json.loads(saved)["runs"]
  # A training run's workdir is no study's.
  run_dir = tmp_path / "a_run"
  run_dir.mkdir()
  (run_dir / "config.json").write_text("{}")
  with pytest.raises(ValueError, match="is a training run's workdir"):
    study_lib.Study(micro(), str(run_dir)).prepare()
  assert sorted(os.listdir(run_dir)) == ["config.json"]



def test_finetunes_run_before_the_data_offset_are_refused_with_what_changed(tmp_path):
  """A study whose fine-tunes ran before data.step_offset (their data repeated the
  pre-training's) is not continued with fine-tunes that draw the samples after it: the same
  study config is refused with the field, its values and a new workdir to use. Its older
  scratch and joint runs (no field: offset 0, as now) are not what changed."""
  study = study_lib.Study(micro(seeds=(0,)), str(tmp_path))
  study.prepare()
  for lr, val in (("1e-3", 26.0), ("2e-4", 25.0)):
    study.write_run_config(study.by_name[f"joint-lr{lr}-s0"])
    _fake_done(study, f"joint-lr{lr}-s0", val_psnr=val, test_psnr=30.0)
  _fake_finished(study, "scratch-sr_x2-lr1e-3-s0")
  study.write_run_config(study.by_name["finetune-sr_x2-lr1e-3-s0"])  # finished below
  for name in ("joint-lr1e-3-s0", "joint-lr2e-4-s0", "scratch-sr_x2-lr1e-3-s0",
               "finetune-sr_x2-lr1e-3-s0"):
    path = study.path(name, "run_config.json")
    config = json.load(open(path))
    assert config["data"].pop("step_offset") == (5 if name.startswith("finetune") else 0)
    json.dump(config, open(path, "w"))  # as an older mtl wrote it
  study_lib.Study(micro(seeds=(0,)), str(tmp_path)).prepare()  # the scratch and joint runs: kept
  _fake_done(study, "finetune-sr_x2-lr1e-3-s0", val_psnr=27.0, test_psnr=31.0)
  with pytest.raises(ValueError) as error:
    study_lib.Study(micro(seeds=(0,)), str(tmp_path)).prepare()
  assert str(error.value) == (
      f"{tmp_path}/study.json: this mtl configures the finished run(s) finetune-sr_x2-lr1e-3-s0 "
      "differently than they ran, with the same study config (finetune-sr_x2-lr1e-3-s0: "
      "data.step_offset (absent -> 5)): a fine-tune now draws the samples after its "
      "pre-training's steps, where it drew the pre-training's first ones again; their results "
      "would be mixed with runs of another protocol: run the study in a new --workdir (this one "
      "stays readable by launch/report.py)")
  assert study_lib.Study.load(str(tmp_path)).is_done("finetune-sr_x2-lr1e-3-s0")  # reportable
  from mtl.report import document  # whose Methods say how those fine-tunes drew their data
  assert ("a fine-tune's data steps repeated its pre-training's first ones: these fine-tunes ran "
          "before data.step_offset") in document._method_section(study_lib.Study.load(
              str(tmp_path)))
  # An unfinished fine-tune of the old protocol resumes nothing: it starts afresh with the offset
  name = "finetune-sr_x2-lr2e-4-s0"
  old = dict(study.write_run_config(study.by_name[name]))
  old["data"] = {k: v for k, v in old["data"].items() if k != "step_offset"}
  json.dump(old, open(study.path(name, "config.json"), "w"))  # the trainer's, from its start
  os.makedirs(study.path(name, "checkpoints", "2"))
  out = io.StringIO()
  assert study.write_run_config(study.by_name[name], out)["data"]["step_offset"] == 5
  assert "data.step_offset (absent -> 5)" in out.getvalue() and not study.has_started(name)


def test_runs_scored_before_eval_tiling_existed_are_not_mixed_with_runs_scored_now(tmp_path):
  # before 2026-12-04 evaluations averaged overlapping tiles; a config saved then lacks
  # eval.tiling, which read as today's 'centre': a continued study compared runs scored two
  # ways (0.11-0.13 dB apart on the reviewer's tiny runs), unsaid
  study = study_lib.Study(micro(seeds=(0,)), str(tmp_path))
  study.prepare()
  name = "scratch-sr_x2-lr1e-3-s0"
  _fake_finished(study, name)
  path = study.path(name, "run_config.json")
  config = json.load(open(path))
  assert config["eval"].pop("tiling") == "centre"
  json.dump(config, open(path, "w"))  # as an older mtl wrote it
  with pytest.raises(ValueError) as error:
    study_lib.Study(micro(seeds=(0,)), str(tmp_path)).prepare()
  assert (f"({name}: eval.tiling (absent -> 'centre')): an evaluation now keeps each tile's "
          "centre, where it averaged overlapping tiles; their results would be mixed with runs "
          "of another protocol: run the study in a new --workdir") in str(error.value)


def test_a_changed_grid_or_selection_that_would_restart_a_finished_finetune_is_refused(tmp_path):
  study = study_lib.Study(micro(seeds=(0,)), str(tmp_path))
  study.prepare()
  for lr, val in (("1e-3", 26.0), ("2e-4", 25.0)):
    study.write_run_config(study.by_name[f"joint-lr{lr}-s0"])
    _fake_done(study, f"joint-lr{lr}-s0", val_psnr=val, test_psnr=30.0)
  name = "finetune-sr_x2-lr1e-3-s0"
  study.write_run_config(study.by_name[name])  # from joint-lr1e-3-s0
  _fake_done(study, name, val_psnr=27.0, test_psnr=31.0)
  # A new lr in the grid: the finished fine-tune's start is chosen anew (not run yet, or better)
  grown = micro(seeds=(0,), lrs=(1e-3, 2e-4, 5e-3))
  with pytest.raises(ValueError, match=rf"changes the finished run\(s\) {name}: use a new"):
    study_lib.Study(grown, str(tmp_path)).prepare()
  # Another metric choosing another joint run (joint-lr2e-4-s0 is best on psnr_rgb)
  for lr, rgb in (("1e-3", 20.0), ("2e-4", 21.0)):
    path = study.path(f"joint-lr{lr}-s0", "results.json")
    results = json.load(open(path))
    for sets in results["tasks"].values():
      sets["photos_val"]["psnr_rgb"] = rgb
    json.dump(results, open(path, "w"))
  with pytest.raises(ValueError, match=rf"changes the finished run\(s\) {name}: use a new"):
    study_lib.Study(micro(seeds=(0,), metric="psnr_rgb"), str(tmp_path)).prepare()
  # More seeds leave the seed-0 fine-tune's start as it was
  study_lib.Study(micro(seeds=(0, 1)), str(tmp_path)).prepare()


def test_a_study_changed_while_another_process_runs_one_of_its_runs_is_refused(tmp_path):
  import fcntl
  study_lib.Study(micro(seeds=(0,)), str(tmp_path)).prepare()
  fixed = micro(seeds=(0,))
  fixed.steps.scratch = 7  # no finished run sees it: taken, when no run is running
  running = tmp_path / "runs" / "scratch-sr_x2-lr1e-3-s0"
  running.mkdir(parents=True)
  with open(running / "RUNNING", "w") as held:
    fcntl.flock(held, fcntl.LOCK_EX)  # another study process runs it, with 6 steps
    with pytest.raises(ValueError, match=r"the study changed \(steps.scratch\) while another "
                                         r"process runs scratch-sr_x2-lr1e-3-s0; let it finish"):
      study_lib.Study(fixed, str(tmp_path)).prepare()
    study_lib.Study(micro(seeds=(0,)), str(tmp_path)).prepare()  # the same study: continued
  assert json.loads((tmp_path / "study.json").read_text())["study"]["steps"]["scratch"] == 6
  study_lib.Study(fixed, str(tmp_path)).prepare()  # its holder is gone: the change is taken
  assert json.loads((tmp_path / "study.json").read_text())["study"]["steps"]["scratch"] == 7


# ----------------------------------------------------------------------------- the launcher


def test_dry_run_prints_runs_and_exact_commands_and_writes_nothing(study_file, tmp_path):
  workdir = str(tmp_path / "study")
  out = cli(f"--config={study_file}", f"--workdir={workdir}", "--dry_run")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  runs = [l for l in lines if l.startswith("run ")]
  assert len(runs) == 5 and runs[2].startswith("run 3/5 joint-lr1e-3-s0  [pending]")
  steps = sum(int(re.search(r"\| (\d+) steps \|", l).group(1)) for l in runs)
  assert lines[0] == f"study micro: 5 of 5 runs in {workdir}; 5 to go, {steps:,} training steps"
  name = "finetune-derain-lr1e-3-s0"
  train = [sys.executable, os.path.join(ROOT, "launch", "train.py"),  # launch/study.py's command
           f"--config={ROOT}/experiments/from_json.py:{workdir}/runs/{name}/run_config.json",
           f"--workdir={workdir}/runs/{name}"]
  assert "    " + shlex.join(train) in lines
  assert any("init_from: <best on photos_val of joint-lr1e-3-s0" in l for l in lines)
  # The commands read run_config.json files the dry run does not write: it says so.
  assert lines.count("    (run_config.json not written yet)") == 5
  # the joint run's last 2 checkpoints are measured once its sweep is done
  assert ("end-of-training conflict measurements: 2 to come (once the pre-training sweeps are "
          "done)") in lines
  assert lines[-1].startswith("dry run: nothing was written; the study writes a run's "
                              "run_config.json when it starts the run")
  assert not os.path.exists(workdir)
  subset = cli(f"--config={study_file}", f"--workdir={workdir}", "--dry_run", "--only=scratch-*")
  assert [l.split()[2] for l in subset.stdout.splitlines() if l.startswith("run ")] == [
      "scratch-denoise_30-lr1e-3-s0", "scratch-derain-lr1e-3-s0"]


@pytest.mark.parametrize("variant, message", [
    ("bad_field", "unknown study field sedds"),
    ("no_tasks", "tasks=() names no task"),
    ("bad_regime", "unknown regime 'jiont'"),
])
def test_bad_input_exits_with_one_line_and_writes_nothing(study_file, tmp_path, variant, message):
  workdir = str(tmp_path / "study")
  out = cli(f"--config={study_file}:{variant}", f"--workdir={workdir}")
  assert out.returncode == 1
  assert out.stderr.strip().count("\n") == 0 and message in out.stderr
  assert not os.path.exists(workdir)


def test_a_study_json_without_its_study_is_one_line_and_kept(study_file, tmp_path):
  (tmp_path / "study").mkdir()
  saved = tmp_path / "study" / "study.json"
  saved.write_text('{"runs": []}')  # a KeyError's traceback
  out = cli(f"--config={study_file}", f"--workdir={tmp_path / 'study'}", "--dry_run")
  assert out.returncode == 1 and out.stderr == (
      f"error: {saved} holds no study (its 'study' entry is missing); it may be damaged: "
      "restore it, or rerun launch/study.py with the study's config\n")
  assert saved.read_text() == '{"runs": []}'
  # a study without a field it always has (a KeyError's traceback), or without its seeds where
  # its runs have seeds other than 0 (an older mtl's default: the other seeds' runs unsaid)
  study = json.loads(json.dumps(study_lib.Study(micro(), str(tmp_path)).config))
  runs = [{"name": f"scratch-sr_x2-lr1e-3-s{k}"} for k in (0, 1)]
  for field, said in (("tasks", "tasks"), ("seeds", "seeds (its runs have seeds 0, 1)")):
    saved.write_text(json.dumps({"version": 1, "runs": runs,
                                 "study": {k: v for k, v in study.items() if k != field}}))
    with pytest.raises(ValueError) as error:
      study_lib.Study.load(str(tmp_path / "study"))
    assert str(error.value) == (f"{saved}: its study has no {said}; it may be damaged: restore "
                                "it, or rerun launch/study.py with the study's config")


def test_slurm_options_without_submit_slurm_are_refused_not_run_here(study_file, tmp_path):
  out = cli(f"--config={study_file}", f"--workdir={tmp_path / 'study'}", "--slurm_time=4:00:00")
  assert out.returncode == 1 and out.stderr == (
      "error: --slurm_time given without --submit=slurm: the runs would start on this machine; "
      "add --submit=slurm to submit them as SLURM jobs\n")
  assert not (tmp_path / "study").exists()


def test_a_dry_run_checks_what_the_run_would(study_file, tmp_path):
  (tmp_path / "file").write_text("x")
  for args, message in (
      ([f"--workdir={tmp_path}/file"],
       f"error: --workdir={tmp_path}/file is a file; give a study a folder (new or its own)"),
      ([f"--workdir={tmp_path}/s", "--max_parallel=2", "--devices=abc"],
       "error: --devices=abc; use 'auto', 'none' or GPU indices like 0,1"),
      (["--workdir="],  # the current folder: its study.json and runs/ went there
       "error: --workdir is empty; give the study's folder, e.g. --workdir=/tmp/mtl/mini"),
      (["--workdir=gs://b/s"],  # read by os.path as the relative folder gs:/b/s
       "error: --workdir=gs://b/s is a URL; a study is written with file I/O: mount the bucket "
       "(gcsfuse) and give that path"),
      # a run's own config check: the dry run passed and each run failed as it started
      ([f"--workdir={tmp_path}/s", "--config.run.data.batch_size=0"],
       "error: regime scratch: data.batch_size=0 must be >= 1")):
    out = cli(f"--config={study_file}", *args, "--dry_run")
    assert out.returncode == 1 and out.stderr.strip() == message, out.stderr
  assert sorted(os.listdir(tmp_path)) == ["file"]


def test_a_study_s_tuple_fields_split_on_commas_as_a_run_config_s(study_file, tmp_path):
  # --config.tasks=a,b reached the study as the one task 'a,b' ("unknown task 'sr_x2,derain'")
  out = cli(f"--config={study_file}", f"--workdir={tmp_path}/s", "--dry_run",
            "--config.tasks=derain,denoise_30")
  assert out.returncode == 0, out.stderr
  assert "  tasks derain, denoise_30; " in out.stdout


def test_a_dry_run_whose_reader_has_gone_exits_quietly(study_file, tmp_path):
  proc = subprocess.Popen([sys.executable, "launch/study.py", f"--config={study_file}",
                           f"--workdir={tmp_path}/s", "--dry_run"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  proc.stdout.close()  # as `| head` once it has its lines: every write is a broken pipe
  assert proc.wait(timeout=120) == 0
  assert "Broken pipe" not in proc.stderr.read()


def test_interrupted_study_resumes_without_redoing_finished_runs(study_file, tmp_path):
  workdir = str(tmp_path / "study")
  args = [f"--config={study_file}:kill", f"--workdir={workdir}"]
  first, second = "scratch-denoise_30-lr1e-3-s0", "scratch-denoise_30-lr1e-3-s1"
  proc = subprocess.Popen([sys.executable, "launch/study.py", *args], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  seen = []
  for line in proc.stdout:  # interrupt once the second run has trained a few steps
    seen.append(line)
    if line.startswith(f"[2/2 {second}] step 5/20"):
      proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 128 + signal.SIGTERM, "".join(seen)
  assert os.path.exists(os.path.join(workdir, "runs", first, "DONE"))
  assert not os.path.exists(os.path.join(workdir, "runs", second, "DONE"))
  assert os.listdir(os.path.join(workdir, "runs", second, "checkpoints"))
  stamps = {f: os.stat(os.path.join(workdir, "runs", first, f)).st_mtime_ns
            for f in ("DONE", "results.json", "compute.json")}
  time.sleep(0.05)

  again = cli(*args)
  assert again.returncode == 0, again.stdout + again.stderr
  assert f"run 1/2 {first}: done, skipped" in again.stdout
  assert f"run 2/2 {second}: resuming" in again.stdout
  assert f"[2/2 {second}] resumed" in again.stdout  # from its checkpoint, not from step 0
  assert stamps == {f: os.stat(os.path.join(workdir, "runs", first, f)).st_mtime_ns
                    for f in stamps}
  with open(os.path.join(workdir, "runs", second, "results.json")) as f:
    assert json.load(f)["step"] == 20

  changed = cli(*args, "--config.steps.scratch=21")
  assert changed.returncode == 1
  assert changed.stderr.strip() == (
      f"error: {workdir} holds a different study: steps.scratch (20 -> 21); it changes the "
      f"finished run(s) {first}, {second}: use a new --workdir, or the same study config to "
      "continue it")


def test_a_run_with_relative_paths_resumes_its_checkpoints(tmp_path, monkeypatch):
  # the trainer saves config.json with its paths absolute, the study's run config holds them as
  # typed: every restart read as a changed config, and the run's progress was moved aside
  from mtl import run_config as trainer_config
  monkeypatch.chdir(tmp_path)
  config = micro()
  config.run.data.tfds_dir = "~/tfds"
  config.run.data.cache_dir = "cache"
  study = study_lib.Study(config, str(tmp_path / "study"))
  study.prepare()
  name = "scratch-sr_x2-lr1e-3-s0"
  spec = study.by_name[name]
  run = study.write_run_config(spec)
  assert run["data"]["cache_dir"] == "cache"  # as the study config gives it
  files.write_json(study.path(name, "config.json"), trainer_config.absolute_paths(run))
  os.makedirs(study.path(name, "checkpoints", "2"))
  out = io.StringIO()
  study.write_run_config(spec, out)
  assert out.getvalue() == "" and os.path.isdir(study.path(name, "checkpoints", "2"))


def test_a_corrected_study_restarts_a_run_whose_checkpoints_cannot_resume(tmp_path):
  study = study_lib.Study(micro(), str(tmp_path))
  study.prepare()
  name = "scratch-sr_x2-lr1e-3-s0"
  spec = study.by_name[name]
  study.write_run_config(spec)
  config = json.loads(open(study.path(name, "run_config.json")).read())
  with open(study.path(name, "config.json"), "w") as f:  # the trainer's, from a failed attempt
    json.dump(dict(config, optim=dict(config["optim"], grad_clip=123.0)), f)
  os.makedirs(study.path(name, "checkpoints", "2"))
  with open(study.path(name, "FAILED"), "w") as f:
    json.dump({"status": 1}, f)
  assert study.status(name) == "failed"
  out = io.StringIO()
  study.write_run_config(spec, out)
  moved = [d for d in os.listdir(study.run_dir(name)) if d.startswith("superseded-")]
  assert len(moved) == 1 and f"{name}: its checkpoints cannot resume" in out.getvalue()
  assert sorted(os.listdir(study.path(name, moved[0]))) == ["checkpoints", "config.json"]
  assert not study.has_started(name) and study.status(name) == "failed"
  study.write_run_config(spec, out)  # nothing more to move
  assert len([d for d in os.listdir(study.run_dir(name)) if d.startswith("superseded-")]) == 1
  with open(study.path(name, "config.json"), "w") as f:  # failed again, within the second
    json.dump(dict(config, optim=dict(config["optim"], grad_clip=7.0)), f)
  os.makedirs(study.path(name, "checkpoints", "4"))
  study.write_run_config(spec, out)
  moved = sorted(d for d in os.listdir(study.run_dir(name)) if d.startswith("superseded-"))
  assert len(moved) == 2 and all(sorted(os.listdir(study.path(name, d))) == [
      "checkpoints", "config.json"] for d in moved)


FIXABLE = MICRO_STUDY + """
import ml_collections
_micro = get_config


def get_config(arg=""):
  study = _micro(arg)
  study.regimes = ("scratch", "joint")
  study.steps.scratch = study.steps.joint = 2
  study.final_conflicts.batch_size = 0  # no end-of-training measurement: not what is tested
  study.run.conflicts.every = 0
  # 3-pixel test images cannot be scored (SSIM's window): the joint run fails at its start,
  # after the study's check of its config (which a config error would fail before any run).
  study.per_regime.joint.eval = ml_collections.ConfigDict(dict(max_side=3))  # CAUSE
  return study
"""


def test_a_failed_study_is_fixed_in_place_keeping_its_finished_runs(tmp_path):
  workdir, study_file = str(tmp_path / "study"), tmp_path / "fixable.py"
  study_file.write_text(FIXABLE)
  args = [f"--config={study_file}", f"--workdir={workdir}"]
  failing = cli(*args, timeout=900)
  assert failing.returncode == 1, failing.stdout[-3000:] + failing.stderr[-2000:]
  joint, scratch = "joint-lr1e-3-s0", ["scratch-denoise_30-lr1e-3-s0", "scratch-derain-lr1e-3-s0"]
  failed = json.load(open(os.path.join(workdir, "runs", joint, "FAILED")))
  assert failed["status"] == 1 and failed["log"] == os.path.join(workdir, "runs", joint, "train.log")
  assert failing.stdout.splitlines()[-1].startswith(f"[study] stopped: {joint} failed")
  study = study_lib.Study.load(workdir)
  assert [study.status(n) for n in scratch + [joint]] == ["done", "done", "failed"]
  stamps = {n: os.stat(os.path.join(workdir, "runs", n, "DONE")).st_mtime_ns for n in scratch}
  study_file.write_text("\n".join(l for l in FIXABLE.splitlines() if "# CAUSE" not in l))
  fixed = cli(*args, timeout=900)  # the cause removed from the file, the same command
  assert fixed.returncode == 0, fixed.stdout[-3000:] + fixed.stderr[-2000:]
  assert "no finished run changes: they are kept" in fixed.stdout
  assert all(f"{n}: done, skipped" in fixed.stdout for n in scratch)
  assert stamps == {n: os.stat(os.path.join(workdir, "runs", n, "DONE")).st_mtime_ns
                    for n in scratch}
  assert os.path.exists(os.path.join(workdir, "runs", joint, "DONE"))


def test_loading_a_training_run_as_a_study_says_what_it_is(tmp_path):
  (tmp_path / "config.json").write_text("{}")  # a training run's workdir (report.py's mistake)
  with pytest.raises(FileNotFoundError, match="is a training run's workdir, not a study's: its "
                     "scores are in its results.json"):
    study_lib.Study.load(str(tmp_path))
  os.remove(tmp_path / "config.json")
  with pytest.raises(FileNotFoundError, match="no study.json in .*; run launch/study.py"):
    study_lib.Study.load(str(tmp_path))
  (tmp_path / "study.json").write_text("{}")  # its runs/ folder given: the study is its parent
  os.makedirs(tmp_path / "runs")
  with pytest.raises(FileNotFoundError) as error:
    study_lib.Study.load(str(tmp_path / "runs"))
  assert str(error.value) == (f"{tmp_path}/runs is inside the study {tmp_path}; give "
                              f"--workdir={tmp_path}")
