"""The HTTP SMS gateway channel against a real HTTP server on loopback (tests/fakes/gateway.py).

What is checked is what a gateway would see (parameter names and values, byte for byte where
encoding matters) and what the dispatcher would be told (the outcome, the provider id, a reason
that keeps the provider's answer).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from channels.base import Message, Outcome, SendResult, load_channel
from channels.sms import HttpGateway, with_query
from orchestrator.errors import ConfigError
from orchestrator.settings import load_settings
from tests.fakes.gateway import FakeGateway, GatewayProcess, control, params_of, requests

DOCS = Path(__file__).resolve().parent.parent / "docs" / "SMS_GATEWAYS.md"
TRICKY_TEXT = "Привет, Анна! 5 000 ₽ & +10% бонусов = ваши? #1 😀"
PARAMS = {"to": "{{ phone_digits }}", "msg": "{{ text }}", "from": "{{ sender }}", "ref": "{{ ref }}"}


@pytest.fixture
def gateway() -> Iterator[FakeGateway]:
    with FakeGateway() as server:
        yield server


def message(text: str = TRICKY_TEXT, phone: str = "+79161234567", ref: str = "row-1") -> Message:
    return Message(ref=ref, channel="sms", customer_id="c-1", address=phone, content={"text": text})


def deliver(channel: HttpGateway, *messages: Message, concurrently: bool = False) -> list[SendResult]:
    """Sends in a fresh event loop, the way a worker does, and closes the channel afterwards."""

    async def run() -> list[SendResult]:
        try:
            if concurrently:
                return list(await asyncio.gather(*(channel.send(m) for m in messages)))
            return [await channel.send(m) for m in messages]
        finally:
            await channel.close()

    return asyncio.run(run())


def sms(url: str, **options: Any) -> HttpGateway:
    options.setdefault("params", PARAMS)
    options.setdefault("sender", "Магазин")
    return HttpGateway("sms", url=url, **options)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- dialects -----------------------------------------------------------------------------------

EXPECTED = {"to": "79161234567", "msg": TRICKY_TEXT, "from": "Магазин", "ref": "row-1"}


def test_json_body_carries_parameter_names_and_values(gateway: FakeGateway) -> None:
    result, = deliver(sms(gateway.url + "/send", body="json", params={**PARAMS, "json": 1}), message())

    assert result.outcome is Outcome.SENT
    request, = gateway.requests
    assert (request["method"], request["path"]) == ("POST", "/send")
    assert request["headers"]["content-type"] == "application/json"
    assert json.loads(request["body"]) == {**EXPECTED, "json": 1}


def test_form_body_keeps_cyrillic_ampersand_and_plus_intact(gateway: FakeGateway) -> None:
    deliver(sms(gateway.url + "/send", body="form"), message())

    request, = gateway.requests
    assert request["method"] == "POST"
    assert request["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert dict(parse_qsl(request["body"], strict_parsing=True)) == EXPECTED
    assert "%26" in request["body"] and "%2B10" in request["body"]


def test_query_string_dialect_uses_get_and_keeps_the_urls_own_parameters(gateway: FakeGateway) -> None:
    deliver(sms(gateway.url + "/sys/send.php?fmt=3", body="query"), message())

    request, = gateway.requests
    assert (request["method"], request["path"], request["body"]) == ("GET", "/sys/send.php", "")
    assert dict(parse_qsl(request["query"], strict_parsing=True)) == {"fmt": "3", **EXPECTED}


def test_query_url_built_without_reparsing_equals_what_httpx_would_build() -> None:
    base = httpx.URL("https://gw.example/send?fmt=3")

    url = with_query(base, "msg=%D0%9F%20%26&to=7916")

    assert url == httpx.URL("https://gw.example/send?fmt=3&msg=%D0%9F%20%26&to=7916")
    assert url.raw_path == b"/send?fmt=3&msg=%D0%9F%20%26&to=7916"


def test_constant_templated_and_secret_parameters(gateway: FakeGateway) -> None:
    channel = sms(
        gateway.url,
        body="form",
        login="shop",
        password="s3cr&t+",
        params={"login": "{{ login }}", "psw": "{{ password }}", "phones": "{{ phone }}", "fmt": 3,
                "mes": "{{ text | upper }}"},
    )

    deliver(channel, message("привет"))

    assert params_of(gateway.requests[0]) == {
        "login": "shop", "psw": "s3cr&t+", "phones": "+79161234567", "fmt": "3", "mes": "ПРИВЕТ"
    }


def test_header_templates_carry_tokens_and_per_message_values(gateway: FakeGateway) -> None:
    channel = sms(
        gateway.url, token="tok-123", login="u", password="p",
        headers={"Authorization": "Bearer {{ token }}", "X-Basic": "Basic {{ (login ~ ':' ~ password) | b64encode }}",
                 "X-Request-Id": "{{ ref }}"},
    )

    deliver(channel, message(ref="row-7"), message(ref="row-8"))

    first, second = gateway.requests
    assert first["headers"]["authorization"] == "Bearer tok-123"
    assert first["headers"]["x-basic"] == "Basic dTpw"
    assert (first["headers"]["x-request-id"], second["headers"]["x-request-id"]) == ("row-7", "row-8")


def test_nested_json_parameters_for_gateways_that_want_objects(gateway: FakeGateway) -> None:
    channel = sms(gateway.url, params={"auth": {"token": "{{ token }}"}, "messages": [{"to": "{{ phone }}", "text": "{{ text }}"}]},
                  token="t")

    deliver(channel, message("hi"))

    assert json.loads(gateway.requests[0]["body"]) == {"auth": {"token": "t"}, "messages": [{"to": "+79161234567", "text": "hi"}]}


# --- answers --------------------------------------------------------------------------------------


def test_success_without_message_id_field_is_sent_without_provider_id(gateway: FakeGateway) -> None:
    assert deliver(sms(gateway.url), message()) == [SendResult.sent(None)]


def test_message_id_field_keeps_the_providers_id(gateway: FakeGateway) -> None:
    gateway.control(answer={"result": {"id": "msg-{id}"}}, answer_status=201)

    result, = deliver(sms(gateway.url, message_id_field="result.id"), message())

    assert result == SendResult.sent("msg-1")


def test_message_id_field_with_a_templated_segment_keyed_by_phone(gateway: FakeGateway) -> None:
    gateway.control(answer={"status": "OK", "sms": {"{param:to}": {"status": "OK", "sms_id": "id-{param:to}"}}})
    channel = sms(gateway.url, body="form", success_field="sms.{{ phone_digits }}.status", success_value="OK",
                  message_id_field="sms.{{ phone_digits }}.sms_id")

    results = deliver(channel, message(phone="+79161234567"), message(phone="+79035550011"))

    assert [r.provider_id for r in results] == ["id-79161234567", "id-79035550011"]
    assert all(r.outcome is Outcome.SENT for r in results)


def test_numeric_path_segment_indexes_a_list(gateway: FakeGateway) -> None:
    gateway.control(answer={"messages": [{"id": "first-{id}"}]})

    result, = deliver(sms(gateway.url, success_field="messages.0.id", message_id_field="messages.0.id"), message())

    assert result == SendResult.sent("first-1")


@pytest.mark.parametrize(
    ("success_status", "answer_status", "outcome"),
    [(None, 202, Outcome.SENT), ([200, 202], 202, Outcome.SENT), (201, 200, Outcome.PERMANENT), (200, 201, Outcome.PERMANENT)],
)
def test_success_status(gateway: FakeGateway, success_status: Any, answer_status: int, outcome: Outcome) -> None:
    gateway.control(answer={"ok": True}, answer_status=answer_status)

    result, = deliver(sms(gateway.url, success_status=success_status), message())

    assert result.outcome is outcome
    if outcome is Outcome.PERMANENT:
        assert result.reason is not None and result.reason.startswith(f"HTTP {answer_status}")


def test_success_value_mismatch_is_permanent_and_keeps_the_answer(gateway: FakeGateway) -> None:
    gateway.control(answer={"status": "ERROR", "status_text": "Неправильный номер"}, answer_status=200)

    result, = deliver(sms(gateway.url, success_field="status", success_value="OK"), message())

    assert result.outcome is Outcome.PERMANENT
    assert "status is 'ERROR', expected 'OK'" in result.reason
    assert "Неправильный номер" in result.reason


def test_success_value_compares_numbers_given_as_text(gateway: FakeGateway) -> None:
    gateway.control(answer={"code": "100"})

    result, = deliver(sms(gateway.url, success_field="code", success_value=100), message())

    assert result.outcome is Outcome.SENT


@pytest.mark.parametrize(
    ("answer", "outcome", "reason"),
    [({"id": "42", "cnt": 1}, Outcome.SENT, None), ({"error": "bad", "id": "42"}, Outcome.PERMANENT, "no cnt"),
     ({"cnt": ""}, Outcome.PERMANENT, "cnt is empty"), ({"cnt": None}, Outcome.PERMANENT, "cnt is empty")],
)
def test_success_field_without_value_must_be_present_and_not_empty(
    gateway: FakeGateway, answer: dict[str, Any], outcome: Outcome, reason: str | None
) -> None:
    gateway.control(answer=answer)

    result, = deliver(sms(gateway.url, success_field="cnt", message_id_field="id"), message())

    assert result.outcome is outcome
    if reason:
        assert reason in result.reason
    else:
        assert result.provider_id == "42"


def test_an_answer_that_is_not_json_fails_a_required_field(gateway: FakeGateway) -> None:
    gateway.control(answer="OK but not an object")  # a JSON string: still fails "status"

    result, = deliver(sms(gateway.url, success_field="status"), message())

    assert result.outcome is Outcome.PERMANENT
    assert "no status in the answer" in result.reason


@pytest.mark.parametrize("status", [503, 500, 429, 408])
def test_overload_and_server_errors_are_transient(gateway: FakeGateway, status: int) -> None:
    gateway.control(fail_status=status, fail_count=1, fail_body={"error": "busy"})

    first, second = deliver(sms(gateway.url), message(), message())

    assert first.outcome is Outcome.TRANSIENT
    assert first.reason.startswith(f"HTTP {status}: ") and "busy" in first.reason
    assert second.outcome is Outcome.SENT


def test_an_outage_window_is_transient_until_it_ends(gateway: FakeGateway) -> None:
    control(gateway.url, fail_for=2.0)
    channel = sms(gateway.url)

    async def run() -> list[SendResult]:
        during = await channel.send(message(ref="during"))
        await asyncio.sleep(2.2)
        after = await channel.send(message(ref="after"))
        await channel.close()
        return [during, after]

    during, after = asyncio.run(run())

    assert (during.outcome, after.outcome) == (Outcome.TRANSIENT, Outcome.SENT)
    assert [r["status"] for r in requests(gateway.url)] == [503, 200]

def test_client_errors_are_permanent_and_keep_the_answer_truncated(gateway: FakeGateway) -> None:
    gateway.control(fail_status=400, fail_count=2, fail_body={"error": "invalid phone " + "x" * 1000})

    result, = deliver(sms(gateway.url), message())

    assert result.outcome is Outcome.PERMANENT
    assert result.reason.startswith("HTTP 400: ") and "invalid phone" in result.reason
    assert len(result.reason) <= 320


def test_no_answer_within_the_timeout_is_unknown_not_retryable(gateway: FakeGateway) -> None:
    gateway.control(delay=1.0)

    result, = deliver(sms(gateway.url, timeout=0.2), message())

    assert result.outcome is Outcome.UNKNOWN
    assert "ReadTimeout" in result.reason
    assert len(gateway.requests) == 1  # the gateway did get it: the SMS may be on its way


def test_connection_dropped_after_sending_is_unknown(gateway: FakeGateway) -> None:
    gateway.control(drop_count=1)

    result, = deliver(sms(gateway.url), message())

    assert result.outcome is Outcome.UNKNOWN


def test_nothing_listening_is_transient() -> None:
    result, = deliver(sms(f"http://127.0.0.1:{free_port()}/send", timeout=2), message())

    assert result.outcome is Outcome.TRANSIENT
    assert "ConnectError" in result.reason


def test_a_message_without_text_is_refused_without_a_request(gateway: FakeGateway) -> None:
    empty = Message(ref="r", channel="sms", customer_id="c", address="+79161234567", content={})

    result, = deliver(sms(gateway.url), empty)

    assert result.outcome is Outcome.PERMANENT
    assert gateway.requests == []


def test_a_template_failing_on_one_message_refuses_only_that_message(gateway: FakeGateway) -> None:
    channel = sms(gateway.url, params={"msg": "{{ text[20] }}"})

    short, long = deliver(channel, message("short"), message("a text longer than twenty characters"))

    assert short.outcome is Outcome.PERMANENT and "channels.sms" in short.reason
    assert long.outcome is Outcome.SENT
    assert [params_of(r)["msg"] for r in gateway.requests] == ["w"]


# --- pooling ----------------------------------------------------------------------------------------


def test_many_sends_reuse_one_keep_alive_connection(gateway: FakeGateway) -> None:
    results = deliver(sms(gateway.url), *(message(ref=f"r{i}") for i in range(200)))

    assert all(r.outcome is Outcome.SENT for r in results)
    assert len(gateway.requests) == 200
    assert gateway.connections == 1


def test_concurrent_sends_stay_within_max_connections(gateway: FakeGateway) -> None:
    gateway.control(delay=0.01)

    results = deliver(sms(gateway.url, max_connections=4), *(message(ref=f"r{i}") for i in range(100)), concurrently=True)

    assert all(r.outcome is Outcome.SENT for r in results)
    assert {r["connection"] for r in gateway.requests} == {1, 2, 3, 4}


def test_open_close_and_a_new_event_loop_each_get_a_working_client(gateway: FakeGateway) -> None:
    channel = sms(gateway.url)

    async def opened() -> SendResult:
        await channel.open()
        return await channel.send(message())

    first = asyncio.run(opened())  # left open: the next loop must not reuse a dead client
    second, = deliver(channel, message())

    assert (first.outcome, second.outcome) == (Outcome.SENT, Outcome.SENT)


# --- settings ----------------------------------------------------------------------------------------


def test_a_bad_template_names_the_parameter() -> None:
    with pytest.raises(ConfigError) as error:
        HttpGateway("sms", url="http://gw", params={"to": "{{ phone }}", "msg": "{{ text "})
    assert error.value.field == "channels.sms.params.msg"


def test_an_undefined_name_in_a_template_names_the_parameter_and_the_variable() -> None:
    with pytest.raises(ConfigError) as error:
        HttpGateway("sms", url="http://gw", params={"psw": "{{ password }}"})
    assert error.value.field == "channels.sms.params.psw"
    assert "password" in error.value.message and "ORCHESTRATOR_CHANNELS_SMS_PASSWORD" in error.value.message


def test_a_misspelt_option_is_reported_by_name() -> None:
    with pytest.raises(ConfigError) as error:
        HttpGateway("sms", url="http://gw", params=PARAMS, succes_field="status")
    assert error.value.field == "channels.sms.succes_field"


@pytest.mark.parametrize(
    ("options", "field"),
    [({"url": ""}, "channels.sms.url"), ({"url": "ftp://gw"}, "channels.sms.url"), ({"body": "xml"}, "channels.sms.body"),
     ({"success_status": "200"}, "channels.sms.success_status"), ({"success_value": "OK"}, "channels.sms.success_value"),
     ({"message_id_field": "a..b"}, "channels.sms.message_id_field"), ({"timeout": 0}, "channels.sms.timeout"),
     ({"headers": {"X": "{{ nope }}"}}, "channels.sms.headers.X"), ({"params": {"to": {"a": 1}}, "body": "form"}, "channels.sms.params.to")],
)
def test_invalid_settings_name_the_setting(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as error:
        HttpGateway("sms", **{"url": "http://gw", **options})
    assert error.value.field == field


def test_load_channel_builds_the_gateway_from_a_dotted_path(gateway: FakeGateway) -> None:
    channel = load_channel("sms", "channels.sms.HttpGateway", {"url": gateway.url, "params": PARAMS})

    assert isinstance(channel, HttpGateway)
    assert deliver(channel, message())[0].outcome is Outcome.SENT


def test_dispatcher_keys_passed_along_with_the_options_are_ignored(gateway: FakeGateway) -> None:
    channel = HttpGateway("sms", url=gateway.url, params=PARAMS, rate="30/s", backend="channels.sms.HttpGateway")

    assert deliver(channel, message())[0].outcome is Outcome.SENT


# --- the documented gateways --------------------------------------------------------------------------

PROVIDER_ANSWERS = {
    # host: (success answer, expected provider id, error answer, a text of it the reason must keep);
    # "{param:NAME}" echoes a parameter of the request, "{id}" is the gateway's counter
    "smsc.ru": ({"id": "{id}", "cnt": 1}, "1", {"error": "invalid number", "error_code": 7, "id": "{id}"}, "invalid number"),
    "sms.ru": (
        {"status": "OK", "status_code": 100, "sms": {"{param:to}": {"status": "OK", "status_code": 100, "sms_id": "000000-{id}"}}},
        "000000-1",
        {"status": "OK", "status_code": 100, "sms": {"{param:to}": {"status": "ERROR", "status_code": 207, "status_text": "Нельзя отправлять на этот номер"}}},
        "Нельзя отправлять на этот номер",
    ),
    "api.example-gateway.ru": ({"message_id": "m-{id}"}, "m-1", {"error": "destination is invalid"}, "destination is invalid"),
}
SECRETS = {"login": "shop", "password": "pw", "api_id": "ABCD-1234", "token": "tok"}


def documented_blocks() -> list[tuple[str, str, dict[str, Any]]]:
    """(host, TOML text, the [channels.sms] table) of every example in docs/SMS_GATEWAYS.md."""
    blocks = re.findall(r"```toml\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)
    examples = []
    for block in blocks:
        if "[channels.sms]" in block:
            table = tomllib.loads(block)["channels"]["sms"]
            examples.append((httpx.URL(table["url"]).host, block, table))
    return examples


EXAMPLES = {host: table for host, _, table in documented_blocks()}


def test_the_gateway_document_has_examples_for_two_russian_gateways() -> None:
    assert {"smsc.ru", "sms.ru"} <= set(EXAMPLES)
    assert set(EXAMPLES) <= set(PROVIDER_ANSWERS)


def documented_channel(table: dict[str, Any], url: str) -> HttpGateway:
    """The documented table with the secrets its templates use, aimed at the fake gateway."""
    options = {key: value for key, value in table.items() if key not in ("backend", "rate")}
    used = {name for name in SECRETS if "{{ %s }}" % name in json.dumps(table)}
    options.update({name: SECRETS[name] for name in used}, url=url + httpx.URL(table["url"]).path)
    channel = load_channel("sms", table["backend"], options)
    assert isinstance(channel, HttpGateway)
    return channel


@pytest.mark.parametrize("host", sorted(EXAMPLES))
def test_documented_gateway_success_answer_is_sent_with_the_providers_id(gateway: FakeGateway, host: str) -> None:
    success, provider_id, _, _ = PROVIDER_ANSWERS[host]
    gateway.control(answer=success)

    result, = deliver(documented_channel(EXAMPLES[host], gateway.url), message("Ваш код 1234 & +5"))

    assert result == SendResult.sent(provider_id)
    received = params_of(gateway.requests[0])
    assert "Ваш код 1234 & +5" in received.values()
    assert "79161234567" in received.values()


@pytest.mark.parametrize("host", sorted(EXAMPLES))
def test_documented_gateway_error_answer_is_permanent(gateway: FakeGateway, host: str) -> None:
    _, _, error, error_text = PROVIDER_ANSWERS[host]
    table = EXAMPLES[host]
    gateway.control(answer=error, answer_status=200 if "success_field" in table else 400)

    result, = deliver(documented_channel(table, gateway.url), message())

    assert result.outcome is Outcome.PERMANENT
    assert error_text in result.reason


def test_documented_smsru_settings_take_the_secret_from_the_environment(gateway: FakeGateway, tmp_path: Path) -> None:
    block = next(text for host, text, _ in documented_blocks() if host == "sms.ru")
    settings_file = tmp_path / "settings.toml"
    settings_file.write_text(block, encoding="utf-8")
    environ = {"ORCHESTRATOR_CHANNELS_SMS_API_ID": "F2D79B58-A5A2", "ORCHESTRATOR_CHANNELS_SMS_URL": gateway.url + "/sms/send"}
    channel_settings = load_settings(settings_file, environ=environ).channel("sms")
    assert channel_settings is not None
    gateway.control(answer=PROVIDER_ANSWERS["sms.ru"][0])

    channel = load_channel("sms", channel_settings.backend, channel_settings.options)
    result, = deliver(channel, message())

    assert result == SendResult.sent("000000-1")
    assert params_of(gateway.requests[0])["api_id"] == "F2D79B58-A5A2"


# --- the fake gateway as a separate process --------------------------------------------------------------


def test_gateway_process_logs_requests_and_obeys_control(tmp_path: Path) -> None:
    log = tmp_path / "gateway.jsonl"
    with GatewayProcess(log=log) as server:
        server.control(fail_status=503, fail_count=1)
        first, second = deliver(sms(server.url, body="query"), message(ref="a"), message(ref="b"))
        recorded = server.requests

    assert (first.outcome, second.outcome) == (Outcome.TRANSIENT, Outcome.SENT)
    lines = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert [params_of(r)["ref"] for r in lines] == ["a", "b"] == [params_of(r)["ref"] for r in recorded]
    assert [r["status"] for r in lines] == [503, 200]
