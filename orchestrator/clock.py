"""The time the long-running processes agree on: the ledger database's clock.

The pump decides what is due, the worker's claim checks quiet hours, and the scheduler decides which
run to fire, each with its own machine's clock.  A machine whose clock runs ahead (an NTP step, a VM
restored from a snapshot) would pump messages before their minute, fire runs early, and check quiet
hours at the wrong minute: at 08:55 a clock five minutes ahead says 09:00.  The chaos run measured it
(`bench/chaos.py`: a scheduler's clock jumped five minutes, and most of a run's messages left before
the run's fire time).  So every process measures its clock against PostgreSQL's (`clock_timestamp()`,
the middle of the round trip) every `refresh` seconds, and at once when its clock steps (against the
monotonic clock); when they differ by more than `tolerance`, it runs on the database's time and says
so in the log.

SQLite is in the same process and on the same machine: there is nothing to compare with.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

log = logging.getLogger("orchestrator.clock")

Clock = Callable[[], float]
_DATABASE_NOW = sa.text("SELECT extract(epoch FROM clock_timestamp())")


class SharedClock:
    """`clock()`: this process's clock (`local`, maybe a demo's virtual one) minus the skew of this
    machine's real clock (`real`) against the database's."""

    def __init__(self, engine: Engine, local: Clock = time.time, *, real: Clock = time.time,
                 tolerance: float = 1.0, refresh: float = 10.0) -> None:
        self.engine, self.local, self.real = engine, local, real
        self.tolerance, self.refresh = tolerance, refresh
        self._skew = 0.0
        self._measured_at: float | None = None
        self._measuring = False
        self._base = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.local() - self.skew()

    def skew(self) -> float:
        """Seconds this machine's clock is ahead of the database's (negative: behind); 0 within the
        tolerance.  One caller measures while the others go on with the last figure; a failed
        measurement keeps it too: the database may be unreachable for a while, and the machine's clock
        does not change because of it."""
        with self._lock:
            due = not self._measuring and (
                self._measured_at is None or time.monotonic() - self._measured_at >= self.refresh
                or abs(self._steps()) > self.tolerance)
            if due:
                self._measuring, self._measured_at = True, time.monotonic()
                self._base = self.real() - time.monotonic()
        if due:
            try:
                self._update()
            finally:
                self._measuring = False
        return self._skew

    def _steps(self) -> float:
        """How far the machine's clock has stepped since the last measurement (monotonic time does
        not step): a jump is measured at once, not at the next refresh."""
        return self.real() - time.monotonic() - self._base

    def _update(self) -> None:
        if self.engine.dialect.name != "postgresql":
            return
        try:
            before = self.real()
            with self.engine.connect() as conn:
                database = float(conn.execute(_DATABASE_NOW).scalar_one())
            measured = (before + self.real()) / 2 - database
        except sa.exc.SQLAlchemyError:
            return
        skew = measured if abs(measured) > self.tolerance else 0.0
        if (skew == 0.0) != (self._skew == 0.0) or abs(skew - self._skew) > self.tolerance:
            if skew:
                log.warning("this machine's clock is %+.1f s off the database's: running on the database's time "
                            "(fix the machine's time synchronisation)", skew)
            else:
                log.info("this machine's clock agrees with the database's again")
        self._skew = skew
