"""`orchestrator demo` on a fresh copy of the example workspace: the whole tour runs through the real
embedded pipeline and ends with the demo logins (the web app itself is tested in test_web/test_browser)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_the_demo_runs_the_pipeline_and_prints_the_logins(tmp_path: Path) -> None:
    for name in ("settings.toml", "campaigns", "segments", "templates"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / name)
    done = subprocess.run([sys.executable, "-m", "orchestrator", "demo", "--days", "3", "--port", "0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "runs fired; ledger:" in out and "sent" in out
    assert "orchestrator report monthly-bonus-balance" in out
    outbox = tmp_path / "var" / "outbox"
    assert sum(1 for _ in outbox.rglob("*.eml")) + sum(1 for _ in outbox.rglob("*.txt")) > 100
    assert "Traceback" not in done.stderr
