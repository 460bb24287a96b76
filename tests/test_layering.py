"""The layering is checked: import-linter's contracts in pyproject.toml ([tool.importlinter])
hold. Core never imports the passes (only the entry points cli, api, driver, distributed,
device may); the passes never import the entry points."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def _lint_imports(cwd: Path) -> str:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    assert os.path.exists(exe), "lint-imports is missing: pip install '.[test]' (import-linter)"
    # lint-imports reads ./pyproject.toml and analyzes the graphopt package found from cwd
    r = subprocess.run([exe, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(cwd)))
    return f"exit {r.returncode}\n{r.stdout}{r.stderr}"


def test_import_contracts_are_kept():
    out = _lint_imports(REPO)
    assert out.startswith("exit 0") and "Contracts: 2 kept, 0 broken." in out, out[-3000:]


def test_a_violation_breaks_the_contracts(tmp_path):
    """A copy of the package with one forbidden import of each kind fails both contracts
    (and the passes are in the analyzed graph: the contracts are not vacuous)."""
    shutil.copytree(REPO / "graphopt", tmp_path / "graphopt", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "graphopt" / "errors.py", "a") as f:  # core -> passes
        f.write("\nfrom graphopt.passes import cleanup  # noqa: E402,F401\n")
    with open(tmp_path / "graphopt" / "passes" / "__init__.py", "a") as f:  # a pass -> cli
        f.write("\nimport graphopt.cli.run  # noqa: E402,F401\n")
    out = _lint_imports(tmp_path)
    assert out.startswith("exit 1") and "Contracts: 0 kept, 2 broken." in out, out[-3000:]
    assert "graphopt.errors -> graphopt.passes.cleanup" in out
    assert "graphopt.passes -> graphopt.cli.run" in out
