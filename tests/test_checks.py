"""The project's own gates as tests: ruff check, ruff format and mypy --strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, check=False
    )


def test_ruff_check_is_clean() -> None:
    r = _run("ruff", "check", "--no-cache", ".")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format_is_clean() -> None:
    r = _run("ruff", "format", "--check", "--no-cache", ".")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_mypy_strict_is_clean() -> None:
    r = _run("mypy", "--no-incremental", "--cache-dir=/dev/null")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_mypy_reports_an_error_planted_in_store(source_copy: Path) -> None:
    """The layout (symlinked store/) must not hide store/ from mypy (design rule layering)."""
    planted = source_copy / "store" / "_planted_type_error.py"
    planted.write_text('from __future__ import annotations\n\nx: int = "not an int"\n')
    r = _run("mypy", "--no-incremental", "--cache-dir=/dev/null", cwd=source_copy)
    assert r.returncode != 0
    assert "_planted_type_error.py" in r.stdout
