"""Package layering: the mask methods work without the training runtime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

IMPORT_EVERY_PRUNING_MODULE = """
import importlib, json, pkgutil, sys
import surgery.pruning
for found in pkgutil.iter_modules(surgery.pruning.__path__):
    importlib.import_module(f"surgery.pruning.{found.name}")
print(json.dumps(sorted(name for name in sys.modules if name.startswith("surgery."))))
"""


def test_importing_every_pruning_module_does_not_import_surgery_train():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", IMPORT_EVERY_PRUNING_MODULE], capture_output=True, text=True,
                          env=env, check=True)
    imported = json.loads(done.stdout)
    assert {"surgery.pruning.learned", "surgery.pruning.rigl", "surgery.hooks"} <= set(imported)
    assert [name for name in imported if name == "surgery.train" or name.startswith("surgery.train.")] == []


def test_the_command_line_loads_onnx_only_when_a_command_exports():
    """Every `surgery` command (a sweep's every run too) pays for what it imports: onnx is ~0.5 s."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    code = "import sys, surgery.apps.cli; surgery.apps.cli.build_parser(); print('onnx' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "False"


def test_the_command_line_loads_scipy_only_when_a_sweep_draws_its_paired_interval():
    """scipy.stats took a second of every `surgery` command's start-up; only `surgery sweep`'s paired table needs it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    code = "import sys, surgery.apps.cli; surgery.apps.cli.build_parser(); print('scipy' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "False"


def test_no_module_inside_the_package_imports_its_public_face():
    import ast

    offenders = []
    for path in sorted((ROOT / "surgery").rglob("*.py")):
        if path.name == "__init__.py" and path.parent == ROOT / "surgery":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import) and any(alias.name == "surgery" for alias in node.names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == [], f"import from the defining module instead: {offenders}"


# The layers, lowest first: a module imports only from its own layer or the layers below it.
LAYERS = (
    ("surgery.errors", "surgery.advice", "surgery.version", "surgery.hooks"),  # what every layer shares
    ("surgery.fx",),  # tracing and graphs
    ("surgery.compiler",),  # recipes, passes, ghosts, masks, verify, export
    ("surgery.init",),  # initializers
    ("surgery.pruning",),  # mask finders
    ("surgery.zoo",),  # model specs
    ("surgery.train",),  # the training runtime
    ("surgery.apps", "surgery.integrations"),  # the command line, surgery.prune, the demo, ToST in a user's loop
    ("surgery", "surgery.__main__"),  # the public face
)


def _layer(module: str) -> int:
    best = max((len(prefix), rank) for rank, prefixes in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".") and prefix != "surgery")
    return best[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _submodule_or(module: str, name: str) -> str:
    """``module.name`` where ``from module import name`` imports a submodule, else ``module``."""
    where = ROOT.joinpath(*module.split("."), name)
    return f"{module}.{name}" if where.with_suffix(".py").exists() or where.is_dir() else module


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported surgery module, line, at module level) for every import in ``path``."""
    import ast

    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "surgery":
            names = [_submodule_or(node.module, alias.name) for alias in node.names]
            found += [(name, node.lineno, id(node) in top) for name in set(names)]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno, id(node) in top) for a in node.names if a.name.split(".")[0] == "surgery"]
    return found


def test_every_import_goes_to_the_same_layer_or_one_below():
    upward = []
    for path in sorted((ROOT / "surgery").rglob("*.py")):
        here = _module_name(path)
        for imported, line, _ in _imports(path):
            if _layer(imported) > _layer(here):
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    assert upward == [], f"a lower layer reaches up: {upward}"


def test_the_module_level_imports_have_no_cycle():
    import networkx as nx

    graph = nx.DiGraph()
    for path in sorted((ROOT / "surgery").rglob("*.py")):
        for imported, _, top in _imports(path):
            if top:
                graph.add_edge(_module_name(path), imported)
    assert list(nx.simple_cycles(graph)) == []


# What a function may import on first use, and why: everything else is imported at the top of its module.
LOADED_ON_FIRST_USE = {
    "surgery.compiler.export": "onnx and onnxscript, seconds to load",
    "surgery.zoo.hf": "transformers, an optional extra",
    "surgery.apps.tost": "the training runtime, which `import surgery` does not load",
}


def test_a_function_imports_from_surgery_only_what_loads_a_heavy_or_optional_library():
    inside_functions = [
        f"{path.relative_to(ROOT)}:{line} imports {imported}"
        for path in sorted((ROOT / "surgery").rglob("*.py"))
        for imported, line, top in _imports(path)
        if not top and imported not in LOADED_ON_FIRST_USE
    ]
    assert inside_functions == [], f"import these at the top of the module: {inside_functions}"


def test_every_public_name_imports():
    import surgery

    for name in surgery.__all__:
        assert getattr(surgery, name) is not None, name
    namespace: dict = {}
    exec("from surgery import *", namespace)
    assert set(surgery.__all__) <= set(namespace)
