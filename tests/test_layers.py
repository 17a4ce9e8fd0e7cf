"""The layers of the design hold: import-linter checks the contracts of .importlinter."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BEING_REMOVED = {"imbill.streams.processor -> imbill.settings"}
"""Imports that break a contract and are being removed elsewhere; the test fails on any other.
TODO(lead): empty this once streams/ takes plain parameters instead of Settings (wt-streams)."""


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
    broken = set(re.findall(r"^- (imbill\S* -> imbill\S*)", result.stdout, re.MULTILINE))
    if result.returncode != 0 and broken and broken <= BEING_REMOVED:
        pytest.xfail(f"only imports being removed elsewhere break the layers: {sorted(broken)}")
    assert result.returncode == 0, result.stdout + result.stderr
