"""Every import points down the layers (README's Layout): read from the source with `ast`, every
import counts, including those inside functions."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Bottom first. A module may import its own layer or any below it, never one above.
LAYERS = [
    ("pure pieces", ["mtl.__init__", "mtl.xla_options", "mtl.compile_cache", "mtl.distributed",
                     "mtl.files", "mtl.children", "mtl.flops", "mtl.op_profile", "mtl.tasks",
                     "mtl.losses", "mtl.optim", "mtl.metrics", "mtl.stats", "mtl.sharding", "mtl.gramians", "mtl.models",
                     "mtl.aggregators", "mtl.degradations", "mtl.checkpoints", "mtl.events",
                     "mtl.progress"]),
    ("step, data, evaluation", ["mtl.step", "mtl.data", "mtl.evaluate", "mtl.run_folder"]),
    ("conflict analysis", ["mtl.conflicts"]),
    ("figures", ["mtl.plots", "mtl.draw"]),
    ("a run", ["mtl.run_defaults", "mtl.run_config", "mtl.run_state"]),
    ("a run's loop and saved models", ["mtl.train", "mtl.restoration", "mtl.measure",
                                       "mtl.published"]),
    ("studies", ["mtl.study"]),
    ("reports", ["mtl.report"]),
    ("configs", ["experiments"]),
    ("commands", ["launch"]),
]


def layer_of(module):
  """The index in LAYERS of the longest prefix naming `module`; None outside the project."""
  best, index = "", None
  module = "mtl.__init__" if module == "mtl" else module  # the package itself: xla_options only
  for i, (_, prefixes) in enumerate(LAYERS):
    for p in prefixes:
      if (module == p or module.startswith(p + ".")) and len(p) > len(best):
        best, index = p, i
  return index


def _modules():
  """{module name: path} of every source file under mtl/, experiments/ and launch/."""
  out = {}
  for top in ("mtl", "experiments", "launch"):
    for folder, _, names in os.walk(os.path.join(ROOT, top)):
      for name in names:
        if name.endswith(".py"):
          rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].replace(os.sep, ".")
          out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(
              folder, name)
  return out


def _imports(path, modules):
  """The project modules a file imports ('from a import b' counts as a.b when that is a module)."""
  with open(path) as f:
    tree = ast.parse(f.read())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      for a in node.names:
        full = f"{node.module}.{a.name}"
        out.add(full if full in modules else node.module)
  # launch/ scripts import their siblings by bare name (launch/ is their sys.path[0])
  if os.path.basename(os.path.dirname(path)) == "launch":
    out = {f"launch.{m}" if f"launch.{m}" in modules else m for m in out}
  return {m for m in out if m.split(".")[0] in ("mtl", "experiments", "launch")}


def test_every_module_has_a_layer():
  assert [m for m in _modules() if layer_of(m) is None] == []


def test_imports_point_down_the_layers():
  modules = _modules()
  upward = []
  for module, path in sorted(modules.items()):
    for imported in sorted(_imports(path, modules)):
      if layer_of(imported) > layer_of(module):
        upward.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {imported} "
                      f"({LAYERS[layer_of(imported)][0]})")
  assert upward == []


def test_the_library_never_imports_configs_or_commands():
  modules = _modules()
  found = [(m, i) for m, p in modules.items() if m.split(".")[0] == "mtl"
           for i in _imports(p, modules) if i.split(".")[0] in ("experiments", "launch")]
  assert found == []


def test_no_import_cycles_between_modules():
  modules = _modules()
  graph = {m: {i for i in _imports(p, modules) if i in modules and i != m}
           for m, p in modules.items()}
  state, cycles = {}, []

  def visit(m, path):
    state[m] = "open"
    for i in sorted(graph[m]):
      if i.startswith(m + ".") or m.startswith(i + "."):
        continue  # a package and its own modules
      if state.get(i) == "open":
        cycles.append(" -> ".join(path[path.index(i):] + [i]))
      elif i not in state:
        visit(i, path + [i])
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m, [m])
  assert cycles == []
