"""The report of a real micro study (launch/study.py -> launch/train.py runs, then
launch/report.py): partial and complete, every table against the runs' own files; and the
statistics of the tables on synthetic study directories (results written by hand)."""
import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from mtl import conflicts, files, report, run_folder, stats
from mtl.report import cells as table_cells
from mtl.report import document, figures, findings, render, scores, tables
from mtl import study as study_lib
from micro_study import MICRO_STUDY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("denoise_30", "derain")
# One xdist worker for the module (--dist loadgroup): its micro study fixture is run once.
pytestmark = pytest.mark.xdist_group("report")
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


def test_a_changed_final_conflicts_keeps_the_measurements_made_and_says_their_span(
    study_runs, tmp_path, capsys):
  """Its end-of-training measurements made, a study's final_conflicts may change (a report-only
  field): those made keep their settings, the study says so, and the findings give the span of
  their batch sizes (the first run's alone before: '2/task' for measurements of 2 and 4)."""
  import shutil
  workdir = str(tmp_path / "study")
  shutil.copytree(study_runs[0], workdir)
  meta = os.path.join(workdir, "runs", JOINT, "analysis", "step-2", "conflicts", "store",
                      "meta.json")
  saved = files.read_json(meta)  # as if step 2 were measured again at 4 images per task
  saved["probe_batch"]["size"] = 4
  files.write_json(meta, saved)
  config = study_lib.Study.load(workdir).config
  config["final_conflicts"]["batch_size"] = 4
  study = study_lib.Study(config, workdir)
  assert study.check_saved()
  assert (f"final_conflicts changed (batch_size); the 2 end-of-training measurement(s) made "
          f"keep their settings (the report gives their span); delete a checkpoint's "
          f"runs/<run>/analysis/step-<N>/ to measure it again with the new ones (made: "
          f"{JOINT}/step-2, {JOINT}/step-4)") in capsys.readouterr().out
  found = findings.build(study, tables.transfer_table(study), scores.conflict_records(study),
                         scores.final_conflict_records(study))
  assert "each on 3 fresh batches of 2-4/task" in found.answers[1][0].sentence, found


def test_a_report_removes_the_files_an_earlier_report_wrote_and_it_does_not(study_runs, tmp_path):
  """end_conflicts.* stayed beside a report.md that no longer listed them."""
  import shutil
  workdir = str(tmp_path / "study")
  shutil.copytree(study_runs[0], workdir)
  assert os.path.exists(os.path.join(workdir, "tables", "end_conflicts.csv"))
  shutil.rmtree(os.path.join(workdir, "runs", JOINT, "analysis"))  # no measurement now
  _, summary = document.write_with_summary(workdir)
  assert summary.splitlines()[-1] == (
      "removed 3 file(s) an earlier report wrote that this one does not: "
      "tables/end_conflicts.csv, tables/end_conflicts.md, tables/end_conflicts.tex")
  assert not [n for n in os.listdir(os.path.join(workdir, "tables")) if "end_conflicts" in n]
  assert "tables/main.csv" not in summary and os.path.exists(
      os.path.join(workdir, "tables", "main.csv"))


def test_a_run_done_without_its_results_is_said_and_evaluated_again(study_runs, tmp_path):
  """A DONE run whose results.json is gone counted as done, scored nowhere, said nowhere."""
  import shutil
  workdir = str(tmp_path / "study")
  shutil.copytree(study_runs[0], workdir)
  name = "scratch-derain-lr1e-3-s0"
  os.remove(os.path.join(workdir, "runs", name, "results.json"))
  _, summary = document.write_with_summary(workdir)
  assert (f"1 run(s) marked done have no results.json ({name}): their scores are left out; "
          "delete such a run's DONE and run the same launch/study.py command: it evaluates the "
          "run again from its last checkpoint.") in summary.splitlines(), summary
  os.remove(os.path.join(workdir, "runs", name, "DONE"))  # as the warning says
  config = os.path.join(os.path.dirname(study_runs[0]), "micro.py")
  out = _cli("launch/study.py", f"--config={config}:reference", f"--workdir={workdir}")
  assert out.returncode == 0, out.stdout[-3000:]
  assert _results(workdir, name)["step"] == 4, out.stdout[-3000:]


def test_partial_report_says_what_is_missing(study_runs):
  _, logs = study_runs
  assert logs["partial_report"].returncode == 0, logs["partial_report"].stderr
  md = logs["partial_md"]
  assert "Runs done: 3/5." in md
  assert "finetune-denoise_30-lr1e-3-s0 (pending)" in md
  # Question 2 is this study's to answer once its fine-tunes are done: it says so.
  assert ("- not answered yet: its scratch/finetune runs, 2 of 4 done; the same launch/study.py "
          "command runs the rest") in md


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
  assert r"\begin{tabular}" in tex and r"denoise\_30" in tex
  assert r"\textbf{" not in tex  # one seed: nothing is significantly best
  assert logs["report"].stdout.startswith(f"1. {findings.QUESTIONS[0]}\n")
  assert "\nstudy micro: 5/5 runs done\n" in logs["report"].stdout


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
  assert float(row["psnr_mean"]) == scratch["psnr_y"] and row["metric"] == "psnr_y"
  assert float(row["ssim_mean"]) == scratch["ssim_y"]
  assert row["n_seeds"] == "1" and row["psnr_std"] == "nan"
  assert row["runs"] == "scratch-derain-lr1e-3-s0" and row["budget"] == "steps"
  joint_row = rows["derain", "joint", "photos"]
  assert float(joint_row["delta_psnr"]) == pytest.approx(joint["psnr_y"] - scratch["psnr_y"])
  # one seed: a difference but no interval, and so no verdict beyond 'no detectable difference'
  assert joint_row["delta_psnr_low"] == "nan" and joint_row["delta_psnr_n"] == "1"
  assert joint_row["verdict_psnr"] == "no detectable difference"
  assert all(r["best_psnr"] == "False" for r in rows.values())
  assert float(rows["derain", "input", "photos"]["psnr_mean"]) == scratch["input_psnr_y"]
  assert float(rows["derain", "published", "photos"]["psnr_mean"]) == 40.0
  with open(os.path.join(workdir, "tables", "main.md")) as f:
    md = f.read()
  assert "| derain | scratch | 1 | " in md and f"{scratch['psnr_y']:.2f}" in md
  assert f"{joint['psnr_y'] - scratch['psnr_y']:+.2f} (1 seed: no CI)" in md


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
    assert float(r["delta"]) == pytest.approx(float(r["regime_mean"]) - float(r["scratch_mean"]))
    assert r["verdict"] == "no detectable difference" and r["n_pairs"] == "1"


def test_conflict_table_is_the_joint_runs_record(study_runs):
  workdir, _ = study_runs
  (row,) = _csv(workdir, "conflicts")
  summary = conflicts.summarize(conflicts.load(os.path.join(workdir, "runs", JOINT)))
  entry = summary["pair"]["denoise_30~derain"]
  assert row["source"] == "joint" and row["pair"] == "denoise_30~derain"
  assert float(row["mean_cos"]) == pytest.approx(entry["mean_cos"])
  assert float(row["conflict_fraction"]) == pytest.approx(entry["conflict_fraction"])
  # One seed: the run's own corrected cosine and interval (se = half-width / z, back to +- z se)
  corrected = entry["corrected_cos"]
  assert float(row["corrected_cos"]) == pytest.approx(corrected["estimate"], nan_ok=True)
  if np.isfinite(corrected["low"]):
    assert float(row["corrected_cos_high"]) - float(row["corrected_cos"]) == pytest.approx(
        (corrected["high"] - corrected["low"]) / 2, rel=1e-6)
  else:  # 4 probe steps of batch 2: too few for an interval, or not measurable; said so
    assert not np.isfinite(float(row["corrected_cos_high"] or "nan"))
  assert float(row["same_task_agreement_a"]) == pytest.approx(entry["same_task_agreement"][0],
                                                              nan_ok=True)
  assert row["verdict"] in (conflicts.CONFLICT, conflicts.AGREEMENT, conflicts.UNDETECTED,
                            conflicts.NOT_MEASURABLE)
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


def test_a_fine_tune_s_loss_is_drawn_after_its_pre_training_s_steps(study_runs):
  study = study_lib.Study.load(study_runs[0])
  series, seeds, shifted = document.loss_series(study, "derain")
  lines = {col.split(" ")[0]: lines for col, lines in series.items()}
  joint, tuned = lines["joint"][0][0], lines["finetune"][0][0]
  offset = study.config["steps"]["joint"]
  assert shifted and tuned[0] == offset + joint[0] and tuned[0] > joint[-1]
  assert lines["scratch"][0][0][0] == joint[0]  # from-scratch runs start at the joint's first


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


def test_report_opens_with_the_answers_of_the_micro_study(study_runs):
  workdir, logs = study_runs
  with open(os.path.join(workdir, "report.md")) as f:
    md = f.read()
  assert md.index("## Findings") < md.index("## Main table")
  findings_md = md[md.index("## Findings"):md.index("Runs done")]
  answers = [l[2:] for l in findings_md.splitlines() if l.startswith("- ")]
  assert len(answers) == 5  # the pair, a sentence per task, related vs unrelated, remedies
  # One seed: the pair's estimate at the joint run's last two checkpoints (3 fresh batches
  # each, measured once the joint sweep was done) and over its 4 training probes; no interval,
  # so no verdict
  assert answers[0].startswith("denoise_30~derain (joint, 1 seed): corrected cosine ")
  # (2 images per task are mostly noise: a checkpoint may have no estimate, and is counted)
  assert re.search(r"at the end of training \(the mean of each seed's last 2 checkpoints, steps "
                   r"2 to 4, each on 3 fresh batches of 2/task(; [01] of 2 measurable)?\)",
                   answers[0])
  assert "; during training: whole run " in answers[0]
  assert findings.NOT_ENOUGH in answers[0] or "not measurable" in answers[0]
  ends = [conflicts.load(os.path.join(workdir, "runs", JOINT, "analysis", f"step-{step}"))
          for step in (2, 4)]
  for k, (step, end) in enumerate(zip((2, 4), ends), 1):
    assert end.num_steps == 3 and end.probe_batch == {
        "size": 2, "fresh": True, "checkpoint": {"run": JOINT, "step": step}}
    assert f"conflicts {k}/2 {JOINT} step {step}: measuring it on fresh batches of 2/task" in \
        logs["pretrain"].stdout
  assert not np.array_equal(ends[0].gramians, ends[1].gramians)  # other parameters and batches
  assert "conflicts 1/" not in logs["rest"].stdout  # measured once
  for task, answer in zip(TASKS, answers[1:3]):
    scratch = _results(workdir, f"scratch-{task}-lr1e-3-s0")["tasks"][task]["photos"]
    finetune = _results(workdir, f"finetune-{task}-lr1e-3-s0")["tasks"][task]["photos"]
    delta = stats.Interval(finetune["psnr_y"] - scratch["psnr_y"], np.nan, np.nan, 0.95, 1)
    assert answer == (f"{task} (fine-tuned from joint − tuned scratch, Y-PSNR on photos): Δ "
                      f"{delta.text(2)} dB (1 paired seed: no interval) — "
                      f"{findings.NOT_ENOUGH}.")
  assert answers[3].startswith(f"{findings.NOT_MEASURED}: it needs groups named 'related'")
  assert answers[3].endswith("experiments/studies/related_vs_unrelated.py measures it.")
  assert answers[4] == (f"{findings.NOT_MEASURED}: it needs the regime 'joint' and a "
                        "'joint:<method>' (an aggregator or a loss weighting) with runs done; "
                        "experiments/studies/remedies.py measures it.")
  stdout = logs["report"].stdout
  assert all(f"   {a}" in stdout for a in answers)
  for name in (figures.FIGURE_DELTAS, figures.FIGURE_CONFLICT):
    assert f"](figures/{name})" in findings_md
    with open(os.path.join(workdir, "figures", name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- synthetic studies

# Per-seed test Y-PSNR of a synthetic study (seeds 0, 1, 2): scratch, and each regime as scratch
# + a per-seed difference chosen so that the verdict is known: a clear gain, a clear loss, a
# null (differences of both signs), and one regime significantly better than every other.
SCRATCH = {"denoise_30": [30.0, 30.4, 29.8], "sr_x2": [33.0, 33.2, 32.9],
           "derain": [28.0, 28.5, 27.7]}
DIFF = {("joint", "denoise_30"): [1.0, 1.1, 0.9],       # gain
        ("finetune", "denoise_30"): [1.1, 0.9, 1.05],   # gain, not better than joint: no bold
        ("joint", "sr_x2"): [-1.0, -0.8, -1.2],         # loss
        ("finetune", "sr_x2"): [0.3, -0.2, 0.1],        # null
        ("joint", "derain"): [0.5, 0.6, 0.55],          # gain
        ("finetune", "derain"): [1.5, 1.6, 1.4]}        # best, above joint on every seed: bold
VERDICTS = {("joint", "denoise_30"): "gain", ("finetune", "denoise_30"): "gain",
            ("joint", "sr_x2"): "loss", ("finetune", "sr_x2"): "no detectable difference",
            ("joint", "derain"): "gain", ("finetune", "derain"): "gain"}
INPUT = {"denoise_30": 20.0, "sr_x2": 34.0, "derain": 25.0}   # sr_x2: nothing beats the input


def _psnr(regime, task, seed):
  base = SCRATCH[task][seed]
  return base if regime == "scratch" else base + DIFF[regime, task][seed]


def synthetic_study(workdir, metric="psnr_y", psnr=None, **fields):
  """A study directory whose runs are written by hand (no training): run_config.json,
  results.json and DONE per run, results from SCRATCH and DIFF, or psnr(spec, task) (the lr
  grid's second lr is 1 dB worse on validation, so the first is chosen)."""
  from mtl import run_defaults
  study = study_lib.defaults()
  study.name, study.metric = "synthetic", metric
  study.tasks = tuple(SCRATCH)
  study.steps.scratch = study.steps.joint = study.steps.finetune = 4
  study.lrs = (1e-3, 3e-3)
  study.run = run_defaults.get_config("tiny")
  study.run.eval.sets = "photos,photos_val"
  for key, value in fields.items():
    study[key] = value
  s = study_lib.Study(study, workdir)
  s.prepare()
  for spec in s.runs:
    s.write_run_config(spec)
    tasks = {}
    for t in spec.tasks:
      v = _psnr(spec.regime, t, spec.seed) if psnr is None else psnr(spec, t)
      x = INPUT.get(t, 20.0)  # a task only a group trains: any input score
      entry = lambda v: {"psnr_y": v, "ssim_y": v / 100, "psnr_rgb": v - 2, "ssim_rgb": v / 200,
                         "input_psnr_y": x, "input_ssim_y": x / 100,
                         "input_psnr_rgb": x - 2, "input_ssim_rgb": x / 200}
      worse = 0.0 if spec.lr == 1e-3 else 1.0
      tasks[t] = {"photos": entry(v - 5 * worse), "photos_val": entry(v - worse)}
    for filename, obj in (("results.json", {"step": 4, "tasks": tasks}), ("DONE", {})):
      with open(s.path(spec.name, filename), "w") as f:
        json.dump(obj, f)
  return s


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
  return synthetic_study(str(tmp_path_factory.mktemp("synthetic") / "study"))


def _cells(table):
  return {(row[0], row[1]): row for row in table.rows}


def test_delta_cells_are_paired_intervals_of_the_per_seed_values(synthetic):
  table = tables.main_table(synthetic)
  records = {(r["task"], r["regime"]): r for r in table.records}
  cells = _cells(table)
  for (regime, task), diff in DIFF.items():
    iv = stats.paired_interval(SCRATCH[task], [_psnr(regime, task, k) for k in range(3)])
    r = records[task, regime]
    assert r["n_seeds"] == 3 and r["delta_psnr_n"] == 3
    for key, value in (("delta_psnr", iv.estimate), ("delta_psnr_low", iv.low),
                       ("delta_psnr_high", iv.high), ("delta_psnr_p", iv.p)):
      assert r[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    assert r["verdict_psnr"] == stats.verdict(iv) == VERDICTS[regime, task]
    # SSIM = PSNR / 100 here: its interval is the PSNR one scaled, and its verdict the same
    assert r["delta_ssim_low"] == pytest.approx(iv.low / 100)
    assert r["verdict_ssim"] == VERDICTS[regime, task]
    assert cells[task, regime][5] == (
        f"{iv.estimate:+.2f} [{iv.low:+.2f}, {iv.high:+.2f}], {table_cells.format_p(iv.p)}")
    assert cells[task, regime][6] == VERDICTS[regime, task]
  assert cells["sr_x2", "scratch"][5] == ""   # scratch is the baseline: no Δ
  assert any("paired t 95% CI" in n for n in table.notes)


def test_bold_only_for_the_significantly_best_regime(synthetic):
  cells = _cells(tables.main_table(synthetic))
  bold = {(task, regime) for (task, regime), row in cells.items()
          if isinstance(row[3], table_cells.Bold)}
  # derain: finetune beats joint and scratch on every seed; denoise_30: finetune's mean is
  # highest but not significantly above joint's; sr_x2: the best (finetune) is null vs scratch
  assert bold == {("derain", "finetune")}
  md = render.to_markdown(tables.main_table(synthetic))
  assert "| **29.57 ± 0.50** | **0.2957 ± 0.0050** |" in md  # PSNR and SSIM: a cell each


def test_main_tex_is_a_booktabs_table_with_tasks_as_columns(synthetic, tmp_path):
  render.write_table(tables.main_table(synthetic), str(tmp_path))
  tex = (tmp_path / "main.tex").read_text().splitlines()
  body = tex[tex.index(r"\begin{tabular}{lrrrrrr}"):tex.index(r"\end{tabular}") + 1]
  assert body[1] == r"\toprule" and body[-2] == r"\bottomrule"
  # one column pair (PSNR, SSIM) per task, each under its task's name
  assert body[2] == (r" & \multicolumn{2}{c}{denoise\_30} & \multicolumn{2}{c}{sr\_x2} & "
                     r"\multicolumn{2}{c}{derain} \\")
  assert body[3] == r"\cmidrule(lr){2-3} \cmidrule(lr){4-5} \cmidrule(lr){6-7}"
  assert body[4] == "regime & " + " & ".join([r"Y-PSNR (dB) & SSIM"] * 3) + r" \\"
  assert body[5] == r"\midrule"
  rows = {line.split(" & ")[0]: line.split(" & ")[1:] for line in body[6:-2]}
  assert list(rows) == ["input", "scratch", "joint", "finetune"]
  assert rows["input"][:2] == ["20.00", "0.2000"]
  assert rows["finetune"][4:] == [r"\textbf{29.57 $\pm$ 0.50}", r"\textbf{0.2957 $\pm$ 0.0050} \\"]
  assert all(" / " not in cell for cells in rows.values() for cell in cells)  # a value a cell


def test_conflict_fraction_interval_of_the_seeds_stays_within_0_100(synthetic):
  from test_conflicts import known_halves
  record = conflicts.Record.from_halves(  # every probe agrees: a conflict fraction of 0
      np.arange(16), known_halves(16, (0.9, 0.9, 0.9), noise=1.0), ["pos_embed"],
      ["denoise_30", "sr_x2", "derain"])
  summary = conflicts.summarize(record)
  assert summary["pair"]["denoise_30~sr_x2"]["conflict_fraction"] == 0.0
  table = tables.conflict_table(synthetic, [("joint", 0, "joint-s0", summary)], {})
  for r in table.records:
    assert 0.0 == r["conflict_fraction"] == r["conflict_fraction_low"] < r["conflict_fraction_high"] < 1
    own = summary["pair"][r["pair"]]["conflict_fraction_interval"]
    assert r["conflict_fraction_high"] == pytest.approx(
        stats.wilson_interval(0.0, own["n_eff"], df=own["df"]).high)
  assert all(row[6].startswith("0.0% [0.0, ") for row in table.rows)
  # two seeds: the Wilson interval at the combined effective n, still within [0, 1]
  iv = stats.mean_of_shares([0.0, 0.1], [4.0, 12.0])
  assert iv.estimate == pytest.approx(0.05) and 0.0 <= iv.low < 0.05 < iv.high <= 1.0
  assert (iv.low, iv.high) == stats.wilson_interval(0.05, 2 * 2 / (1 / 4 + 1 / 12))[1:3]


def test_transfer_table_uses_the_same_paired_intervals(synthetic):
  rows = {(r["task"], r["regime"]): r for r in tables.transfer_table(synthetic).records}
  for (regime, task), diff in DIFF.items():
    iv = stats.paired_interval(SCRATCH[task], [_psnr(regime, task, k) for k in range(3)])
    r = rows[task, regime]
    assert (r["delta_low"], r["delta_high"], r["p"]) == pytest.approx((iv.low, iv.high, iv.p))
    assert r["verdict"] == VERDICTS[regime, task] and r["n_pairs"] == 3


def test_a_seed_with_an_infinite_or_missing_score_is_left_out_of_a_delta_and_said():
  # A PSNR of identical images is inf: inf - inf (NaN) or inf - x kept a NaN or inf Δ, read as
  # "no spread"; two seeds with one NaN raised instead of giving no interval.
  iv = scores.paired({0: 30.0, 1: 31.0, 2: 32.1, 3: np.inf},
                     {0: 31.0, 1: 32.5, 2: 33.5, 3: np.inf})
  expected = stats.paired_interval([30.0, 31.0, 32.1], [31.0, 32.5, 33.5])
  assert iv[:7] == pytest.approx(expected[:7]) and iv.n == 3
  assert iv.note == "1 seed(s) with a NaN or infinite score left out"
  one = scores.paired({0: 30.0, 1: np.nan}, {0: 31.0, 1: 32.0})
  assert one.n == 1 and one.estimate == 1.0 and np.isnan(one.low)
  assert one.note == ("1 paired seed(s): no interval (needs >= 2); 1 seed(s) with a NaN or "
                      "infinite score left out")


def test_a_delta_whose_seeds_do_not_spread_keeps_the_reason_into_question_2(tmp_path):
  def psnr(spec, task):  # fine-tune - scratch = +0.25 dB on every seed (exact in binary)
    base = 30.0 + spec.seed
    return base + {"scratch": 0.0, "joint": 0.5 + 0.1 * spec.seed, "finetune": 0.25}[spec.regime]
  s = synthetic_study(str(tmp_path / "s"), psnr=psnr)
  transfer = tables.transfer_table(s)
  assert [r[7] for r in transfer.rows if r[2] == "finetune"][0] == "– (no spread)"
  sentence = findings.build(s, transfer, []).answers[2][0].sentence
  assert "(3 paired seeds: no interval, as they do not spread at all)" in sentence, sentence


def test_lr_grid_and_budget_are_stated(synthetic, tmp_path):
  notes = " ".join(tables.main_table(synthetic).notes)
  assert "one grid for every regime: 1e-3, 3e-3" in notes and "Budget 'steps'" in notes
  override = study_lib.defaults().lrs_override
  override.finetune = (1e-4, 3e-4)
  s = synthetic_study(str(tmp_path / "s"), lrs_override=override)
  notes = " ".join(tables.main_table(s).notes)
  assert "grids DIFFER" in notes and "finetune: 1e-4, 3e-4" in notes


def test_warning_when_no_trained_regime_beats_the_input(synthetic):
  table = tables.main_table(synthetic)
  assert len(table.warnings) == 1 and table.warnings[0].startswith(
      "WARNING: sr_x2 on photos: no trained regime beats the input (Y-PSNR 34.00 dB")
  path = report.write(synthetic.workdir)
  with open(path) as f:
    md = f.read()
  assert md.index("WARNING: sr_x2") < md.index("## Main table")
  assert md.count("WARNING: sr_x2") == 1
  out = _cli("launch/report.py", f"--workdir={synthetic.workdir}")
  assert out.returncode == 0 and out.stdout.count("WARNING: sr_x2 on photos") == 1
  # a short summary, not the report: runs, the warning, a line per task, where the files are
  lines = out.stdout.splitlines()
  lines = lines[lines.index("study synthetic: 42/42 runs done"):]  # after the answers
  assert len(lines) == 6
  assert lines[3] == ("  sr_x2 on photos, Y-PSNR: scratch 33.03, joint 32.03 (loss vs scratch), "
                      "finetune 33.10 (no detectable difference vs scratch)")
  assert lines[-1].startswith(f"wrote {path}, ") and "(main, transfer, conflicts" in lines[-1]


def test_metric_psnr_rgb_selects_and_reports_rgb(tmp_path):
  s = synthetic_study(str(tmp_path / "rgb"), metric="psnr_rgb")
  r = {(r["task"], r["regime"]): r for r in tables.main_table(s).records}
  assert r["derain", "scratch"]["metric"] == "psnr_rgb"
  assert r["derain", "scratch"]["psnr_mean"] == pytest.approx(np.mean(SCRATCH["derain"]) - 2)
  assert r["derain", "scratch"]["ssim_mean"] == pytest.approx(np.mean(SCRATCH["derain"]) / 200)
  assert r["derain", "input"]["psnr_mean"] == INPUT["derain"] - 2


def test_published_row_only_when_its_requirement_holds(tmp_path):
  reference = study_lib.defaults().reference
  reference.label = "published"
  reference.psnr_y = {"derain": {"photos": 40.0}}
  reference.requires = {"derain": "degrade.rain.streak_dir"}
  s = synthetic_study(str(tmp_path / "a"), reference=reference)
  assert not any(r["regime"] == "published" for r in tables.main_table(s).records)
  from mtl import run_defaults
  run = run_defaults.get_config("tiny")
  run.eval.sets = "photos,photos_val"
  run.degrade.rain.streak_dir = "/data/RainTrainL/streaks"
  s = synthetic_study(str(tmp_path / "b"), reference=reference, run=run)
  (row,) = [r for r in tables.main_table(s).records if r["regime"] == "published"]
  assert row["psnr_mean"] == 40.0 and row.get("delta_psnr") is None  # no seeds to pair


def test_published_row_follows_the_study_metric(tmp_path):
  reference = study_lib.defaults().reference
  reference.label = "published"
  reference.psnr_y = {"derain": {"photos": 40.0}}
  reference.psnr_rgb = {"derain": {"photos": 38.0}}
  reference.ssim_rgb = {"derain": {"photos": 0.9}}
  for metric, want in (("psnr_y", (40.0, None)), ("psnr_rgb", (38.0, 0.9))):
    s = synthetic_study(str(tmp_path / metric), metric=metric, reference=reference)
    (row,) = [r for r in tables.main_table(s).records if r["regime"] == "published"]
    assert (row["metric"], row["psnr_mean"], row["ssim_mean"]) == (metric, *want)


def test_allinone3_study_holds_real_data_runs_against_promptir():
  from experiments import allinone3
  from experiments.studies import allinone3 as study3
  ref = study3.get_config("/data").reference
  assert ref.psnr_rgb.to_dict() == {
      "denoise_15": {"CBSD68": 33.98}, "denoise_25": {"CBSD68": 31.31},
      "denoise_50": {"CBSD68": 28.06}, "derain": {"Rain100L": 36.37}, "dehaze": {"SOTS": 30.58}}
  assert allinone3.PUBLISHED["PromptIR"]["derain"] == 36.37
  assert not study3.get_config().reference.label  # synthetic photographs: no published row


def test_ipt_paper_study_requires_real_streaks_for_rain100l():
  from experiments.studies import ipt_paper
  assert ipt_paper.get_config("/data").reference.requires.to_dict() == {
      "derain": "degrade.rain.streak_dir"}


def test_pairwise_transfer_says_the_steps_it_compares(tmp_path):
  # pair runs of 4 steps against scratch runs of 6: the transfer is at unequal steps, said
  study = micro_config(regimes=("scratch", "joint", "pairs"))
  study.steps.scratch, study.steps.joint = 6, 4
  s = study_lib.Study(study, str(tmp_path))
  transfer = {"denoise_30~derain": scores.paired({0: 0.0, 1: 0.0}, {0: 0.3, 1: 0.5})}
  notes = tables.conflict_table(s, [], transfer).notes
  assert ("Pairwise transfer's runs: Budget 'steps': every regime runs the steps set for it "
          "(scratch 6, joint 4, pairs 4); nothing equalized.") in notes
  assert not any(n.startswith("Pairwise transfer's") for n in tables.conflict_table(s, [], {})
                 .notes)


def micro_config(**fields):
  """A study config on the tiny run (no workdir): tasks denoise_30 and derain, one lr."""
  from mtl import run_defaults
  study = study_lib.defaults()
  study.tasks = TASKS
  study.lrs = (1e-3,)
  study.run = run_defaults.get_config("tiny")
  study.run.eval.sets = "photos,photos_val"
  for key, value in fields.items():
    study[key] = value
  return study


def test_spearman_between_conflict_and_pairwise_transfer(tmp_path):
  from scipy import stats as sps
  study = study_lib.defaults()
  study.tasks = ("denoise_30", "sr_x2", "derain")
  study.regimes = ("joint", "pairs")
  study.steps.joint = 4
  study.lrs = (1e-3,)
  from mtl import run_defaults
  study.run = run_defaults.get_config("tiny")
  study.run.eval.sets = "photos,photos_val"
  s = study_lib.Study(study, str(tmp_path))
  cos = {"denoise_30~sr_x2": 0.3, "denoise_30~derain": -0.1, "sr_x2~derain": 0.05}
  gains = {"denoise_30~sr_x2": [0.3, 0.5], "denoise_30~derain": [-0.1, -0.3],
           "sr_x2~derain": [0.4, 0.6]}
  transfer = {p: scores.paired({0: 0.0, 1: 0.0}, {0: g[0], 1: g[1]}) for p, g in gains.items()}
  summaries = [("joint", seed, JOINT, {"pair": {p: {"mean_cos": c + shift,
                                                     "conflict_fraction": 0.5}
                                                 for p, c in cos.items()}})
               for seed, shift in ((0, 0.0), (1, 0.2))]  # the seeds' ranks agree
  table = tables.conflict_table(s, summaries, transfer)
  # the seeds' spread: a sample SD (0.3 and 0.5)
  assert table.records[0]["mean_cos_std"] == pytest.approx(np.std([0.3, 0.5], ddof=1))
  rho = sps.spearmanr(list(cos.values()), [np.mean(gains[p]) for p in cos]).statistic
  # 3 pairs: every one of the 3! pairings reaches |rho| = 0.5, so the exact p is 1
  assert table.spearman.rho == pytest.approx(rho) == 0.5 and table.spearman.n == 3
  assert table.spearman.p == 1.0 and table.spearman.method == "exact permutation"
  note = next(n for n in table.notes if n.startswith("Spearman"))
  assert "rho = +0.500, p = 1.000 (exact permutation" in note and "0.333" in note
  assert "p = 0.0 " not in note and "p = 0.000" not in note
  assert table.records[0]["pairwise_transfer_db"] == pytest.approx(0.4)
  assert table.records[0]["pairwise_transfer_low"] == pytest.approx(transfer[
      "denoise_30~sr_x2"].low)


def test_deltas_between_arms_of_unequal_budgets_get_no_verdict(tmp_path):
  # Budget 'equal_images' matches scratch (8 steps) to joint (4) + fine-tune (4), not to the
  # joint run alone: joint trained each task on 16 images, scratch on 32; a fine-tune 16 + 16.
  s = synthetic_study(str(tmp_path / "study"), budget="equal_images",
                      steps={"scratch": 0, "joint": 4, "finetune": 4, "pairs": 0, "groups": 0})
  for spec in s.runs:
    files.write_json(s.path(spec.name, run_folder.COMPUTE_FILE), {
        "steps": spec.steps, "images_seen": 4 * spec.steps * len(spec.tasks),
        "train_flops": 1e9 * spec.steps * len(spec.tasks)})
  s = study_lib.Study.load(s.workdir)
  scratch, joint, finetune = (scores.regime_scores(s, col, "sr_x2")
                              for col in ("scratch", "joint", "finetune"))
  assert (scratch.budgets, joint.budgets, finetune.budgets) == ([32.0] * 3, [16.0] * 3,
                                                                [32.0] * 3)
  assert scores.unequal_budgets(scratch, joint, ("scratch", "joint")) == (
      "scratch trained sr_x2 on 32 images, joint on 16")
  assert scores.unequal_budgets(scratch, finetune) == ""
  main = {(r["task"], r["regime"]): r for r in tables.main_table(s).records
          if r["test_set"] == "photos"}
  transfer = tables.transfer_table(s)
  for task in SCRATCH:
    assert main[task, "joint"]["verdict_psnr"] == scores.UNLIKE[2]
    iv = stats.paired_interval(SCRATCH[task], [_psnr("finetune", task, k) for k in range(3)])
    assert main[task, "finetune"]["verdict_psnr"] == stats.verdict(iv)
  assert any(n.startswith(tables.UNEQUAL_NOTE) and "sr_x2 joint: scratch trained sr_x2 on 32 "
             "images, joint on 16." in n for n in transfer.notes)
  # budget 'steps' equalizes nothing, and says so: its Δs keep their verdicts
  plain = study_lib.Study(dict(s.config, budget="steps", steps=dict(s.config["steps"],
                                                                    scratch=8)), s.workdir)
  assert scores.regime_scores(plain, "joint", "sr_x2").budgets == []
