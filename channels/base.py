"""The channel interface, the Django email-backend way: a small base class and a dotted path.

A channel turns one rendered message into one attempt at delivery and says what happened.  The
dispatcher, not the channel, decides what a result means for the ledger row (retry, fail, mark
unknown); channels never retry on their own.
"""

from __future__ import annotations

import enum
import importlib
from dataclasses import dataclass, field
from typing import Any, Mapping

from orchestrator.errors import ConfigError


class Outcome(enum.Enum):
    SENT = "sent"              # accepted by the provider; provider_id says under which id
    TRANSIENT = "transient"    # not delivered, safe to try again later (timeout before sending, 5xx)
    PERMANENT = "permanent"    # refused for good (invalid number, 5xx SMTP per recipient)
    UNKNOWN = "unknown"        # may or may not have reached the customer: never retried


@dataclass(frozen=True)
class Message:
    """One delivery as the channel sees it: an address, the rendered content, a reference."""

    ref: str                     # the ledger row id, unique; providers echo it back
    channel: str
    customer_id: str
    address: str                 # E.164 phone, email address, or manager login for calls
    content: Mapping[str, Any]   # rendered: text / subject, html, text / script ...
    headers: Mapping[str, str] = field(default_factory=dict)
    campaign: str = ""
    zone: str = ""               # the recipient's zone the policy used
    zone_source: str = ""        # column | city | phone | default


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    provider_id: str | None = None
    reason: str | None = None

    @classmethod
    def sent(cls, provider_id: str | None = None) -> "SendResult":
        return cls(Outcome.SENT, provider_id=provider_id)

    @classmethod
    def transient(cls, reason: str) -> "SendResult":
        return cls(Outcome.TRANSIENT, reason=reason)

    @classmethod
    def permanent(cls, reason: str) -> "SendResult":
        return cls(Outcome.PERMANENT, reason=reason)

    @classmethod
    def unknown(cls, reason: str) -> "SendResult":
        return cls(Outcome.UNKNOWN, reason=reason)


class Channel:
    """Base class of every channel.  Subclasses take their settings table as keyword options.

    `parallel` is how many messages the channel can usefully have in flight at once (its pool of
    connections): the worker claims that many rows at a time, so a crash leaves at most that many
    rows with an unknown outcome.
    """

    name: str = ""
    parallel: int = 16

    def __init__(self, name: str, **options: Any) -> None:
        self.name = name
        self.options = options

    async def open(self) -> None:
        """Acquire pooled resources (connections); called once per worker."""

    async def close(self) -> None:
        """Release them."""

    async def send(self, message: Message) -> SendResult:
        raise NotImplementedError


class LedgerChannel(Channel):
    """A channel whose delivery is a write into our own database (a call task for a manager).

    The worker calls `deliver_in` inside the transaction that claims the ledger row, so the
    delivery and the row's `sent` happen together or not at all: exactly once, even across crashes.
    """

    def deliver_in(self, conn: Any, message: Message, now: int, policy: Any) -> SendResult:
        raise NotImplementedError

    async def send(self, message: Message) -> SendResult:
        raise TypeError(f"channel {self.name} delivers inside the ledger transaction (deliver_in)")


def load_channel(name: str, backend: str, options: Mapping[str, Any]) -> Channel:
    """Instantiate `backend` (a dotted path) for channel `name`; errors name the setting."""
    module_name, _, class_name = backend.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name)
    except (ImportError, AttributeError):
        raise ConfigError(
            f"there is no channel class '{backend}'", field=f"channels.{name}.backend"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Channel)):
        raise ConfigError(f"'{backend}' is not a channel class", field=f"channels.{name}.backend")
    try:
        return cls(name, **dict(options))
    except TypeError as error:
        raise ConfigError(str(error), field=f"channels.{name}") from None
