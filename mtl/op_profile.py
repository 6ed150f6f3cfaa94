"""Where a compiled function's time goes, op by op: a jax.profiler trace of a few calls, read back
from its Perfetto JSON and summed per HLO op and per kind of op (matmul, convolution, attention,
elementwise/reduction fusion, data movement, collective), beside the share of the wall time in
which some op of it ran. A device that is busy for a small share of the wall time is waiting for
its launches (dispatch, loop control, the host); one busy all along is bound by its ops.

The kinds come from the compiled HLO text (`compiled.as_text()`): each executed instruction's
opcode, the target of a custom call (cuBLAS, cuDNN) and the instructions inside a fusion. A device
event that names no HLO op (a kernel replayed from a CUDA graph, say) is classed by its kernel's
name instead. Control-flow instructions (while, conditional, call) contain ops, are not ops, and
are left out, so nested events are not counted twice.

It is a tool for GPUs and TPUs, whose trace times every kernel on the device. XLA's CPU runtime
runs matmuls and convolutions asynchronously, and its trace times their launch, not their work:
on a CPU the op times undercount them (the profile says so).
"""
import collections
import dataclasses
import functools
import glob
import gzip
import json
import math
import os
import re
import time

KINDS = ("matmul", "convolution", "attention", "fusion", "data movement", "collective", "other")
CONTAINERS = {"while", "conditional", "call", "async-start", "async-update", "async-done"}
NOT_RUN = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all",
           "partition-id", "replica-id"}
MOVES = {"copy", "copy-start", "copy-done", "transpose", "dynamic-slice", "dynamic-update-slice",
         "slice", "concatenate", "pad", "broadcast", "reshape", "gather", "scatter"}
ELEMENTWISE = {"add", "subtract", "multiply", "divide", "maximum", "minimum", "exponential", "log",
               "tanh", "negate", "convert", "compare", "select", "sqrt", "rsqrt", "abs", "power",
               "and", "or", "not", "clamp", "logistic", "iota", "sign"}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all",
               "collective-broadcast", "send", "recv")
# The named scopes of mtl.models.ipt and mtl.step: a stage is the path of those an op sits in.
SCOPES = ("degrade", "head", "body", "encoder", "decoder", "attention", "mlp", "norm", "tail",
          "loss", "gramians", "optimizer")
# Device threads that repeat the kernels' time under another grouping (xprof's derived lines).
DERIVED_LINES = ("XLA Modules", "XLA Ops", "Async XLA Ops", "Steps", "Framework", "Source code",
                 "XLA TraceMe", "TensorFlow", "Launch Stats")
# XLA's GPU thunks annotate their kernels "Thunk:#hlo_op=fusion.3,hlo_module=jit_f,...#"; a
# trace that has not parsed it into hlo_op / hlo_module keeps it as the kernel's annotation.
_ANNOTATED = re.compile(r"#(?:[^#]*,)?hlo_op=([^,#]+)(?:,hlo_module=([^,#]+))?")


def kernel_kind(name):
  """The kind of a device kernel or a custom call's target from its name alone (cuBLAS, CUTLASS
  and cuDNN naming)."""
  n = name.lower()
  if "memcpy" in n or "memset" in n:
    return "data movement"
  if any(k in n for k in ("fmha", "flash", "sdpa", "attention")):
    return "attention"
  if any(k in n for k in ("conv", "dgrad", "wgrad", "fprop", "implicit_gemm")):
    return "convolution"
  if any(k in n for k in ("gemm", "xmma", "nvjet", "cutlass", "matmul", "cublas", "dot")):
    return "matmul"
  return "other"


def _opcode(rhs):
  """The opcode of an HLO instruction's right-hand side `TYPE opcode(operands), attrs`."""
  i = 0
  if rhs.startswith("("):  # a tuple type: skip its balanced parentheses
    depth = 0
    for i, ch in enumerate(rhs):
      depth += (ch == "(") - (ch == ")")
      if depth == 0:
        break
  match = _OPCODE.match(rhs, i + 1 if rhs.startswith("(") else 0)
  return match.group(1) if match else ""


_OPCODE = re.compile(r"\s*\S*?\s*([a-z][\w\-]*)\(")  # [type] opcode(
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+) \(.*\{\s*$")


def _computations(hlo_text):
  """({computation: [(instruction, opcode, right-hand side)]}, the ENTRY computation's name) of
  compiled HLO text."""
  computations, current, entry = {}, None, None
  for line in hlo_text.splitlines():
    head = _COMPUTATION.match(line)
    if head:
      current = computations.setdefault(head.group(1), [])
      entry = head.group(1) if line.startswith("ENTRY") else entry
      continue
    if line.strip() == "}":
      current = None
      continue
    inst = _INSTRUCTION.match(line) if current is not None else None
    if inst:
      name, rhs = inst.groups()
      current.append((name, _opcode(rhs), rhs))
  return computations, entry


def op_kinds(hlo_text):
  """{instruction name: (kind, op_name)} for every instruction of compiled HLO text, with op_name
  the source path jax recorded (metadata); kind is None for the containers and the instructions
  that run nothing (parameters, tuples, bitcasts)."""
  parsed = _computations(hlo_text)[0]
  computations = {c: [opcode for _, opcode, _ in insts] for c, insts in parsed.items()}
  lines = {name: (opcode, rhs) for insts in parsed.values() for name, opcode, rhs in insts}
  kinds = {}
  for name, (opcode, rhs) in lines.items():
    if opcode in CONTAINERS or opcode in NOT_RUN or not opcode:
      kinds[name] = (None, "")
      continue
    meta = re.search(r'op_name="([^"]*)"', rhs)
    op_name = meta.group(1) if meta else ""
    if opcode == "custom-call":
      target = re.search(r'custom_call_target="([^"]*)"', rhs)
      kind = kernel_kind(target.group(1) if target else "")
    elif opcode == "fusion":
      called = re.search(r"calls=%?([\w.\-]+)", rhs)
      inner = set(computations.get(called.group(1), ())) if called else set()
      if "__triton_gemm" in rhs or "dot" in inner:
        kind = "matmul"
      elif "convolution" in inner:
        kind = "convolution"
      elif inner and inner <= MOVES | NOT_RUN:
        kind = "data movement"
      else:
        kind = "fusion"
    elif opcode == "dot":
      kind = "matmul"
    elif opcode == "convolution":
      kind = "convolution"
    elif opcode in MOVES:
      kind = "data movement"
    elif opcode.startswith(COLLECTIVES):
      kind = "collective"
    elif opcode in ELEMENTWISE or opcode in ("reduce", "reduce-window", "select-and-scatter"):
      kind = "fusion"
    else:
      kind = "other"
    kinds[name] = (kind, op_name)
  return kinds


_SHAPE = re.compile(r"\b(pred|bf16|[suf]\d+|c\d+)\[([\d,]*)\]")
_CALLEES = re.compile(r"(?:calls|to_apply|true_computation|false_computation)=%?([\w.\-]+)")


def _shape_bytes(text):
  """Bytes of the array types written in `text` (an instruction's result type)."""
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    bits = 8 if dtype == "pred" else int(dtype.lstrip("bfsuc") or 16)
    total += bits // 8 * math.prod(int(d) for d in dims.split(",") if d)
  return total


def collective_bytes(hlo_text):
  """{collective opcode: bytes of its results per call} of compiled HLO text: each collective
  counted as often as it runs (a while loop's body by XLA's known trip count, 1 where XLA
  recorded none; each branch of a conditional, an upper bound), an asynchronous one once, by
  its -done half. An all-gather's result is the gathered array, an all-reduce's the reduced one:
  a device receives about that much."""
  computations, entry = _computations(hlo_text)

  @functools.cache
  def per_call(name):
    total = collections.Counter()
    for _, opcode, rhs in computations.get(name, ()):
      base = opcode.removesuffix("-done")
      if base in COLLECTIVES and not opcode.endswith(("-start", "-update")):
        total[base] += _shape_bytes(rhs[:rhs.index(opcode + "(")])
      if opcode == "while":
        trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', rhs)
        body = re.search(r"body=%?([\w.\-]+)", rhs).group(1)
        for k, v in per_call(body).items():
          total[k] += v * (int(trips.group(1)) if trips else 1)
        continue
      branches = re.search(r"branch_computations=\{([^}]*)\}", rhs)
      for callee in _CALLEES.findall(rhs) + (re.findall(r"%?([\w.\-]+)", branches.group(1))
                                              if branches else []):
        total.update(per_call(callee))
    return total

  return dict(per_call(entry)) if entry else {}


def stage(op_name):
  """(the path of mtl's named scopes an op sits in, e.g. 'body/encoder/attention' or '' for
  none, whether it is backward-pass work): read from the op_name jax records, in which
  `transpose(jvp(body))` marks the body's backward pass."""
  scopes, backward, previous = [], False, ""
  for part in op_name.split("/"):
    backward |= part.startswith("transpose(")
    name = re.sub(r"^(?:[\w\-]+\()+", "", part).rstrip(")")
    loop_part, previous = previous == "while", name  # while/body: a loop's, not the model's
    if name in SCOPES and name not in scopes and not loop_part:
      scopes.append(name)
  return "/".join(scopes), backward


def module_name(hlo_text):
  match = re.match(r"HloModule ([\w.\-]+)", hlo_text)
  return match.group(1) if match else ""


@dataclasses.dataclass
class Profile:
  calls: int
  wall_ms: float  # per call, as timed around the traced calls
  busy_ms: float  # per call: the union of the ops' intervals
  ops_per_call: float
  by_kind: dict  # kind -> ms per call (summed op time: concurrent ops add up)
  by_stage: dict  # stage (mtl's named scopes) -> (forward ms, backward ms, ops), per call
  top: list  # [(hlo op, kind, ms per call, events per call, op_name)], longest first
  matched: str  # which events were read: 'module' (the function's own) or a fallback's reason
  on_device: bool  # from a device's timelines; else the host's (the CPU backend's thunks)

  @property
  def op_ms(self):
    return sum(self.by_kind.values())

  def lines(self, top=10):
    """The profile as printed lines."""
    total = self.op_ms or float("nan")
    out = [f"  {self.wall_ms:.2f} ms per call (wall), ops running {self.busy_ms:.2f} ms of it "
           f"({self.busy_ms / self.wall_ms:.0%}; the rest the device waits), "
           f"{self.ops_per_call:.0f} ops per call; op time by kind:"]
    out += [f"    {kind:<14} {ms:8.2f} ms  {ms / total:5.1%}"
            for kind, ms in sorted(self.by_kind.items(), key=lambda kv: -kv[1]) if ms > 0]
    out.append("  op time by stage (mtl's named scopes; forward ms, backward ms, share, ops per "
               "call):")
    out += [f"    {name or '(no named scope)':<26} {fwd:8.2f} {bwd:8.2f}  {(fwd + bwd) / total:5.1%}"
            f" {ops:6.0f}" for name, (fwd, bwd, ops) in sorted(
                self.by_stage.items(), key=lambda kv: -(kv[1][0] + kv[1][1]))]
    out.append(f"  the {min(top, len(self.top))} longest ops (ms per call, runs per call, kind, "
               "where in the model):")
    out += [f"    {op:<28} {ms:8.3f} ms {runs:5.0f}x  {kind:<13} {_short(where)}"
            for op, kind, ms, runs, where in self.top[:top]]
    if self.matched != "module":
      out.append(f"  (events read: {self.matched})")
    if not self.on_device:
      out.append("  (a host trace: XLA's CPU runtime runs matmuls and convolutions asynchronously, "
                 "and times their launch, not their work: the op times and the running share "
                 "undercount them; read them from a GPU or TPU)")
    return out


def _short(op_name, width=70):
  """The tail of a jax op_name path (jit(step)/jvp()/while/body/...): its innermost parts."""
  return op_name if len(op_name) <= width else "..." + op_name[-(width - 3):]


def trace_calls(call, calls, log_dir):
  """Runs call() `calls` times under jax.profiler.trace (each call must block until its results
  are ready); returns (the trace's events, wall seconds of the calls). The trace stays in
  log_dir (TensorBoard's profile plugin and ui.perfetto.dev read it)."""
  import jax
  os.makedirs(log_dir, exist_ok=True)
  pattern = os.path.join(log_dir, "**", "perfetto_trace.json.gz")
  before = set(glob.glob(pattern, recursive=True))
  with jax.profiler.trace(log_dir, create_perfetto_trace=True):
    start = time.perf_counter()
    for _ in range(calls):
      call()
    wall = time.perf_counter() - start
  new = set(glob.glob(pattern, recursive=True)) - before
  if not new:
    raise RuntimeError(f"jax.profiler.trace wrote no perfetto_trace.json.gz under {log_dir}")
  with gzip.open(max(new, key=os.path.getmtime), "rt") as f:
    return json.load(f)["traceEvents"], wall


def _op_events(events):
  """(the complete events ('X') that are ops, whether they are a device's): on a device's own
  timelines where the trace has devices (its processes named /device:...), without the derived
  lines that repeat them; on the host's threads otherwise (the CPU backend runs its ops there)."""
  names = {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") in ("process_name", "thread_name"):
      names[(e["pid"], e.get("tid") if e["name"] == "thread_name" else None)] = (
          e.get("args", {}).get("name", ""))
  devices = {pid for (pid, tid), n in names.items() if tid is None and n.startswith("/device:")}
  derived = {(pid, tid) for (pid, tid), n in names.items()
             if tid is not None and n.startswith(DERIVED_LINES)}
  out = []
  for e in events:
    if e.get("ph") != "X" or "dur" not in e:
      continue
    if devices:
      if e["pid"] in devices and (e["pid"], e.get("tid")) not in derived:
        out.append(e)
    elif _hlo_op(e)[0]:
      out.append(e)
  return out, bool(devices)


def _hlo_op(event):
  """(the HLO op an event ran, its module): from the event's hlo_op / hlo_module, else from its
  kernel annotation (the innermost that names an op); '' where it names none."""
  args = event.get("args", {})
  if "hlo_op" in args:
    return args["hlo_op"], args.get("hlo_module")
  found = _ANNOTATED.findall(str(args.get("annotation", "")))
  return (found[-1][0], found[-1][1] or None) if found else ("", None)


def summarize(events, hlo_text, calls, wall_s, top=10):
  """A Profile of `calls` calls of the compiled function whose HLO text is hlo_text, from the
  events of their trace and their wall time."""
  kinds, module = op_kinds(hlo_text), module_name(hlo_text)
  ops, on_device = _op_events(events)
  # Events that name another module are another program's; a kernel that names none is kept.
  mine = [e for e in ops if (_hlo_op(e)[1] or module).startswith(module or "?")]
  matched = "module"
  if not mine:
    mine = ops
    matched = (f"no event names module {module!r}: all {len(ops)} op events of the trace"
               if ops else "the trace holds no op events")
  intervals, by_kind, per_op, by_stage = [], dict.fromkeys(KINDS, 0.0), {}, {}
  for e in mine:
    op = _hlo_op(e)[0]
    kind, where = kinds.get(op, (kernel_kind(e.get("name", "")), ""))
    if kind is None:
      continue  # a container: the ops inside it have their own events
    if not op:
      op = e.get("name", "?")[:28]
    dur = float(e["dur"]) / 1e3  # trace times are in microseconds
    intervals.append((float(e["ts"]) / 1e3, float(e["ts"]) / 1e3 + dur))
    by_kind[kind] += dur / calls
    name, backward = stage(where)
    fwd, bwd, n = by_stage.get(name, (0.0, 0.0, 0.0))
    by_stage[name] = ((fwd, bwd + dur / calls) if backward else (fwd + dur / calls, bwd)) + (
        n + 1 / calls,)
    ms, runs, _, _ = per_op.get(op, (0.0, 0, kind, where))
    per_op[op] = (ms + dur / calls, runs + 1, kind, where)
  ranked = sorted(((op, kind, ms, runs / calls, where) for op, (ms, runs, kind, where)
                   in per_op.items()), key=lambda r: -r[2])
  return Profile(calls=calls, wall_ms=wall_s * 1e3 / calls, busy_ms=_union(intervals) / calls,
                 ops_per_call=len(intervals) / calls, by_kind=by_kind, by_stage=by_stage,
                 top=ranked[:top], matched=matched, on_device=on_device)


def _union(intervals):
  """Total length of the union of (start, end) intervals."""
  total, end = 0.0, float("-inf")
  for a, b in sorted(intervals):
    if b > end:
      total += b - max(a, end)
      end = b
  return total
