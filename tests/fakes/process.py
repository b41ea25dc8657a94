"""A fake server in a child process: started, waited for ("ready ..." on its stdout), stopped.

The fakes stand outside the process under test so that a test can kill that process without
killing the server it talks to, and so that the server's own work does not share its CPU.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    """`python -m MODULE ARGS` until it prints `ready ...`; `ready` holds the rest of that line."""

    what = "server"

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None
        self.ready = ""

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 10) -> Any:
        self.process = subprocess.Popen([sys.executable, *self.command()], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        line = _read_line(self.process, timeout)
        if not line.startswith("ready "):
            self.stop()
            raise RuntimeError(f"the {self.what} process did not start: {line!r}")
        self.ready = line.split(" ", 1)[1].strip()
        return self.started()

    def started(self) -> Any:
        return self.ready

    def stop(self) -> None:
        """SIGTERM (servers flush what they record), then SIGKILL if it does not go within 10 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The first line of the child's stdout, without hanging forever if it never comes."""
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(process.stdout.readline() if process.stdout else ""))
    reader.start()
    reader.join(timeout)
    return result[0] if result else ""
