"""The SMTP channel over real sockets on loopback, against the aiosmtpd sink (tests/fakes/smtp_sink.py).

What matters to the customer and to the ledger: the message arrives intact and un-injectable (From,
To, Subject, both bodies, a long unsubscribe URL byte for byte), and every failure is reported with
the outcome that keeps "at most once" true — transient before the body was sent, unknown after it.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from channels.base import Message, Outcome, SendResult, load_channel
from channels.email import MessageWriter, Smtp, header_text
from orchestrator.errors import ConfigError
from tests.fakes.smtp_sink import Received, SinkProcess, SmtpSink, read_messages, write_control

SENDER = "Магазин «Ромашка» <news@shop.example>"
SUBJECT = "Скидка 20% только сегодня — для вас, Иван! 🎉"
TEXT = "Здравствуйте, Иван!\n\nВаши баллы: 1 234.\n.\nСтрока с точкой выше.\n"
HTML = "<html><body><p>Здравствуйте, <b>Иван</b>!</p><p>Ваши баллы: 1&nbsp;234.</p></body></html>"
LONG_URL = "https://shop.example/unsubscribe?token=" + "aB3-_~." * 130 + "&sig=0123456789abcdef"


def message(address: str = "ivan@example.com", ref: str = "row-1", **content: Any) -> Message:
    fields: dict[str, Any] = {"subject": SUBJECT, "text": TEXT, "html": HTML}
    fields.update(content)
    headers = fields.pop("headers", {})
    return Message(ref=ref, channel="email", customer_id="c1", address=address, content=fields, headers=headers)


def channel(address: tuple[str, int], **options: Any) -> Smtp:
    host, port = address
    settings: dict[str, Any] = {"sender": SENDER, "host": host, "port": port, "timeout": 2, "helo": "test.local"}
    settings.update(options)
    return Smtp("email", **settings)


def send(smtp: Smtp, *messages: Message) -> list[SendResult]:
    """Sends the messages one after another in a fresh event loop, like a worker's batch."""

    async def run() -> list[SendResult]:
        await smtp.open()
        try:
            return [await smtp.send(m) for m in messages]
        finally:
            await smtp.close()

    return asyncio.run(run())


def send_concurrently(smtp: Smtp, messages: Sequence[Message]) -> list[SendResult]:
    async def run() -> list[SendResult]:
        await smtp.open()
        try:
            return list(await asyncio.gather(*(smtp.send(m) for m in messages)))
        finally:
            await smtp.close()

    return asyncio.run(run())


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for localhost, made with the openssl command line."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return str(cert), str(key)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def only(sink: SmtpSink) -> Received:
    assert len(sink.messages) == 1, sink.messages
    return sink.messages[0]


# ---------------------------------------------------------------------------------------------
# What arrives


def test_multipart_message_arrives_with_headers_and_both_bodies(sink: SmtpSink) -> None:
    [result] = send(channel(sink.address), message(unsubscribe=LONG_URL))

    received = only(sink)
    parsed = received.parsed()
    assert result.outcome is Outcome.SENT
    assert received.mail_from == "news@shop.example"
    assert received.rcpt_tos == ("ivan@example.com",)
    assert parsed["From"].addresses[0].display_name == "Магазин «Ромашка»"
    assert parsed["From"].addresses[0].addr_spec == "news@shop.example"
    assert str(parsed["To"]) == "ivan@example.com"
    assert str(parsed["Subject"]) == SUBJECT
    assert parsed["Date"].datetime is not None
    assert parsed.get_content_type() == "multipart/alternative"
    assert parsed.get_body(("plain",)).get_content().replace("\r\n", "\n") == TEXT
    assert parsed.get_body(("html",)).get_content().replace("\r\n", "\n") == HTML
    assert received.message_id == result.provider_id == parsed["Message-ID"]
    assert "row-1" in received.message_id and received.message_id.endswith("@shop.example>")
    assert all(len(line) <= 998 for line in received.raw.split(b"\r\n"))


def test_long_unsubscribe_url_arrives_byte_for_byte(sink: SmtpSink) -> None:
    assert len(LONG_URL) > 900
    send(channel(sink.address), message(unsubscribe=LONG_URL))

    lines = only(sink).header_lines()
    assert b"List-Unsubscribe: <" + LONG_URL.encode("ascii") + b">" in lines
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in lines


def test_url_too_long_for_the_header_line_moves_whole_to_a_continuation_line(sink: SmtpSink) -> None:
    url = "https://shop.example/u?t=" + "x" * 960  # 985 characters: fits only on a line of its own
    send(channel(sink.address), message(unsubscribe=url))

    received = only(sink)
    lines = received.header_lines()
    start = lines.index(b"List-Unsubscribe:")
    assert lines[start + 1] == b" <" + url.encode("ascii") + b">"
    assert str(received.parsed()["List-Unsubscribe"]).strip() == f"<{url}>"


def test_unsubscribe_url_that_cannot_fit_unbroken_is_refused_without_sending(sink: SmtpSink) -> None:
    [result] = send(channel(sink.address), message(unsubscribe="https://shop.example/u?t=" + "x" * 990))

    assert result.outcome is Outcome.PERMANENT
    assert "unsubscribe URL" in (result.reason or "")
    assert sink.messages == [] and sink.connections == 0


def test_text_only_message_without_unsubscribe(sink: SmtpSink) -> None:
    send(channel(sink.address), message(html=None, text="Plain ASCII body.\n"))

    parsed = only(sink).parsed()
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content().replace("\r\n", "\n") == "Plain ASCII body.\n"
    assert "List-Unsubscribe" not in parsed and "List-Unsubscribe-Post" not in parsed


def test_a_subject_cannot_inject_a_header_or_a_recipient(sink: SmtpSink) -> None:
    hostile = 'Hi "there"\r\nBcc: victim@example.com\r\n\r\nbody?'
    [result] = send(channel(sink.address), message(subject=hostile, headers={"X-Campaign": "a\nBcc: b@example.com"}))

    received = only(sink)
    parsed = received.parsed()
    assert result.outcome is Outcome.SENT
    assert received.rcpt_tos == ("ivan@example.com",)
    assert "Bcc" not in parsed
    assert not any(line.lower().startswith(b"bcc:") for line in received.header_lines())
    assert str(parsed["Subject"]) == 'Hi "there" Bcc: victim@example.com body?'
    assert str(parsed["X-Campaign"]) == "a Bcc: b@example.com"


def test_a_10_kb_subject_with_emoji_survives_the_servers_line_limit(sink: SmtpSink) -> None:
    subject = ("Очень длинная тема 🎉 " * 500)[:10_000]
    [result] = send(channel(sink.address), message(subject=subject))

    assert result.outcome is Outcome.SENT
    assert str(only(sink).parsed()["Subject"]) == subject.strip()


def test_lines_starting_with_a_dot_are_not_lost(sink: SmtpSink) -> None:
    text = ".\n..two dots\n.one dot\n"
    send(channel(sink.address), message(text=text, html="<p>x</p>\n.\n"))

    parsed = only(sink).parsed()
    assert parsed.get_body(("plain",)).get_content().replace("\r\n", "\n") == text
    assert parsed.get_body(("html",)).get_content().replace("\r\n", "\n") == "<p>x</p>\n.\n"


def test_extra_headers_go_through_but_may_not_replace_the_channels_own(sink: SmtpSink) -> None:
    ok, reserved = send(
        channel(sink.address),
        message(headers={"X-Campaign": "spring", "Reply-To": "care@shop.example"}),
        message(ref="row-2", headers={"From": "ceo@bank.example"}),
    )

    parsed = only(sink).parsed()
    assert ok.outcome is Outcome.SENT
    assert str(parsed["X-Campaign"]) == "spring" and str(parsed["Reply-To"]) == "care@shop.example"
    assert reserved.outcome is Outcome.PERMANENT and "From" in (reserved.reason or "")


@pytest.mark.parametrize("address", ["not an address", "a@b@", "ivan@exa mple.com", "<ivan@example.com>", "иван@example.com"])
def test_an_invalid_address_is_permanent_and_never_reaches_the_server(sink: SmtpSink, address: str) -> None:
    [result] = send(channel(sink.address), message(address=address))

    assert result.outcome is Outcome.PERMANENT
    assert sink.connections == 0


def test_an_internationalized_domain_is_sent_in_punycode(sink: SmtpSink) -> None:
    [result] = send(channel(sink.address), message(address="ivan@пример.рф"))

    assert result.outcome is Outcome.SENT
    assert only(sink).rcpt_tos == ("ivan@xn--e1afmkfd.xn--p1ai",)


printable = st.characters(blacklist_categories=("Cs",))


@hsettings(max_examples=150, deadline=None)
@given(subject=st.text(printable, max_size=300), text=st.text(printable, max_size=400),
       html=st.text(printable, min_size=1, max_size=400))
def test_any_customer_text_reads_back_equal_and_adds_no_header(subject: str, text: str, html: str) -> None:
    """Offline property: what a mail client decodes is what we were given (line breaks normalized)."""
    writer = MessageWriter(SENDER)
    envelope = writer.envelope(message(subject=subject, text=text, html=html))
    raw = envelope.payload[:-3].replace(b"\r\n..", b"\r\n.")
    parsed = Received("", (), raw, None, 0.0, 0).parsed()

    def normalized(value: str) -> str:
        return value.replace("\r\n", "\n").replace("\r", "\n")

    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert sorted(parsed.keys()) == sorted(["From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"])
    assert str(parsed["Subject"]) == header_text(subject)
    assert normalized(parsed.get_body(("plain",)).get_content()) == normalized(text)
    assert normalized(parsed.get_body(("html",)).get_content()) == normalized(html)


# ---------------------------------------------------------------------------------------------
# Outcomes


def test_451_at_rcpt_is_transient_with_the_servers_reply_and_the_connection_stays_usable(sink: SmtpSink) -> None:
    refused, after = send(channel(sink.address), message(address="ivan+t451@example.com"), message(ref="row-2"))

    assert refused.outcome is Outcome.TRANSIENT
    assert refused.reason is not None and "451" in refused.reason and "RCPT" in refused.reason
    assert after.outcome is Outcome.SENT
    assert [m.rcpt_tos for m in sink.messages] == [("ivan@example.com",)]
    assert sink.connections == 1


def test_550_at_rcpt_is_permanent(sink: SmtpSink) -> None:
    [result] = send(channel(sink.address), message(address="ivan+p550@example.com"))

    assert result.outcome is Outcome.PERMANENT
    assert result.reason is not None and result.reason.startswith("550")
    assert sink.messages == []


@pytest.mark.parametrize(("tag", "outcome"), [("d452", Outcome.TRANSIENT), ("d554", Outcome.PERMANENT)])
def test_a_refusal_after_the_body_follows_its_reply_class(sink: SmtpSink, tag: str, outcome: Outcome) -> None:
    [result] = send(channel(sink.address), message(address=f"ivan+{tag}@example.com"))

    assert result.outcome is outcome
    assert result.reason is not None and tag[1:] in result.reason


def test_no_final_reply_within_the_timeout_is_unknown_and_keeps_the_message_id(sink: SmtpSink) -> None:
    [result] = send(channel(sink.address, timeout=0.5), message(address="ivan+slowdata3@example.com"))

    assert result.outcome is Outcome.UNKNOWN
    assert result.provider_id == only(sink).message_id  # it did reach the server
    assert "0.5 s" in (result.reason or "")


def test_a_connection_closed_after_the_body_is_unknown(sink: SmtpSink) -> None:
    [result, after] = send(channel(sink.address), message(address="ivan+hangup@example.com"), message(ref="row-2"))

    assert result.outcome is Outcome.UNKNOWN
    assert after.outcome is Outcome.SENT
    assert sink.connections == 2


def test_connection_refused_is_transient() -> None:
    [result] = send(channel(("127.0.0.1", free_port())), message())

    assert result.outcome is Outcome.TRANSIENT
    assert "cannot connect" in (result.reason or "")


def test_a_server_unavailable_burst_is_transient_with_its_code(sink: SmtpSink) -> None:
    sink.fail_for(30, code=421)
    [result] = send(channel(sink.address), message())

    assert result.outcome is Outcome.TRANSIENT
    assert "421" in (result.reason or "")
    assert sink.messages == []


# ---------------------------------------------------------------------------------------------
# Connections


def test_messages_share_a_pool_of_connections(sink: SmtpSink) -> None:
    messages = [message(address=f"user{i}@example.com", ref=f"row-{i}") for i in range(50)]
    results = send_concurrently(channel(sink.address, connections=4), messages)

    assert all(r.outcome is Outcome.SENT for r in results)
    assert len(sink.messages) == 50
    assert sink.connections <= 4
    assert len({m.connection for m in sink.messages}) <= 4


def test_one_message_at_a_time_keeps_reusing_one_connection(sink: SmtpSink) -> None:
    results = send(channel(sink.address), *(message(ref=f"row-{i}") for i in range(10)))

    assert all(r.outcome is Outcome.SENT for r in results)
    assert sink.connections == 1


def test_a_connection_the_server_closed_with_421_is_reopened_for_the_next_message(sink: SmtpSink) -> None:
    results = send(channel(sink.address), message(address="ivan+drop@example.com"), message(ref="row-2"))

    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]
    assert sink.connections == 2
    assert len(sink.messages) == 2


def test_a_421_at_mail_from_on_a_reused_connection_is_retried_once_on_a_fresh_one(sink: SmtpSink) -> None:
    smtp = channel(sink.address)

    async def run() -> list[SendResult]:
        first = await smtp.send(message())
        sink.fail_next(1, code=421)  # the server closes the pooled connection at the next MAIL FROM
        second = await smtp.send(message(ref="row-2"))
        await smtp.close()
        return [first, second]

    assert [r.outcome for r in asyncio.run(run())] == [Outcome.SENT, Outcome.SENT]
    assert sink.connections == 2
    assert len(sink.messages) == 2


def test_the_channel_survives_a_new_event_loop_per_batch(sink: SmtpSink) -> None:
    smtp = channel(sink.address)
    first = asyncio.run(smtp.send(message()))
    second = asyncio.run(smtp.send(message(ref="row-2")))

    assert (first.outcome, second.outcome) == (Outcome.SENT, Outcome.SENT)
    assert len(sink.messages) == 2


# ---------------------------------------------------------------------------------------------
# TLS and AUTH


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_starttls_and_auth(certificate: tuple[str, str], mechanism: str) -> None:
    with SmtpSink(tls_cert=certificate, auth={"mailer": "s3cret"}, auth_mechanisms=[mechanism]) as sink:
        [result] = send(
            channel(sink.address, starttls=True, validate_certs=False, username="mailer", password="s3cret"),
            message(),
        )
        received = only(sink)

    assert result.outcome is Outcome.SENT
    assert received.tls is True
    assert received.auth_user == "mailer"


def test_implicit_tls(certificate: tuple[str, str]) -> None:
    with SmtpSink(tls_cert=certificate, implicit_tls=True, auth={"mailer": "s3cret"}) as sink:
        [result] = send(channel(sink.address, tls=True, validate_certs=False, username="mailer", password="s3cret"),
                        message())
        received = only(sink)

    assert result.outcome is Outcome.SENT
    assert received.tls is True and received.auth_user == "mailer"


def test_a_wrong_password_is_transient_with_the_servers_reply(certificate: tuple[str, str]) -> None:
    with SmtpSink(tls_cert=certificate, auth={"mailer": "s3cret"}) as sink:
        [result] = send(channel(sink.address, starttls=True, validate_certs=False, username="mailer", password="nope"),
                        message())
        assert sink.messages == []

    assert result.outcome is Outcome.TRANSIENT
    assert "535" in (result.reason or "")


def test_a_self_signed_certificate_is_refused_when_certificates_are_validated(certificate: tuple[str, str]) -> None:
    with SmtpSink(tls_cert=certificate) as sink:
        [result] = send(channel(sink.address, starttls=True), message())
        assert sink.messages == []

    assert result.outcome is Outcome.TRANSIENT
    assert "certificate" in (result.reason or "").lower()


# ---------------------------------------------------------------------------------------------
# Settings


def test_settings_from_the_environment_arrive_as_text_and_are_understood(sink: SmtpSink) -> None:
    host, port = sink.address
    smtp = load_channel("email", "channels.email.Smtp", {
        "sender": "news@shop.example", "host": host, "port": str(port), "starttls": "false",
        "timeout": "5", "connections": "2",
    })

    assert isinstance(smtp, Smtp) and smtp.pool_size == 2 and smtp.parallel == 4  # two per connection
    assert send(smtp, message())[0].outcome is Outcome.SENT


@pytest.mark.parametrize(("options", "field"), [
    ({"sender": ""}, "channels.email.sender"),
    ({"sender": "not an address"}, "channels.email.sender"),
    ({"sender": "a@b.example", "tls": True, "starttls": True}, "channels.email.tls"),
    ({"sender": "a@b.example", "port": "smtp"}, "channels.email.port"),
    ({"sender": "a@b.example", "timeout": 0}, "channels.email.timeout"),
    ({"sender": "a@b.example", "starttls": "maybe"}, "channels.email.starttls"),
    ({"sender": "a@b.example", "colour": "blue"}, "channels.email"),
])
def test_bad_settings_name_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_channel("email", "channels.email.Smtp", options)
    assert error.value.field == field


def test_default_ports() -> None:
    assert Smtp("email", sender="a@b.example").port == 25
    assert Smtp("email", sender="a@b.example", tls=True).port == 465


# ---------------------------------------------------------------------------------------------
# The sink as a separate process (used by the benchmark and the chaos test)


def test_sink_process_records_messages_and_obeys_its_control_file(tmp_path: Path) -> None:
    out, control = tmp_path / "out.jsonl", tmp_path / "control.json"
    with SinkProcess(out, extra_args=["--control", str(control)]) as process:
        write_control(control, code=451, next=1)
        refused, sent = send(channel(process.address), message(), message(ref="row-2", unsubscribe=LONG_URL))
    received = read_messages(out)

    assert refused.outcome is Outcome.TRANSIENT and "451" in (refused.reason or "")
    assert sent.outcome is Outcome.SENT
    assert len(received) == 1 and received[0].message_id == sent.provider_id
    assert b"List-Unsubscribe: <" + LONG_URL.encode("ascii") + b">" in received[0].header_lines()


_ADDRESS_ALPHABET = "aZ09.@<>\" \t+-=_()[]:;,\\!#"


@hsettings(max_examples=500, deadline=None)
@given(arg=st.one_of(
    st.text(alphabet=_ADDRESS_ALPHABET, max_size=30),
    st.builds(lambda local, domain, rest: f"<{local}@{domain}>{rest}",
              st.text(alphabet=_ADDRESS_ALPHABET, min_size=1, max_size=12),
              st.text(alphabet="ab-.[]1", min_size=1, max_size=12),
              st.sampled_from(["", " ", " SIZE=100", "  BODY=8BITMIME SMTPUTF8", "\tX=1", "x"]))),
    limit=st.sampled_from([0, 3, 64]))
def test_the_sinks_address_shortcut_reads_every_address_as_aiosmtpd_does(arg: str, limit: int) -> None:
    """The benchmark's sink parses plain addresses itself (aiosmtpd's parser was a fifth of its time);
    MAIL FROM and RCPT TO must still accept, refuse and split exactly as aiosmtpd would."""
    from tests.fakes.smtp_sink import SinkSMTP, _AiosmtpdSMTP

    def outcome(parse: Any) -> Any:
        try:
            return parse(arg)
        except Exception as error:  # aiosmtpd itself raises on some inputs ("<"): so must the sink
            return type(error)

    server = SinkSMTP.__new__(SinkSMTP)
    server.local_part_limit = limit
    assert outcome(server._getaddr) == outcome(lambda value: _AiosmtpdSMTP._getaddr(server, value))
