"""The layers of the design hold: import-linter checks the contracts of .importlinter."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]



def namespace_tree(into: Path) -> Path:
    """The ``imbill`` namespace as one folder tree of symlinks (``imbill/producers`` ->
    ``producers/``, ...), as pyproject's package-dir maps it: import-linter finds the modules
    of a package under its folder, and here each subpackage has a folder of its own."""
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    top = into / "imbill"
    top.mkdir()
    for module in (ROOT / package_dir["imbill"]).glob("*.py"):
        (top / module.name).symlink_to(module)
    for name, folder in package_dir.items():
        if name != "imbill":
            (into / name.replace(".", "/")).symlink_to(ROOT / folder, target_is_directory=True)
    return into


def test_imports_follow_the_layers(tmp_path):
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint_imports), "--no-cache", str(ROOT / ".importlinter")],
                            cwd=namespace_tree(tmp_path), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def project_modules() -> list[Path]:
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return sorted(path for folder in set(package_dir.values()) for path in (ROOT / folder).rglob("*.py"))


def test_no_project_module_is_imported_inside_a_function():
    """Imports inside functions would hide a layer break from import-linter's report."""
    hidden = []
    for path in project_modules():
        tree = ast.parse(path.read_text(), str(path))
        for function in ast.walk(tree):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                hidden += [f"{path.relative_to(ROOT)}:{node.lineno}" for node in ast.walk(function)
                           if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("imbill")
                           or isinstance(node, ast.Import) and any(a.name.startswith("imbill") for a in node.names)]
    assert hidden == []
