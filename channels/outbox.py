"""Development channels: messages kept in memory (tests) or written as files (the default).

The file outbox is what the example workspace uses, so that nothing leaves the machine until a
real gateway is configured: `.eml` files for email (open them in any mail client), `.txt` otherwise.
"""

from __future__ import annotations

import os
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

from channels.base import Channel, Message, SendResult


class Memory(Channel):
    """Keeps every message in a list; `outbox` is shared per channel name for tests to inspect."""

    outboxes: dict[str, list[Message]] = {}

    async def send(self, message: Message) -> SendResult:
        self.outboxes.setdefault(self.name, []).append(message)
        return SendResult.sent(provider_id=f"memory-{message.ref}")


class Outbox(Channel):
    """Writes one file per message into `path` (default `var/outbox/<channel>`)."""

    def __init__(self, name: str, path: str = "") -> None:
        super().__init__(name)
        self.path = Path(path or f"var/outbox/{name}")

    async def open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    async def send(self, message: Message) -> SendResult:
        self.path.mkdir(parents=True, exist_ok=True)
        if message.channel == "email":
            data = self._email(message)
            target = self.path / f"{message.ref}.eml"
        else:
            data = self._text(message).encode("utf-8")
            target = self.path / f"{message.ref}.txt"
        # Write then rename: a crash never leaves half a message that looks delivered.
        partial = target.with_suffix(target.suffix + ".part")
        partial.write_bytes(data)
        os.replace(partial, target)
        return SendResult.sent(provider_id=target.name)

    @staticmethod
    def _text(message: Message) -> str:
        body = message.content.get("text") or message.content.get("script") or ""
        return f"To: {message.address}\nCustomer: {message.customer_id}\nRef: {message.ref}\n\n{body}\n"

    @staticmethod
    def _email(message: Message) -> bytes:
        email = EmailMessage()
        email["To"] = message.address
        email["From"] = str(message.content.get("sender") or "loyalty@example.com")
        email["Subject"] = str(message.content.get("subject") or "")
        for key, value in message.headers.items():
            email[key] = value
        email.set_content(str(message.content.get("text") or ""))
        if message.content.get("html"):
            email.add_alternative(str(message.content["html"]), subtype="html")
        return email.as_bytes(policy=SMTP.clone(max_line_length=998))
