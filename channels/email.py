"""Email over SMTP (aiosmtplib): a pool of reused connections, multipart text + HTML (SPEC 2 and 8).

Settings (`[channels.email]`, backend `channels.email.Smtp`): `host`, `port` (25, or 465 with `tls`),
`username`, `password`, `starttls`, `tls` (implicit TLS), `sender` (the From header, may be
`Name <addr>`), `timeout` (seconds per SMTP step, default 30), `connections` (pool size, default 8),
`validate_certs` (default true), `helo` (alias `local_hostname`; default the machine's FQDN).

What a reply means decides whether the customer may get the message twice, so the transaction is
driven step by step (MAIL, RCPT, DATA, body) instead of through `send_message`, to know the phase:

* no connection (refused, timeout, TLS or AUTH failure), or a timeout / dropped connection before
  the body was handed to the socket → transient; nothing can have been delivered;
* a 4xx reply at any step → transient, a 5xx reply → permanent, with the server's code and text;
* a timeout or dropped connection after the body was written, while waiting for the final reply
  → unknown: the server may have queued the message, so it is never retried;
* a message that cannot be written correctly (an invalid address, an unsubscribe URL that would
  not survive in a header) → permanent, without touching the network.

A pooled connection that the server closed while idle (idle timeout, a 421 after the previous
message) is re-opened before MAIL FROM; if MAIL FROM on a reused connection meets a dropped
connection or a 421, the transaction is started once more on a fresh connection.  That is safe:
nothing of the message has been sent yet.  `provider_id` is the Message-ID we generated (with its
angle brackets): it is known before sending, also given with an unknown outcome, and it is what
bounces and feedback-loop reports quote; servers' queue ids have no common format.

The message is written by hand rather than with `email.message.EmailMessage`: the email package
costs 1-2 ms per multipart message, more than the whole SMTP exchange, which would cap a worker
below the 1,000 emails/s it must sustain.  The writer is small and strict: every header is one of
a known shape; customer text in headers loses its line breaks and control characters and is
RFC 2047-encoded when it is not plain ASCII or would not fit in a line; bodies are 7bit when
they are short-lined ASCII, else quoted-printable or base64, whichever is smaller; every line is
at most 998 octets and ends in CRLF.  `List-Unsubscribe: <url>` is never folded inside the angle
brackets: a URL that does not fit on the header's line moves to a continuation line of its own
(up to 995 characters), and a longer one is refused (permanent) rather than sent broken.
"""

from __future__ import annotations

import asyncio
import binascii
import re
import secrets
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formataddr, formatdate, make_msgid, parseaddr
from typing import Any

import aiosmtplib
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPException,
    SMTPResponse,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from channels.base import Channel, Message, Outcome, SendResult
from orchestrator.errors import ConfigError

MAX_LINE = 998
REASON_LIMIT = 300
RESERVED_HEADERS = frozenset({
    "from", "to", "subject", "date", "message-id", "mime-version", "content-type",
    "content-transfer-encoding", "list-unsubscribe", "list-unsubscribe-post",
})
_UNSAFE_IN_HEADER = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")
_LINE_BREAKS = re.compile(r"\r\n?")
_LONG_LINE = re.compile(rb"[^\n]{%d}" % (MAX_LINE + 1))
_NOT_7BIT_TEXT = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f-\xff]")
_ASCII = bytes(range(128))
_HEADER_NAME = re.compile(r"[!-9;-~]{1,76}")
_URL = re.compile(r"[\x21-\x3b\x3d\x3f-\x7e]+")
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*")
_REF_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_WORD_BYTES = 42  # 56 base64 characters: an encoded word of 68, a line under 78 after "Subject: "
_BASE64_LINE = 76
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class InvalidMessage(ValueError):
    """The message cannot be written as correct SMTP/MIME: a permanent refusal, no network used."""


# ---------------------------------------------------------------------------------------------
# Writing the message


def header_text(value: Any) -> str:
    """Customer text made safe for one header line: no line breaks or control characters."""
    return _UNSAFE_IN_HEADER.sub(" ", "" if value is None else str(value)).strip()


def encoded_words(text: str) -> list[bytes]:
    """RFC 2047 base64 words of at most 42 UTF-8 octets each, never splitting a character."""
    data = text.encode("utf-8", "replace")
    words = []
    start, end_of_data = 0, len(data)
    while start < end_of_data:
        end = min(start + _WORD_BYTES, end_of_data)
        while end < end_of_data and data[end] & 0xC0 == 0x80:
            end -= 1
        words.append(b"=?utf-8?b?" + binascii.b2a_base64(data[start:end], newline=False) + b"?=")
        start = end
    return words


def unstructured_header(name: str, value: Any) -> bytes:
    """`Name: value` with CRLF; encoded words folded on separate lines when not plain short ASCII."""
    text = header_text(value)
    if text.isascii() and "=?" not in text and len(name) + 2 + len(text) <= MAX_LINE:
        return f"{name}: {text}\r\n".encode("ascii")
    return name.encode("ascii") + b": " + b"\r\n ".join(encoded_words(text)) + b"\r\n"


def list_unsubscribe_headers(url: Any) -> bytes:
    """One-click unsubscribe (RFC 2369 + RFC 8058), the URL unbroken inside its angle brackets."""
    cleaned = header_text(url)
    if not _URL.fullmatch(cleaned):
        raise InvalidMessage("the unsubscribe URL is not a plain ASCII URL without spaces or angle brackets")
    value = f"<{cleaned}>"
    if len("List-Unsubscribe: ") + len(value) <= MAX_LINE:
        line = f"List-Unsubscribe: {value}\r\n"
    elif 1 + len(value) <= MAX_LINE:
        line = f"List-Unsubscribe:\r\n {value}\r\n"
    else:
        raise InvalidMessage(
            f"the unsubscribe URL is {len(cleaned)} characters; at most {MAX_LINE - 3} fit unbroken in a header"
        )
    return (line + "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n").encode("ascii")


def smtp_address(address: Any) -> str:
    """The address as it goes into RCPT TO and the To header: ASCII, IDN domains in punycode."""
    local, at, domain = str(address).strip().rpartition("@")
    if not at:
        raise InvalidMessage(f"not an email address: {header_text(address)[:100]!r}")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidMessage(f"not a valid domain: {header_text(domain)[:100]!r}") from None
    if not local.isascii():
        raise InvalidMessage("a non-ASCII local part needs SMTPUTF8, which this channel does not use")
    if len(local) > 64 or len(domain) > 253 or not _LOCAL_PART.fullmatch(local) or not _DOMAIN.fullmatch(domain):
        raise InvalidMessage(f"not a valid email address: {header_text(address)[:100]!r}")
    return f"{local}@{domain}"


def body_part(text: Any) -> tuple[bytes, bytes]:
    """(Content-Transfer-Encoding, encoded body with CRLF line ends) for a text body."""
    data = _LINE_BREAKS.sub("\n", "" if text is None else str(text)).encode("utf-8", "replace")
    if not _NOT_7BIT_TEXT.search(data) and not _LONG_LINE.search(data):
        return b"7bit", data.replace(b"\n", b"\r\n")
    high = len(data.translate(None, _ASCII))
    if high * 6 < len(data):  # quoted-printable spends 2 extra octets per high byte, base64 a third of all
        return b"quoted-printable", binascii.b2a_qp(data, istext=True).replace(b"\n", b"\r\n")
    encoded = binascii.b2a_base64(data, newline=False)
    return b"base64", b"\r\n".join([encoded[i:i + _BASE64_LINE] for i in range(0, len(encoded), _BASE64_LINE)])


def _part_headers(subtype: bytes, encoding: bytes) -> bytes:
    return b"Content-Type: text/" + subtype + b"; charset=utf-8\r\nContent-Transfer-Encoding: " + encoding + b"\r\n"


def _boundary(*parts: tuple[bytes, bytes]) -> bytes:
    """A random boundary; `=_` cannot occur in quoted-printable or base64, so only 7bit text is searched."""
    while True:
        boundary = b"=_" + secrets.token_hex(16).encode("ascii")
        if not any(encoding == b"7bit" and boundary in body for encoding, body in parts):
            return boundary


def mime_body(text: Any, html: Any) -> bytes:
    """The MIME headers, blank line and body: text/plain alone, or multipart/alternative with HTML."""
    text_encoding, text_body = text_part = body_part(text)
    if not html:
        return (b"MIME-Version: 1.0\r\n" + _part_headers(b"plain", text_encoding) + b"\r\n"
                + text_body + (b"" if text_body.endswith(b"\r\n") else b"\r\n"))
    html_encoding, html_body = html_part = body_part(html)
    boundary = _boundary(text_part, html_part)
    delimiter = b"\r\n--" + boundary + b"\r\n"
    return b"".join((
        b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="', boundary, b'"\r\n\r\n',
        b"--", boundary, b"\r\n", _part_headers(b"plain", text_encoding), b"\r\n", text_body,
        delimiter, _part_headers(b"html", html_encoding), b"\r\n", html_body,
        b"\r\n--", boundary, b"--\r\n",
    ))


def extra_headers(headers: Mapping[str, Any]) -> bytes:
    """The message's own headers (campaign ids, Reply-To ...); the channel's headers stay its own."""
    lines = []
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(str(name)):
            raise InvalidMessage(f"not a valid header name: {header_text(name)[:80]!r}")
        if name.lower() in RESERVED_HEADERS:
            raise InvalidMessage(f"the header {name} is written by the email channel itself")
        lines.append(unstructured_header(name, value))
    return b"".join(lines)


@dataclass(frozen=True)
class Envelope:
    """One message ready for the wire: envelope addresses, dot-stuffed DATA payload, Message-ID."""

    recipient: bytes
    payload: bytes
    message_id: str


class MessageWriter:
    """Writes messages from one sender; what depends only on the settings is prepared once."""

    def __init__(self, sender: str) -> None:
        name, address = parseaddr(sender)
        self.sender = smtp_address(address)
        self.domain = self.sender.rpartition("@")[2]
        display = header_text(name)
        from_value = formataddr((display, self.sender), charset="utf-8") if display else self.sender
        self.from_line = f"From: {from_value}\r\n".encode("ascii")
        self._date_second = -1
        self._date_line = b""

    def envelope(self, message: Message) -> Envelope:
        """The message for the wire; raises InvalidMessage when it cannot be written correctly."""
        recipient = smtp_address(message.address)
        content = message.content
        message_id = make_msgid(_REF_UNSAFE.sub("", str(message.ref))[:64] or None, domain=self.domain)
        unsubscribe = content.get("unsubscribe")
        data = b"".join((
            self.from_line,
            b"To: ", recipient.encode("ascii"), b"\r\n",
            unstructured_header("Subject", content.get("subject")),
            self._date(),
            b"Message-ID: ", message_id.encode("ascii"), b"\r\n",
            list_unsubscribe_headers(unsubscribe) if unsubscribe else b"",
            extra_headers(message.headers) if message.headers else b"",
            mime_body(content.get("text"), content.get("html")),
        ))
        # Every line ends in CRLF and the first is "From:", so "\n." finds every line that starts with a dot.
        return Envelope(recipient.encode("ascii"), data.replace(b"\n.", b"\n..") + b".\r\n", message_id)

    def _date(self) -> bytes:
        """The Date header, formatted once per second (formatting costs more than the rest of it)."""
        now = int(time.time())
        if now != self._date_second:
            self._date_line = f"Date: {formatdate(now, usegmt=True)}\r\n".encode("ascii")
            self._date_second = now
        return self._date_line


# ---------------------------------------------------------------------------------------------
# Outcomes


def _reply_text(reply: SMTPResponse | SMTPResponseException) -> str:
    """`code text` on one line (multi-line replies joined)."""
    return f"{reply.code} {' '.join(str(reply.message).split())}"


def _reason(text: str) -> str:
    return text if len(text) <= REASON_LIMIT else text[:REASON_LIMIT - 1] + "…"


def classify_reply(step: str, reply: SMTPResponse) -> SendResult:
    """4xx → transient, 5xx → permanent, anything else unexpected → transient (protocol confusion)."""
    reason = _reason(f"{_reply_text(reply)} (at {step})")
    if 500 <= reply.code < 600:
        return SendResult.permanent(reason)
    return SendResult.transient(reason)


def _unknown(envelope: Envelope, reason: str) -> SendResult:
    """The body went out but no final reply came: keep the Message-ID to match a later bounce."""
    return SendResult(Outcome.UNKNOWN, provider_id=envelope.message_id, reason=_reason(reason))


class _Dropped(Exception):
    """MAIL FROM found the connection closed (or was answered 421): nothing of the message was sent."""


# ---------------------------------------------------------------------------------------------
# Connections


class PooledConnection:
    """One SMTP connection, used by one send at a time; opened lazily, re-opened when dropped."""

    def __init__(self, smtp: aiosmtplib.SMTP, sender: bytes, where: str, timeout: float) -> None:
        self.smtp = smtp
        self.sender = sender
        self.where = where
        self.timeout = timeout

    @property
    def connected(self) -> bool:
        return self.smtp.is_connected

    def reset(self) -> None:
        self.smtp.close()

    async def deliver(self, envelope: Envelope) -> SendResult:
        try:
            reused = self.connected
            if not reused and (failure := await self._connect()) is not None:
                return failure
            try:
                return await self._transaction(envelope)
            except _Dropped as dropped:
                if not reused:
                    return SendResult.transient(_reason(str(dropped)))
            if (failure := await self._connect()) is not None:
                return failure
            try:
                return await self._transaction(envelope)
            except _Dropped as dropped:
                return SendResult.transient(_reason(str(dropped)))
        except BaseException:
            self.reset()  # cancelled or broken mid-transaction: the session state is unknown
            raise

    async def quit(self) -> None:
        if not self.connected:
            return
        try:
            await asyncio.wait_for(self.smtp.quit(), min(self.timeout, 5))
        except (SMTPException, OSError, asyncio.TimeoutError):
            pass
        finally:
            self.reset()

    async def _connect(self) -> SendResult | None:
        """Opens the connection (TLS, EHLO, AUTH); a failure is transient, nothing was sent."""
        self.reset()
        try:
            await self.smtp.connect()
            if self.smtp.is_ehlo_or_helo_needed:
                await self._greet()
        except SMTPAuthenticationError as error:
            self.reset()
            return SendResult.transient(_reason(f"authentication at {self.where} failed: {_reply_text(error)}"))
        except SMTPResponseException as error:
            self.reset()
            return SendResult.transient(_reason(f"{self.where} refused the connection: {_reply_text(error)}"))
        except (SMTPException, OSError, asyncio.TimeoutError) as error:
            self.reset()
            return SendResult.transient(_reason(f"cannot connect to {self.where}: {str(error) or type(error).__name__}"))
        return None

    async def _greet(self) -> None:
        try:
            await self.smtp.ehlo()
        except aiosmtplib.SMTPHeloError:
            if not self.connected:
                raise
            await self.smtp.helo()

    async def _transaction(self, envelope: Envelope) -> SendResult:
        reply = await self._mail_from()
        if reply.code != 250:
            return await self._refused("MAIL FROM", reply)
        reply = await self._command("RCPT TO", b"RCPT", b"TO:<" + envelope.recipient + b">")
        if isinstance(reply, SendResult):
            return reply
        if reply.code not in (250, 251):
            return await self._refused("RCPT TO", reply)
        reply = await self._command("DATA", b"DATA")
        if isinstance(reply, SendResult):
            return reply
        if reply.code != 354:
            return await self._refused("DATA", reply)
        return await self._body(envelope)

    async def _mail_from(self) -> SMTPResponse:
        try:
            reply = await self.smtp.execute_command(b"MAIL", b"FROM:<" + self.sender + b">")
        except SMTPTimeoutError:
            self.reset()
            raise _Dropped(f"timeout at MAIL FROM ({self.where})") from None
        except (SMTPException, OSError) as error:
            self.reset()
            raise _Dropped(f"connection to {self.where} lost at MAIL FROM: {error}") from None
        if reply.code == 421:
            self.reset()
            raise _Dropped(f"{_reply_text(reply)} (at MAIL FROM)")
        return reply

    async def _command(self, step: str, *args: bytes) -> SMTPResponse | SendResult:
        """A command before the body: losing the connection here is transient."""
        try:
            return await self.smtp.execute_command(*args)
        except SMTPTimeoutError:
            self.reset()
            return SendResult.transient(f"timeout at {step} ({self.where})")
        except (SMTPException, OSError) as error:
            self.reset()
            return SendResult.transient(_reason(f"connection to {self.where} lost at {step}: {error}"))

    async def _body(self, envelope: Envelope) -> SendResult:
        """Writes the body; from then on a missing final reply is an unknown outcome."""
        protocol = self.smtp.protocol
        try:
            if protocol is None:
                raise SMTPServerDisconnected("connection lost")
            protocol.write(envelope.payload)  # read_response below arms the reply before any await
        except (SMTPException, OSError, RuntimeError) as error:
            self.reset()
            return SendResult.transient(_reason(f"connection to {self.where} lost before the body: {error}"))
        try:
            reply = await protocol.read_response(timeout=self.timeout)
        except SMTPTimeoutError:
            self.reset()
            return _unknown(envelope, f"no reply to the message body within {self.timeout:g} s ({self.where})")
        except (SMTPException, OSError) as error:
            self.reset()
            return _unknown(envelope, f"connection to {self.where} lost after the message body: {error}")
        if reply.code == 250:
            return SendResult.sent(provider_id=envelope.message_id)
        if reply.code == 421:
            self.reset()
        return classify_reply("end of DATA", reply)

    async def _refused(self, step: str, reply: SMTPResponse) -> SendResult:
        """The server's answer, and the session made ready for the next message (RSET or reconnect)."""
        result = classify_reply(step, reply)
        if reply.code == 421 or not 400 <= reply.code < 600 or not self.connected:
            self.reset()
            return result
        try:
            rset = await self.smtp.execute_command(b"RSET")
            if rset.code != 250:
                self.reset()
        except (SMTPException, OSError):
            self.reset()
        return result


class ConnectionPool:
    """The connections of one event loop; the most recently used is handed out first (LIFO), so a
    light load keeps one warm connection instead of cycling through all of them."""

    def __init__(self, connections: list[PooledConnection]) -> None:
        self.loop = asyncio.get_running_loop()
        self.connections = connections
        self.idle: asyncio.LifoQueue[PooledConnection] = asyncio.LifoQueue()
        for connection in reversed(connections):
            self.idle.put_nowait(connection)

    async def send(self, envelope: Envelope) -> SendResult:
        connection = await self.idle.get()
        try:
            return await connection.deliver(envelope)
        finally:
            self.idle.put_nowait(connection)

    async def close(self) -> None:
        idle = []
        while not self.idle.empty():
            idle.append(self.idle.get_nowait())
        for connection in self.connections:
            if connection not in idle:
                connection.reset()
        await asyncio.gather(*(connection.quit() for connection in idle))
        for connection in idle:
            self.idle.put_nowait(connection)

    def abandon(self) -> None:
        """Drops connections of an event loop that is gone (a worker that runs a loop per batch)."""
        for connection in self.connections:
            try:
                connection.reset()
            except RuntimeError:
                pass


# ---------------------------------------------------------------------------------------------
# The channel


class Smtp(Channel):
    """Sends each message through a pool of SMTP connections; one message per connection at a time."""

    def __init__(
        self,
        name: str,
        *,
        sender: str = "",
        host: str = "localhost",
        port: int | str | None = None,
        username: str | None = None,
        password: str | None = None,
        starttls: bool | str = False,
        tls: bool | str = False,
        timeout: float | str = 30,
        connections: int | str = 8,
        validate_certs: bool | str = True,
        helo: str | None = None,
        local_hostname: str | None = None,
    ) -> None:
        super().__init__(name)
        field = f"channels.{name}"
        if not str(sender or "").strip():
            raise ConfigError('the From address is required, e.g. sender = "Shop <news@shop.example>"',
                              field=f"{field}.sender")
        try:
            self.writer = MessageWriter(str(sender))
        except InvalidMessage as error:
            raise ConfigError(f"not a usable From address: {error}", field=f"{field}.sender") from None
        self.tls = _as_bool(tls, f"{field}.tls")
        self.starttls = _as_bool(starttls, f"{field}.starttls")
        if self.tls and self.starttls:
            raise ConfigError("tls (implicit TLS, port 465) and starttls exclude each other", field=f"{field}.tls")
        self.host = str(host)
        self.port = _as_int(port if port not in (None, "") else (465 if self.tls else 25), f"{field}.port", 1, 65535)
        self.username = str(username) if username else None
        self.password = str(password) if password is not None else None
        self.timeout = _as_positive(timeout, f"{field}.timeout")
        self.pool_size = _as_int(connections, f"{field}.connections", 1, 1000)
        self.parallel = 2 * self.pool_size  # one message on each connection, one waiting for it
        self.validate_certs = _as_bool(validate_certs, f"{field}.validate_certs")
        self.helo = str(helo or local_hostname or "") or None
        self._tls_context = self._make_tls_context() if (self.tls or self.starttls) else None
        self._pool: ConnectionPool | None = None

    async def open(self) -> None:
        await self._current_pool()

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            if pool.loop is asyncio.get_running_loop():
                await pool.close()
            else:
                pool.abandon()

    async def send(self, message: Message) -> SendResult:
        try:
            envelope = self.writer.envelope(message)
        except InvalidMessage as error:
            return SendResult.permanent(_reason(str(error)))
        pool = self._pool
        if pool is None or pool.loop is not asyncio.get_running_loop():
            pool = await self._current_pool()
        return await pool.send(envelope)

    async def _current_pool(self) -> ConnectionPool:
        """The pool of the running loop: a pool made in another (closed) loop cannot be used."""
        loop = asyncio.get_running_loop()
        if self._pool is not None and self._pool.loop is loop:
            return self._pool
        if self._pool is not None:
            self._pool.abandon()
        if self.helo is None:
            self.helo = await asyncio.to_thread(socket.getfqdn)  # once, not per connection
        self._pool = ConnectionPool([self._connection() for _ in range(self.pool_size)])
        return self._pool

    def _connection(self) -> PooledConnection:
        smtp = aiosmtplib.SMTP(
            hostname=self.host, port=self.port, username=self.username, password=self.password,
            local_hostname=self.helo, timeout=self.timeout, use_tls=self.tls, start_tls=self.starttls,
            tls_context=self._tls_context,
        )
        return PooledConnection(smtp, self.writer.sender.encode("ascii"), f"{self.host}:{self.port}", self.timeout)

    def _make_tls_context(self) -> ssl.SSLContext:
        """One context for every connection (building one per connection costs a thread hop)."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if not self.validate_certs:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


# ---------------------------------------------------------------------------------------------
# Settings values (environment overrides arrive as strings)


def _as_bool(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"must be true or false, not {value!r}", field=field)


def _as_int(value: Any, field: str, low: int, high: int) -> int:
    try:
        number = int(str(value).strip()) if not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise ConfigError(f"must be a whole number from {low} to {high}, not {value!r}", field=field)
    return number


def _as_positive(value: Any, field: str) -> float:
    try:
        number = float(str(value).strip()) if not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or not number > 0:
        raise ConfigError(f"must be a positive number of seconds, not {value!r}", field=field)
    return number
