"""A channel whose answers the test scripts: outcomes in order, then `sent`; every attempt kept."""

from __future__ import annotations

import threading
from channels.base import Channel, Message, Outcome, SendResult


class Scripted(Channel):
    script: list[Outcome] = []
    attempts: list[Message] = []
    _lock = threading.Lock()

    @classmethod
    def reset(cls, *outcomes: Outcome) -> None:
        cls.script = list(outcomes)
        cls.attempts = []

    async def send(self, message: Message) -> SendResult:
        with self._lock:
            self.attempts.append(message)
            outcome = self.script.pop(0) if self.script else Outcome.SENT
        if outcome is Outcome.SENT:
            return SendResult.sent(provider_id=f"p-{message.ref}")
        if outcome is Outcome.TRANSIENT:
            return SendResult.transient("HTTP 503: try later")
        if outcome is Outcome.PERMANENT:
            return SendResult.permanent("HTTP 400: invalid number")
        return SendResult.unknown("read timeout after the request was sent")
