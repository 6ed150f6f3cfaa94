"""launch/benchmark.py: the compile and trace sections' tables and summary rows, the summary's
cells, one-line refusals of bad flags, MFU's data-sheet peaks, a PyTorch peer that cannot run
(a failure), the probe rows' memory, and the devices section: its meshes' traffic, and its
refusal on an accelerator."""
import json
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


def _patched(code, *args, timeout=900):
  """launch/benchmark.py's main run as the command line does, after `code` (which may replace
  the module's functions: `benchmark`, `jax`), in its own process (absl's flags are global)."""
  script = ("import sys; sys.path.insert(0, 'launch'); import jax, benchmark, cli; "
            f"from absl import app; {code}; sys.argv = ['benchmark.py'] + {list(args)!r}; "
            "app.run(benchmark.main, flags_parser=cli.parse_flags)")
  return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, env=dict(os.environ, PYTHONPATH=ROOT))


def _one_error(out):
  errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
  return errors[0]


@pytest.mark.parametrize("flag, valid", [("--batch_size=8,x", "positive integers"),
                                         ("--probe_variants=fast", "plain,probe,jacrev"),
                                         ("--probe_variants=", "one or more of plain,"),
                                         ("--torch_precisions=fp16", "fp32, tf32, bf16"),
                                         ("--batch_size=2", "a multiple of it"),
                                         ("--devices=0", "positive integer"),
                                         ("--startup_steps=0", "positive integer"),
                                         ("--scan_unroll=0", "positive integer"),
                                         ("--gramian_chunk=-1", "non-negative integer"),
                                         ("--tasks=", "one or more of sr_x2,"),
                                         ("--sections=", "one or more of train,")])
def test_bad_flags_are_refused_with_one_line(flag, valid):
  out = _benchmark("--sections=pipeline,devices", flag)
  assert out.returncode == 1
  error = _one_error(out)
  assert valid in error and flag.split("=")[1] in error


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


def test_a_program_loaded_from_the_compile_cache_is_not_timed_as_a_compile(tmp_path):
  # --compile_cache (gpu_check.sh passes it) made a cache load read as a compile time
  code = ("import sys; sys.path.insert(0, 'launch'); import jax, jax.numpy as jnp, benchmark; "
          f"from mtl import compile_cache; compile_cache.enable({str(tmp_path)!r}); "
          "f = jax.jit(lambda a, b: jnp.sin(a) @ b); x = jnp.ones((64, 64)); out = []\n"
          "for _ in range(2):\n"
          "  out.append(benchmark._compiled_figures(f, x, x)[3]); jax.clear_caches()\n"
          "import json; print(json.dumps([benchmark._compile_text(s) for s in out]))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
  assert out.returncode == 0, out.stderr[-2000:]
  first, second = json.loads(out.stdout.splitlines()[-1])
  assert first != "cached" and float(first) >= 0 and second == "cached"


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


KINDS = ("NVIDIA H100 80GB HBM3", "NVIDIA H100 NVL", "NVIDIA H100 PCIe", "NVIDIA H200",
         "NVIDIA H200 NVL", "NVIDIA A100-SXM4-80GB", "NVIDIA GeForce RTX 4090", "NVIDIA L40S",
         "NVIDIA L40", "NVIDIA L4")


def _peaks(precision, matmul_precision=None):
  """{device kind: benchmark.peak_flops / 1e12} for KINDS (GPUs), and the words of the peak."""
  code = ("import json, sys, types; sys.path.insert(0, 'launch'); import jax, benchmark; "
          f"p = {matmul_precision!r}; p and jax.config.update('jax_default_matmul_precision', p); "
          "gpu = lambda k: types.SimpleNamespace(platform='gpu', device_kind=k); "
          f"print(json.dumps([{{k: (benchmark.peak_flops(gpu(k), {precision!r}) or 0) / 1e12 "
          f"for k in {KINDS!r}}}, benchmark._peak_arithmetic(gpu('NVIDIA H200'), "
          f"{precision!r})]))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.splitlines()[-1])


def test_mfu_peak_is_the_data_sheet_s_for_each_form_and_what_float32_runs_as():
  """Dense bf16 peaks differ by form (SXM 989, NVL 835, PCIe 756 TFLOP/s): a lent 'NVIDIA H100
  80GB HBM3' is the SXM form, and 'NVIDIA H200 NVL' is not the SXM H200. float32 runs as TF32 on
  these GPUs at JAX's default precision: its MFU is against the dense TF32 tensor-core peak (half
  the data sheets' figures with sparsity), not the non-tensor FP32 one, which a JAX float32
  matmul exceeded on an H200; that one only where the default precision is 'highest'. Device
  kinds as jax's CUDA devices name them."""
  bf16, words = _peaks("bfloat16")
  # an L40S, L40 and L4 each get their own (the L4's key is part of the others' names)
  assert bf16 == pytest.approx({KINDS[0]: 989, KINDS[1]: 835, KINDS[2]: 756, KINDS[3]: 989,
                                KINDS[4]: 835, KINDS[5]: 312, KINDS[6]: 0, KINDS[7]: 362,
                                KINDS[8]: 181, KINDS[9]: 121}), bf16
  assert words == "dense bfloat16"
  tf32, words = _peaks("float32")
  assert tf32 == pytest.approx({KINDS[0]: 494.7, KINDS[1]: 417.5, KINDS[2]: 378, KINDS[3]: 494.7,
                                KINDS[4]: 417.5, KINDS[5]: 156, KINDS[6]: 0, KINDS[7]: 183,
                                KINDS[8]: 90.5, KINDS[9]: 60}), tf32
  assert "TF32" in words and "JAX's default precision" in words, words
  fp32, words = _peaks("float32", "highest")
  assert fp32[KINDS[0]] == pytest.approx(67) and fp32[KINDS[4]] == pytest.approx(60), fp32
  assert words.startswith("FP32"), words


@pytest.mark.parametrize("checkout, python, why", [
    (False, "python3", "no official IPT checkout at --ipt_repo="),
    (True, "/nonexistent/python", "cannot import torch and einops (no such program)")])
def test_a_peer_asked_for_that_cannot_run_is_a_failure_after_the_figures(
    tmp_path, checkout, python, why):
  repo = tmp_path / "ipt"
  if checkout:
    (repo / "model").mkdir(parents=True)
    (repo / "model" / "ipt.py").write_text("")
  out = _benchmark("--against=torch", "--sections=train", "--sizes=tiny", "--tasks=sr_x2",
                   "--batch_size=2", "--repeats=1", f"--ipt_repo={repo}",
                   f"--torch_python={python}")
  assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
  error = _one_error(out)
  assert error.startswith("error: --against=torch: the PyTorch peer did not run: ") and why in error
  # our figures still come, with no PyTorch cell
  rows = [l for l in out.stdout.splitlines() if l.startswith("ROW | train: one-task step |")]
  assert len(rows) == 1 and rows[0].endswith("| - |"), out.stdout[-2000:]
  assert "[summary]" in out.stdout


def test_probe_rows_carry_each_variant_s_compiled_peak_not_the_process_s():
  """On a GPU the device's peak in use is the process's, the heaviest variant's once all have
  run: each row carries its own variant's compiled peak, and the process's is printed once. Here
  the device is made to report 7 GiB."""
  out = _patched("benchmark._device_peak_bytes = lambda: 7 * 2**30", "--sections=probe",
                 "--sizes=tiny", "--batch_size=2", "--repeats=1", "--probe_variants=plain,probe")
  assert out.returncode == 0, out.stderr[-3000:]
  compiled = dict(re.findall(r"^  (no probe|probe) .* compiled peak +([\d.]+) MB", out.stdout,
                             re.M))
  rows = {r.split(" | ")[1]: r.split(" | ")[9] for r in out.stdout.splitlines()
          if r.startswith("ROW | probe: ")}
  assert len(compiled) == 2 and len(rows) == 2, out.stdout
  for label, peak in rows.items():
    variant = "no probe" if label == "probe: no probe" else "probe"
    assert peak == f"{float(compiled[variant]) / 1024:.2f}" != "7.00", (label, out.stdout)
  assert out.stdout.count("in use so far in this process (all variants above): 7.00 GiB") == 1
  # compiling a section's variants may take minutes: each one's warm-up is said as it ends
  assert re.findall(r"^  warm-up (\d/2): ", out.stderr, re.M) == ["1/2", "2/2"], out.stderr


def test_devices_section_gives_each_mesh_s_traffic_and_times_what_the_host_can_hold():
  # The host's memory as the first mesh (1 device) is timed, none left for the others: their
  # rows say why they are not timed, and still give the MB their compiled step moves.
  memory = "left = iter([1 << 40]); benchmark._host_memory_available = lambda: next(left, 0)"
  out = _patched(memory, "--sections=devices", "--sizes=tiny", "--devices=2", "--batch_size=2",
                 "--repeats=1", timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [l for l in out.stdout.splitlines() if l.startswith("  ")]
  assert re.fullmatch(r"  1 device +[\d.]+ ms/step +1\.00x +MB moved: none", rows[0]), rows
  data = re.fullmatch(r"  data=2 +not timed: 2 device\(s\) x [\d.]+ GB compiled peak > 0\.0 GB "
                      r"of host memory available +MB moved: all-reduce ([\d.]+)", rows[1])
  fsdp = re.fullmatch(r"  fsdp=2 +not timed: .* MB moved: all-gather ([\d.]+), all-reduce "
                      r"([\d.]+)", rows[2])
  assert data and fsdp and len(rows) == 3, rows
  # data parallelism reduces the gradients; FSDP as much, and gathers the split weights
  assert float(fsdp.group(2)) == float(data.group(1)) > 0 and float(fsdp.group(1)) > 0


def test_sections_run_in_flag_order_and_devices_is_for_cpu_runs_only():
  """On an accelerator jax.devices() are its chips: the devices section (fake CPU devices) is
  refused when asked for, and left out of the default sections with a line saying so. Sections
  run in the order given (launch/gpu_check.sh runs compile before train)."""
  fake = ("jax.default_backend = lambda: 'gpu'; [setattr(benchmark, f'section_{n}', "
          "lambda size, n=n: print('ran', n)) for n in ('train', 'probe', 'devices', 'compile')]; "
          "benchmark.section_pipeline = lambda: print('ran pipeline')")
  out = _patched(fake, "--sections=train,devices", "--sizes=tiny", timeout=300)
  assert out.returncode == 1 and "ran " not in out.stdout
  assert "the devices section compares 8 fake CPU devices" in _one_error(out)
  out = _patched(fake, "--sizes=tiny", timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "devices section left out" in out.stdout
  assert [l for l in out.stdout.splitlines() if l.startswith("ran ")] == [
      "ran train", "ran pipeline", "ran probe"]
  out = _patched(fake, "--sections=compile,train", "--sizes=tiny", timeout=300)
  assert [l for l in out.stdout.splitlines() if l.startswith("ran ")] == [
      "ran compile", "ran train"], out.stdout
