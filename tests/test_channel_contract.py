"""The contract every channel keeps (SPEC 8), checked on each shipped channel against a real
receiver: built from its settings table by dotted path, it sends a message and says so with a
provider id, never raises for a provider's failure, and opens and closes cleanly."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import sqlalchemy as sa

from channels.base import Channel, LedgerChannel, Message, Outcome, load_channel
from orchestrator.policy.decide import PolicyContext
from orchestrator.settings import load_settings
from orchestrator.storage.engine import connect
from orchestrator.storage.schema import call_tasks
from tests.fakes.gateway import FakeGateway
from tests.fakes.smtp_sink import SmtpSink

HOSTILE = "Анна\r\nBcc: victim@example.com 😀 & <b>"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def message(channel: str, ref: str = "101") -> Message:
    address = {"email": "anna@example.com", "sms": "+79161234567"}.get(channel, "+79161234567")
    content = {"address": address, "text": f"Привет, {HOSTILE}", "subject": f"Для вас: {HOSTILE}",
               "html": f"<p>{HOSTILE}</p>", "unsubscribe": "https://shop.example/u/abc", "manager": "ivanova"}
    return Message(ref=ref, channel=channel, customer_id="C1", address=address, content=content,
                   campaign="promo", zone="Europe/Moscow", zone_source="column")


@pytest.fixture(scope="module")
def gateway() -> Iterator[FakeGateway]:
    with FakeGateway() as server:
        yield server


@pytest.fixture(scope="module")
def sink() -> Iterator[tuple[str, int]]:
    server = SmtpSink()
    address = server.start()
    yield address
    server.stop()


def _options(kind: str, tmp_path: Path, gateway: FakeGateway, sink: tuple[str, int], *, broken: bool) -> tuple[str, str, dict[str, Any]]:
    dead = f"http://127.0.0.1:{free_port()}"
    if kind == "outbox":
        return "sms", "channels.outbox.Outbox", {"path": str(tmp_path / "outbox")}
    if kind == "memory":
        return "sms", "channels.outbox.Memory", {}
    if kind == "sms":
        return "sms", "channels.sms.HttpGateway", {
            "url": f"{dead if broken else gateway.url}/send", "body": "json", "timeout": 2,
            "params": {"to": "{{ phone }}", "text": "{{ text }}"}, "message_id_field": "id"}
    if kind == "webhook":
        return "webhook", "channels.webhook.Webhook", {"url": f"{dead if broken else gateway.url}/hook", "secret": "s", "timeout": 2,
                                                "message_id_field": "id"}
    if kind == "email":
        return "email", "channels.email.Smtp", {"host": sink[0], "port": free_port() if broken else sink[1],
                                                "sender": "Shop <shop@example.com>", "timeout": 2}
    raise AssertionError(kind)


NETWORK = ["sms", "webhook", "email"]


@pytest.mark.parametrize("kind", ["outbox", "memory", *NETWORK])
def test_a_channel_sends_and_says_so(kind: str, tmp_path: Path, gateway: FakeGateway, sink: tuple[str, int]) -> None:
    name, backend, options = _options(kind, tmp_path, gateway, sink, broken=False)
    channel = load_channel(name, backend, options)
    assert isinstance(channel, Channel) and channel.parallel >= 1

    async def run() -> list[Any]:
        await channel.open()
        first = await channel.send(message(name, "101"))
        second = await channel.send(message(name, "102"))
        await channel.close()
        await channel.close()
        return [first, second]

    results = asyncio.run(run())
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]
    assert all(isinstance(r.provider_id, str) and r.provider_id for r in results)
    assert results[0].provider_id != results[1].provider_id


@pytest.mark.parametrize("kind", NETWORK)
def test_a_provider_that_cannot_be_reached_is_transient_not_an_exception(
    kind: str, tmp_path: Path, gateway: FakeGateway, sink: tuple[str, int]
) -> None:
    name, backend, options = _options(kind, tmp_path, gateway, sink, broken=True)
    channel = load_channel(name, backend, options)
    result = asyncio.run(channel.send(message(name)))
    assert result.outcome is Outcome.TRANSIENT and result.reason


@pytest.mark.parametrize("kind", ["outbox", *NETWORK])
def test_unknown_options_are_a_settings_error(kind: str, tmp_path: Path, gateway: FakeGateway, sink: tuple[str, int]) -> None:
    from orchestrator.errors import ConfigError

    name, backend, options = _options(kind, tmp_path, gateway, sink, broken=False)
    with pytest.raises(ConfigError) as error:
        load_channel(name, backend, {**options, "no_such_option": 1})
    assert f"channels.{name}" in str(error.value.field or "") + str(error.value)


def test_the_call_task_channel_delivers_inside_the_ledger_transaction(tmp_path: Path) -> None:
    engine = connect(f"sqlite:///{tmp_path / 'ledger.db'}")
    channel = load_channel("phone", "channels.phone.CallTasks", {})
    assert isinstance(channel, LedgerChannel)
    ctx = PolicyContext.from_settings(_settings(tmp_path))
    with engine.begin() as conn:
        first = channel.deliver_in(conn, message("phone", "7"), 1_800_000_000, ctx)
        again = channel.deliver_in(conn, message("phone", "7"), 1_800_000_100, ctx)
    assert first.outcome is Outcome.SENT and again.provider_id == first.provider_id
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(call_tasks)).scalar() == 1


def _settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "settings.toml"
    path.write_text("", encoding="utf-8")
    return load_settings(path)
