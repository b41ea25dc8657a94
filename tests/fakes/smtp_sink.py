"""A fake SMTP server (aiosmtpd on loopback) for channel tests, the benchmark and the chaos test.

Email tests must go through real sockets (pooled connections, timeouts, dropped connections, TLS,
AUTH), and the benchmark and chaos tests need a sink that is faster than the code under test and that
survives when the sending process is killed.  So the same server runs either

* in a background thread: `sink = SmtpSink(); host, port = sink.start()`, then `sink.messages`
  (every accepted message: envelope and exact bytes), `sink.connections`, `sink.stop()`; or
* as a separate process: `python -m tests.fakes.smtp_sink --port P --out FILE`, which prints
  `ready <host> <port>` on stdout once listening and appends one JSON line per accepted message to
  FILE: `mail_from`, `rcpt_tos`, `message_id`, `raw` (the exact bytes of the message, base64),
  `received_at` (Unix time), `connection` (1, 2, ... per TCP connection), `auth_user`, `tls`.
  Lines are buffered and flushed every 50 ms and at exit (SIGTERM / SIGINT); on SIGKILL up to the
  last 50 ms are lost.  At exit it prints `connections <n>`.  `SinkProcess` wraps this, and
  `read_messages(FILE)` turns the file back into `Received` objects.

Failures are chosen by the recipient address, so they work in both modes without a control channel
(tags in the local part, case-insensitive, may be combined: `bob+slowdata+drop@example.com`):

* `+t451`, `+p550` (any `+t<code>` / `+p<code>`): that reply to RCPT TO; the recipient is refused;
* `+d451`, `+d554` (any `+d<code>`): the body is read, then refused with that reply (not recorded);
* `+slowdata` / `+slowdata<seconds>`: the message is recorded, then the final reply to DATA waits
  `slow_seconds` (default 10) or the given seconds — the client times out waiting for it;
* `+hangup`: the message is recorded, then the connection is closed without a final reply;
* `+drop`: the message is accepted (250), then the server says `421` and closes the connection,
  as a server does at an idle timeout or a per-connection message limit.

Messages are recorded when their body is complete, before the (possibly delayed or missing) final
reply: a message whose outcome is unknown to the client is still visible in the sink, as it would be
at a real server that accepted it.

Bursts of failure for every sender (at MAIL FROM; a 421 also closes the connection, as real servers
do) are set by:

* thread mode: `sink.fail_next(n, code=421)`, `sink.fail_for(seconds, code=421)`, `sink.clear_failures()`;
* both modes: a control file (`SmtpSink(control=PATH)` / `--control PATH`) holding a JSON object
  `{"code": 421, "next": 5}` or `{"code": 451, "seconds": 3}`, re-read whenever it changes (checked
  at every MAIL FROM); `write_control(PATH, code=..., next=..., seconds=...)` writes it atomically.
  `seconds` count from the moment the sink notices the change; an empty object clears failures;
* at start: `--fail-next N`, `--fail-for SECONDS`, `--fail-code CODE`.

TLS and AUTH: `tls_cert=(certfile, keyfile)` (`--tls-cert`, `--tls-key`) offers STARTTLS, or with
`implicit_tls=True` (`--implicit-tls`) the whole connection is TLS; `auth={"user": "password"}`
(`--auth user:password`, repeatable) requires AUTH (PLAIN and LOGIN; `auth_mechanisms=["LOGIN"]`
/ `--auth-mechanisms LOGIN` restricts them).  AUTH is offered only over TLS unless
`auth_require_tls=False`.

Speed: stock aiosmtpd reads DATA one awaited line at a time (~300 µs per 10 KB message, the sink
became the benchmark's bottleneck), so `SinkSMTP.smtp_DATA` reads the body in a few large reads,
with aiosmtpd's own checks and hooks.  It uses aiosmtpd 1.4 internals (`_reader._limit`,
`_call_handler_hook`, `_set_post_data_state`); re-check it when upgrading aiosmtpd.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import email
import email.policy
import itertools
import json
import os
import re
import signal
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import IO, Any

from aiosmtpd.smtp import SMTP as _AiosmtpdSMTP
from aiosmtpd.smtp import DATA_SIZE_DEFAULT, MISSING, AuthResult, Envelope, LoginPassword, Session

from tests.fakes.process import ServerProcess

HOSTNAME = "sink.test"
DEFAULT_SLOW_SECONDS = 10.0
FLUSH_INTERVAL = 0.05
_TAG = re.compile(r"\+([a-z]+)(\d+(?:\.\d+)?)?")
_MESSAGE_ID = re.compile(rb"(?im)^message-id:[ \t]*(?:\r\n[ \t]+)?(<[^>\r\n]*>)")
_ALL_MECHANISMS = ("PLAIN", "LOGIN")
_PLAIN_ADDRESS = re.compile(r"<(([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
                            r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(?:[ \t]+(.*))?", re.DOTALL)


@dataclass(frozen=True)
class Received:
    """One accepted message: the envelope and the exact bytes the client sent (dot-unstuffed)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    message_id: str | None
    received_at: float
    connection: int
    auth_user: str | None = None
    tls: bool = False

    def parsed(self) -> EmailMessage:
        """The message as a mail client would read it (modern policy: decoded headers)."""
        return email.message_from_bytes(self.raw, policy=email.policy.default)  # type: ignore[return-value]

    def header_lines(self) -> list[bytes]:
        """The raw header section split into physical lines (CRLF removed), for byte-exact checks."""
        head = self.raw.split(b"\r\n\r\n", 1)[0]
        return head.split(b"\r\n")

    def to_json(self) -> str:
        return json.dumps({
            "mail_from": self.mail_from, "rcpt_tos": list(self.rcpt_tos), "message_id": self.message_id,
            "raw": base64.b64encode(self.raw).decode("ascii"), "received_at": self.received_at,
            "connection": self.connection, "auth_user": self.auth_user, "tls": self.tls,
        }, ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> "Received":
        data = json.loads(line)
        return cls(
            mail_from=data["mail_from"], rcpt_tos=tuple(data["rcpt_tos"]), raw=base64.b64decode(data["raw"]),
            message_id=data.get("message_id"), received_at=data["received_at"],
            connection=data.get("connection", 0), auth_user=data.get("auth_user"), tls=data.get("tls", False),
        )


def read_messages(path: str | Path) -> list[Received]:
    """The messages a sink process has written so far (a partial last line is skipped)."""
    messages = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if line.endswith("\n"):
                messages.append(Received.from_json(line))
    return messages


def write_control(path: str | Path, *, code: int | None = None, next: int | None = None,
                  seconds: float | None = None) -> None:
    """Sets the failure burst of every sink watching `path`, atomically (write, then rename)."""
    command: dict[str, Any] = {}
    if code is not None:
        command["code"] = code
    if next is not None:
        command["next"] = next
    if seconds is not None:
        command["seconds"] = seconds
    target = Path(path)
    partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
    partial.write_text(json.dumps(command), encoding="utf-8")
    os.replace(partial, target)


# ---------------------------------------------------------------------------------------------
# Failure decisions


def recipient_tags(address: str) -> dict[str, str]:
    """The failure tags of an address: `bob+t451+slowdata2@x` → {"t": "451", "slowdata": "2"}."""
    local = address.rsplit("@", 1)[0].lower()
    return {name: value for name, value in _TAG.findall(local)}


class Failures:
    """A burst of injected failures at MAIL FROM, set from any thread or through a control file."""

    def __init__(self, control: str | Path | None = None) -> None:
        self._lock = threading.Lock()
        self._code = 421
        self._left: int | None = None
        self._until: float | None = None
        self._control = Path(control) if control else None
        self._control_key: tuple[int, int, int] | None = None

    def fail_next(self, n: int, code: int = 421) -> None:
        with self._lock:
            self._code, self._left, self._until = code, n, None

    def fail_for(self, seconds: float, code: int = 421) -> None:
        with self._lock:
            self._code, self._left, self._until = code, None, time.monotonic() + seconds

    def clear(self) -> None:
        with self._lock:
            self._left = self._until = None

    def take(self) -> int | None:
        """The code this transaction must fail with, or None; consumes one of `fail_next`."""
        self._reload()
        with self._lock:
            if self._left is not None and self._left > 0:
                self._left -= 1
                return self._code
            if self._until is not None and time.monotonic() < self._until:
                return self._code
            return None

    def _reload(self) -> None:
        if self._control is None:
            return
        try:
            stat = self._control.stat()
        except FileNotFoundError:
            return
        key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if key == self._control_key:
            return
        self._control_key = key
        try:
            command = json.loads(self._control.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return
        self._apply(command)

    def _apply(self, command: Mapping[str, Any]) -> None:
        code = int(command.get("code", 421))
        if "next" in command:
            self.fail_next(int(command["next"]), code)
        elif "seconds" in command:
            self.fail_for(float(command["seconds"]), code)
        else:
            self.clear()


# ---------------------------------------------------------------------------------------------
# The server


@dataclass
class SinkConfig:
    """Everything a sink needs, in either mode."""

    host: str = "127.0.0.1"
    port: int = 0
    slow_seconds: float = DEFAULT_SLOW_SECONDS
    tls_cert: tuple[str, str] | None = None
    implicit_tls: bool = False
    auth: Mapping[str, str] | None = None
    auth_mechanisms: Sequence[str] | None = None
    auth_require_tls: bool = True


class SinkState:
    """Counters, failure control and the place accepted messages go (a list or a JSON-lines file)."""

    def __init__(self, config: SinkConfig, record: Callable[[Received], None], failures: Failures) -> None:
        self.config = config
        self.record = record
        self.failures = failures
        self._connection_numbers = itertools.count(1)
        self._queue_ids = itertools.count(1)
        self.connections = 0

    def new_connection(self) -> int:
        self.connections += 1
        return next(self._connection_numbers)

    def queue_id(self) -> int:
        return next(self._queue_ids)


class SinkHandler:
    """The aiosmtpd hooks: failures by recipient tag and global burst, recording on DATA."""

    def __init__(self, state: SinkState) -> None:
        self.state = state

    async def handle_MAIL(self, server: "SinkSMTP", session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        code = self.state.failures.take()
        if code is not None:
            if code == 421:
                session.hang_up = ""  # type: ignore[attr-defined]
            return f"{code} {_enhanced(code)} sink: injected failure"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: "SinkSMTP", session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        tags = recipient_tags(address)
        code = tags.get("t") or tags.get("p")
        if code:
            return f"{code} {_enhanced(int(code))} sink: refused {address}"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: "SinkSMTP", session: Session, envelope: Envelope) -> str:
        tags: dict[str, str] = {}
        for address in envelope.rcpt_tos:
            tags.update(recipient_tags(address))
        if tags.get("d"):
            code = int(tags["d"])
            return f"{code} {_enhanced(code)} sink: message refused"
        self.state.record(_received(server, session, envelope))
        if "slowdata" in tags:
            await asyncio.sleep(float(tags["slowdata"] or self.state.config.slow_seconds))
        if "hangup" in tags:
            assert server.transport is not None
            server.transport.close()
            await asyncio.Event().wait()  # cancelled by connection_lost: no reply is ever sent
        if "drop" in tags:
            session.hang_up = "421 4.4.2 sink: closing connection"  # type: ignore[attr-defined]
        return f"250 2.0.0 OK queued as Q{self.state.queue_id()}"


def _enhanced(code: int) -> str:
    """An enhanced status code matching the class of `code` (RFC 3463)."""
    return f"{code // 100}.0.0" if code >= 400 else "2.0.0"


def _received(server: "SinkSMTP", session: Session, envelope: Envelope) -> Received:
    raw = envelope.original_content or b""
    match = _MESSAGE_ID.search(raw, 0, raw.find(b"\r\n\r\n") + 2 if b"\r\n\r\n" in raw else len(raw))
    auth = session.auth_data
    return Received(
        mail_from=envelope.mail_from or "",
        rcpt_tos=tuple(envelope.rcpt_tos),
        raw=raw,
        message_id=match.group(1).decode("ascii", "replace") if match else None,
        received_at=time.time(),
        connection=server.connection_number,
        auth_user=auth.login.decode("utf-8", "replace") if isinstance(auth, LoginPassword) else None,
        tls=server.uses_tls,
    )


class SinkSMTP(_AiosmtpdSMTP):
    """aiosmtpd's protocol plus connection counting and closing the connection when a hook asks."""

    def __init__(self, state: SinkState, **kwargs: Any) -> None:
        super().__init__(SinkHandler(state), **kwargs)
        self.sink_state = state
        self.connection_number = 0
        self.implicit_tls = False

    @property
    def uses_tls(self) -> bool:
        return self.implicit_tls or (self.session is not None and self.session.ssl is not None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # not the second call that STARTTLS makes
            self.connection_number = self.sink_state.new_connection()
            self.implicit_tls = transport.get_extra_info("sslcontext") is not None
        super().connection_made(transport)

    async def smtp_MAIL(self, arg: str) -> None:
        await super().smtp_MAIL(arg)
        await self._hang_up_if_asked()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parser, with a shortcut for a plain `<local@domain>` and its parameters.

        aiosmtpd declares a `typing.Protocol` class inside `_getaddr` and runs the email package's
        full header grammar: a fifth of the sink's time per message, twice per message.  Anything
        but a plain address (quotes, comments, source routes, a missing bracket) goes to aiosmtpd.
        """
        match = _PLAIN_ADDRESS.fullmatch(arg)
        if match is None or (self.local_part_limit and len(match[2]) > self.local_part_limit):
            return super()._getaddr(arg)
        return match[1], match[3] or ""

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reading the body in a few large reads instead of one await per line.

        aiosmtpd reads DATA line by line, about 300 µs per 10 KB message: the sink would be the
        bottleneck of the benchmark.  The checks and hooks are aiosmtpd's own; like aiosmtpd, a line
        over 1001 octets (998 + CRLF + a transparent dot) is refused with 500.
        """
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        body = await self._read_body()
        if body is None:
            return
        if max(map(len, body.split(b"\n"))) > self.line_length_limit - 1:
            await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
            self._set_post_data_state()
            return
        content = body.replace(b"\r\n..", b"\r\n.")
        if content.startswith(b".."):
            content = content[1:]
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)
        await self._hang_up_if_asked()

    async def _read_body(self) -> bytes | None:
        """The dot-stuffed body up to (without) the final ".\r\n"; None if it was refused as too big.

        `readuntil(b".\r\n")` stops at the first such triple, which may end an ordinary line
        ("Thanks.\r\n"); reading goes on until the data ends in CRLF.CRLF (or is just ".\r\n").
        """
        reader = self._reader
        limit = reader._limit  # type: ignore[attr-defined]
        reader._limit = (self.data_size_limit or DATA_SIZE_DEFAULT) + 1024  # type: ignore[attr-defined]
        chunks: list[bytes] = []
        try:
            while True:
                chunk = await reader.readuntil(b".\r\n")
                chunks.append(chunk)
                if chunk.endswith(b"\r\n.\r\n") or chunk == b".\r\n":  # the chunk before ends in CRLF
                    break
        except asyncio.LimitOverrunError:
            await self.push("552 Error: Too much mail data")
            assert self.transport is not None
            self.transport.close()
            return None
        finally:
            reader._limit = limit  # type: ignore[attr-defined]
        return b"".join(chunks)[:-3]

    async def _hang_up_if_asked(self) -> None:
        farewell = getattr(self.session, "hang_up", None)
        if farewell is None or self.transport is None:
            return
        if farewell:
            await self.push(farewell)
        self.transport.close()


def _server_tls_context(config: SinkConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*config.tls_cert)
    return context


def _authenticator(accounts: Mapping[str, str]) -> Callable[..., AuthResult]:
    def authenticate(server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = data.login.decode("utf-8", "replace")
        password = data.password.decode("utf-8", "replace")
        return AuthResult(success=accounts.get(login) == password, handled=False, auth_data=data)

    return authenticate


def _protocol_factory(state: SinkState, tls: ssl.SSLContext | None) -> Callable[[], SinkSMTP]:
    config = state.config
    options: dict[str, Any] = {"hostname": HOSTNAME, "data_size_limit": 64 * 1024 * 1024}
    if tls is not None and not config.implicit_tls:
        options["tls_context"] = tls
    if config.auth:
        excluded = [m for m in _ALL_MECHANISMS if m not in {x.upper() for x in (config.auth_mechanisms or _ALL_MECHANISMS)}]
        options.update(
            authenticator=_authenticator(config.auth), auth_required=True,
            auth_require_tls=config.auth_require_tls and not config.implicit_tls,
            auth_exclude_mechanism=excluded,
        )
    if config.implicit_tls and config.auth:
        return lambda: _quietly(lambda: SinkSMTP(state, **options))
    return lambda: SinkSMTP(state, **options)


def _quietly(make: Callable[[], SinkSMTP]) -> SinkSMTP:
    """aiosmtpd warns about AUTH without STARTTLS, but an implicit-TLS connection is encrypted."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return make()


async def serve(state: SinkState) -> asyncio.Server:
    """Starts listening; the caller closes the returned server."""
    config = state.config
    tls = _server_tls_context(config)
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        _protocol_factory(state, tls), host=config.host, port=config.port,
        ssl=tls if config.implicit_tls else None,
    )


# ---------------------------------------------------------------------------------------------
# Thread mode


class SmtpSink:
    """The sink in a background thread of the test process (its own event loop)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, slow_seconds: float = DEFAULT_SLOW_SECONDS,
                 control: str | Path | None = None, tls_cert: tuple[str, str] | None = None,
                 implicit_tls: bool = False, auth: Mapping[str, str] | None = None,
                 auth_mechanisms: Sequence[str] | None = None, auth_require_tls: bool = True) -> None:
        self.config = SinkConfig(host, port, slow_seconds, tls_cert, implicit_tls, auth, auth_mechanisms,
                                 auth_require_tls)
        self._messages: list[Received] = []
        self._arrived = threading.Condition()
        self._failures = Failures(control)
        self.state = SinkState(self.config, self._record, self._failures)
        self.address: tuple[str, int] = (host, port)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> tuple[str, int]:
        """Starts listening and returns (host, port)."""
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="smtp-sink", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"the SMTP sink did not start: {self._error}")
        return self.address

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> "SmtpSink":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def messages(self) -> list[Received]:
        """The messages accepted so far (a copy)."""
        with self._arrived:
            return list(self._messages)

    @property
    def connections(self) -> int:
        """How many TCP connections the sink has accepted since it started."""
        return self.state.connections

    def wait_for(self, count: int, timeout: float = 10) -> list[Received]:
        """Blocks until `count` messages arrived (or the timeout passed); returns them all."""
        with self._arrived:
            self._arrived.wait_for(lambda: len(self._messages) >= count, timeout)
            return list(self._messages)

    def fail_next(self, n: int, code: int = 421) -> None:
        self._failures.fail_next(n, code)

    def fail_for(self, seconds: float, code: int = 421) -> None:
        self._failures.fail_for(seconds, code)

    def clear_failures(self) -> None:
        self._failures.clear()

    def _record(self, message: Received) -> None:
        with self._arrived:
            self._messages.append(message)
            self._arrived.notify_all()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            server = await serve(self.state)
        except (OSError, ssl.SSLError) as error:
            self._error = error
            self._ready.set()
            return
        self.address = server.sockets[0].getsockname()[:2]
        self._ready.set()
        await self._stopping.wait()
        server.close()
        await _close_connections(server)


async def _close_connections(server: asyncio.Server) -> None:
    """Stops accepting and gives open sessions a moment to go away."""
    try:
        await asyncio.wait_for(server.wait_closed(), 1)
    except asyncio.TimeoutError:
        pass


# ---------------------------------------------------------------------------------------------
# Process mode


class JsonLinesWriter:
    """Appends messages as JSON lines, buffered; `flush()` runs every FLUSH_INTERVAL and at exit."""

    def __init__(self, file: IO[str]) -> None:
        self.file = file
        self._dirty = False

    def __call__(self, message: Received) -> None:
        self.file.write(message.to_json() + "\n")
        self._dirty = True

    def flush(self) -> None:
        if self._dirty:
            self.file.flush()
            self._dirty = False

    async def flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            self.flush()


class SinkProcess(ServerProcess):
    """The sink as a separate process, which survives when the process under test is killed."""

    what = "SMTP sink"

    def __init__(self, out: str | Path, port: int = 0, host: str = "127.0.0.1",
                 extra_args: Iterable[str] = ()) -> None:
        super().__init__()
        self.out, self.port, self.host = Path(out), port, host
        self.extra_args = list(extra_args)
        self.address: tuple[str, int] = (host, port)

    def command(self) -> list[str]:
        return ["-m", "tests.fakes.smtp_sink", "--host", self.host, "--port", str(self.port),
                "--out", str(self.out), *self.extra_args]

    def started(self) -> tuple[str, int]:
        host, port = self.ready.split()
        self.address = (host, int(port))
        return self.address

    @property
    def messages(self) -> list[Received]:
        """What the sink wrote so far (up to FLUSH_INTERVAL behind while it runs)."""
        return read_messages(self.out) if self.out.exists() else []


async def _serve_process(config: SinkConfig, out: str, failures: Failures) -> None:
    with open(out, "a", encoding="utf-8", buffering=1024 * 1024) as file:
        writer = JsonLinesWriter(file)
        state = SinkState(config, writer, failures)
        server = await serve(state)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        flusher = asyncio.create_task(writer.flush_periodically())
        host, port = server.sockets[0].getsockname()[:2]
        print(f"ready {host} {port}", flush=True)
        try:
            await stopping.wait()
        finally:
            server.close()
            flusher.cancel()
            writer.flush()
            print(f"connections {state.connections}", flush=True)


def _account(value: str) -> tuple[str, str]:
    user, sep, password = value.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError("expected user:password")
    return user, password


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.smtp_sink", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (see the ready line)")
    parser.add_argument("--out", required=True, help="append every accepted message as a JSON line to this file")
    parser.add_argument("--slow-seconds", type=float, default=DEFAULT_SLOW_SECONDS,
                        help="how long +slowdata recipients wait for the final DATA reply")
    parser.add_argument("--control", help="a JSON control file, re-read when it changes")
    parser.add_argument("--fail-next", type=int, help="fail the next N transactions at MAIL FROM")
    parser.add_argument("--fail-for", type=float, help="fail every transaction at MAIL FROM for SECONDS")
    parser.add_argument("--fail-code", type=int, default=421, help="the reply code of injected failures")
    parser.add_argument("--tls-cert", help="certificate (PEM) for STARTTLS or implicit TLS")
    parser.add_argument("--tls-key", help="private key (PEM) of --tls-cert")
    parser.add_argument("--implicit-tls", action="store_true", help="TLS from the first byte (like port 465)")
    parser.add_argument("--auth", type=_account, action="append", help="require AUTH; user:password, repeatable")
    parser.add_argument("--auth-mechanisms", help="comma-separated subset of PLAIN,LOGIN")
    parser.add_argument("--auth-without-tls", action="store_true", help="offer AUTH on plain connections")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    config = SinkConfig(
        host=args.host, port=args.port, slow_seconds=args.slow_seconds,
        tls_cert=(args.tls_cert, args.tls_key) if args.tls_cert else None, implicit_tls=args.implicit_tls,
        auth=dict(args.auth) if args.auth else None,
        auth_mechanisms=args.auth_mechanisms.split(",") if args.auth_mechanisms else None,
        auth_require_tls=not args.auth_without_tls,
    )
    failures = Failures(args.control)
    if args.fail_next:
        failures.fail_next(args.fail_next, args.fail_code)
    elif args.fail_for:
        failures.fail_for(args.fail_for, args.fail_code)
    asyncio.run(_serve_process(config, args.out, failures))


if __name__ == "__main__":
    main()
