"""The findings page: the questions mtl exists for, each answered from the study's own tables
in one sentence per subject, with its 95% interval and a verdict.

  1. Do the tasks conflict on the shared body?
     Per task pair of each multi-task pre-training (joint, group:<g>): the noise-corrected
     whole-body cosine per training phase, combined over seeds (scores.conflict_phases); the
     answer is the headline (last) phase's, the other phases are stated beside it. A line
     under the answers says where in the body (per module, scores.layer_conflicts) a pair's
     cosine is beyond noise over all cells: the whole body can average a conflict away.
  2. Does pre-train + fine-tune beat a tuned from-scratch run?
     Per task and fine-tune column (finetune, finetune:<g>): the transfer table's paired
     Δ PSNR (fine-tune - scratch, paired by seed, each lr chosen on validation) on the task's
     primary test set.
  3. Do related tasks help more than unrelated ones?
     Per task fine-tuned from both groups RELATED and UNRELATED: the paired Δ PSNR of the two
     fine-tunes (from related - from unrelated), paired by seed (scores.paired). A study without
     both groups says so and names the study config that measures it.
  4. Does acting on conflicts beat plain joint training?
     Per method column (joint:<method>: an aggregator or a loss weighting) and task: the
     remedies table's paired Δ PSNR (method - plain summed joint, same steps, lr grid and
     seeds, each lr chosen on validation) on the task's primary test set.

A verdict is a yes / no only when the 95% interval excludes 0; an interval that spans 0 (or
that one seed cannot give) is NOT_ENOUGH. Each question's answers are one family (question 1:
its pairs' headlines, of every pre-training; 2-4: their Δs): a yes / no also needs its
Holm-adjusted p over the family below 5% (family_verdicts); the phases before a headline, and
the tables, stay each on its own interval. A Δ of questions 2-4 whose arms have a paired seed
with an lr sweep not complete has no verdict (NOT_YET): the two are not tuned alike yet; nor has
one where an arm diverged at every lr on a seed the other trained (NO_VERDICT): that seed, where
the arm lost outright, is left out of the Δ.
"""
import dataclasses
import math

import ml_collections

from mtl import stats
from mtl.conflicts import summary as conflict_summary
from mtl.report import cells, remedies, tables
from mtl.run_config import probe_plan
from mtl.study.runs import pretraining_column, run_config, sweep_runs
from mtl.report.scores import (conflict_phases, final_conflicts, layer_conflicts, left_out,
                               paired, primary_test_set, regime_scores, unequal_budgets,
                               untuned_seeds)

QUESTIONS = ("Do the tasks conflict on the shared body?",
             "Does pre-train + fine-tune beat a tuned from-scratch run?",
             "Do related tasks help more than unrelated ones?",
             "Does acting on conflicts beat plain joint training?")
NOT_ENOUGH = "not enough evidence"
# a Δ whose own interval excludes 0 but whose Holm-adjusted p over its question does not
NOT_HELD = NOT_ENOUGH + " over the"
NOT_MEASURED = "not measured by this study"
NOT_YET = "not answered yet"
NO_VERDICT = "no verdict"
# The regimes whose runs answer each question (3: with both groups; 1: probing conflicts; 4:
# with a 'joint:<method>' regime); a name ending in ':' stands for every regime it begins.
ANSWERED_BY = {1: ("joint", "groups"), 2: ("scratch", "finetune"), 3: ("groups", "finetune"),
               4: ("joint", "joint:")}
# The groups question 3 compares: a study's `groups` of these names, each fine-tuned
# (regimes 'groups' and 'finetune'), as experiments/studies/related_vs_unrelated.py sets them.
RELATED, UNRELATED = "related", "unrelated"
# Question 3's yes / no say which fine-tune does better, never that its pre-training helps: both
# may do worse than scratch (question 2 says whether either helps).
RELATED_VERDICTS = ("yes: the fine-tune from the related group does better",
                    "no: the fine-tune from the unrelated group does better")
REMEDY_VERDICTS = ("yes: the method does better", "no: plain joint does better")
CONFLICT_VERDICTS = ("yes: conflict beyond noise", "no: agreement beyond noise")
MEASURED_BY = {1: "experiments/studies/mini.py",   # a joint run that probes conflicts
               2: "experiments/studies/mini.py",   # scratch and finetune
               3: "experiments/studies/related_vs_unrelated.py",
               4: "experiments/studies/remedies.py"}


@dataclasses.dataclass
class Answer:
  """One subject's answer to a question: its interval, verdict and sentence."""
  question: int          # 1-4
  subject: str           # 'a~b' (question 1) or the task
  source: str            # the column: joint / group:<g> (1), finetune[:<g>] (2), '' (3),
                         # joint:<method> (4)
  interval: stats.Interval
  verdict: str           # the answer's words; NOT_ENOUGH where the interval holds 0
  sentence: str
  phases: list = None    # question 1: every phase's {'label', 'interval', 'verdict', ...}
  family: int = 1        # the answers its verdict is held over (Δs: those compared alike)
  test_set: str = ""     # questions 2-4: the test set the Δ is measured on


@dataclasses.dataclass
class Findings:
  answers: dict          # {question: [Answer]}
  missing: dict          # {question: the sentence saying why it is not measured}
  probe_note: str = ""   # question 1: the probes' batch and spacing
  notes: dict = dataclasses.field(default_factory=dict)  # {question: line under its answers}

  def sentences(self, question):
    return ([a.sentence for a in self.answers[question]] if self.answers[question]
            else [self.missing[question]])


def _why_no_interval(iv, unit="seed"):
  """'1 seed: no interval' for an estimate without one (no estimate: the verdict says why);
  values that do not spread at all say so."""
  n = iv.n
  if not math.isfinite(iv.estimate) or math.isfinite(iv.low):
    return ""
  return (f"{n} {unit}{'s' if n != 1 else ''}: no interval"
          + (", as they do not spread at all" if iv.note.startswith(stats.NO_SPREAD) else ""))


# ----------------------------------------------------------------------------- question 1


def conflict_verdict(iv):
  """The answer to question 1 from a corrected-cosine interval."""
  v = conflict_summary.pair_verdict(iv)
  if v == conflict_summary.CONFLICT:
    return CONFLICT_VERDICTS[0]
  if v == conflict_summary.AGREEMENT:
    return CONFLICT_VERDICTS[1]
  if v == conflict_summary.NOT_MEASURABLE:
    return "not measurable" + (f" ({iv.note})" if iv.note else "")
  return NOT_ENOUGH


def _phase_where(ph, count):
  steps = f"steps {ph['first']}-{ph['last']}"
  if count == 1:
    return f"over the whole run ({steps}; too few probes to split into phases)"
  part = {2: "half", 3: "third"}.get(count, "part")
  return f"in the {ph['label']} phase (the last {part} of training, {steps})"


def _source_words(study, col):
  if col == "joint":
    return "joint"
  group = col[len("group:"):]
  members = study.config["groups"].get(group, ())
  return f"group {group}: {', '.join(members)}" if members else col


def conflict_answers(study, records, final=()):
  """Question 1 for every (column, pair) of `records` (scores.conflict_records) and `final`
  (scores.final_conflict_records): the headline is the last checkpoints' fresh-batch
  measurement where there is one (a tighter interval than a training phase's), else the last
  training phase's."""
  phased, ended = conflict_phases(records), final_conflicts(final)
  pending = {name for name, _, _ in study.final_conflicts_pending()}
  heads = []  # (column, pair, headline interval, its seeds, where, every phase, ended)
  for (col, pair) in dict.fromkeys(list(phased) + list(ended)):
    phases = phased[col, pair]["phases"] if (col, pair) in phased else []
    if (col, pair) in ended:
      end = ended[col, pair]
      phases = phases + [{"label": "end", "interval": end["interval"],
                          "verdict": end["verdict"], "per_run": end["per_run"]}]
      heads.append((col, pair, end["interval"], end["seeds"],
                    f"at the end of training ({_final_words(end, pending & set(end['runs']))})",
                    phases, True))
    else:
      heads.append((col, pair, phases[-1]["interval"], phased[col, pair]["seeds"],
                    _phase_where(phases[-1], len(phases)), phases, False))
  waiting = study.open_pretraining_seeds()  # a pick that may change: no verdict, no family
  verdicts = family_verdicts([(iv, _sweep_open(waiting[col]) if col in waiting
                               else conflict_verdict(iv), col not in waiting)
                              for col, _, iv, *_ in heads], CONFLICT_VERDICTS, "pairs")
  answers = []
  for (col, pair, iv, seeds, where, phases, at_end), (verdict, p_holm, family) in zip(
      heads, verdicts):
    why = _why_no_interval(iv, "seed")
    if why and any(not math.isfinite(r.low) for r in phases[-1]["per_run"]):
      why = ("no interval: a seed's own figure has none (too few probes or fresh batches to "
             "estimate its noise)")
    estimated = [math.isfinite(r.estimate) for r in phases[-1]["per_run"]]
    sentence = (f"{pair} ({_source_words(study, col)}, {_seed_words(seeds, estimated)}): "
                f"corrected cosine {iv.text(3)} {where}" + (f" ({why})" if why else "")
                + _p_words(iv, p_holm, family) + f" — {verdict}")
    if iv.note == stats.SEEDS_DIFFER:  # the seeds' spread sets the interval: a t over seeds
      sentence += (f" ({iv.note}: " + ", ".join(r.text(3) for r in phases[-1]["per_run"])
                   + _plan(iv, verdict, "seeds", "mean", "; ", family) + ")")
    earlier = phases[:-1]
    if earlier:
      sentence += ("; during training: " if at_end else "; earlier: ") + ", ".join(
          f"{ph['label']} {ph['interval'].text(3)}" for ph in earlier)
      # each phase on its own interval, the headline's as well
      own = [conflict_verdict(ph["interval"]) for ph in phases]
      changed = {v for v in own if v in CONFLICT_VERDICTS}  # the decided verdicts
      if len(changed) > 1 or (changed and own[-1] == NOT_ENOUGH):
        sentence += " (the verdict changes between phases)"
    answers.append(Answer(1, pair, col, iv, verdict, sentence + ".", phases, family))
  return answers


def _sweep_open(seeds):
  many = len(seeds) > 1
  return (f"{NOT_YET}: seed{'s' if many else ''} {', '.join(map(str, seeds))} "
          f"{'have' if many else 'has'} a pre-training lr sweep not complete, so the run "
          "validation picks may still change")


LAYER_EXAMPLES = 3  # question 1's where-in-the-body line names at most this many cells a side


def layer_note(study, layers, level=0.95):
  """Question 1's 'where in the body' line per column of scores.layer_conflicts: the (group,
  pair) cells beyond noise over all of the column's cells (conflicts.summary.beyond_noise),
  conflicts and agreements. The whole-body answers above can hide conflicts that cancel
  between parts of the body."""
  lines = []
  for col, found in layers.items():
    cells = found["cells"]
    said = []
    for side, held in conflict_summary.beyond_noise(cells, found["sign_only"], level).items():
      named = [f"{group} {pair} " + ("(its sign alone: a noise floor there not resolved)"
                                     if found["sign_only"][group, pair]
                                     else cells[group, pair].text(3))
               for group, pair in held[:LAYER_EXAMPLES]]
      more = f" ({len(held)} in all)" if len(held) > len(named) else ""
      said.append(f"{side} beyond noise " + (f"at {'; '.join(named)}{more}" if named
                                              else "nowhere"))
    if not any(math.isfinite(iv.low) for iv in cells.values()):
      said = ["no cell has an interval (stores without halves, too few probes or fresh "
              "batches, or every one not measurable)"]
    when = ("at the end of training" if found["at_end"] else "in each seed's headline phase")
    seeds = _seed_words(found["seeds"], [s in found["measured_seeds"] for s in found["seeds"]])
    lines.append(f"Where in the body ({_source_words(study, col)}, {seeds}, per "
                 f"{found['by']} {when}, each cell's "
                 f"corrected cosine combined over the seeds, held over all {len(cells)} "
                 f"({found['by']}, pair) cells (Holm)): {'; '.join(said)}.")
  return " ".join(lines)


def _p_words(iv, p_holm, family):
  """', p = 0.012 (Holm 0.036 over 3)' beside an estimate with an interval; '' without one."""
  if not math.isfinite(iv.low):
    return ""
  holm = (f" (Holm {'< 0.001' if p_holm < 0.001 else f'{p_holm:.3f}'} over {family})"
          if family > 1 and math.isfinite(p_holm) else "")
  return f", {cells.format_p(iv.p)}{holm}"


def _seed_words(seeds, estimated):
  """'3 seeds', or '2 of 3 seeds (seed 2: no estimate)' where a seed's figure is NaN (mean_of_runs
  leaves it out); `estimated`: per seed, whether it has one."""
  missing = [str(s) for s, known in zip(seeds, estimated) if not known]
  n = len(seeds) - len(missing)
  if not missing or not n:  # none: the verdict says that no seed has an estimate
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
  return (f"{n} of {len(seeds)} seeds (seed{'s' if len(missing) > 1 else ''} "
          f"{', '.join(missing)}: no estimate)")


def _final_words(end, pending=False):
  """Which checkpoints and batches a final_conflicts answer (scores.final_conflicts) used;
  `pending`: a later checkpoint of one of its runs is not measured yet."""
  batches = f"{end['batches']} fresh batches of {end['size']}/task"
  if end["checkpoints"] == "1":
    return (f"each seed's checkpoint at step {end['steps']}, its later ones not measured yet, "
            if pending else f"each seed's last checkpoint, step {end['steps']}, ") + batches
  gaps = f"; {end['measured']} of {end['total']} measurable" if end["measured"] < end["total"] \
      else ""
  which = (f"{end['checkpoints']} checkpoints measured so far" if pending
           else f"last {end['checkpoints']} checkpoints")
  return f"the mean of each seed's {which}, steps {end['steps']}, each on {batches}{gaps}"


def probe_note(study, records, final=()):
  """Which batch the conflict figures used: the probes' spacing and per-task batch."""
  if not records and not final:
    return ""
  from mtl import study as study_lib
  note = []
  if records:
    spec = next(s for s in study.runs if s.name == records[0][2])
    run = study_lib.run_config(study.config, spec)
    probes = run.get("conflicts", {})
    batch = probes.get("batch_size") or run["data"]["batch_size"]
    every = probes.get("every")
    note.append(f"Probes every {'step' if every == 1 else f'{every} steps'} on a batch of {batch} "
                "per task, split into two independent halves (the noise correction's same-task "
                "agreement).")
  if final:
    f = study.config["final_conflicts"]
    most = f"{f['max_batches']} batches"
    until = (f"until every pair's interval was within ±{f['halfwidth']:g} (at most {most}"
             if f["halfwidth"] > 0 else f"({most}")
    where = ("its last checkpoint on fresh batches" if f["checkpoints"] == 1 else
             f"its last {f['checkpoints']} checkpoints, each on fresh batches of its own")
    note.append(f"'end': each seed's chosen run measured at {where} of {f['batch_size']} per "
                f"task {until}; launch/analyze.py --checkpoint)"
                + ("" if f["checkpoints"] == 1 else "; a seed's figure is their mean, leaving "
                   "out a checkpoint not measurable at that batch: one where a task's gradient "
                   "is mostly noise") + ". A "
                "seed's interval covers its batches' noise at those parameters; the conflict "
                "moves between nearby checkpoints (README, Conflicts), which the seeds' spread "
                "holds.")
  return " ".join(note)


# ----------------------------------------------------------------------------- question 2


def transfer_verdict(iv, better="yes", worse="no: it does worse"):
  """The answer to a 'does A beat B' question from the paired interval of A - B."""
  v = stats.verdict(iv)
  return better if v == "gain" else worse if v == "loss" else NOT_ENOUGH


def family_verdicts(judged, decided, unit="Δs"):
  """The verdicts of one question's estimates, held family-wise. judged: [(Interval, its
  verdict on its own, whether it is counted in the family)]; an estimate not counted (a Δ whose
  arms are not compared alike) keeps its own verdict. A verdict in `decided` (a yes or no: the
  own interval excludes 0) holds only where the Holm-adjusted p over those counted is below 5%
  as well (an estimate without a p is not counted). Returns [(verdict, Holm-adjusted p or NaN,
  how many estimates it was adjusted over)]."""
  adjusted = stats.holm([iv.p if counted else math.nan for iv, _, counted in judged])
  family = sum(math.isfinite(p) for p in adjusted)
  out = []
  for (iv, verdict, _), p_holm in zip(judged, adjusted):
    if verdict in decided and family > 1 and not p_holm < 1 - tables.LEVEL:
      verdict = (f"{NOT_HELD} {family} {unit}: its own interval excludes 0, its "
                 f"Holm-adjusted p ({p_holm:.3f}) does not")
    out.append((verdict, p_holm, family))
  return out


def _deltas_verdicts(deltas, better, worse):
  """family_verdicts of the Δs of question 2, 3 or 4: (paired Interval, arms_verdict)."""
  return family_verdicts([(iv, not_alike or transfer_verdict(iv, better, worse),
                           not_alike is None) for iv, not_alike in deltas], (better, worse))


def _delta_sentence(subject, what, iv, test_set, label, verdict, p_holm=math.nan, family=1):
  """'sr_x2 (<what>, Y-PSNR on photos): Δ +0.42 [+0.10, +0.74] dB, p = 0.031 (Holm 0.062 over
  2), 3 paired seeds — <verdict>.' (the transfer table's numbers: the same paired Interval)"""
  if math.isfinite(iv.low):
    numbers = f"{iv.text(2)} dB{_p_words(iv, p_holm, family)}, {iv.n} paired seeds"
  else:
    numbers = f"{iv.text(2)} dB ({_why_no_interval(iv, 'paired seed')})"
  plan = _plan(iv, verdict, "paired seeds", "Δ", " (", family)
  return (f"{subject} ({what}, {label} on {test_set}): Δ {numbers} — {verdict}"
          f"{plan + ')' if plan else ''}.")


def _plan(iv, verdict, seeds_word, effect, lead, family=1, power=0.8):
  """For an effect the seeds left open (a t interval over them): about how many seeds would
  detect one of its size, after `lead`; '' where decided or without an interval. Held over a
  family of k, the test is at 5%/k: the level Holm asks of the family's smallest p."""
  if (not (verdict == NOT_ENOUGH or verdict.startswith(NOT_HELD)) or not math.isfinite(iv.low)
      or iv.estimate == 0):
    return ""
  alpha = 1 - tables.LEVEL
  seeds = stats.seeds_needed(iv, power, test_level=1 - alpha / family)
  held = f", tested at {alpha:.0%}/{family} (Holm over {family})" if family > 1 else ""
  return lead + (f"about {seeds} {seeds_word} would detect a {effect} this size at {power:.0%} "
                 f"power{held}" if seeds else f"a {effect} this size would take more than "
                 f"{stats.PLAN_MAX_SEEDS} {seeds_word} to detect{held}")


def _columns_delta(study, task, a, b):
  """(test set, paired Interval of b - a by seed, arms_verdict) of two regime columns on
  `task`'s primary test set (b's); None where either column lacks it."""
  base, other = regime_scores(study, a, task), regime_scores(study, b, task)
  if base is None or other is None:
    return None
  test_set = primary_test_set(study, task, other)
  if test_set is None or not base.values(test_set, study.metric):
    return None
  return (test_set, paired(base.by_seed(test_set, study.metric),
                           other.by_seed(test_set, study.metric)), arms_verdict(base, other))


def arms_verdict(a, b):
  """The verdict a Δ of RegimeScores b - a gets whatever its interval where its arms are not
  compared alike, else None: an arm diverged at every lr on a seed the other trained
  (scores.left_out: the Δ leaves out the seed that arm lost outright), a paired seed's lr
  sweep is not complete (scores.untuned_seeds: one arm has tried fewer lrs), or the arms trained
  the task on budgets more than 1% apart (scores.unequal_budgets)."""
  dead = left_out(a, b)
  if dead:
    return f"{NO_VERDICT}: {dead}; give the study lower lrs"
  untuned = untuned_seeds(a, b)
  if untuned:
    many = len(untuned) > 1
    return (f"{NOT_YET}: seed{'s' if many else ''} {', '.join(map(str, untuned))} "
            f"{'have' if many else 'has'} an lr sweep not complete, so the two are not tuned "
            "alike")
  unequal = unequal_budgets(a, b, ("one arm", "the other"))
  if unequal:
    return f"{NO_VERDICT}: unequal budgets ({unequal})"
  return None


def finetune_words(col):
  """A fine-tune column in words: 'fine-tuned from joint', 'fine-tuned from group related'."""
  return "fine-tuned from " + pretraining_column(col).replace(":", " ")


def finetune_answers(study, transfer):
  """Question 2 from the transfer table's records (`transfer`: tables.transfer_table)."""
  label = tables.metric_names(study)[2]
  deltas = []  # (task, regime, test set, interval, arms' verdict)
  for task in study.tasks:
    rows = [r for r in transfer.records if r["task"] == task
            and (r["regime"] == "finetune" or r["regime"].startswith("finetune:"))]
    test_set = next((s for s in study.test_sets if any(r["test_set"] == s for r in rows)), None)
    for r in rows:
      if r["test_set"] != test_set:
        continue
      iv = stats.Interval(r["delta"], r["delta_low"], r["delta_high"], tables.LEVEL,
                          r["n_pairs"], r["p"], "paired t", r["delta_note"])
      deltas.append((task, r["regime"], test_set, iv, arms_verdict(
          regime_scores(study, "scratch", task), regime_scores(study, r["regime"], task))))
  verdicts = _deltas_verdicts([d[3:] for d in deltas], "yes: the fine-tune does better",
                              "no: scratch does better")
  return [Answer(2, task, regime, iv, verdict, _delta_sentence(
              task, f"{finetune_words(regime)} − tuned scratch", iv, test_set, label, verdict,
              p_holm, family), family=family, test_set=test_set)
          for (task, regime, test_set, iv, _), (verdict, p_holm, family) in zip(deltas, verdicts)]


# ----------------------------------------------------------------------------- question 3


def related_answers(study):
  """Question 3: per task fine-tuned from both RELATED and UNRELATED, from related - from
  unrelated, paired by seed on the task's primary test set."""
  label = tables.metric_names(study)[2]
  deltas = []  # (task, test set, interval, arms' verdict)
  for task in study.tasks:
    delta = _columns_delta(study, task, f"finetune:{UNRELATED}", f"finetune:{RELATED}")
    if delta:
      deltas.append((task, *delta))
  groups = study.config["groups"]
  what = (f"fine-tuned from related {'+'.join(groups.get(RELATED, ()))} − from unrelated "
          f"{'+'.join(groups.get(UNRELATED, ()))}")
  verdicts = _deltas_verdicts([d[2:] for d in deltas], *RELATED_VERDICTS)
  return [Answer(3, task, "", iv, verdict, _delta_sentence(task, what, iv, test_set, label,
                                                           verdict, p_holm, family),
                 family=family, test_set=test_set)
          for (task, test_set, iv, _), (verdict, p_holm, family) in zip(deltas, verdicts)]


# ----------------------------------------------------------------------------- question 4


def remedy_answers(study):
  """Question 4: per method column (joint:<method>) and task, method - plain joint, paired by
  seed on the task's primary test set (the remedies table's Δ vs joint)."""
  label = tables.metric_names(study)[2]
  deltas = []  # (task, column, test set, interval, arms' verdict)
  for col in [c for c in remedies.method_columns(study) if c != "joint"]:
    for task in study.tasks:
      delta = _columns_delta(study, task, "joint", col)
      if delta:
        deltas.append((task, col, *delta))
  verdicts = _deltas_verdicts([d[3:] for d in deltas], *REMEDY_VERDICTS)
  return [Answer(4, task, col, iv, verdict, _delta_sentence(
              task, f"{col} − plain joint", iv, test_set, label, verdict, p_holm, family),
                 family=family, test_set=test_set)
          for (task, col, test_set, iv, _), (verdict, p_holm, family) in zip(deltas, verdicts)]


def _missing(study, question):
  """Why `question` has no answer here: the runs that answer it are not done yet, or the study
  does not measure it (and which study config does)."""
  regimes, groups = study.config["regimes"], set(study.config["groups"])
  wanted = [r for a in ANSWERED_BY[question] for r in regimes
            if r == a or (a.endswith(":") and r.startswith(a))]
  # during training (probe_plan: not under schedule 'one'), or at the end (final_conflicts)
  probed = bool(wanted) and (bool(study.config["final_conflicts"]["batch_size"]) or any(
      probe_plan(ml_collections.ConfigDict(run_config(study.config, r))).probe_every
      for r in study.runs if r.regime in wanted))
  measures = {1: probed,
              2: len(wanted) == 2, 3: len(wanted) == 2 and {RELATED, UNRELATED} <= groups,
              4: "joint" in wanted and len(wanted) > 1}
  runs = [r for r in study.runs if r.regime in wanted]
  dead = sorted({study.dead_end(r.sweep) for r in runs if not study.is_done(r.name)} - {None})
  left = [r for r in runs if not study.is_done(r.name) and not study.dead_end(r.sweep)]
  never = (f"every lr of {', '.join(map(sweep_runs, dead))} diverged, so the fine-tunes that "
           "start there never can; give those sweeps lower lrs (lrs, or lrs_override for the "
           "regime)")
  if measures[question] and left:
    done = sum(study.is_done(r.name) for r in runs)
    return (f"{NOT_YET}: its {'/'.join(wanted)} runs, {done} of {len(runs)} done; the same "
            "launch/study.py command runs the rest" + (f"; {never}" if dead else ""))
  if measures[question] and dead:
    return f"no answer: {never}"
  if question == 1:
    why = ("no joint or group run of it records conflicts (run.conflicts.every > 0 with "
           "schedule 'all', or final_conflicts.batch_size > 0)" if wanted else
           "it has no multi-task pre-training (regime 'joint' or 'groups')")
  elif question == 2:
    why = "it needs the regimes 'scratch' and 'finetune' with runs done"
  elif question == 4:
    why = ("it needs the regime 'joint' and a 'joint:<method>' (an aggregator or a loss "
           "weighting) with runs done")
  else:
    why = (f"it needs groups named '{RELATED}' and '{UNRELATED}' sharing a task, each "
           "fine-tuned (regimes 'groups' and 'finetune'), with runs done" +
           ("" if {RELATED, UNRELATED} <= groups else
            f"; its groups: {', '.join(sorted(groups)) or 'none'}"))
  return f"{NOT_MEASURED}: {why}; {MEASURED_BY[question]} measures it."


def build(study, transfer, records, final=()):
  """The Findings of a study from its transfer table and its conflict records
  (scores.conflict_records, scores.final_conflict_records)."""
  answers = {1: conflict_answers(study, records, final), 2: finetune_answers(study, transfer),
             3: related_answers(study), 4: remedy_answers(study)}
  missing = {q: _missing(study, q) for q, a in answers.items() if not a}
  # what a Δ of 2-4 compares: each arm's steps and lr grid, beside the answer it qualifies
  notes = {q: comparison_note(study) + " " + tables.edge_note(study, _arms(answers[q]))
           + _multiplicity(answers[q][0].family) for q in (2, 3, 4) if answers[q]}
  if answers[4]:  # the methods' own arguments are not swept as the lr is
    notes[4] += " " + remedies.arguments_note(study)
  if answers[1]:
    notes[1] = (_multiplicity(answers[1][0].family, "pairs' answers", "pair") + " "
                + layer_note(study, layer_conflicts(records, final))).strip()
  return Findings(answers, missing, probe_note(study, records, final), notes)


def _multiplicity(k, these="Δs compared alike", one="Δ"):
  """What the verdicts of one question's k estimates claim together: held family-wise
  (family_verdicts)."""
  return ("" if k < 2 else f" The {k} {these} each have their own 95% interval; a "
          "yes or no holds over all of them (Holm 1979: were nothing different, the chance that "
          f"any verdict is wrong is at most 5%), so a {one} whose interval just excludes 0 may "
          f"still be {NOT_ENOUGH}.")


def _arms(answers):
  """The (column, task) arms the Δs of question 2, 3 or 4 compare, in order, each fine-tune
  with the pre-training it starts from (joint or group:<g>)."""
  arms = {}
  for a in answers:
    tuned = {2: ("scratch", a.source), 3: (f"finetune:{UNRELATED}", f"finetune:{RELATED}"),
             4: ("joint", a.source)}[a.question]
    for col in tuned:
      sources = [(pretraining_column(col), a.subject)] if col.startswith("finetune") else []
      arms.update(dict.fromkeys([(col, a.subject)] + sources))
  return list(arms)


def comparison_note(study):
  """The budget (each regime's steps, what is equalized) and the lr grids the Δs compare."""
  return f"Compared at: {tables.budget_note(study)} {tables.lr_note(study)}"


# ----------------------------------------------------------------------------- text


def markdown(findings, figures=(), status=""):
  """The findings section of report.md: each question, a sentence per subject, the figures."""
  lines = ["## Findings", ""]
  if status:
    lines += [status, ""]
  for q, question in enumerate(QUESTIONS, 1):
    lines += [f"**{q}. {question}**", ""]
    lines += [f"- {s}" for s in findings.sentences(q)]
    lines.append("")
    if q in findings.notes:
      lines += [findings.notes[q], ""]
  probes = findings.probe_note + " " if findings.probe_note else ""
  lines += ["Intervals: 95%. Question 1: the noise-corrected cosine between the two tasks' "
            "expected gradients on the shared body, per phase of the probe steps (thirds), "
            "combined over seeds (their mean; its se the larger of the runs' own and the seeds' "
            "spread / √k, the latter with a t quantile on k-1 df, so seeds that disagree leave "
            "it open); the answer is the last checkpoints' fresh-batch measurement ('end') "
            "where the study made one, else the last phase's (what training settled into). "
            f"{probes}Questions 2-4: paired Δ over seeds (paired t), each regime's "
            f"learning rate chosen per seed on validation. '{NOT_ENOUGH}': the interval holds 0 "
            "(or one seed gives none); where the seeds' spread leaves an answer open, about how "
            "many seeds would detect a true effect of its size at 80% power, were the spread as "
            "observed (the noncentral t; tested at 5%/k where the question holds k answers "
            "together, the level Holm asks of their smallest p): a planning figure, not "
            "evidence of an effect.", ""]
  for path, title in figures:
    lines += [f"![{title}]({path})", ""]
  return "\n".join(lines) + "\n"


def terminal_lines(findings):
  """The answers for a terminal: a question line each, an indented sentence per subject."""
  lines = []
  for q, question in enumerate(QUESTIONS, 1):
    lines.append(f"{q}. {question}")
    lines += [f"   {s}" for s in findings.sentences(q)]
    lines += [f"   {findings.notes[q]}"] if q in findings.notes else []
  return lines
