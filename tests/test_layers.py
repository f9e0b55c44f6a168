"""The package graph runs one way (cli -> monitor -> tasks -> storage; sources without SQL), as
setup.cfg's import-linter contracts say; a wrong-way import fails here, not in review."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"]


def lint(tree: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(tree))
    return subprocess.run([*LINT, "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=120)


def copy_tree(dest: Path) -> Path:
    for name in ("monitor", "tasks", "storage"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("cli.py", "setup.cfg"):
        shutil.copy(ROOT / name, dest / name)
    return dest


def test_import_contracts_hold_for_the_tree():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_a_storage_module_importing_the_daemon_breaks_the_layers_contract(tmp_path):
    tree = copy_tree(tmp_path)
    with open(tree / "storage" / "types.py", "a") as f:
        f.write("\nimport monitor.daemon  # wrong way on purpose\n")
    result = lint(tree)
    assert result.returncode != 0
    assert "storage is not allowed to import monitor" in result.stdout


def test_a_source_importing_storage_breaks_the_reader_side_contract(tmp_path):
    tree = copy_tree(tmp_path)
    with open(tree / "monitor" / "sources" / "amqp.py", "a") as f:
        f.write("\nimport storage.runs  # the reader thread must never touch SQL\n")
    result = lint(tree)
    assert result.returncode != 0
    assert "monitor.sources is not allowed to import storage" in result.stdout
