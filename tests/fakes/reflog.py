"""A channel that only notes what it was given: one line `<ref> <unix time>` per message, appended to
`<path>/<pid>.refs`.

For benchmarks of the machinery around a channel (pump, broker, claims, ledger): sending costs a
few microseconds, so the figures are those of everything else; and since every process writes its
own file, the messages received can be counted across worker processes afterwards, duplicates
included (`read_refs`) — which a channel keyed by ref, like the file outbox, would hide.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

from channels.base import Channel, Message, SendResult


class RefLog(Channel):
    """Options: `path` (the folder of the `.refs` files), `parallel` (messages claimed per chunk)."""

    def __init__(self, name: str, path: str = "", parallel: int = Channel.parallel, **options: Any) -> None:
        super().__init__(name, **options)
        self.path = Path(path or f"var/reflog/{name}")
        self.parallel = int(parallel)
        self._file: IO[str] | None = None

    async def open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        # Line-buffered: each message reaches the file when it is "sent", as a real send would leave.
        self._file = (self.path / f"{os.getpid()}.refs").open("a", encoding="ascii", buffering=1)

    async def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    async def send(self, message: Message) -> SendResult:
        if self._file is None:
            await self.open()
        assert self._file is not None
        self._file.write(f"{message.ref} {time.time():.6f}\n")
        return SendResult.sent(provider_id=f"reflog-{message.ref}")


def read_refs(path: Path) -> tuple[Counter[str], list[float]]:
    """How many times each ref was received, and every receive time (unsorted), from all processes."""
    counts: Counter[str] = Counter()
    times: list[float] = []
    for file in sorted(path.glob("*.refs")):
        with file.open(encoding="ascii") as handle:
            for line in handle:
                ref, _, at = line.partition(" ")
                if at:
                    counts[ref] += 1
                    times.append(float(at))
    return counts, times
