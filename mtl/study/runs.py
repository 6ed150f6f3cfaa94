"""A study expanded: its runs (StudyRun), in the order it lists them, and each run's config."""
import dataclasses
import json

from mtl.study.spec import _as_dict, format_lr, method_of, regime_lrs, regime_steps


@dataclasses.dataclass(frozen=True)
class StudyRun:
  """One run of a study."""
  name: str
  regime: str        # one of STUDY_REGIMES
  column: str        # its column in the tables: scratch, joint, finetune, pair:a+b, group:g,
                     # finetune:g (fine-tuned from group g)
  tasks: tuple
  seed: int
  lr: float
  steps: int
  sweep: str         # the name without the lr: the runs among which the lr is chosen
  source: str = ""   # finetune: the sweep of the pre-training runs it starts from
  # finetune: its source's steps; its data (run config data.step_offset) continues after them,
  # so pre-training + fine-tuning see the samples a scratch run of as many steps sees
  step_offset: int = 0

  def to_json(self):
    return dict(dataclasses.asdict(self), tasks=list(self.tasks))


def sweep_runs(sweep):
  """The shell pattern of a sweep's run names: 'scratch-sr_x2-s0' -> 'scratch-sr_x2-lr*-s0'."""
  prefix, seed = sweep.rsplit("-s", 1)
  return f"{prefix}-lr*-s{seed}"


def is_pretraining(column):
  """Whether a column's runs are multi-task pre-training (joint, group:<g>): its sweeps are
  chosen for fine-tunes and measured by final_conflicts."""
  return column == "joint" or column.startswith("group:")


def pretraining_column(column):
  """The column of the pre-training runs a fine-tune column starts from: finetune -> joint,
  finetune:g -> group:g."""
  return "joint" if column == "finetune" else "group:" + column.split(":", 1)[1]


def expand(study):
  """The study's runs in the order tables and listings show them: per seed, scratch, joint, its
  fine-tunes, pairs, groups, their fine-tunes (scratch last under equal_flops); within each,
  tasks in study order, then learning rates. (runner.start_order says which starts first.)"""
  d = _as_dict(study)
  regimes, names = d["regimes"], list(d["tasks"])
  runs = []

  def add(regime, column, prefix, run_tasks, seed, source="", source_regime=None):
    for lr in regime_lrs(d, regime):
      runs.append(StudyRun(
          name=f"{prefix}-lr{format_lr(lr)}-s{seed}", regime=regime, column=column,
          tasks=tuple(run_tasks), seed=seed, lr=float(lr), steps=regime_steps(d, regime),
          sweep=f"{prefix}-s{seed}", source=source,
          step_offset=regime_steps(d, source_regime) if source_regime else 0))

  scratch_last = d["budget"] == "equal_flops"  # its steps come from the fine-tunes' FLOPs
  for seed in d["seeds"]:
    if "scratch" in regimes and not scratch_last:
      for t in names:
        add("scratch", "scratch", f"scratch-{t}", [t], seed)
    if "joint" in regimes:
      add("joint", "joint", "joint", names, seed)
      if "finetune" in regimes:
        for t in names:
          add("finetune", "finetune", f"finetune-{t}", [t], seed, source=f"joint-s{seed}",
              source_regime="joint")
    for regime in regimes:
      if method_of(regime):
        add(regime, regime, f"joint-{method_of(regime)}", names, seed)
    if "pairs" in regimes:
      for i, a in enumerate(names):
        for b in names[i + 1:]:
          add("pairs", f"pair:{a}+{b}", f"pair-{a}+{b}", [a, b], seed)
    if "groups" in regimes:
      for g, members in d["groups"].items():
        add("groups", f"group:{g}", f"group-{g}", members, seed)
      if "finetune" in regimes:
        for g, members in d["groups"].items():
          for t in names:
            if t in members:
              add("finetune", f"finetune:{g}", f"finetune-{t}-from-{g}", [t], seed,
                  source=f"group-{g}-s{seed}", source_regime="groups")
    if "scratch" in regimes and scratch_last:
      for t in names:
        add("scratch", "scratch", f"scratch-{t}", [t], seed)
  return runs


def _merge(target, partial):
  for key, value in partial.items():
    if isinstance(value, dict) and isinstance(target.get(key), dict):
      _merge(target[key], value)
    else:
      target[key] = value


def run_config(study, spec, init_from="", steps=None):
  """The run config (a plain dict, JSON-ready) of one run; steps: when spec.steps is derived."""
  d = _as_dict(study)
  config = json.loads(json.dumps(d["run"]))
  method = method_of(spec.regime)
  _merge(config, d["per_regime"]["joint" if method else spec.regime])
  if method:  # the run's config.mtl: an aggregator or a loss weighting
    from mtl import aggregators
    key = "loss_weighting" if method in aggregators.LOSS_WEIGHTINGS else "aggregator"
    config.setdefault("mtl", {})[key] = method
    _merge(config, d["per_regime"].get(spec.regime, {}))  # the method's own arguments
  config["tasks"] = list(spec.tasks)
  config["regime"] = spec.regime if spec.regime in ("scratch", "finetune") else "joint"
  config["seed"] = spec.seed
  config["total_steps"] = spec.steps if steps is None else steps
  config["optim"]["lr"] = spec.lr
  config["init_from"] = init_from
  config["data"]["step_offset"] = spec.step_offset  # 0 but for fine-tunes: see StudyRun
  if len(spec.tasks) == 1:  # one task has no pairs to probe (the trainer would only warn)
    config["conflicts"]["every"] = 0
  return config
