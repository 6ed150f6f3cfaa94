"""Remedies and predictors tables from a synthetic study workdir (hand-written runs, no training)."""
import json
import os
import re
import shutil

import numpy as np
import pytest

from mtl import run_defaults
from mtl import conflicts, files, stats
from mtl import study as study_lib
from mtl.conflicts import affinity
from mtl.report import figures, findings, remedies, tables

TASKS = ("denoise_30", "sr_x2", "derain")
SEEDS = (0, 1, 2)
SCRATCH = {"denoise_30": 30.0, "sr_x2": 28.0, "derain": 25.0}
# per method: per-task offsets vs scratch and a per-seed wobble, so intervals are non-trivial
OFFSET = {"joint": {"denoise_30": 0.5, "sr_x2": -0.2, "derain": 0.1},
          "joint:pcgrad": {"denoise_30": 0.8, "sr_x2": 0.3, "derain": -0.6},
          "joint:uncertainty": {"denoise_30": 0.0, "sr_x2": 0.05, "derain": 0.2}}
PAIR_GAIN = {"denoise_30~sr_x2": 0.4, "denoise_30~derain": -0.3, "sr_x2~derain": 0.1}


def _psnr(column, task, seed):
  base_v = SCRATCH[task] + 0.1 * np.sin(seed + len(task))
  if column == "scratch":
    return base_v
  if column.startswith("pair:"):
    a, b = column[5:].split("+")
    return base_v + PAIR_GAIN[f"{a}~{b}"] + 0.05 * seed
  # the last term differs by column: paired Δs spread over seeds (a constant Δ has no interval)
  return (base_v + OFFSET[column][task] + 0.07 * np.cos(3 * seed + len(task)) * (seed - 1)
          + 0.02 * np.sin(seed + len(column)))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  cfg = study_lib.defaults()
  cfg.tasks = TASKS
  cfg.regimes = ("scratch", "joint", "joint:pcgrad", "joint:uncertainty", "pairs")
  cfg.seeds = SEEDS
  cfg.steps.scratch = cfg.steps.joint = 4
  cfg.lrs = (1e-3,)
  cfg.run = run_defaults.get_config("tiny")
  cfg.run.eval.sets = "photos,photos_val"
  cfg.test = ("photos",)
  s = study_lib.Study(cfg, str(tmp_path_factory.mktemp("remedies")))
  rng = np.random.default_rng(0)
  for spec in s.runs:
    d = s.run_dir(spec.name)
    os.makedirs(d)
    files.write_json(os.path.join(d, "run_config.json"), study_lib.run_config(s.config, spec))
    res = {t: {"photos": {"psnr_y": _psnr(spec.column, t, spec.seed), "ssim_y": 0.8,
                          "psnr_rgb": _psnr(spec.column, t, spec.seed) ** 2 / 30},
               "photos_val": {"psnr_y": 20.0, "ssim_y": 0.7, "psnr_rgb": 19.0}} for t in spec.tasks}
    files.write_json(os.path.join(d, "results.json"), {"step": 4, "tasks": res})
    files.write_json(os.path.join(d, "DONE"), {})
    if spec.column == "joint":  # half-split Gramians (as the probe stores) and TAG affinity
      shared = np.repeat(rng.normal(size=(5, 2, 3, 16)), 2, axis=2)  # each task's mean, 2 halves
      j = rng.normal(size=(5, 2, 6, 16)) + 2.0 * shared
      j[..., 4:, :] -= j[..., :2, :]  # derain's halves against denoise's
      grams = np.einsum("slti,slui->sltu", j, j).astype(np.float32)
      conflicts.append(d, np.arange(5), grams, ["encoder/0/w", "decoder/0/w"], list(TASKS))
      z = np.array([[0.1, 0.05, -0.04], [0.03, 0.2, 0.01], [-0.05, 0.0, 0.1]])
      affinity.append(d, np.arange(5), np.tile(z, (5, 1, 1)) + 0.01 * rng.normal(size=(5, 3, 3)),
                      list(TASKS))
  return s


def test_method_regimes_expand_like_joint(study):
  names = [r.name for r in study.runs if r.seed == 0]
  assert "joint-pcgrad-lr1e-3-s0" in names and "joint-uncertainty-lr1e-3-s0" in names
  cfg = json.load(open(study.path("joint-pcgrad-lr1e-3-s0", "run_config.json")))
  assert cfg["mtl"]["aggregator"] == "pcgrad" and cfg["regime"] == "joint"
  assert cfg["total_steps"] == 4 and cfg["optim"]["lr"] == 1e-3
  cfg = json.load(open(study.path("joint-uncertainty-lr1e-3-s0", "run_config.json")))
  assert cfg["mtl"]["loss_weighting"] == "uncertainty" and cfg["mtl"]["aggregator"] == "sum"
  bad = study_lib.defaults()
  bad.update(dict(study.config, regimes=("joint", "joint:nope")))
  with pytest.raises(ValueError, match="joint:nope"):
    study_lib.validate(bad)


def test_remedies_cells_are_paired_intervals(study):
  table = remedies.remedies_table(study)
  cells = {(r["method"], r["task"]): r for r in table.records}
  assert {m for m, _ in cells} == {"joint", "joint:pcgrad", "joint:uncertainty"}
  for method in OFFSET:
    for task in TASKS:
      a = [_psnr("scratch", task, k) for k in SEEDS]
      b = [_psnr(method, task, k) for k in SEEDS]
      iv = stats.paired_interval(a, b)
      c = cells[(method, task)]
      assert (c["delta"], c["delta_low"], c["delta_high"], c["p"]) == pytest.approx(
          (iv.estimate, iv.low, iv.high, iv.p))
      assert c["verdict"] == stats.verdict(iv)
      assert c["psnr"] == pytest.approx(np.mean(b)) and c["metric"] == "psnr_y"
    dm = cells[(method, "Δm%")]
    per_seed = [float(stats.delta_m([_psnr(method, t, k) for t in TASKS],
                                    [_psnr("scratch", t, k) for t in TASKS], [False] * 3))
                for k in SEEDS]
    div = stats.paired_interval(np.zeros(3), per_seed)
    # the estimate is its interval's centre: the mean of the per-seed Δm%
    assert (dm["delta"], dm["delta_low"], dm["delta_high"], dm["p"]) == pytest.approx(
        (np.mean(per_seed), div.low, div.high, div.p), rel=1e-12)
  # pcgrad's derain offset (-0.6 dB) is far outside its seed wobble: a detected loss
  assert cells[("joint:pcgrad", "derain")]["verdict"] == "loss"
  # one lr (1e-3) for every regime: the note says that nothing was tuned
  assert ("Every arm had one lr: none was tuned (a grid of 2 or more lrs would tune them)."
          in table.notes)



def test_a_remedy_that_diverged_on_a_seed_or_is_not_fully_swept_gets_no_verdict(study, tmp_path):
  # PCGrad diverged (its one lr) on seed 1: its Δs leave out a seed it lost outright: no verdict.
  workdir = str(tmp_path / "study")
  shutil.copytree(study.workdir, workdir)
  run = os.path.join(workdir, "runs", "joint-pcgrad-lr1e-3-s1")
  os.remove(os.path.join(run, "results.json"))
  files.write_json(os.path.join(run, "DONE"), {"diverged": "loss went non-finite at step 2"})
  diverged = study_lib.Study(study.config, workdir)
  table = remedies.remedies_table(diverged)
  cells = {(r["method"], r["task"]): r for r in table.records}
  for task in TASKS:
    c = cells[("joint:pcgrad", task)]
    iv = stats.paired_interval([_psnr("scratch", task, k) for k in (0, 2)],
                               [_psnr("joint:pcgrad", task, k) for k in (0, 2)])
    assert c["delta"] == pytest.approx(iv.estimate, rel=1e-12) and c["n_seeds"] == 2
    assert c["verdict"] == c["verdict_joint"] == "no verdict: a seed left out"
    assert cells[("joint", task)]["verdict"] == stats.verdict(stats.paired_interval(
        [_psnr("scratch", task, k) for k in SEEDS], [_psnr("joint", task, k) for k in SEEDS]))
  assert cells[("joint:pcgrad", "Δm%")]["n_seeds"] == 2
  why = ("every lr of joint-pcgrad-lr*-s1 diverged: seed 1 left out of the Δ, where the other "
         "arm trained.")
  notes = " ".join(table.notes)
  assert f"joint:pcgrad vs scratch on derain: {why}" in notes
  assert f"joint:pcgrad vs joint on derain: {why}" in notes
  # the findings' question 4 likewise: no verdict, and those Δs not counted in its family
  answers = findings.remedy_answers(diverged)
  assert [a.verdict for a in answers[:3]] == [f"{findings.NO_VERDICT}: {why[:-1]}; give the "
                                              "study lower lrs"] * 3
  assert [a.family for a in answers] == [3] * 6
  # The joint grid (the methods' too) given a second lr not run yet: their sweeps are not
  # complete, scratch's are; the methods are not tuned as scratch is yet.
  config = json.loads(json.dumps(study.config))
  config["lrs_override"]["joint"] = [1e-3, 3e-3]
  table = remedies.remedies_table(study_lib.Study(config, study.workdir))
  verdicts = {r["verdict"] for r in table.records if r["task"] != "Δm%"}
  assert verdicts == {"not yet: lr sweeps incomplete"}
  assert "a paired seed's lr sweep not complete" in " ".join(table.notes)


def test_remedies_read_the_study_metric(study):
  rgb = study_lib.Study(dict(study.config, metric="psnr_rgb"), study.workdir)
  table = remedies.remedies_table(rgb)
  cells = {(r["method"], r["task"]): r for r in table.records}
  a = [_psnr("scratch", "derain", k) ** 2 / 30 for k in SEEDS]
  b = [_psnr("joint:pcgrad", "derain", k) ** 2 / 30 for k in SEEDS]
  c = cells[("joint:pcgrad", "derain")]
  assert (c["metric"], c["psnr"]) == ("psnr_rgb", pytest.approx(np.mean(b)))
  assert c["delta"] == pytest.approx(stats.paired_interval(a, b).estimate)
  assert table.header[3] == "RGB-PSNR"

def test_each_method_is_compared_with_plain_joint_paired_by_seed(study):
  # the question the study asks: does a remedy beat plain summed joint training?
  table = remedies.remedies_table(study)
  assert "Δ vs joint [95% CI]" in table.header
  cells = {(r["method"], r["task"]): r for r in table.records}
  for task in TASKS:
    a = [_psnr("joint", task, k) for k in SEEDS]
    b = [_psnr("joint:pcgrad", task, k) for k in SEEDS]
    iv = stats.paired_interval(a, b)
    c = cells[("joint:pcgrad", task)]
    assert (c["delta_joint"], c["delta_joint_low"], c["delta_joint_high"], c["p_joint"]) == (
        pytest.approx((iv.estimate, iv.low, iv.high, iv.p)))
    assert c["verdict_joint"] == stats.verdict(iv)
    assert cells[("joint", task)]["delta_joint"] is None  # joint against itself: no row
  # pcgrad's derain: -0.6 dB vs scratch, joint's +0.1: a detected loss against joint too
  assert cells[("joint:pcgrad", "derain")]["verdict_joint"] == "loss"


def test_the_findings_answer_question_4_from_the_remedies_table(study):
  # the findings' sentence per method and task: the table's Δ vs joint, its verdicts held over
  # the 6 Δs (Holm), what they compare and the methods' arguments beside them
  found = findings.build(study, tables.transfer_table(study), [])
  cells = {(r["method"], r["task"]): r for r in remedies.remedies_table(study).records}
  answers = found.answers[4]
  assert [(a.source, a.subject) for a in answers] == [
      (m, t) for m in ("joint:pcgrad", "joint:uncertainty") for t in TASKS]
  holm = stats.holm([cells[a.source, a.subject]["p_joint"] for a in answers])
  for a, p_holm in zip(answers, holm):
    c = cells[a.source, a.subject]
    assert (a.interval.estimate, a.interval.low, a.interval.high, a.interval.p) == pytest.approx(
        (c["delta_joint"], c["delta_joint_low"], c["delta_joint_high"], c["p_joint"]), rel=1e-12)
    assert a.family == 6 and p_holm < 0.05  # these offsets are far outside the seeds' wobble
    assert a.verdict == {"gain": findings.REMEDY_VERDICTS[0],
                         "loss": findings.REMEDY_VERDICTS[1]}[c["verdict_joint"]]
  derain = answers[2]
  assert derain.sentence == (
      f"derain (joint:pcgrad − plain joint, Y-PSNR on photos): Δ {derain.interval.text(2)} dB, "
      "p < 0.001 (Holm < 0.001 over 6), 3 paired seeds — no: plain joint does better.")
  assert found.notes[4].startswith("Compared at: Budget 'steps'") and found.notes[4].endswith(
      " The 6 Δs compared alike each have their own 95% interval; a yes or no holds over all of "
      "them (Holm 1979: were nothing different, the chance that any verdict is wrong is at most "
      "5%), so a Δ whose interval just excludes 0 may still be not enough evidence. "
      + remedies.arguments_note(study))
  labels = [t.get_text() for t in figures.delta_figure(answers).axes[0].get_yticklabels()]
  assert labels[-1] == "denoise_30 on photos: joint:pcgrad − joint"  # bottom up: the first on top
  assert f"**4. {findings.QUESTIONS[3]}**" in findings.markdown(found)


def test_predictors_table(study):
  table = remedies.predictors_table(study)
  rec = {r["pair"]: r for r in table.records}
  for pair, gain in PAIR_GAIN.items():  # transfer: mean over both tasks of pair - scratch
    assert rec[pair]["transfer"] == pytest.approx(gain + 0.05 * np.mean(SEEDS))
  # the corrected cosine of the stored halves, seed mean (the bug this guards: it read "n/a")
  want = np.mean([conflicts.load(study.run_dir(f"joint-lr1e-3-s{k}")).corrected_cosines()[0]
                  for k in SEEDS], 0)
  assert rec["denoise_30~derain"]["corrected cosine"] == pytest.approx(want[0, 2])
  assert rec["denoise_30~derain"]["corrected cosine"] < 0  # derain built against denoise
  # TAG affinity, symmetrised, from the store
  steps, z, _ = affinity.load(study.run_dir("joint-lr1e-3-s0"))
  zs = np.mean([affinity.load(study.run_dir(f"joint-lr1e-3-s{k}"))[1].mean(0) for k in SEEDS], 0)
  assert rec["denoise_30~derain"]["TAG affinity"] == pytest.approx((zs[0, 2] + zs[2, 0]) / 2)
  sp = table.spearman_by_predictor["TAG affinity"]
  x = [rec[p]["TAG affinity"] for p in PAIR_GAIN]
  y = [rec[p]["transfer"] for p in PAIR_GAIN]
  want = stats.spearman(x, y)
  assert (sp.rho, sp.p) == pytest.approx((want.rho, want.p))
  assert any(n.startswith("measured transfer supports denoise_30, sr_x2 | derain (3 of the 3 ")
             for n in table.notes), table.notes
  assert any("its point values would group" in n and n.endswith("(untested).")
             for n in table.notes)
  # transfer within its noise: no grouping (it proposed one from the point values alone)
  noise = [stats.Interval(e, e - 0.5, e + 0.5, 0.95, 3, 0.6) for e in (0.2, -0.1, 0.05)]
  measured = np.array([[np.nan, 0.2, -0.1], [0.2, np.nan, 0.05], [-0.1, 0.05, np.nan]])
  assert remedies.transfer_grouping(list(TASKS), measured, noise) == (
      "measured transfer supports no grouping: no pair's transfer holds over the 3 pairs (Holm).")
  # two pairs beyond noise each (p 0.03, 0.04), neither over the 3 pairs (Holm: 0.09, 0.08)
  alone = [iv._replace(p=p) for iv, p in zip(noise, (0.03, 0.04, 0.5))]
  assert remedies.transfer_grouping(list(TASKS), measured, alone).startswith(
      "measured transfer supports no grouping")
  print("\n".join(" | ".join(map(str, r)) for r in [table.header] + table.rows))
  print("\n".join(table.notes))
  print("\n".join(" | ".join(map(str, r)) for r in [remedies.remedies_table(study).header] +
                  remedies.remedies_table(study).rows))


def test_a_delta_m_whose_seeds_do_not_spread_says_so_not_nan(tmp_path):
  cfg = study_lib.defaults()
  cfg.tasks = ("denoise_30", "sr_x2")
  cfg.regimes = ("scratch", "joint")
  cfg.seeds, cfg.lrs = (0, 1, 2), (1e-3,)
  cfg.steps.scratch = cfg.steps.joint = 4
  cfg.run = run_defaults.get_config("tiny")
  cfg.run.eval.sets, cfg.test = "photos,photos_val", ("photos",)
  st = study_lib.Study(cfg, str(tmp_path / "s"))
  for spec in st.runs:  # joint 0.5 dB above scratch on every seed: one Δm% for all seeds
    d = st.run_dir(spec.name)
    os.makedirs(d)
    files.write_json(os.path.join(d, "run_config.json"), study_lib.run_config(st.config, spec))
    value = 32.0 + (0.0 if spec.column == "scratch" else 0.5)
    files.write_json(os.path.join(d, "results.json"), {"step": 4, "tasks": {
        t: {"photos": {"psnr_y": value, "ssim_y": 0.8, "psnr_rgb": value - 2},
            "photos_val": {"psnr_y": 20.0, "ssim_y": 0.7, "psnr_rgb": 19.0}}
        for t in spec.tasks}})
    files.write_json(os.path.join(d, "DONE"), {})
  rows = remedies.remedies_table(st).rows
  assert {r[-1] for r in rows if r[0] == "joint"} == {"+1.56 (no spread between seeds)"}, rows


def test_a_method_s_own_arguments_reach_its_runs_only_and_are_checked_first(tmp_path):
  cfg = study_lib.defaults()
  cfg.tasks, cfg.regimes, cfg.seeds = TASKS, ("scratch", "joint", "joint:cagrad"), (0,)
  cfg.steps.scratch = cfg.steps.joint = 4
  cfg.lrs = (1e-3,)
  cfg.run = run_defaults.get_config("tiny")
  cfg.run.eval.sets = "photos,photos_val"
  cfg.per_regime["joint:cagrad"] = {"mtl": {"aggregator_args": {"c": 0.4}}}
  s = study_lib.Study(cfg, str(tmp_path / "s"))
  mtl = {r.regime: study_lib.run_config(s.config, r)["mtl"] for r in s.runs}
  assert mtl["joint:cagrad"]["aggregator_args"] == {"per_leaf": False, "c": 0.4}
  assert mtl["joint"]["aggregator_args"] == {"per_leaf": False}  # plain joint: untouched
  assert remedies.remedies_table(s).notes[-1].startswith("Method arguments: joint:cagrad c=0.4; ")
  for partial, message in (
      ({"mtl": {"aggregator_args": {"c": -1.0}}}, "regime joint:cagrad: cagrad c=-1.0"),
      ({"mtl": {"aggregator_args": {"cc": 1.0}}}, "unexpected keyword argument 'cc'"),
      ({"optim": {"lr": 1.0}}, "may set only the method's arguments")):  # else an unfair tuning
    cfg.per_regime["joint:cagrad"] = partial
    with pytest.raises(ValueError, match=re.escape(message)):
      study_lib.Study(cfg, str(tmp_path / "s"))
  # a loss weighting for every joint run would reach the aggregators' runs too: refused first
  cfg.per_regime["joint:cagrad"], cfg.per_regime["joint"] = {}, {"mtl": {"loss_weighting": "dwa"}}
  with pytest.raises(ValueError, match=re.escape("regime joint:cagrad: mtl.aggregator='cagrad' "
                                                 "with mtl.loss_weighting='dwa'")):
    study_lib.Study(cfg, str(tmp_path / "s"))
