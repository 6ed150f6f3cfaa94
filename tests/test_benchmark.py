"""launch/benchmark.py: the compile and trace sections' tables and summary rows, the summary's
cells, and one-line refusals of bad flags."""
import os
import re
import subprocess
import sys

import jax
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _benchmark(*args, timeout=900):
  return subprocess.run([sys.executable, "launch/benchmark.py", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout,
                        env=dict(os.environ, PYTHONPATH=ROOT))


@pytest.mark.parametrize("flag, valid", [("--batch_size=8,x", "positive integers"),
                                         ("--probe_variants=fast", "plain,probe,jacrev"),
                                         ("--torch_precisions=fp16", "fp32, bf16"),
                                         ("--batch_size=2", "a multiple of it")])
def test_bad_flags_are_refused_with_one_line(flag, valid):
  out = _benchmark("--sections=pipeline,devices", flag)
  assert out.returncode == 1
  errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and valid in errors[0] and flag.split("=")[1] in errors[0]


def test_compile_section_times_every_step_function_and_keeps_summary_rows():
  out = _benchmark("--sections=compile", "--sizes=tiny", "--tasks=sr_x2", "--batch_size=2")
  assert out.returncode == 0, out.stderr[-3000:]
  text = out.stdout
  for label in ("one-task step sr_x2 (schedule one)", "plain joint step (schedule all)",
                "probe step (schedule all)", "init (the fresh state)",
                "eval tile function (32 tiles, sr_x4)"):
    assert re.search(rf"^  {re.escape(label)} +\d+\.\d +\d+\.\d$", text, re.M), text
  assert "one-task step sr_x3" not in text  # --tasks picks the one-task steps
  rows = [l for l in text.splitlines() if l.startswith("ROW | compile s: ")]
  assert len(rows) == 5  # plain, probe, init, eval, the one-task maximum: as they finish
  table = text[text.index("[summary]"):].splitlines()
  assert table[1].startswith("| what | size | batch |") and len(table) == 3 + len(rows)
  assert all(r[4:] in table for r in rows)


def test_trace_section_says_where_each_step_s_time_goes():
  out = _benchmark("--sections=trace", "--sizes=tiny", "--tasks=sr_x2", "--batch_size=2",
                   "--repeats=1")
  assert out.returncode == 0, out.stderr[-3000:]
  text = out.stdout
  blocks = text.split("\n[trace] ")[1:]
  assert [re.match(r"size=tiny: (.*?), batch 2", b).group(1) for b in blocks] == [
      "one-task step (sr_x2)", "plain joint step", "probe step"]
  for block in blocks:
    busy = re.search(r"ops running [\d.]+ ms of it \((\d+)%", block)
    assert busy and 0 < int(busy.group(1)) <= 100, block
    for stage in ("head", "body/encoder/attention", "body/decoder/mlp", "tail", "optimizer"):
      assert re.search(rf"^    {re.escape(stage)} +\d+\.\d\d +\d+\.\d\d +[\d.]+% +[1-9]\d*$",
                       block, re.M), (stage, block)
    assert "events read" not in block  # the step's own module was found in the trace
    assert ("a host trace" in block) == (jax.default_backend() == "cpu")
  assert re.search(r"^    gramians ", blocks[2], re.M) and not re.search(r"^    gramians ", blocks[1],
                                                                            re.M)
  rows = [l for l in text.splitlines() if l.startswith("ROW | trace: ")]
  assert len(rows) == 3  # the running share only where the trace times the ops: not on a CPU
  assert all((r.split(" | ")[5] == "-") == (jax.default_backend() == "cpu") for r in rows), rows
  # Each step's untraced time, a row as the train and probe sections write theirs (the baselines
  # of gpu_check's diagnosis parts); the probe's ratio is of the two rows' own times.
  untraced = [l.split(" | ") for l in text.splitlines()
              if l.startswith("ROW ") and "[trace part, untraced]" in l]
  labels = [r[1].removesuffix(" [trace part, untraced]") for r in untraced]
  assert len(labels) == 3 and labels[:2] == ["train: one-task step", "probe: no probe"], labels
  ratio = float(re.fullmatch(r"probe: probe \(([\d.]+)x plain\)", labels[2]).group(1))
  ms = [float(r[5]) for r in untraced]
  assert all(m > 0 for m in ms) and ratio == pytest.approx(ms[2] / ms[1], abs=0.01), untraced


def test_the_startup_section_s_train_command_is_valid():
  """The start-up section times launch/train.py with IPT's config on the embedded photographs:
  its command must pass every check train.py makes before its first step (a dry run makes them
  all and writes nothing)."""
  import json
  code = ("import json, sys; sys.path.insert(0, 'launch'); import benchmark; "
          "benchmark.FLAGS(['benchmark.py']); print(json.dumps(benchmark.startup_command("
          "'tiny', 2, '/nonexistent/startup/cold', '/nonexistent/cache')))")
  made = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
  assert made.returncode == 0, made.stderr[-2000:]
  command = json.loads(made.stdout.splitlines()[-1])  # its own process: absl's flags are global
  out = subprocess.run(command + ["--dry_run"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
  assert out.returncode == 0, out.stderr[-2000:]
  assert "data.source = 'photos'" in out.stdout and "data.folder = ''" in out.stdout
  assert not os.path.exists("/nonexistent")


def test_mfu_peak_is_the_data_sheet_s_for_each_h100_form():
  """The H100's forms differ in dense bf16 peak (SXM 989, NVL 835, PCIe 756 TFLOP/s): a lent
  'NVIDIA H100 80GB HBM3' is the SXM form. Device kinds as jax's CUDA devices name them."""
  code = ("import sys, types; sys.path.insert(0, 'launch'); import benchmark; "
          "print([benchmark.peak_flops(types.SimpleNamespace(platform='gpu', device_kind=k), "
          "'bfloat16') for k in ('NVIDIA H100 80GB HBM3', 'NVIDIA H100 NVL', "
          "'NVIDIA H100 PCIe', 'NVIDIA H200', 'NVIDIA GeForce RTX 4090')])")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.splitlines()[-1] == str([989e12, 835e12, 756e12, 989e12, None]), out.stdout
