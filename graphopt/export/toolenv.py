"""Isolated tool environments: converters whose pins would break graphopt's own packages.

onnx2tf 1.29 pins tensorflow 2.19, onnx 1.19.1, onnxruntime 1.23.0 and numpy 1.26.4;
installing it beside graphopt would downgrade graphopt's onnx, onnxruntime and numpy.
So it lives in a venv of its own under ~/.cache/graphopt-tools/ (GRAPHOPT_TOOLS_DIR
overrides), named by a hash of its requirements and the Python version, created on
first use (about 2.5 GB, most of it tensorflow) and reused after. graphopt only runs
it as a subprocess; nothing of it is imported here.

    python -m graphopt.export.toolenv onnx2tf     # create it ahead (CI does this)
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import ConversionError

log = logging.getLogger(__name__)

# the converter and its own pins (onnx2tf's metadata pins the rest exactly)
TOOLS = {
    "onnx2tf": ["onnx2tf==1.29.24"],
}


def tools_dir() -> Path:
    return Path(os.environ.get("GRAPHOPT_TOOLS_DIR") or Path.home() / ".cache" / "graphopt-tools")


def env_path(tool: str) -> Path:
    reqs = TOOLS[tool]
    key = hashlib.sha256(("\n".join(reqs) + f"\npy{sys.version_info[0]}.{sys.version_info[1]}").encode()).hexdigest()[:12]
    return tools_dir() / f"{tool}-{key}"


def python_of(tool: str, create: bool = True) -> Path:
    """The isolated environment's python, creating the environment if needed."""
    root = env_path(tool)
    py = root / "bin" / "python"
    if (root / ".complete").exists() and py.exists():
        return py
    if not create:
        raise ConversionError(f"the {tool} tool environment is not there ({root}); "
                              f"create it with: python -m graphopt.export.toolenv {tool}")
    create_env(tool)
    return py


def create_env(tool: str) -> Path:
    root = env_path(tool)
    root.parent.mkdir(parents=True, exist_ok=True)
    log.warning("creating the isolated %s environment in %s (first use; a large download)", tool, root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{tool}-", dir=root.parent))
    try:
        # a venv made from this interpreter's base Python, never graphopt's own venv
        base = getattr(sys, "_base_executable", sys.executable)
        _run([base, "-m", "venv", str(tmp)])
        _run([str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
              *TOOLS[tool]])
        if root.exists():
            shutil.rmtree(root)
        # venv scripts hold absolute paths: rebuild the venv in place after the move
        tmp.rename(root)
        _run([base, "-m", "venv", "--upgrade", str(root)])
        (root / ".complete").write_text("\n".join(TOOLS[tool]) + "\n")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ConversionError(f"could not build the tool environment ({' '.join(cmd[:4])}...): {tail[0][:300]}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    for tool in args or list(TOOLS):
        if tool not in TOOLS:
            print(f"unknown tool '{tool}' (known: {', '.join(TOOLS)})", file=sys.stderr)
            return 2
        try:
            print(python_of(tool))
        except ConversionError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
