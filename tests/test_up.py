"""`orchestrator up` on the embedded default (SQLite, in-process broker, file outbox): the example
workspace's campaigns fire on schedule and their messages land in the outbox, nothing else needed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def orchestrator(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("example")
    for name in ("settings.toml", "campaigns", "segments", "templates"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / name)
    assert orchestrator(root, "sample-data", "--customers", "400").returncode == 0
    assert orchestrator(root, "import", "customers", "var/sample/customers.csv").returncode in (0, 3)
    assert orchestrator(root, "import", "purchases", "var/sample/purchases.csv").returncode in (0, 3)
    return root


def test_up_fires_a_missed_run_within_grace_and_delivers_into_the_outbox(example: Path) -> None:
    # 20 minutes after the monthly offer's fire time: the scheduler catches it up and the
    # in-process workers deliver what is due; the rest waits in the ledger for its local time.
    done = orchestrator(example, "up", "--now", "2026-12-15T12:20", "--for", "12", "--port", "0")
    assert done.returncode == 0, done.stderr[-2000:]
    logs = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert any("preferred-category-offer" in entry["msg"] and "late" in entry["msg"] for entry in logs)
    rows = [json.loads(line) for line in orchestrator(example, "deliveries", "--json").stdout.splitlines()]
    status = Counter(row["status"] for row in rows)
    assert status["sent"] > 20
    files = list((example / "var" / "outbox" / "sms").glob("*.txt"))
    sent = {str(row["id"]) for row in rows if row["status"] == "sent" and row["channel"] == "sms"}
    assert {f.stem for f in files} == sent
    assert all(row["provider_id"] == f"{row['id']}.txt" for row in rows if row["status"] == "sent" and row["channel"] == "sms")
    text = files[0].read_text(encoding="utf-8")
    assert text.startswith("To: +7") and "Ref: " in text
    # Phones and emails never reach the logs.
    assert "+79" not in done.stderr and "@example" not in done.stderr


def test_up_serves_the_web_app_and_stops_cleanly_on_sigterm(example: Path) -> None:
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "orchestrator", "up", "--port", str(port)], cwd=example,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 60
    status = None
    while time.monotonic() < deadline and status is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                status = answer.status
        except OSError:
            time.sleep(0.3)
    assert status == 200
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-2000:]
    assert "Traceback" not in err


def test_worker_refuses_the_in_process_broker_with_a_clear_message(example: Path) -> None:
    done = orchestrator(example, "worker")
    assert done.returncode == 2
    assert "memory://" in done.stderr and "orchestrator up" in done.stderr and "Traceback" not in done.stderr
