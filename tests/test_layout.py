"""The house rules, read from the source with `ast` (nothing is imported).

* No import cycle among ir_jax modules, function-local imports included.
* Floors: kernels/ never imports rewards/; models/ never rewards/ or
  objectives; rewards/ never models/, objectives or train; data/ only
  data/; study (the drivers' room) is imported by no module.
* Loading a config file imports none of JAX, Flax, optax, orbax, grain.
* No module reaches into another package's or module's private names
  (tests aside: they test private helpers on purpose).
* Tests mirror the package: every public module has its test file.
"""

import ast
import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "ir_jax")


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, ROOT)[:-len(".py")].split(os.sep)
  if rel[-1] == "__init__":
    rel = rel[:-1]
  return ".".join(rel)


def _modules():
  """{dotted name: path} of every module of the package."""
  paths = glob.glob(os.path.join(PACKAGE, "**", "*.py"), recursive=True)
  return {_module_name(p): p for p in paths}


MODULES = _modules()
PACKAGES = {name for name, path in MODULES.items()
            if path.endswith("__init__.py")}


def _imports(path: str, name: str):
  """[(line, target module, imported name or None)] of every ir_jax import
  anywhere in the file. `from P import x` targets P.x when that is a
  module, else P (the name x read from it)."""
  tree = ast.parse(open(path).read(), path)
  package = name if name in PACKAGES else name.rpartition(".")[0]
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.split(".")[0] == "ir_jax":
          out.append((node.lineno, alias.name, None))
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        parts = parts[:len(parts) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
      if base.split(".")[0] != "ir_jax":
        continue
      for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in MODULES:
          out.append((node.lineno, sub, None))
        else:
          out.append((node.lineno, base, alias.name))
  return out


def _edges():
  return {name: {target for _, target, _ in _imports(path, name)
                 if target in MODULES and target != name}
          for name, path in MODULES.items()}


def _cycles(graph):
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []
  counter = [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_no_import_cycles():
  graph = _edges()
  assert sum(len(v) for v in graph.values()) > 30  # The parser sees imports.
  assert _cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
  assert _cycles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize("floor,forbidden", [
    ("ir_jax.kernels", ("ir_jax.rewards",)),
    ("ir_jax.models", ("ir_jax.rewards", "ir_jax.objectives")),
    ("ir_jax.rewards", ("ir_jax.models", "ir_jax.objectives", "ir_jax.train")),
    ("ir_jax.config", ("ir_jax.",)),
    # data/ reads files and tokenizers: a checkpoint's tokenizer reaches it
    # as an argument (state.build_task), never by importing upwards.
    ("ir_jax.data", ("ir_jax.models", "ir_jax.pretrained", "ir_jax.rewards",
                     "ir_jax.objectives", "ir_jax.kernels", "ir_jax.decode",
                     "ir_jax.state", "ir_jax.step", "ir_jax.train",
                     "ir_jax.evaluate", "ir_jax.workdir", "ir_jax.parallel",
                     "ir_jax.aot", "ir_jax.cli")),
])
def test_lower_floors_never_import_upper_ones(floor, forbidden):
  bad = []
  for name, path in MODULES.items():
    if name != floor and not name.startswith(floor + "."):
      continue
    for line, target, _ in _imports(path, name):
      if any(target == f or target.startswith(f if f.endswith(".") else
                                              f + ".") for f in forbidden):
        bad.append(f"{name}:{line} imports {target}")
  assert bad == []


def test_the_study_room_is_the_top_floor():
  """ir_jax.study is for drivers (experiments/, benchmarks/, notebooks):
  no module of the package imports it, so training never depends on how
  studies are run."""
  bad = [f"{name}:{line}" for name, path in MODULES.items()
         if name != "ir_jax.study"
         for line, target, _ in _imports(path, name)
         if target == "ir_jax.study"]
  assert bad == []


def _private_reaches(path: str, name: str):
  """Private names of other modules or packages used by `name`: imported
  (`from ir_jax.x import _y`, `import ir_jax._x`) or read as attributes of
  an imported ir_jax module (`train._setup`)."""
  def inside(package):
    return name == package or name.startswith(package + ".")

  def private_module(target):
    """The package owning the first private component of `target`."""
    parts = target.split(".")
    for k, part in enumerate(parts[1:], 1):
      if part.startswith("_") and not part.startswith("__"):
        return ".".join(parts[:k])
    return None

  bad, aliases = [], {}
  tree = ast.parse(open(path).read(), path)
  for line, target, imported in _imports(path, name):
    owner = private_module(target)
    if owner is not None and not inside(owner):
      bad.append(f"{line}: {target}")
    if imported and imported.startswith("_") and not (
        target in PACKAGES and inside(target)):
      bad.append(f"{line}: {target}.{imported}")
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
        "ir_jax"):
      for alias in node.names:
        full = f"{node.module}.{alias.name}"
        if full in MODULES:
          aliases[alias.asname or alias.name] = full
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name in MODULES and alias.asname:
          aliases[alias.asname] = alias.name
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.value.id in aliases and node.attr.startswith("_") and
        not node.attr.startswith("__")):
      module = aliases[node.value.id]
      sub = f"{module}.{node.attr}"
      if not (sub in MODULES and inside(module)) and module != name:
        bad.append(f"{node.lineno}: {module}.{node.attr}")
  return bad


def _checked_files():
  files = dict(MODULES)
  for folder in ("experiments", "benchmarks", "tpu_configs"):
    for path in glob.glob(os.path.join(ROOT, folder, "*.py")):
      files[_module_name(path)] = path
  return files


def test_no_module_reaches_into_private_names():
  bad = {}
  for name, path in _checked_files().items():
    found = _private_reaches(path, name)
    if found:
      bad[name] = found
  assert bad == {}


def test_the_private_check_sees_private_reaches(tmp_path):
  path = tmp_path / "probe.py"
  path.write_text("from ir_jax import train\n"
                  "from ir_jax.rewards import _checks\n"
                  "from ir_jax.rewards.soft import _skew\n"
                  "train._progress(1, 0)\n")
  found = _private_reaches(str(path), "ir_jax.probe")
  assert len(found) == 3, found


# Config files that need an argument: one valid one each.
_CONFIG_ARGS = {"g2p_rl.py": "instant", "prompt.py": "soft",
                "llm_rl.py": "spell_backward,grpo_token"}

_LOAD_CONFIGS = """
import json, os, sys
from ir_jax import config as config_lib
heavy = ("jax", "flax", "optax", "orbax", "grain")
out = {}
for path in sys.argv[2:]:
  arg = json.loads(sys.argv[1]).get(os.path.basename(path))
  config_lib.load(path + (":" + arg if arg else ""))
  out[path] = sorted({m.split(".")[0] for m in sys.modules} & set(heavy))
print(json.dumps(out))
"""


def test_loading_configs_imports_no_heavy_library():
  files = sorted(p for folder in ("experiments", "tpu_configs")
                 for p in glob.glob(os.path.join(ROOT, folder, "*.py"))
                 if not os.path.basename(p).startswith("_") and
                 "def get_config" in open(p).read())
  assert len(files) >= 8
  proc = subprocess.run(
      [sys.executable, "-c", _LOAD_CONFIGS, json.dumps(_CONFIG_ARGS), *files],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  loaded = json.loads(proc.stdout)
  assert set(loaded) == set(files)
  assert {p: m for p, m in loaded.items() if m} == {}


def test_experiment_configs_import_only_ml_collections_and_config():
  allowed = {"ml_collections", "ir_jax.config"}
  bad = []
  for path in glob.glob(os.path.join(ROOT, "experiments", "*.py")) + \
      glob.glob(os.path.join(ROOT, "tpu_configs", "*.py")):
    source = open(path).read()
    if "def get_config" not in source and "pod_config" not in source:
      continue  # Scripts that run experiments, not configs.
    for node in ast.walk(ast.parse(source)):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in
                 MODULES else node.module for a in node.names]
      else:
        continue
      bad += [f"{os.path.relpath(path, ROOT)}: {n}" for n in names
              if n not in allowed and n.split(".")[0] in
              ("ir_jax", "jax", "flax", "optax", "orbax", "grain")]
  assert bad == []


def _test_file(module: str) -> str:
  parts = module.split(".")[1:]
  return os.path.join(ROOT, "tests", *parts[:-1], f"test_{parts[-1]}.py")


def test_tests_mirror_the_package():
  """tests/test_x.py for ir_jax/x.py, tests/pkg/test_y.py for
  ir_jax/pkg/y.py; private modules are tested through their package."""
  missing = [os.path.relpath(_test_file(m), ROOT) for m in MODULES
             if m not in PACKAGES and
             not m.rpartition(".")[2].startswith("_") and
             not os.path.exists(_test_file(m))]
  assert missing == []
