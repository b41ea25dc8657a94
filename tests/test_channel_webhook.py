"""The webhook channel against a real HTTP receiver on loopback (tests/fakes/gateway.py).

The receiver's point of view matters most: the body is the documented JSON, and the signature
can be verified from the exact bytes received with the shared secret.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from channels.base import Message, Outcome, SendResult, load_channel
from channels.webhook import Webhook, signature
from orchestrator.errors import ConfigError
from tests.fakes.gateway import FakeGateway

SECRET = "webhook-secret-ключ"


@pytest.fixture
def receiver() -> Iterator[FakeGateway]:
    with FakeGateway() as server:
        yield server


def message(ref: str = "row-1", **content: Any) -> Message:
    return Message(
        ref=ref, channel="webhook", customer_id="c-42", address="cabinet:42",
        content=content or {"text": "Привет & +100 бонусов", "subject": "Бонусы"},
    )


def deliver(channel: Webhook, *messages: Message) -> list[SendResult]:
    async def run() -> list[SendResult]:
        try:
            return [await channel.send(m) for m in messages]
        finally:
            await channel.close()

    return asyncio.run(run())


def hook(url: str, **options: Any) -> Webhook:
    options.setdefault("secret", SECRET)
    return Webhook("webhook", url=url, **options)


def verify(secret: str, body: bytes, header: str) -> bool:
    """What a receiver does: recompute the HMAC over the raw body, compare in constant time."""
    expected = "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header)


def test_posts_the_message_as_json(receiver: FakeGateway) -> None:
    result, = deliver(hook(receiver.url + "/hooks/sms"), message())

    assert result.outcome is Outcome.SENT
    request, = receiver.requests
    assert (request["method"], request["path"]) == ("POST", "/hooks/sms")
    assert request["headers"]["content-type"] == "application/json"
    assert request["headers"]["x-ref"] == "row-1"
    assert json.loads(request["body"]) == {
        "ref": "row-1", "channel": "webhook", "customer_id": "c-42", "address": "cabinet:42",
        "content": {"text": "Привет & +100 бонусов", "subject": "Бонусы"},
    }


def test_the_receiver_can_verify_the_signature_of_the_exact_body(receiver: FakeGateway) -> None:
    deliver(hook(receiver.url), message(), message(ref="row-2", text="другой текст"))

    for request in receiver.requests:
        body = request["body"].encode("utf-8")
        header = request["headers"]["x-signature"]
        assert header.startswith("sha256=")
        assert verify(SECRET, body, header)
        assert not verify("another secret", body, header)
        assert not verify(SECRET, body.replace("row".encode(), b"rov"), header)


def test_signature_helper_matches_what_is_sent(receiver: FakeGateway) -> None:
    deliver(hook(receiver.url), message())

    request, = receiver.requests
    assert request["headers"]["x-signature"] == signature(SECRET, Webhook.body(message()))


def test_without_a_secret_no_signature_is_sent(receiver: FakeGateway) -> None:
    deliver(hook(receiver.url, secret=""), message())

    assert "x-signature" not in receiver.requests[0]["headers"]


def test_message_id_field_keeps_the_receivers_id(receiver: FakeGateway) -> None:
    receiver.control(answer={"data": {"id": "cab-{id}"}}, answer_status=201)

    result, = deliver(hook(receiver.url, message_id_field="data.id"), message())

    assert result == SendResult.sent("cab-1")


def test_a_2xx_answer_without_the_id_field_is_still_sent(receiver: FakeGateway) -> None:
    receiver.control(answer="accepted", answer_status=202)

    result, = deliver(hook(receiver.url, message_id_field="id"), message())

    assert result == SendResult.sent(None)


@pytest.mark.parametrize("status", [503, 502, 429])
def test_overload_and_server_errors_are_transient(receiver: FakeGateway, status: int) -> None:
    receiver.control(fail_status=status, fail_count=1, fail_body={"error": "try later"})

    first, second = deliver(hook(receiver.url), message(), message(ref="row-2"))

    assert first.outcome is Outcome.TRANSIENT and first.reason.startswith(f"HTTP {status}: ")
    assert second.outcome is Outcome.SENT


def test_client_errors_are_permanent_with_the_answer_kept(receiver: FakeGateway) -> None:
    receiver.control(fail_status=422, fail_count=1, fail_body={"error": "unknown customer c-42"})

    result, = deliver(hook(receiver.url), message())

    assert result.outcome is Outcome.PERMANENT
    assert "HTTP 422" in result.reason and "unknown customer c-42" in result.reason


def test_a_timeout_after_sending_is_unknown(receiver: FakeGateway) -> None:
    receiver.control(delay=1.0)

    result, = deliver(hook(receiver.url, timeout=0.2), message())

    assert result.outcome is Outcome.UNKNOWN
    assert len(receiver.requests) == 1


def test_nothing_listening_is_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    result, = deliver(hook(f"http://127.0.0.1:{port}/hook", timeout=2), message())

    assert result.outcome is Outcome.TRANSIENT


def test_many_messages_reuse_one_connection(receiver: FakeGateway) -> None:
    results = deliver(hook(receiver.url), *(message(ref=f"r{i}") for i in range(100)))

    assert all(r.outcome is Outcome.SENT for r in results)
    assert receiver.connections == 1


def test_header_templates_use_secret_options(receiver: FakeGateway) -> None:
    deliver(hook(receiver.url, token="tok-1", headers={"Authorization": "Bearer {{ token }}"}), message())

    assert receiver.requests[0]["headers"]["authorization"] == "Bearer tok-1"


def test_content_that_is_not_plain_json_is_written_as_text(receiver: FakeGateway) -> None:
    result, = deliver(hook(receiver.url), message(text="t", when=dt.date(2026, 1, 2)))

    assert result.outcome is Outcome.SENT
    assert json.loads(receiver.requests[0]["body"])["content"] == {"text": "t", "when": "2026-01-02"}


@pytest.mark.parametrize(
    ("options", "field"),
    [({"url": ""}, "channels.webhook.url"), ({"secert": "x"}, "channels.webhook.secert"),
     ({"headers": {"X-Ref": "{{ ref }}"}}, "channels.webhook.headers.X-Ref"), ({"timeout": -1}, "channels.webhook.timeout")],
)
def test_invalid_settings_name_the_setting(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as error:
        Webhook("webhook", **{"url": "http://hook", **options})
    assert error.value.field == field


def test_load_channel_builds_the_webhook(receiver: FakeGateway) -> None:
    channel = load_channel("webhook", "channels.webhook.Webhook", {"url": receiver.url, "secret": SECRET})

    assert isinstance(channel, Webhook)
    assert deliver(channel, message())[0].outcome is Outcome.SENT
