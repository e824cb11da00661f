"""The layout is the architecture: the import-linter contracts in pyproject.toml (layers that
only point down, no cycles inside any package) hold for the code, and they do catch a change
that breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("config", "departments", "catalog", "exchange")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    command = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(command), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=300,
    )


def test_the_contracts_hold():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_an_upward_import_and_a_cycle_break_them(tmp_path):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with (tmp_path / "catalog" / "selectors.py").open("a") as f:
        f.write("\nfrom exchange.access import policy  # noqa\n")
    with (tmp_path / "exchange" / "sync" / "runs.py").open("a") as f:
        f.write("\nfrom exchange.sync import tasks  # noqa\n")

    result = _lint_imports(tmp_path)

    assert result.returncode != 0
    assert "0 kept, 2 broken" in result.stdout
    assert "catalog is not allowed to import exchange.access" in result.stdout
    assert "No cycles are allowed in exchange.sync" in result.stdout
