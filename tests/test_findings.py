"""The findings page (mtl.report.findings, mtl.report.figures) on study directories whose
results and conflict stores are written by the real writers with known values: each answer's
interval is the tables' own, its verdict follows the interval, and a question the study cannot
answer says so. The real micro study's findings are checked in test_report.py."""
import csv
import dataclasses
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import image

from mtl import conflicts, files, gramians, run_defaults, run_folder, stats
from mtl.report import accounting, cells, document, figures, findings, scores, tables
from mtl import study as study_lib
from test_conflicts import known_halves
from test_report import DIFF, SCRATCH, _psnr, synthetic_study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Per phase (thirds of 90 probes), the expected-gradient cosines of (denoise_30~sr_x2,
# denoise_30~derain, sr_x2~derain): a clear conflict throughout, an agreement that fades to
# orthogonal after the first third, a steady agreement.
PHASE_COS = [(-0.3, 0.5, 0.2), (-0.3, 0.0, 0.2), (-0.3, 0.0, 0.2)]


def write_conflicts(study, phase_cos=PHASE_COS, seed=0):
  """A conflict store in every joint run, written by the store's writer: 90 probe steps of
  phase_cos, noise drawn per seed (from `seed` on)."""
  for spec in study.runs:
    if spec.regime == "joint":
      grams = np.concatenate([known_halves(30, cos, noise=4.0, seed=seed + 10 * spec.seed + k)
                              for k, cos in enumerate(phase_cos)])
      conflicts.append(study.run_dir(spec.name), np.arange(0, 900, 10), grams, ["pos_embed"],
                       list(study.tasks))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  s = synthetic_study(str(tmp_path_factory.mktemp("findings") / "study"))
  write_conflicts(s)
  return s


@pytest.fixture(scope="module")
def found(study):
  return findings.build(study, tables.transfer_table(study), scores.conflict_records(study))


def test_conflict_answer_is_the_last_phase_combined_over_seeds(study, found):
  records = scores.conflict_records(study)
  assert [(col, seed) for col, seed, _, _ in records] == [("joint", k) for k in range(3)]
  answers = {a.subject: a for a in found.answers[1]}
  assert list(answers) == ["denoise_30~sr_x2", "denoise_30~derain", "sr_x2~derain"]
  for pair, a in answers.items():
    per_run = [conflicts.phase_verdicts(r)["phases"][-1]["pair"][pair]["corrected_cos"]
               for *_, r in records]
    expected = stats.mean_of_runs([stats.Interval(d["estimate"], d["low"], d["high"],
                                                  d["level"], d["n"]) for d in per_run])
    assert a.interval[:5] == pytest.approx(expected[:5], rel=1e-12)
    assert [ph["label"] for ph in a.phases] == ["early", "middle", "late"]
    assert a.sentence.startswith(f"{pair} (joint, 3 seeds): corrected cosine "
                                 f"{expected.text(3)} in the late phase (the last third of "
                                 "training, steps 600-890)")
  # the headline phase is the conflict table's: one window, one combination over seeds
  table = {r["pair"]: r for r in tables.conflict_table(study).records}
  for pair, a in answers.items():
    assert (table[pair]["corrected_cos_low"], table[pair]["corrected_cos_high"]) == \
        pytest.approx((a.interval.low, a.interval.high), rel=1e-12)


def test_the_table_and_question_1_read_one_window_when_a_seed_holds_fewer_probes(tmp_path):
  # Seed 2 holds 18 probes (two phases; a store chunk lost, say), the others 90: the column
  # splits in two, and the table's headline is that second half too (it took each seed's own
  # last third, and printed another interval than the findings for the same headline).
  s = synthetic_study(str(tmp_path / "s"))
  for spec in s.runs:
    if spec.regime == "joint":
      steps = 90 if spec.seed < 2 else 18
      grams = np.concatenate([known_halves(steps // 3, c, noise=4.0, seed=10 * spec.seed + k)
                              for k, c in enumerate([(-0.3, 0.5, 0.2), (-0.3, 0.0, 0.2),
                                                     (-0.3, 0.0, 0.2)])])
      conflicts.append(s.run_dir(spec.name), np.arange(0, 10 * steps, 10), grams, ["pos_embed"],
                       list(s.tasks))
  records = scores.conflict_records(s)
  assert [r.num_steps for *_, r in records] == [90, 90, 18]
  answers = {a.subject: a for a in findings.build(s, tables.transfer_table(s), records).answers[1]}
  table = {r["pair"]: r for r in tables.conflict_table(s).records}
  for pair, a in answers.items():
    assert [ph["label"] for ph in a.phases] == ["first half", "second half"]
    assert (table[pair]["corrected_cos_low"], table[pair]["corrected_cos_high"]) == \
        pytest.approx((a.interval.low, a.interval.high), rel=1e-12)


def test_a_final_measurement_is_the_headline_with_the_phases_beside_it(tmp_path):
  # Each seed's chosen joint run measured at its last step on fresh batches (less noise than
  # the training probes): the answer is those runs' intervals combined over seeds.
  s = synthetic_study(str(tmp_path / "study"))
  write_conflicts(s)
  for _, seed, chosen in s.pretraining_choices():
    grams = known_halves(20, (-0.3, 0.0, 0.1), noise=1.0, seed=100 + seed)
    conflicts.append(run_folder.analysis_dir(s.run_dir(chosen.run.name), 4),
                     10**7 + np.arange(20), grams, ["pos_embed"], list(s.tasks),
                     {"size": 128, "fresh": True})
  final = scores.final_conflict_records(s)
  assert [(col, seed, name, [step for step, _ in m]) for col, seed, name, m in final] == [
      ("joint", k, f"joint-lr1e-3-s{k}", [4]) for k in range(3)]  # the lr chosen on validation
  found = findings.build(s, tables.transfer_table(s), scores.conflict_records(s), final)
  answers = {a.subject: a for a in found.answers[1]}
  for pair, a in answers.items():
    per_run = [conflicts.phase_verdicts(r, 1)["phases"][0]["pair"][pair]["corrected_cos"]
               for *_, [(_, r)] in final]
    expected = stats.mean_of_runs([stats.Interval(d["estimate"], d["low"], d["high"],
                                                  d["level"], d["n"]) for d in per_run])
    assert a.interval[:5] == pytest.approx(expected[:5], rel=1e-12)
    assert [ph["label"] for ph in a.phases] == ["early", "middle", "late", "end"]
    late = a.phases[2]["interval"]
    assert a.interval.high - a.interval.low < late.high - late.low
    assert f"corrected cosine {expected.text(3)} at the end of training (each seed's last " \
        "checkpoint, step 4, 20 fresh batches of 128/task)" in a.sentence
    assert f"; during training: early {a.phases[0]['interval'].text(3)}, middle" in a.sentence
  assert answers["denoise_30~sr_x2"].verdict == "yes: conflict beyond noise"
  assert answers["sr_x2~derain"].verdict == "no: agreement beyond noise"
  assert "'end': each seed's chosen run measured at its last checkpoint" in found.probe_note


def test_a_seeds_end_is_the_mean_of_its_last_checkpoints(tmp_path):
  # final_conflicts.checkpoints=2: each seed's two last saved steps measured on batches of their
  # own; a seed's figure is their mean (the noise of both), the answer those means over seeds.
  s = _two_checkpoint_study(str(tmp_path / "study"))
  assert [d for _, d in s.final_conflicts_dirs("joint-lr1e-3-s0")] == [
      run_folder.analysis_dir(s.run_dir("joint-lr1e-3-s0"), step) for step in (2, 4)]
  # A stop's extra checkpoint (SIGTERM at step 3) is off the schedule: the same steps measured.
  os.makedirs(conflicts.store_dir(run_folder.analysis_dir(s.run_dir("joint-lr1e-3-s0"), 3)))
  assert [step for step, _ in s.final_conflicts_dirs("joint-lr1e-3-s0")] == [2, 4]
  assert s.final_conflicts_pending() == []
  records = scores.final_conflict_records(s)
  found = findings.build(s, tables.transfer_table(s), [], records)
  answers = {a.subject: a for a in found.answers[1]}
  for pair, a in answers.items():
    per_run = [stats.mean_of_estimates([
        _interval(conflicts.phase_verdicts(r, 1)["phases"][0]["pair"][pair]["corrected_cos"])
        for _, r in measured]) for *_, measured in records]
    assert a.interval[:5] == pytest.approx(stats.mean_of_runs(per_run)[:5], rel=1e-12)
    assert ("at the end of training (the mean of each seed's last 2 checkpoints, steps 2 to 4, "
            "each on 20 fresh batches of 128/task)") in a.sentence
  # the true means: -0.3, 0.0, +0.1
  assert answers["denoise_30~sr_x2"].verdict == "yes: conflict beyond noise"
  assert answers["denoise_30~derain"].verdict == findings.NOT_ENOUGH
  assert ("'end': each seed's chosen run measured at its last 2 checkpoints, each on fresh "
          "batches of its own of 128 per task (20 batches; ") in found.probe_note
  assert "a seed's figure is their mean" in found.probe_note
  # the checkpoints at steps 2 and 4 saved, step 4's not measured yet on any seed: the sentence
  # says which it read, not "last"
  for _, _, chosen in s.pretraining_choices():
    shutil.rmtree(run_folder.analysis_dir(s.run_dir(chosen.run.name), 4))
    for step in (2, 4):
      os.makedirs(os.path.join(s.run_dir(chosen.run.name), "checkpoints", str(step)))
  assert len(s.final_conflicts_pending()) == 3
  found = findings.build(s, tables.transfer_table(s), [], scores.final_conflict_records(s))
  assert ("at the end of training (each seed's checkpoint at step 2, its later ones not measured "
          "yet, 20 fresh batches of 128/task)") in found.answers[1][0].sentence


def _interval(d):
  return stats.Interval(d["estimate"], d["low"], d["high"], d["level"], d["n"])


def _two_checkpoint_study(path, noise_only=(), batches=20):
  """A synthetic study whose joint runs' last two checkpoints (steps 2, 4) were measured on 20
  fresh batches each; at the (seed, step)s in `noise_only`, denoise_30's two half-batch
  gradients point apart on average (its same-task product < 0: not measurable there)."""
  run = run_defaults.get_config("tiny")
  run.eval.sets, run.checkpoint_every = "photos,photos_val", 2
  final = study_lib.defaults().final_conflicts
  final.batch_size, final.halfwidth, final.max_batches, final.checkpoints = 128, 0.0, 20, 2
  s = synthetic_study(path, run=run, final_conflicts=final)
  for _, seed, chosen in s.pretraining_choices():
    for step, cos in ((2, (-0.5, 0.2, 0.1)), (4, (-0.1, -0.2, 0.1))):
      grams = known_halves(batches, cos, noise=1.0, seed=100 * step + seed)
      if (seed, step) in noise_only:
        grams[:, :, 0, 1] = grams[:, :, 1, 0] = -np.abs(grams[:, :, 0, 1])  # denoise_30 a.b < 0
      conflicts.append(run_folder.analysis_dir(s.run_dir(chosen.run.name), step),
                       10**7 + np.arange(batches), grams, ["pos_embed"], list(s.tasks),
                       {"size": 128, "fresh": True})
  return s


def test_an_answer_without_an_interval_says_why(tmp_path):
  # 2 fresh batches per checkpoint: no seed's figure has an interval, whatever the seeds.
  s = _two_checkpoint_study(str(tmp_path / "study"), batches=2)
  found = findings.build(s, tables.transfer_table(s), [], scores.final_conflict_records(s))
  pair = {a.subject: a for a in found.answers[1]}["denoise_30~sr_x2"]
  assert not math.isfinite(pair.interval.low)
  assert ("(no interval: a seed's own figure has none (too few probes or fresh batches to "
          "estimate its noise))") in pair.sentence and "seeds: no interval" not in pair.sentence
  # nor has any module's: the line on where in the body says so, not 'nowhere'
  assert found.notes[1].endswith("held over all 3 (module, pair) cells (Holm)): no cell has an "
                                 "interval (stores without halves, too few probes or fresh "
                                 "batches, or every one not measurable).")


def test_a_measurement_not_made_yet_heads_the_report(tmp_path):
  s = _two_checkpoint_study(str(tmp_path / "study"))
  name = s.pretraining_choices()[1][2].run.name
  for step in (2, 4):  # the run's saved steps, by their folders' names (checkpoints.saved_steps)
    os.makedirs(os.path.join(s.run_dir(name), "checkpoints", str(step)))
  shutil.rmtree(run_folder.analysis_dir(s.run_dir(name), 4))
  assert s.final_conflicts_pending() == [(name, 4, run_folder.analysis_dir(s.run_dir(name), 4))]
  path, summary = document.write_with_summary(s.workdir)
  line = (f"The end-of-training conflicts (final_conflicts) of 1 checkpoint(s) are not measured "
          f"yet ({name} step 4): question 1 reads the rest")
  assert line in summary and line in open(path).read()
  # Question 1's end figure is checkable in a table: the same number, and each seed's.
  found = findings.build(s, tables.transfer_table(s), [], scores.final_conflict_records(s))
  answer = {a.subject: a for a in found.answers[1]}["denoise_30~sr_x2"]
  with open(os.path.join(s.workdir, "tables", "end_conflicts.csv")) as f:
    row = next(r for r in csv.DictReader(f) if r["pair"] == "denoise_30~sr_x2")
  assert float(row["corrected_cos"]) == pytest.approx(answer.interval.estimate, rel=1e-12)
  assert float(row["corrected_cos_low"]) == pytest.approx(answer.interval.low, rel=1e-12)
  assert row["steps"] == "2 to 2-4" and int(row["n_seeds"]) == len(answer.phases[-1]["per_run"])


def test_a_checkpoint_or_seed_without_an_estimate_is_left_out_and_counted(tmp_path):
  # Seed 1 has no denoise_30 estimate at either checkpoint, seed 2 none at step 4: the answer
  # combines seed 0's two and seed 2's one, and says so.
  s = _two_checkpoint_study(str(tmp_path / "study"), noise_only={(1, 2), (1, 4), (2, 4)})
  found = findings.build(s, tables.transfer_table(s), [], scores.final_conflict_records(s))
  answers = {a.subject: a for a in found.answers[1]}
  pair = answers["denoise_30~sr_x2"]
  assert pair.sentence.startswith("denoise_30~sr_x2 (joint, 2 of 3 seeds (seed 1: no estimate)):")
  assert "each on 20 fresh batches of 128/task; 3 of 6 measurable)" in pair.sentence
  assert pair.interval.n == 2 and math.isfinite(pair.interval.low)
  seed0, seed2 = [r for r in pair.phases[-1]["per_run"] if math.isfinite(r.estimate)]
  assert seed2.n == 20 and seed0.n == 40  # one checkpoint's batches, two checkpoints'
  assert answers["sr_x2~derain"].sentence.startswith("sr_x2~derain (joint, 3 seeds):")
  assert "measurable" not in answers["sr_x2~derain"].sentence


def test_an_open_answer_set_by_the_seeds_spread_names_the_seeds_it_would_take():
  # Three precise seeds that disagree: the spread sets a t interval over them (k - 1 df), as a
  # paired Δ's is, so the same count applies; a decided answer or a zero estimate names none.
  seeds = [stats.Interval(e, e - 0.005, e + 0.005, 0.95, 20) for e in (0.075, 0.014, -0.014)]
  iv = stats.mean_of_runs(seeds)
  assert iv.note == stats.SEEDS_DIFFER and findings.conflict_verdict(iv) == findings.NOT_ENOUGH
  n = stats.seeds_needed(iv)
  assert n == 28  # the related study's sr_x2~denoise_30 (README, Studies)
  assert findings._plan(iv, findings.NOT_ENOUGH, "seeds", "mean", "; ") == (
      f"; about {n} seeds would detect a mean this size at 80% power")
  assert findings._plan(iv, "yes: conflict beyond noise", "seeds", "mean", "; ") == ""
  # among 3 pairs held together (Holm), open or withheld alike: tested at 5%/3
  n3 = stats.seeds_needed(iv, test_level=1 - 0.05 / 3)
  for verdict in (findings.NOT_ENOUGH, findings.NOT_HELD + " 3 pairs: its own interval ..."):
    assert findings._plan(iv, verdict, "seeds", "mean", "; ", 3) == (
        f"; about {n3} seeds would detect a mean this size at 80% power, tested at 5%/3 (Holm "
        "over 3)") and n3 > n
  assert findings._plan(iv._replace(estimate=0.0), findings.NOT_ENOUGH, "seeds", "mean",
                        "; ") == ""


def test_conflict_verdicts_follow_the_interval(found):
  answers = {a.subject: a for a in found.answers[1]}
  assert answers["denoise_30~sr_x2"].verdict == "yes: conflict beyond noise"
  assert answers["sr_x2~derain"].verdict == "no: agreement beyond noise"
  faded = answers["denoise_30~derain"]
  assert faded.interval.low < 0 < faded.interval.high       # true cosine 0 in the late phase
  assert faded.verdict == findings.NOT_ENOUGH
  assert faded.sentence.endswith(f"— {findings.NOT_ENOUGH}; earlier: early "
                                 f"{faded.phases[0]['interval'].text(3)}, middle "
                                 f"{faded.phases[1]['interval'].text(3)} (the verdict changes "
                                 "between phases).")
  assert faded.phases[0]["interval"].low > 0                 # the early agreement is seen


def test_question_1_waits_for_a_pre_training_sweep_not_complete(tmp_path):
  # the lr validation picks (1e-3) not done on seed 1: the conflict was read from the other lr's
  # run, with a verdict, while the run the study reports may still change
  s = synthetic_study(str(tmp_path / "study"))
  write_conflicts(s)
  for name in ("DONE", "results.json"):
    os.remove(s.path("joint-lr1e-3-s1", name))
  s = study_lib.Study.load(s.workdir)
  assert s.open_pretraining_seeds() == {"joint": [1]}
  found = findings.build(s, tables.transfer_table(s), scores.conflict_records(s))
  said = (f"{findings.NOT_YET}: seed 1 has a pre-training lr sweep not complete, so the run "
          "validation picks may still change")
  assert [a.verdict for a in found.answers[1]] == [said] * 3
  assert [a.family for a in found.answers[1]] == [0] * 3  # none held over the others
  titles = [ax.get_title() for ax in figures.conflict_figure(found.answers[1]).axes
            if ax.get_visible()]
  assert titles[0] == "denoise_30~sr_x2 (joint)\nnot yet: lr sweep incomplete"


def test_the_pairs_of_question_1_are_held_family_wise(tmp_path):
  # True cosines -0.12, +0.12, 0 and these seeds' noise: the late phase's first pair excludes 0
  # alone (p = 0.040) but not over the 3 pairs (Holm: 2 x 0.040, the second smallest p), the
  # second holds (p < 0.001), the third holds 0 alone
  s = synthetic_study(str(tmp_path / "study"))
  write_conflicts(s, [(-0.12, 0.12, 0.0)] * 3, seed=1000)
  found = findings.build(s, tables.transfer_table(s), scores.conflict_records(s))
  answers = found.answers[1]
  own = [iv.p for iv in (a.interval for a in answers)]
  assert answers[0].interval.high < 0 and 0.02 < own[0] < 0.05 and own[1] < 0.001 < 0.05 < own[2]
  holm = stats.holm(own)
  assert holm[0] == pytest.approx(2 * own[0], rel=1e-12) and holm[0] > 0.05
  assert [a.family for a in answers] == [3, 3, 3]
  assert [a.verdict for a in answers] == [
      f"{findings.NOT_HELD} 3 pairs: its own interval excludes 0, its Holm-adjusted p "
      f"({holm[0]:.3f}) does not", "no: agreement beyond noise", findings.NOT_ENOUGH]
  assert (f"{answers[0].interval.text(3)} in the late phase (the last third of training, steps "
          f"600-890), p = {own[0]:.3f} (Holm {holm[0]:.3f} over 3) — {findings.NOT_HELD} 3 "
          "pairs") in answers[0].sentence
  assert ", p < 0.001 (Holm < 0.001 over 3) — no: agreement beyond noise" in answers[1].sentence
  assert found.notes[1].startswith(
      "The 3 pairs' answers each have their own 95% interval; a yes or no holds over all of "
      "them (Holm 1979: were nothing different, the chance that any verdict is wrong is at most "
      "5%), so a pair whose interval just excludes 0 may still be not enough evidence. Where in "
      "the body (joint, 3 seeds, per module")
  # the table keeps each pair's own verdict; the figure's panel says the headline did not hold
  table = {r["pair"]: r["verdict"] for r in tables.conflict_table(s).records}
  assert table[answers[0].subject] == conflicts.CONFLICT
  titles = [ax.get_title() for ax in figures.conflict_figure(answers).axes if ax.get_visible()]
  assert titles == ["denoise_30~sr_x2 (joint)\nheadline not over the others: Holm",
                    "denoise_30~derain (joint)", "sr_x2~derain (joint)"]
  # the same pair alone: its own interval decides
  iv = answers[0].interval
  assert findings.family_verdicts([(iv, findings.conflict_verdict(iv), True)], (
      "yes: conflict beyond noise",)) == [("yes: conflict beyond noise", own[0], 1)]


def test_question_1_says_where_in_the_body_a_conflict_that_the_whole_body_hides_lies(tmp_path):
  # denoise_30~sr_x2 conflicts in the token embedding (-0.5) and agrees as much in pos_embed
  # (+0.5), at equal gradient norms: over the whole body they cancel (true cosine 0), and only
  # the per-module line finds them; the other pairs agree alike in both (+0.3, +0.2)
  s = synthetic_study(str(tmp_path / "study"))
  layers = ["token_embed/bias", "pos_embed"]
  for spec in s.runs:
    if spec.regime == "joint":
      grams = np.concatenate([known_halves(90, cos, noise=2.0, seed=10 * spec.seed + k)
                              for k, cos in enumerate([(-0.5, 0.3, 0.2), (0.5, 0.3, 0.2)])],
                             axis=1)
      conflicts.append(s.run_dir(spec.name), np.arange(0, 900, 10), grams, layers,
                       list(s.tasks))
  records = scores.conflict_records(s)
  found = findings.build(s, tables.transfer_table(s), records)
  assert found.answers[1][0].subject == "denoise_30~sr_x2"
  assert found.answers[1][0].verdict == findings.NOT_ENOUGH
  # each cell: the seeds' late-phase intervals of that module (the whole body's window)
  layers_found = scores.layer_conflicts(records)["joint"]
  for group, k in (("token_embed", 0), ("pos_embed", 1)):
    per_seed = [r.last(conflicts.headline_window(r)).layer_intervals("module")[1][k][0]
                for *_, r in records]
    assert layers_found["cells"][group, "denoise_30~sr_x2"][:5] == pytest.approx(
        stats.mean_of_runs(per_seed)[:5], rel=1e-12)
  conflict, agreement = (layers_found["cells"][g, "denoise_30~sr_x2"]
                         for g in ("token_embed", "pos_embed"))
  assert conflict.high < 0 < agreement.low
  note = found.notes[1]
  assert ("Where in the body (joint, 3 seeds, per module in each seed's headline phase, each "
          "cell's corrected cosine combined over the seeds, held over all 6 (module, pair) cells "
          f"(Holm)): conflict beyond noise at token_embed denoise_30~sr_x2 {conflict.text(3)}; "
          f"agreement beyond noise at pos_embed denoise_30~sr_x2 {agreement.text(3)}; ") in note
  assert "(6 in all)" not in note and "(5 in all)" in note  # 3 named, the strongest first
  # measured at the end of training: that measurement's, as the whole-body headline
  for _, seed, chosen in s.pretraining_choices():
    grams = np.concatenate([known_halves(20, cos, noise=1.0, seed=100 + 10 * seed + k)
                            for k, cos in enumerate([(-0.4, 0.3, 0.2), (0.4, 0.3, 0.2)])],
                           axis=1)
    conflicts.append(run_folder.analysis_dir(s.run_dir(chosen.run.name), 4),
                     10**7 + np.arange(20), grams, layers, list(s.tasks),
                     {"size": 128, "fresh": True})
  final = scores.final_conflict_records(s)
  ended = scores.layer_conflicts(records, final)["joint"]
  assert ended["at_end"]
  per_seed = [m[0][1].layer_intervals("module")[1][0][0] for *_, m in final]
  assert ended["cells"]["token_embed", "denoise_30~sr_x2"][:5] == pytest.approx(
      stats.mean_of_runs(per_seed)[:5], rel=1e-12)
  note = findings.build(s, tables.transfer_table(s), records, final).notes[1]
  assert "per module at the end of training" in note
  # a seed whose store has no halves has no corrected cosine per module either: left out as
  # from the headline, never read raw
  shutil.rmtree(run_folder.analysis_dir(s.run_dir("joint-lr1e-3-s0"), 4))
  grams = gramians.task_gramian(np.concatenate(
      [known_halves(20, cos, noise=1.0, seed=100 + k)
       for k, cos in enumerate([(-0.4, 0.3, 0.2), (0.4, 0.3, 0.2)])], axis=1))
  conflicts.append(run_folder.analysis_dir(s.run_dir("joint-lr1e-3-s0"), 4),
                   10**7 + np.arange(20), grams, layers, list(s.tasks),
                   {"size": 128, "fresh": True})
  final = scores.final_conflict_records(s)
  found = findings.build(s, tables.transfer_table(s), records, final)
  assert "(joint, 2 of 3 seeds (seed 0: no estimate))" in found.answers[1][0].sentence
  assert "Where in the body (joint, 2 of 3 seeds (seed 0: no estimate), per module" in \
      found.notes[1]
  per_seed = [m[0][1].layer_intervals("module")[1][0][0] for *_, m in final[1:]]
  assert scores.layer_conflicts(records, final)["joint"]["cells"][
      "token_embed", "denoise_30~sr_x2"][:5] == pytest.approx(stats.mean_of_runs(per_seed)[:5],
                                                              rel=1e-12)


def test_finetune_answers_are_the_transfer_tables_paired_deltas(study, found):
  answers = {a.subject: a for a in found.answers[2]}
  assert list(answers) == list(SCRATCH) and {a.source for a in answers.values()} == {"finetune"}
  ivs = [stats.paired_interval(SCRATCH[t], [_psnr("finetune", t, k) for k in range(3)])
         for t in answers]
  for (task, a), iv, p_holm in zip(answers.items(), ivs, stats.holm([iv.p for iv in ivs])):
    assert a.interval[:6] == pytest.approx(iv[:6], rel=1e-12)
    # what a comparison left open would need, tested at the level Holm asks first of the 3
    seeds = stats.seeds_needed(iv, test_level=1 - 0.05 / 3)
    plan = (f" (about {seeds} paired seeds would detect a Δ this size at 80% power, tested at "
            "5%/3 (Holm over 3))" if a.verdict == findings.NOT_ENOUGH else "")
    assert a.sentence == (f"{task} (fine-tuned from joint − tuned scratch, Y-PSNR on photos): "
                          f"Δ {iv.text(2)} dB, {cells.format_p(iv.p)} (Holm {p_holm:.3f} over "
                          f"3), 3 paired seeds — {a.verdict}{plan}.")
  assert answers["derain"].verdict == "yes: the fine-tune does better"
  # sr_x2: per-seed differences of both signs, the interval spans 0
  assert answers["sr_x2"].interval.low < 0 < answers["sr_x2"].interval.high
  assert answers["sr_x2"].verdict == findings.NOT_ENOUGH
  assert "(about 153 paired seeds would detect a Δ this size" in answers["sr_x2"].sentence
  assert stats.seeds_needed(answers["sr_x2"].interval) == 114  # alone, at 5%
  assert found.sentences(3) == [
      "not measured by this study: it needs groups named 'related' and 'unrelated' sharing a "
      "task, each fine-tuned (regimes 'groups' and 'finetune'), with runs done; its groups: "
      "none; experiments/studies/related_vs_unrelated.py measures it."]
  assert found.sentences(4)[0].startswith(f"{findings.NOT_MEASURED}: it needs the regime 'joint'")


# Per-seed Y-PSNR of sr_x2 fine-tuned from each group, over scratch (SCRATCH['sr_x2']).
FROM_GROUP = {"related": [0.5, 0.9, 0.6], "unrelated": [0.1, 0.2, 0.15]}


def _group_psnr(spec, task):
  base = SCRATCH.get(task, [25.0] * 3)[spec.seed]
  return base + FROM_GROUP[spec.column.split(":")[1]][spec.seed] if spec.column.startswith(
      "finetune:") else base


@pytest.fixture(scope="module")
def groups_study(tmp_path_factory):
  groups = study_lib.defaults().groups
  groups.related, groups.unrelated = ("sr_x2", "sr_x3"), ("sr_x2", "denoise_30")
  return synthetic_study(str(tmp_path_factory.mktemp("groups") / "study"), psnr=_group_psnr,
                         tasks=("sr_x2",), regimes=("scratch", "groups", "finetune"),
                         groups=groups)


def test_related_vs_unrelated_is_the_paired_delta_of_the_two_finetunes(groups_study):
  found = findings.build(groups_study, tables.transfer_table(groups_study), [])
  (a,) = found.answers[3]
  rel = [SCRATCH["sr_x2"][k] + FROM_GROUP["related"][k] for k in range(3)]
  unrel = [SCRATCH["sr_x2"][k] + FROM_GROUP["unrelated"][k] for k in range(3)]
  iv = stats.paired_interval(unrel, rel)
  assert a.interval[:6] == pytest.approx(iv[:6], rel=1e-12) and iv.low > 0
  assert a.verdict == "yes: the fine-tune from the related group does better"
  assert a.sentence == ("sr_x2 (fine-tuned from related sr_x2+sr_x3 − from unrelated "
                        f"sr_x2+denoise_30, Y-PSNR on photos): Δ {iv.text(2)} dB, "
                        f"{cells.format_p(iv.p)}, 3 paired seeds — {a.verdict}.")  # 1 Δ: no Holm
  # question 2 for each group's fine-tune; question 1 not measured (no conflict store)
  assert [x.source for x in found.answers[2]] == ["finetune:related", "finetune:unrelated"]
  assert found.sentences(1)[0].startswith(f"{findings.NOT_MEASURED}: no joint or group run")


def test_related_vs_unrelated_never_says_a_pre_training_helps_that_scratch_beats(tmp_path):
  # Both fine-tunes below scratch on every seed, the unrelated one less so: question 3's answer
  # says which does better, as question 2 says that neither beats scratch.
  below = {"related": [-0.9, -0.6, -0.8], "unrelated": [-0.2, -0.1, -0.15]}
  psnr = lambda spec, task: SCRATCH["sr_x2"][spec.seed] + (
      below[spec.column.split(":")[1]][spec.seed] if spec.column.startswith("finetune:") else 0)
  groups = study_lib.defaults().groups
  groups.related, groups.unrelated = ("sr_x2", "sr_x3"), ("sr_x2", "denoise_30")
  s = synthetic_study(str(tmp_path / "study"), psnr=psnr, tasks=("sr_x2",),
                      regimes=("scratch", "groups", "finetune"), groups=groups)
  found = findings.build(s, tables.transfer_table(s), [])
  assert [a.verdict for a in found.answers[2]] == ["no: scratch does better"] * 2
  (a,) = found.answers[3]
  assert a.interval.high < 0
  assert a.verdict == "no: the fine-tune from the unrelated group does better"
  assert "helps" not in a.sentence


def test_a_delta_whose_arms_are_not_tuned_alike_gets_no_verdict(tmp_path):
  # Seed 1 of scratch derain has tried one lr of two (the other not done): the same Δ and interval
  # as the transfer table's, but fine-tune vs scratch is not yet a tuned comparison.
  s = synthetic_study(str(tmp_path / "study"))
  os.remove(s.path("scratch-derain-lr3e-3-s1", "DONE"))
  s = study_lib.Study.load(s.workdir)
  transfer = tables.transfer_table(s)
  record = next(r for r in transfer.records if (r["task"], r["regime"]) == ("derain", "finetune"))
  assert not record["complete_sweeps"] and tables.INCOMPLETE_NOTE in transfer.notes
  assert record["verdict"] == scores.UNLIKE[1]
  found = findings.build(s, transfer, [])
  answers = {a.subject: a for a in found.answers[2]}
  iv = stats.paired_interval(SCRATCH["derain"], [_psnr("finetune", "derain", k) for k in range(3)])
  assert answers["derain"].interval[:6] == pytest.approx(iv[:6], rel=1e-12) and iv.low > 0
  assert "The 2 Δs compared alike each have" in found.notes[2]  # the family: derain not alike
  assert answers["derain"].verdict == (f"{findings.NOT_YET}: seed 1 has an lr sweep not "
                                       "complete, so the two are not tuned alike")
  assert answers["sr_x2"].verdict == findings.NOT_ENOUGH  # its sweeps are all done
  labels = [t.get_text() for t in figures.delta_figure(list(answers.values())).axes[0]
            .get_yticklabels()]
  assert "derain on photos: fine-tuned from joint − scratch (lr sweeps incomplete)" in labels
  assert "sr_x2 on photos: fine-tuned from joint − scratch" in labels
  # question 3 likewise: a group fine-tune's sweep of seed 0 and 2 not complete
  groups = study_lib.defaults().groups
  groups.related, groups.unrelated = ("sr_x2", "sr_x3"), ("sr_x2", "denoise_30")
  g = synthetic_study(str(tmp_path / "groups"), psnr=_group_psnr, tasks=("sr_x2",),
                      regimes=("scratch", "groups", "finetune"), groups=groups)
  for seed in (0, 2):
    os.remove(g.path(f"finetune-sr_x2-from-unrelated-lr3e-3-s{seed}", "DONE"))
  (a,) = findings.build(study_lib.Study.load(g.workdir), tables.transfer_table(g), []).answers[3]
  assert a.interval.low > 0 and a.verdict == (f"{findings.NOT_YET}: seeds 0, 2 have an lr sweep "
                                              "not complete, so the two are not tuned alike")


def _diverge(study, name):
  """Make a done run one that diverged, as the study's runner records it (DONE says so; no
  results.json)."""
  os.remove(study.path(name, "results.json"))
  files.write_json(study.path(name, "DONE"), {"diverged": "loss went non-finite at step 3"})


def test_an_arm_that_diverged_at_every_lr_leaves_its_seed_out_and_the_delta_unjudged(tmp_path):
  # Scratch derain diverged at both lrs on seed 1 where the fine-tune trained: the Δ over seeds 0
  # and 2 leaves out the seed scratch lost outright, so it is not the comparison; no verdict.
  s = synthetic_study(str(tmp_path / "study"))
  for lr in ("1e-3", "3e-3"):
    _diverge(s, f"scratch-derain-lr{lr}-s1")
  s = study_lib.Study.load(s.workdir)
  transfer = tables.transfer_table(s)
  record = next(r for r in transfer.records if (r["task"], r["regime"]) == ("derain", "finetune"))
  assert record["left_out_seeds"] == [1] and record["n_pairs"] == 2 and record["complete_sweeps"]
  assert record["verdict"] == scores.UNLIKE[0]  # whatever its interval, as in the findings
  why = "every lr of scratch-derain-lr*-s1 diverged: seed 1 left out of the Δ, where the other arm"
  assert any(f"derain finetune: {why} trained." in note for note in transfer.notes)
  main = tables.main_table(s)
  assert "Seeds left out where every lr diverged: derain scratch: every lr of " \
      "scratch-derain-lr*-s1 diverged." in main.notes
  main_rows = {(r["task"], r["regime"]): r for r in main.records if r["test_set"] == "photos"}
  assert main_rows["derain", "scratch"]["n_seeds"] == 2
  assert main_rows["derain", "finetune"]["verdict_psnr"] == scores.UNLIKE[0]
  # nor is a "best" regime marked where one of its comparisons leaves a seed out (the fine-tune,
  # best over the seeds both trained, was bold)
  assert not any(r["best_psnr"] for r in main.records if r["task"] == "derain")
  assert main_rows["sr_x2", "finetune"]["verdict_psnr"] == stats.verdict(stats.paired_interval(
      SCRATCH["sr_x2"], [_psnr("finetune", "sr_x2", k) for k in range(3)]))
  answers = {a.subject: a for a in findings.build(s, transfer, []).answers[2]}
  iv = stats.paired_interval([SCRATCH["derain"][k] for k in (0, 2)],
                             [_psnr("finetune", "derain", k) for k in (0, 2)])
  assert answers["derain"].interval[:6] == pytest.approx(iv[:6], rel=1e-12)
  assert answers["derain"].verdict == (f"{findings.NO_VERDICT}: {why} trained; give the study "
                                       "lower lrs")
  assert answers["sr_x2"].verdict == findings.NOT_ENOUGH  # its arms trained on every seed
  labels = [t.get_text() for t in figures.delta_figure(list(answers.values())).axes[0]
            .get_yticklabels()]
  assert ("derain on photos: fine-tuned from joint − scratch (a seed left out: an arm diverged)"
          in labels)
  # The joint pre-training diverged at every lr on seed 2: its fine-tunes never ran (the runner
  # marks them failed), so seed 2 is out of every task's fine-tune Δ, and it says why.
  g = synthetic_study(str(tmp_path / "joint"))
  for lr in ("1e-3", "3e-3"):
    _diverge(g, f"joint-lr{lr}-s2")
    for task in g.tasks:
      for name in ("results.json", "DONE"):
        os.remove(g.path(f"finetune-{task}-lr{lr}-s2", name))
  g = study_lib.Study.load(g.workdir)
  assert g.dead_end("finetune-sr_x2-s2") == "joint-s2" and g.dead_end("finetune-sr_x2-s1") is None
  for a in findings.build(g, tables.transfer_table(g), []).answers[2]:
    assert a.interval.n == 2 and a.verdict == (
        f"{findings.NO_VERDICT}: every lr of joint-lr*-s2 diverged: seed 2 left out of the Δ, "
        "where the other arm trained; give the study lower lrs"), a.subject


def test_a_seed_one_arm_has_not_trained_yet_leaves_the_delta_unjudged(tmp_path):
  # Scratch derain's seed 2 failed at both lrs (no run, no dead end): a Δ over seeds 0 and 1
  # would leave it out unsaid, with a verdict; it is not the comparison yet.
  s = synthetic_study(str(tmp_path / "study"))
  for lr in ("1e-3", "3e-3"):
    for name in ("results.json", "DONE"):
      os.remove(s.path(f"scratch-derain-lr{lr}-s2", name))
  s = study_lib.Study.load(s.workdir)
  record = next(r for r in tables.transfer_table(s).records
                if (r["task"], r["regime"]) == ("derain", "finetune"))
  assert record["n_pairs"] == 2 and not record["complete_sweeps"]
  assert record["verdict"] == scores.UNLIKE[1]
  answers = {a.subject: a for a in findings.build(s, tables.transfer_table(s), []).answers[2]}
  assert answers["derain"].verdict.startswith(f"{findings.NOT_YET}: seed 2 has an lr sweep not "
                                              "complete")
  assert answers["sr_x2"].verdict == findings.NOT_ENOUGH  # every seed in both arms
  # seed 2 missing from both arms (a study training its last seed): not the comparison either
  for spec in s.runs:
    if spec.seed == 2 and spec.tasks == ("sr_x2",) and os.path.exists(s.path(spec.name, "DONE")):
      for name in ("results.json", "DONE"):
        os.remove(s.path(spec.name, name))
  s = study_lib.Study.load(s.workdir)
  record = next(r for r in tables.transfer_table(s).records
                if (r["task"], r["regime"]) == ("sr_x2", "finetune"))
  assert record["n_pairs"] == 2 and record["verdict"] == scores.UNLIKE[1]
  answers = {a.subject: a for a in findings.build(s, tables.transfer_table(s), []).answers[2]}
  assert answers["sr_x2"].verdict.startswith(f"{findings.NOT_YET}: seed 2 has an lr sweep not "
                                             "complete")


def test_the_deltas_say_which_arms_chose_an_lr_at_an_end_of_their_grid(tmp_path):
  # The synthetic grid (1e-3, 3e-3) with 1e-3 best on validation by 1 dB: every arm chose the
  # smallest lr, so the grid brackets no arm's best lr; a grid around 1e-3 brackets every one.
  s = synthetic_study(str(tmp_path / "edge"))
  found = findings.build(s, tables.transfer_table(s), [])
  assert ("Every arm chose its grid's smallest lr on every seed (ahead of the next lr by 1.00 dB "
          "on photos_val): the grid brackets none of their best lrs, which may lie below it (a "
          "wider grid would show).") in found.notes[2]
  # Seed 2's scratch derain chose the largest lr, 1.25 dB ahead of 1e-3 on validation: each arm
  # at an end is counted, by name, with the span of its leads
  s2 = synthetic_study(str(tmp_path / "mixed"), psnr=lambda spec, task: _psnr(
      spec.regime, task, spec.seed) + (2.25 if (spec.name == "scratch-derain-lr3e-3-s2") else 0))
  found = findings.build(s2, tables.transfer_table(s2), [])
  lead = " (ahead of the next lr by 1.00 dB on photos_val)"
  arms = [f"{arm}: the smallest lr on 3 of 3 seeds{lead}" for arm in (
      "scratch denoise_30", "finetune denoise_30", "joint", "scratch sr_x2", "finetune sr_x2")]
  arms += ["scratch derain: the smallest lr on 2 and the largest lr on 1 of 3 seeds (ahead of "
           "the next lr by 1.00-1.25 dB on photos_val)",
           f"finetune derain: the smallest lr on 3 of 3 seeds{lead}"]  # joint once: one choice
  assert ("Chosen at an end of the lr grid (the best lr may lie beyond it; a wider grid would "
          "show): " + "; ".join(arms) + ".") in found.notes[2]
  selection = accounting.selection_table(s)
  chosen = [row[2] for row in selection.rows]
  assert chosen and all("-lr1e-3-s" in c and c.endswith(
      " (the grid's smallest lr, ahead of the next by 1.00 dB)") for c in chosen)
  assert {r["grid_end"] for r in selection.records if r["chosen"]} == {"smallest"}
  assert [r["grid_end_lead"] for r in selection.records if r["chosen"]] == pytest.approx(
      [1.0] * len(chosen), abs=1e-9)
  assert {r["grid_end_lead"] for r in selection.records if not r["chosen"]} == {None}
  rgb = accounting.selection_table(study_lib.Study(dict(s.config, metric="psnr_rgb"), s.workdir))
  assert "validation_psnr_rgb" in rgb.records[0] and "validation_psnr_y" in selection.records[0]
  inside = synthetic_study(str(tmp_path / "inside"), lrs=(3e-4, 1e-3, 3e-3))
  found = findings.build(inside, tables.transfer_table(inside), [])
  assert "Every chosen lr lies inside its grid." in found.notes[2]
  assert not any("(the grid's" in row[2] for row in accounting.selection_table(inside).rows)
  one = synthetic_study(str(tmp_path / "one"), lrs=(1e-3,))
  found = findings.build(one, tables.transfer_table(one), [])
  assert "Every arm had one lr: none was tuned" in found.notes[2]


def test_the_deltas_say_what_budget_and_lr_grids_they_compare(tmp_path):
  # Scratch swept one lr and ran as many steps as the fine-tune alone (the fine-tune had the
  # joint run's steps before it): the answers' own lines say so, not only the tables' notes.
  override = {r: () for r in study_lib.STUDY_REGIMES}
  s = synthetic_study(str(tmp_path / "study"), lrs_override=dict(override, scratch=(1e-3,)))
  found = findings.build(s, tables.transfer_table(s), [])
  note = ("Compared at: Budget 'steps': every regime runs the steps set for it (scratch 4, "
          "joint 4, finetune 4); nothing equalized. Learning-rate grids DIFFER between regimes "
          "(lrs_override): scratch: 1e-3; joint: 1e-3, 3e-3; finetune: 1e-3, 3e-3; chosen per "
          "seed on photos_val.")
  assert list(found.notes) == [2] and found.notes[2].startswith(note)
  md = findings.markdown(found).splitlines()
  assert md[md.index(f"**3. {findings.QUESTIONS[2]}**") - 2] == found.notes[2]
  lines = findings.terminal_lines(found)
  assert lines[lines.index(f"3. {findings.QUESTIONS[2]}") - 1] == "   " + found.notes[2]


def test_the_deltas_of_a_question_are_held_family_wise(found, groups_study):
  # 3 tasks: a verdict holds over all of them, and the page says so; one Δ: nothing to say
  assert found.notes[2].endswith(
      " The 3 Δs compared alike each have their own 95% interval; a yes or no holds over all "
      "of them (Holm 1979: were nothing different, the chance that any verdict is wrong is at "
      "most 5%), so a Δ whose interval just excludes 0 may still be not enough evidence.")
  notes = findings.build(groups_study, tables.transfer_table(groups_study), []).notes
  assert "The 2 Δs compared alike each have" in notes[2] and "compared alike" not in notes[3]


def test_a_delta_that_excludes_0_alone_but_not_over_its_family_has_no_verdict():
  # p = 0.03 alone (its interval excludes 0) is 0.06 once 2 others are counted (Holm: the
  # smallest p times 3, the next times 2, the last as is, each at least the one before)
  ivs = [stats.Interval(0.5, 0.1, 0.9, 0.95, 3, p, "paired t") for p in (0.01, 0.03, 0.04)]
  ivs.append(stats.Interval(-0.5, -0.9, -0.1, 0.95, 3, 0.02, "paired t"))  # not compared alike
  out = findings.family_verdicts([(iv, "yes", True) for iv in ivs[:3]]
                                 + [(ivs[3], "no verdict: x", False)], ("yes", "no"))
  assert [round(p, 6) for _, p, _ in out[:3]] == [0.03, 0.06, 0.06] and math.isnan(out[3][1])
  assert [k for _, _, k in out] == [3] * 4
  assert [v for v, _, _ in out] == [
      "yes", f"{findings.NOT_ENOUGH} over the 3 Δs: its own interval excludes 0, its "
      "Holm-adjusted p (0.060) does not", f"{findings.NOT_ENOUGH} over the 3 Δs: its own "
      "interval excludes 0, its Holm-adjusted p (0.060) does not", "no verdict: x"]
  # One Δ compared alike: its own interval decides
  assert findings.family_verdicts([(ivs[1], "yes", True)], ("yes", "no")) == [("yes", 0.03, 1)]
  # The dot plot fills a dot whose interval excludes 0; its label says the verdict did not hold
  held = [findings.Answer(2, task, "finetune", iv, verdict, "")
          for task, iv, (verdict, _, _) in zip(("denoise_30", "sr_x2"), ivs, out)]
  labels = [t.get_text() for t in figures.delta_figure(held).axes[0].get_yticklabels()]
  assert labels == ["sr_x2: fine-tuned from joint − scratch (not over the others: Holm)",
                    "denoise_30: fine-tuned from joint − scratch"]  # bottom up: the first on top


def test_one_seed_has_no_interval_and_not_enough_evidence(tmp_path):
  s = synthetic_study(str(tmp_path / "one"), seeds=(0,))
  found = findings.build(s, tables.transfer_table(s), [])
  a = next(a for a in found.answers[2] if a.subject == "derain")
  assert a.verdict == findings.NOT_ENOUGH   # +1.5 dB, but one seed shows nothing
  assert a.sentence.endswith(f"Δ {DIFF['finetune', 'derain'][0]:+.2f} dB (1 paired seed: no "
                             f"interval) — {findings.NOT_ENOUGH}.")


def _is_png(path):
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  pixels = image.imread(path)  # decodes the whole file
  return pixels.ndim == 3 and min(pixels.shape[:2]) > 100


def test_figures_are_pngs_with_zero_in_view(study, found, tmp_path):
  drawn = figures.write(found, str(tmp_path))
  assert [os.path.basename(p) for p, _ in drawn] == [figures.FIGURE_DELTAS,
                                                      figures.FIGURE_CONFLICT]
  assert all(_is_png(p) for p, _ in drawn)
  fig = figures.conflict_figure(found.answers[1])
  axes = [ax for ax in fig.axes if ax.get_visible()]
  assert len(axes) == 3 and len({ax.get_ylim() for ax in axes}) == 1   # one shared scale
  low, high = axes[0].get_ylim()
  bounds = [b for a in found.answers[1] for ph in a.phases
            for b in (ph["interval"].low, ph["interval"].high)]
  assert low < min(bounds + [0]) and high > max(bounds + [0])         # nothing clipped
  for a, ax in zip(found.answers[1], axes):  # the headline in numbers under its tick
    if len(a.phases) > 1:
      assert ax.get_xticklabels()[-1].get_text().endswith(
          "(headline)\n" + a.phases[-1]["interval"].text(3))
  fig = figures.delta_figure(found.answers[2])
  ax = fig.axes[0]
  assert ax.get_xlim()[0] < 0 < ax.get_xlim()[1]
  # the seeds behind the Δs, and a title over the figure (long row labels push the axes right)
  assert {a.interval.n for a in found.answers[2]} == {3}
  assert ax.get_xlabel().endswith("mean of 3 paired seeds, 95% CI")
  assert fig._suptitle.get_text().startswith("Paired Δ")


def test_an_estimate_without_an_interval_or_a_value_is_marked_as_such(found):
  """Neither filled nor hollow (those read 'excludes 0' and 'holds 0'): a grey square and 'no
  CI' where there is no interval, an x and 'not measurable' on the zero line where there is no
  estimate; the legend names what is drawn."""
  nan = float("nan")
  answer = found.answers[1][0]
  iv = answer.phases[0]["interval"]
  phases = [dict(answer.phases[0], interval=iv._replace(low=nan, high=nan), per_run=()),
            dict(answer.phases[-1], interval=iv._replace(estimate=nan, low=nan, high=nan),
                 per_run=())]
  fig = figures.conflict_figure([dataclasses.replace(answer, phases=phases)])
  ax = fig.axes[0]
  marks = [(l.get_marker(), tuple(l.get_xydata()[0])) for l in ax.get_lines()
           if l.get_marker() not in ("None", None, "")]
  assert marks == [("s", (0.0, iv.estimate)), ("x", (1.0, 0.0))]
  assert [t.get_text() for t in ax.texts] == ["no CI", "not measurable"]
  legend = [t.get_text() for t in fig.legends[0].get_texts()]
  assert "no CI: too few seeds or probes" in legend


def test_a_phase_estimated_from_fewer_seeds_says_so_under_it(found):
  """'95% CI over seeds' in the title: a phase one seed could not measure is fewer seeds'."""
  answer = found.answers[1][0]
  first = answer.phases[0]
  runs = [first["per_run"][0]._replace(estimate=float("nan")), *first["per_run"][1:]]
  fig = figures.conflict_figure([dataclasses.replace(
      answer, phases=[dict(first, per_run=runs), *answer.phases[1:]])])
  ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
  assert ticks[0] == f"{first['label']}\n({len(runs) - 1} of {len(runs)} seeds)", ticks
  assert "seeds)" not in ticks[1]


def test_a_legend_of_four_entries_fits_a_one_panel_figure(found):
  """Filled, hollow, 'no CI' and a seed's estimate: in one row they spanned -27..777 px of a
  750 px figure, both ends cut off."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  nan = float("nan")
  answer = found.answers[1][0]
  bare = dict(answer.phases[0], interval=answer.phases[0]["interval"]._replace(low=nan,
                                                                               high=nan))
  fig = figures.conflict_figure([dataclasses.replace(answer, phases=[bare, *answer.phases[1:]])])
  renderer = FigureCanvasAgg(fig).get_renderer()
  fig.draw(renderer)
  legend = fig.legends[0]
  assert len(legend.get_texts()) == 4, [t.get_text() for t in legend.get_texts()]
  box = legend.get_window_extent(renderer)
  assert 0 <= box.x0 and box.x1 <= fig.bbox.width, (box, fig.bbox.width)
  assert all(box.y1 <= ax.get_tightbbox(renderer).y0 for ax in fig.axes if ax.get_visible())


@pytest.mark.parametrize("panels", [1, 2, 3])
def test_the_conflict_figure_s_title_and_note_fit_in_it(found, panels):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  note = " ".join(["A seed's interval covers its batches' noise at those parameters."] * 8)
  fig = figures.conflict_figure(found.answers[1][:panels], note=note)
  renderer = FigureCanvasAgg(fig).get_renderer()
  fig.draw(renderer)
  box = fig._suptitle.get_window_extent(renderer)
  assert 0 <= box.x0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height
  assert all(box.y0 >= ax.get_tightbbox(renderer).y1 for ax in fig.axes if ax.get_visible())


def test_report_opens_with_the_findings_and_links_the_figures(study):
  out = subprocess.run([sys.executable, "launch/report.py", f"--workdir={study.workdir}"],
                       cwd=ROOT, text=True, capture_output=True, timeout=600)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert lines[0] == f"1. {findings.QUESTIONS[0]}"
  assert lines[1].startswith("   denoise_30~sr_x2 (joint, 3 seeds): corrected cosine ")
  assert f"2. {findings.QUESTIONS[1]}" in lines and f"3. {findings.QUESTIONS[2]}" in lines
  assert lines.index(f"3. {findings.QUESTIONS[2]}") < lines.index(
      "study synthetic: 42/42 runs done")
  with open(os.path.join(study.workdir, "report.md")) as f:
    md = f.read()
  assert md.index("## Findings") < md.index("Runs done") < md.index("## Main table")
  for q, question in enumerate(findings.QUESTIONS, 1):
    assert f"**{q}. {question}**" in md
  for name in (figures.FIGURE_DELTAS, figures.FIGURE_CONFLICT):
    assert f"](figures/{name})" in md
    assert _is_png(os.path.join(study.workdir, "figures", name))


def test_the_summary_says_which_verdicts_their_question_did_not_hold(tmp_path):
  # Every fine-tune 0.10, 0.15, 0.20 dB over scratch on seeds 0-2 (t = 5.2, 2 df): p = 0.035
  # alone, Holm 0.105 over the 3 tasks: a gain in the main table, not in the findings.
  over = {"finetune": (0.10, 0.15, 0.20), "joint": (-0.5, 0.3, 0.1)}
  s = synthetic_study(str(tmp_path / "study"), psnr=lambda spec, task: SCRATCH[task][spec.seed]
                      + over.get(spec.regime, (0.0,) * 3)[spec.seed])
  _, summary = document.write_with_summary(s.workdir)
  lines = summary.splitlines()
  for task in SCRATCH:
    (line,) = [l for l in lines if l.startswith(f"  {task} on photos, Y-PSNR: ")]
    assert line.endswith(f"finetune {np.mean(SCRATCH[task]) + 0.15:.2f} (gain vs scratch)")
  assert ("  (each verdict here is on its own 95% interval; held over its question's Δs (Holm), "
          "denoise_30 fine-tuned from joint, sr_x2 fine-tuned from joint, derain fine-tuned from "
          f"joint are {findings.NOT_ENOUGH}, as the findings above say)") in lines
  assert all("(Holm 0.105 over 3)" in a.sentence for a in findings.build(
      s, tables.transfer_table(s), []).answers[2])


def test_a_delta_whose_seeds_do_not_spread_says_so_and_gets_no_verdict():
  iv = stats.paired_interval([30.0, 31.0, 32.0], [30.25, 31.25, 32.25])  # rounded alike
  verdict = findings.transfer_verdict(iv)
  assert verdict == findings.NOT_ENOUGH
  assert findings._delta_sentence("sr_x2", "joint − scratch", iv, "photos", "Y-PSNR", verdict) \
      == ("sr_x2 (joint − scratch, Y-PSNR on photos): Δ +0.25 dB (3 paired seeds: no interval, "
          "as they do not spread at all) — not enough evidence.")


def test_a_study_whose_joint_runs_take_one_task_a_step_does_not_wait_for_their_conflicts(tmp_path):
  # schedule 'one' probes nothing (run_config.probe_plan): question 1 said "not yet" while its
  # joint runs trained, as if they would answer it.
  run = run_defaults.get_config("tiny")
  run.eval.sets, run.schedule = "photos,photos_val", "one"
  study = synthetic_study(str(tmp_path / "study"), run=run)
  joint = [r for r in study.runs if r.regime == "joint"]
  os.remove(study.path(joint[0].name, study_lib.workdir.DONE_FILE))
  assert findings._missing(study, 1) == (
      f"{findings.NOT_MEASURED}: no joint or group run of it records conflicts "
      "(run.conflicts.every > 0 with schedule 'all', or final_conflicts.batch_size > 0); "
      + findings.MEASURED_BY[1] + " measures it.")
  study.config["final_conflicts"]["batch_size"] = 8   # measured at the end, whatever the schedule
  assert findings._missing(study, 1).startswith(f"{findings.NOT_YET}: its joint runs")
  study.config["final_conflicts"]["batch_size"] = 0
  run.schedule = "all"
  study = synthetic_study(str(tmp_path / "all"), run=run)
  os.remove(study.path(joint[0].name, study_lib.workdir.DONE_FILE))
  assert findings._missing(study, 1).startswith(f"{findings.NOT_YET}: its joint runs")
