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
    code = "import sys, surgery.cli; surgery.cli.build_parser(); print('onnx' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "False"


def test_the_command_line_loads_scipy_only_when_a_sweep_draws_its_paired_interval():
    """scipy.stats took a second of every `surgery` command's start-up; only `surgery sweep`'s paired table needs it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    code = "import sys, surgery.cli; surgery.cli.build_parser(); print('scipy' in sys.modules)"
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
