"""mtl.op_profile: op kinds read from compiled HLO text, stages from jax's op names, and a real
jax.profiler trace summed per op, per kind and per stage."""
import jax
import jax.numpy as jnp
import pytest

from mtl import op_profile

# Post-optimisation HLO of the shapes a GPU compile produces (cuBLAS, cuDNN and Triton calls,
# fusions, a loop, collectives), written out: this machine compiles for its CPU only.
GPU_HLO = """HloModule jit_train_step, is_scheduled=true

%fused_dot (p0: bf16[8,16], p1: bf16[16,4]) -> bf16[8,4] {
  %p0 = bf16[8,16]{1,0} parameter(0)
  %p1 = bf16[16,4]{1,0} parameter(1)
  ROOT %dot.1 = bf16[8,4]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_add (p0: f32[8]) -> f32[8] {
  %p0 = f32[8]{0} parameter(0)
  ROOT %add.2 = f32[8]{0} add(%p0, %p0)
}

%fused_transpose (p0: f32[8,4]) -> f32[4,8] {
  %p0 = f32[8,4]{1,0} parameter(0)
  ROOT %transpose.3 = f32[4,8]{1,0} transpose(%p0), dimensions={1,0}
}

ENTRY %main (a: bf16[8,16], b: bf16[16,4]) -> f32[8] {
  %a = bf16[8,16]{1,0} parameter(0)
  %custom-call.1 = (bf16[8,4]{1,0}, s8[64]{0}) custom-call(%a, %b), custom_call_target="__cublas$lt$matmul", metadata={op_name="jit(train_step)/jvp(body)/encoder/while/body/closed_call/mlp/dot_general"}
  %custom-call.2 = (bf16[1,8,8,4]{3,2,1,0}, u8[0]{0}) custom-call(%a), custom_call_target="__cudnn$convForward", metadata={op_name="jit(train_step)/transpose(jvp(head))/conv_general_dilated"}
  %custom-call.3 = (bf16[1,8,2,4]{3,2,1,0}, u8[0]{0}) custom-call(%a), custom_call_target="__cudnn$fmhaSoftmax"
  %gemm_fusion.4 = bf16[8,4]{1,0} fusion(%a, %b), kind=kCustom, calls=%fused_dot, backend_config={"fusion_backend_config":{"kind":"__triton_gemm"}}
  %loop_fusion.5 = f32[8]{0} fusion(%p), kind=kLoop, calls=%fused_add
  %transpose_fusion.6 = f32[4,8]{1,0} fusion(%q), kind=kLoop, calls=%fused_transpose
  %while.7 = (s32[], f32[8]{0}) while(%t), condition=%cond, body=%body
  %copy.8 = f32[8]{0} copy(%r)
  %all-reduce-start.9 = f32[8]{0} all-reduce-start(%r), replica_groups={}, to_apply=%sum
  %get-tuple-element.10 = bf16[8,4]{1,0} get-tuple-element(%custom-call.1), index=0
  ROOT %reduce.11 = f32[] reduce(%r, %z), dimensions={0}, to_apply=%sum
}
"""


def test_op_kinds_read_opcodes_call_targets_and_fusions():
  kinds = {name: kind for name, (kind, _) in op_profile.op_kinds(GPU_HLO).items()}
  assert kinds["custom-call.1"] == "matmul"  # cuBLAS
  assert kinds["custom-call.2"] == "convolution"  # cuDNN
  assert kinds["custom-call.3"] == "attention"  # cuDNN's fused attention
  assert kinds["gemm_fusion.4"] == "matmul"  # a Triton gemm: a fusion around a dot
  assert kinds["loop_fusion.5"] == "fusion"
  assert kinds["transpose_fusion.6"] == "data movement"
  assert kinds["copy.8"] == "data movement"
  assert kinds["all-reduce-start.9"] == "collective"
  assert kinds["reduce.11"] == "fusion"
  # containers and instructions that run nothing are known, with no kind: never counted
  assert kinds["while.7"] is None and kinds["get-tuple-element.10"] is None and kinds["a"] is None
  assert op_profile.module_name(GPU_HLO) == "jit_train_step"
  assert op_profile.op_kinds(GPU_HLO)["custom-call.2"][1].endswith("conv_general_dilated")


# A loop of 12 (an asynchronous all-gather, a loop of 2 within it holding an all-reduce), a
# conditional's branch and a synchronous reduce-scatter, as a GPU's compiled step writes them.
LOOP_HLO = """HloModule jit_step

%inner (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %p = (s32[], f32[4]{0}) parameter(0)
  %all-reduce.1 = f32[4]{0} all-reduce(%x), replica_groups={}, to_apply=%sum
}

%layer (p: (s32[], bf16[8,16])) -> (s32[], bf16[8,16]) {
  %p = (s32[], bf16[8,16]{1,0}) parameter(0)
  %all-gather-start.2 = (bf16[2,16]{1,0}, bf16[8,16]{1,0}) all-gather-start(%w), dimensions={0}
  %all-gather-done.3 = bf16[8,16]{1,0} all-gather-done(%all-gather-start.2)
  %while.4 = (s32[], f32[4]{0}) while(%t), condition=%c, body=%inner, backend_config={"known_trip_count":{"n":"2"}}
}

%branch (p: f32[2]) -> f32[2] {
  %all-to-all.5 = (f32[2]{0}, f32[2]{0}) all-to-all(%a, %b), dimensions={0}
}

ENTRY %main (a: bf16[8,16]) -> f32[] {
  %while.6 = (s32[], bf16[8,16]{1,0}) while(%t), condition=%c, body=%layer, backend_config={"known_trip_count":{"n":"12"},"other":{}}
  %conditional.7 = f32[2]{0} conditional(%i, %x), branch_computations={%branch, %branch}
  %reduce-scatter.8 = f32[1,256]{1,0} reduce-scatter(%g), dimensions={0}, to_apply=%sum
}
"""


def test_collectives_are_counted_as_often_as_they_run():
  assert op_profile.collective_bytes(LOOP_HLO) == {
      "all-gather": 12 * 8 * 16 * 2,   # by its -done half: the gathered bf16[8,16], 12 times
      "all-reduce": 12 * 2 * 4 * 4,    # f32[4], 2 trips of 12
      "all-to-all": 2 * 2 * 2 * 4,     # both results, each branch counted (an upper bound)
      "reduce-scatter": 256 * 4}


@pytest.mark.parametrize("op_name, expected", [
    ("jit(train_step)/jvp(body)/encoder/while/body/closed_call/attention/dot_general",
     ("body/encoder/attention", False)),
    ("jit(train_step)/transpose(jvp(body))/decoder/while/body/closed_call/mlp/dot_general",
     ("body/decoder/mlp", True)),
    ("jit(train_step)/degrade/while/body/add", ("degrade", False)),  # a loop's body, not IPT's
    ("jit(train_step)/optimizer/mul", ("optimizer", False)),
    ("", ("", False)),
])
def test_stage_is_the_path_of_mtl_s_named_scopes(op_name, expected):
  assert op_profile.stage(op_name) == expected


def test_kernel_names_give_a_kind_where_no_hlo_op_is_named():
  assert op_profile.kernel_kind("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n") == "matmul"
  assert op_profile.kernel_kind("nvjet_hsh_128x256_64x4_2x1_v_bz_coopB_NTN") == "matmul"
  assert op_profile.kernel_kind("cudnn_generated_fort_native_sdpa_sm90_flash_fprop") == "attention"
  assert op_profile.kernel_kind("sm80_xmma_fprop_implicit_gemm_indexed_wo_smem") == "convolution"
  assert op_profile.kernel_kind("MemcpyD2D") == "data movement"
  assert op_profile.kernel_kind("loop_add_fusion") == "other"


def test_a_device_s_derived_lines_are_not_counted_twice():
  """A trace with a device: only its stream's kernels count, not the derived line that repeats
  them, nor the host's events."""
  meta = lambda pid, tid, kind, name: {"ph": "M", "pid": pid, "tid": tid, "name": kind,
                                       "args": {"name": name}}
  op = lambda pid, tid, ts, dur, name, hlo: {
      "ph": "X", "pid": pid, "tid": tid, "ts": ts, "dur": dur, "name": name,
      "args": {"hlo_op": hlo, "hlo_module": "jit_train_step"} if hlo else {}}
  events = [
      {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
      {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/host:CPU"}},
      meta(1, 7, "thread_name", "Stream #7(Compute)"), meta(1, 8, "thread_name", "XLA Ops"),
      op(1, 7, 0, 100, "sm90_xmma_gemm_bf16", "custom-call.1"),
      op(1, 7, 150, 50, "loop_add_fusion", "loop_fusion.5"),
      op(1, 7, 200, 40, "nvjet_hsh_gemm", ""),  # no HLO op named: classed by the kernel's name
      # the op named only by XLA's kernel annotation, inside an outer one
      {"ph": "X", "pid": 1, "tid": 7, "ts": 300, "dur": 10, "name": "convolve_kernel", "args": {
          "annotation": "step::Thunk:#hlo_op=custom-call.2,hlo_module=jit_train_step,"
                        "program_id=3#"}},
      op(1, 7, 320, 10, "sm90_xmma_gemm_bf16", "custom-call.1") | {
          "args": {"hlo_op": "custom-call.1", "hlo_module": "jit_other_program"}},
      op(1, 8, 0, 100, "custom-call.1", "custom-call.1"),  # the derived line's copy
      op(2, 3, 0, 500, "loop_fusion.5", "loop_fusion.5"),  # the host's launch of it
  ]
  profile = op_profile.summarize(events, GPU_HLO, calls=2, wall_s=0.0005)
  assert profile.matched == "module" and profile.on_device
  assert profile.ops_per_call == 2  # another program's kernel is not counted
  assert profile.by_kind["matmul"] == pytest.approx((0.100 + 0.040) / 2)
  assert profile.by_kind["fusion"] == pytest.approx(0.050 / 2)
  assert profile.by_kind["convolution"] == pytest.approx(0.010 / 2)
  assert profile.busy_ms == pytest.approx(0.200 / 2)  # 0-100, 150-200, 200-240, 300-310 us
  assert profile.by_stage["head"] == pytest.approx((0.0, 0.005, 0.5))  # the annotated bwd conv
  assert profile.by_stage["body/encoder/mlp"] == pytest.approx((0.050, 0.0, 0.5))


def _scan_of_three(w, x):
  """Three layers scanned, forward and backward: each layer's ops run three times a call."""
  def layer(h, wl):
    with jax.named_scope("mlp"):
      return jnp.tanh(h @ wl), None
  with jax.named_scope("body"):
    h = jax.lax.scan(layer, x, w)[0]
  with jax.named_scope("loss"):
    return jnp.sum(h * h)


def test_a_traced_function_s_ops_are_summed_per_kind_stage_and_run(tmp_path):
  grad = jax.jit(jax.grad(_scan_of_three))
  w = jax.random.normal(jax.random.key(0), (3, 384, 384)) / 20
  x = jax.random.normal(jax.random.key(1), (256, 384))
  compiled = grad.lower(w, x).compile()
  call = lambda: jax.block_until_ready(compiled(w, x))
  call()
  events, wall = op_profile.trace_calls(call, 3, str(tmp_path / "trace"))
  profile = op_profile.summarize(events, compiled.as_text(), 3, wall, top=50)
  assert profile.matched == "module"
  # The union of the ops' intervals lies within the calls' wall time, and within their sum.
  assert 0 < profile.busy_ms <= profile.wall_ms and profile.busy_ms <= profile.op_ms + 1e-9
  # A layer's matmuls (forward 1, backward 2 per layer) run 3 times per call, the scan's length
  # (a GPU's gemm may launch more than one kernel a run: a multiple of 3).
  matmuls = [r for r in profile.top if r[1] == "matmul" and "mlp" in r[4]]
  assert matmuls and all(runs >= 3 and runs % 3 == 0 for _, _, _, runs, _ in matmuls)
  fwd, bwd, ops = profile.by_stage["body/mlp"]
  assert fwd > 0 and bwd > 0 and ops >= 9  # 3 layers x (1 forward + 2 backward matmuls) at least
  # A CPU's trace times its asynchronous matmuls' launch only: the profile must say so.
  assert profile.on_device == (jax.default_backend() != "cpu")
  text = "\n".join(profile.lines())
  assert "body/mlp" in text and ("a host trace" in text) != profile.on_device
