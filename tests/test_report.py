"""The report of a real micro study (launch/study.py -> launch/train.py runs, then
launch/report.py): partial and complete, every table against the runs' own files."""
import csv
import json
import math
import os
import subprocess
import sys

import pytest

from mtl import conflicts
from mtl.report import tables
from mtl import study as study_lib
from micro_study import MICRO_STUDY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("denoise_30", "derain")
JOINT = "joint-lr1e-3-s0"


def _cli(script, *args):
  out = subprocess.run([sys.executable, script, *args], cwd=ROOT, text=True,
                       capture_output=True, timeout=600)
  return out


@pytest.fixture(scope="module")
def study_runs(tmp_path_factory):
  """The micro study, run in two parts with a report after each; returns (workdir, logs)."""
  tmp = tmp_path_factory.mktemp("report")
  config = tmp / "micro.py"
  config.write_text(MICRO_STUDY)
  workdir = str(tmp / "study")
  args = [f"--config={config}:reference", f"--workdir={workdir}"]
  logs = {}
  logs["waiting"] = _cli("launch/study.py", *args, "--only=finetune-*")
  logs["pretrain"] = _cli("launch/study.py", *args, "--only=scratch-*,joint-*")
  assert logs["pretrain"].returncode == 0, logs["pretrain"].stdout[-3000:]
  logs["partial_report"] = _cli("launch/report.py", f"--workdir={workdir}")
  with open(os.path.join(workdir, "report.md")) as f:
    logs["partial_md"] = f.read()
  logs["rest"] = _cli("launch/study.py", *args)
  assert logs["rest"].returncode == 0, logs["rest"].stdout[-3000:]
  logs["report"] = _cli("launch/report.py", f"--workdir={workdir}")
  assert logs["report"].returncode == 0, logs["report"].stderr
  return workdir, logs


def _csv(workdir, name):
  with open(os.path.join(workdir, "tables", f"{name}.csv")) as f:
    return list(csv.DictReader(f))


def _results(workdir, run):
  with open(os.path.join(workdir, "runs", run, "results.json")) as f:
    return json.load(f)


def test_finetunes_wait_for_their_joint_run(study_runs):
  _, logs = study_runs
  out = logs["waiting"]
  assert out.returncode == 3
  assert "finetune-denoise_30-lr1e-3-s0: waiting: " in out.stdout
  assert "not done yet: joint-lr1e-3-s0" in out.stdout


def test_partial_report_says_what_is_missing(study_runs):
  _, logs = study_runs
  assert logs["partial_report"].returncode == 0, logs["partial_report"].stderr
  md = logs["partial_md"]
  assert "Runs done: 3/5." in md
  assert "finetune-denoise_30-lr1e-3-s0 (pending)" in md


def test_every_table_and_format_is_written(study_runs):
  workdir, logs = study_runs
  for name in ("main", "transfer", "conflicts", "compute", "selection"):
    for ext in ("md", "csv", "tex"):
      assert os.path.getsize(os.path.join(workdir, "tables", f"{name}.{ext}")) > 0
  assert _csv(workdir, "main")[0].keys() == set(tables.MAIN_COLUMNS)
  with open(os.path.join(workdir, "tables", "main.csv")) as f:
    assert next(csv.reader(f)) == list(tables.MAIN_COLUMNS)
  with open(os.path.join(workdir, "tables", "main.tex")) as f:
    tex = f.read()
  assert r"\begin{tabular}" in tex and r"denoise\_30" in tex and r"\textbf{" in tex
  assert "Runs done: 5/5." in logs["report"].stdout


def test_main_table_cells_are_the_runs_results(study_runs):
  workdir, _ = study_runs
  rows = {(r["task"], r["regime"], r["test_set"]): r for r in _csv(workdir, "main")}
  assert {(t, reg) for t, reg, _ in rows} == {
      (t, reg) for t in TASKS for reg in ("scratch", "joint", "finetune", "input")} | {
          ("derain", "published")}
  assert all(s == "photos" for _, _, s in rows)  # the validation set is never reported
  scratch = _results(workdir, "scratch-derain-lr1e-3-s0")["tasks"]["derain"]["photos"]
  joint = _results(workdir, JOINT)["tasks"]["derain"]["photos"]
  row = rows["derain", "scratch", "photos"]
  assert float(row["psnr_y_mean"]) == scratch["psnr_y"]
  assert float(row["ssim_y_mean"]) == scratch["ssim_y"]
  assert row["n_seeds"] == "1" and row["psnr_y_std"] == "nan"
  assert row["runs"] == "scratch-derain-lr1e-3-s0"
  joint_row = rows["derain", "joint", "photos"]
  assert float(joint_row["delta_psnr_y"]) == pytest.approx(joint["psnr_y"] - scratch["psnr_y"])
  best = max(("scratch", "joint", "finetune"),
             key=lambda reg: float(rows["derain", reg, "photos"]["psnr_y_mean"]))
  assert rows["derain", best, "photos"]["best_psnr_y"] == "True"
  assert float(rows["derain", "input", "photos"]["psnr_y_mean"]) == scratch["input_psnr_y"]
  assert float(rows["derain", "published", "photos"]["delta_psnr_y"]) == pytest.approx(
      40.0 - scratch["psnr_y"])
  with open(os.path.join(workdir, "tables", "main.md")) as f:
    md = f.read()
  assert f"| derain | scratch | 1 | " in md and f"{scratch['psnr_y']:.2f}" in md
  assert f"**{float(rows['derain', best, 'photos']['psnr_y_mean']):.2f}**" in md


def test_finetunes_started_from_the_joint_run(study_runs):
  workdir, _ = study_runs
  for task in TASKS:
    with open(os.path.join(workdir, "runs", f"finetune-{task}-lr1e-3-s0", "config.json")) as f:
      config = json.load(f)
    assert config["init_from"] == os.path.join(workdir, "runs", JOINT)
    assert config["regime"] == "finetune" and config["tasks"] == [task]


def test_transfer_table(study_runs):
  workdir, _ = study_runs
  rows = _csv(workdir, "transfer")
  assert {(r["task"], r["regime"]) for r in rows} == {
      (t, reg) for t in TASKS for reg in ("joint", "finetune")}
  for r in rows:
    assert float(r["delta_psnr_y"]) == pytest.approx(
        float(r["regime_psnr_y"]) - float(r["scratch_psnr_y"]))
    assert r["verdict"] in ("loss (1 seed: no spread)", "gain (1 seed: no spread)")


def test_conflict_table_is_the_joint_runs_record(study_runs):
  workdir, _ = study_runs
  (row,) = _csv(workdir, "conflicts")
  summary = conflicts.summarize(conflicts.load(os.path.join(workdir, "runs", JOINT)))
  entry = summary["pair"]["denoise_30~derain"]
  assert row["source"] == "joint" and row["pair"] == "denoise_30~derain"
  assert float(row["mean_cos"]) == pytest.approx(entry["mean_cos"])
  assert float(row["conflict_fraction"]) == pytest.approx(entry["conflict_fraction"])
  assert row["pairwise_transfer_db"] == ""  # no 'pairs' regime in this study


def test_compute_table_is_the_runs_compute_json(study_runs):
  workdir, _ = study_runs
  rows = {r["regime"]: r for r in _csv(workdir, "compute")}
  with open(os.path.join(workdir, "runs", JOINT, "compute.json")) as f:
    joint = json.load(f)
  assert rows["joint"]["steps_per_run"] == "4" and rows["joint"]["runs_done"] == "1"
  assert float(rows["joint"]["images_seen_per_run"]) == joint["images_seen"] == 4 * 2 * 2
  assert float(rows["joint"]["train_flops_total"]) == joint["train_flops"]
  assert float(rows["scratch"]["images_seen_per_run"]) == 4 * 2


def test_report_md_embeds_figures_and_states_the_method(study_runs):
  workdir, _ = study_runs
  with open(os.path.join(workdir, "report.md")) as f:
    md = f.read()
  links = [l.split("](")[1].rstrip(")") for l in md.splitlines() if l.startswith("![")]
  assert f"runs/{JOINT}/conflicts/cos_matrix.png" in links
  assert "figures/loss-derain.png" in links
  assert all(os.path.exists(os.path.join(workdir, link)) for link in links)
  for phrase in ("Y channel", "BT.601", "crop border = scale for SR", "photos_val",
                 "chosen per seed on the validation set", "Seeds"):
    assert phrase in md


# ----------------------------------------------------------------------------- pure parts


def test_transfer_verdicts():
  assert tables._verdict(-0.5, 0.2) == "negative transfer"
  assert tables._verdict(-0.1, 0.2) == "within seed spread"
  assert tables._verdict(0.5, 0.2) == "positive transfer"
  assert tables._verdict(-0.1, float("nan")) == "loss (1 seed: no spread)"


def test_spearman_between_conflict_and_pairwise_transfer(tmp_path):
  from scipy import stats
  study = study_lib.defaults()
  study.tasks = ("denoise_30", "sr_x2", "derain")
  study.regimes = ("joint", "pairs")
  study.steps.joint = 4
  study.lrs.joint = (1e-3,)
  from experiments import base
  study.run = base.get_config("tiny")
  study.run.eval.sets = "photos,photos_val"
  s = study_lib.Study(study, str(tmp_path))
  cos = {"denoise_30~sr_x2": 0.3, "denoise_30~derain": -0.1, "sr_x2~derain": 0.05}
  transfer = {"denoise_30~sr_x2": 0.4, "denoise_30~derain": -0.2, "sr_x2~derain": 0.5}
  summaries = [("joint", 0, JOINT, {"pair": {p: {"mean_cos": c, "conflict_fraction": 0.5}
                                              for p, c in cos.items()}})]
  table = tables.conflict_table(s, summaries, transfer)
  rho = stats.spearmanr(list(cos.values()), [transfer[p] for p in cos]).statistic
  assert table.spearman[0] == pytest.approx(rho) and table.spearman[2] == 3
  assert any("Spearman" in n and f"{rho:+.3f}" in n for n in table.notes)
  assert math.isclose(table.records[0]["pairwise_transfer_db"], 0.4)
