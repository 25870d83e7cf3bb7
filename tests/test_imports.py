"""No library module needs the command line: every ``covidlib`` module imports with
``covidlib.__main__`` blocked (``sys.modules[name] = None`` makes importing it raise)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import covidlib

SCRIPT = """
import importlib, sys
sys.modules["covidlib.__main__"] = None
try:
    import covidlib.__main__
except ImportError:
    pass
else:
    raise SystemExit("the block did not work: covidlib.__main__ imported")
for name in sys.argv[1:]:
    importlib.import_module(name)
print(len(sys.argv) - 1)
"""


def library_modules() -> list[str]:
    """Every module under ``covidlib`` except the command line itself."""
    found = pkgutil.walk_packages(covidlib.__path__, prefix="covidlib.")
    return sorted(info.name for info in found if info.name != "covidlib.__main__")


def test_every_module_imports_without_the_command_line() -> None:
    modules = library_modules()
    assert {"covidlib.inference", "covidlib.mean_teacher", "covidlib.segment", "covidlib.models.unet2d"} <= set(modules)
    done = subprocess.run([sys.executable, "-c", SCRIPT, *modules], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == str(len(modules))


def test_no_module_imports_the_command_line_even_inside_a_function() -> None:
    """Imports inside functions escape the test above; read every module's syntax tree for them."""
    import ast
    from pathlib import Path

    package = Path(covidlib.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
            if any(name == "covidlib.__main__" for name in names):
                offenders.append(f"{path.relative_to(package)}:{node.lineno}")
    assert offenders == []
