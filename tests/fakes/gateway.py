"""A fake SMS gateway / webhook receiver: a real HTTP/1.1 server on loopback, for tests and benchmarks.

Channel tests must exercise real sockets (keep-alive, timeouts, refused connections), and the
benchmark and chaos tests need a gateway that is faster than the code under test and that
survives when the process under test is killed.  Hence a minimal HTTP/1.1 server on asyncio
streams (Content-Length and chunked bodies, keep-alive), run either

* in a background thread: `url = FakeGateway().start()`, `.requests`, `.stop()`; or
* as a separate process: `python -m tests.fakes.gateway --port P [--log FILE]`, which prints
  `ready <url>` once listening and appends every request as a JSON line to FILE
  (`GatewayProcess` wraps this).

Every request is recorded: method, path, query, headers (lower-case names), body (text), the
connection number, the status answered (None when the connection was dropped) and the time.

Answers and failures are set through HTTP in both modes (`control(url, ...)` is a helper):

* `POST /_control` with a JSON object of any of:
  `{"fail_status": 503, "fail_count": N}` the next N requests get that status;
  `{"fail_for": seconds}` every request gets `fail_status` (default 503) for that long;
  `{"fail_body": {...}}` the body of injected failures;
  `{"delay": seconds}` sleep before every answer (provokes client read timeouts);
  `{"drop_count": N}` the next N requests are read, recorded, and the connection closed unanswered;
  `{"answer": {...}, "answer_status": 200}` answer like a given provider; in the answer's keys and
  text values `{id}` is the request counter and `{param:NAME}` a parameter of the request (query,
  form or JSON body), so `{"sms": {"{param:to}": {"sms_id": "{id}"}}}` answers like SMS.ru;
  `{"reset": true}` forgets settings, requests and counters (applied first);
* `GET /_control/requests` the recorded requests; `GET /_control/stats` counters.

The default answer is 200 `{"status": "OK", "id": "<counter>"}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl

from tests.fakes.process import ServerProcess

CONTROL_PATH = "/_control"
_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 400: "Bad Request",
            401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 408: "Request Timeout",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}
_MAX_HEAD = 64 * 1024


def params_of(request: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of a recorded request, wherever the dialect put them (query, form, JSON)."""
    values: dict[str, Any] = dict(parse_qsl(request.get("query", ""), keep_blank_values=True))
    content_type = request.get("headers", {}).get("content-type", "")
    body = request.get("body", "")
    if "application/x-www-form-urlencoded" in content_type:
        values.update(parse_qsl(body, keep_blank_values=True))
    elif "json" in content_type and body:
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if isinstance(document, dict):
            values.update(document)
    return values


@dataclass
class Reply:
    """What to do with one request: answer (after a delay) or drop the connection."""

    status: int | None
    body: bytes = b""
    delay: float = 0.0


@dataclass
class GatewayState:
    """Settings, counters and the record; shared by the server's loop and the controlling thread."""

    log: IO[str] | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    connections: int = 0
    counter: int = 0
    fail_status: int = 503
    fail_count: int = 0
    fail_until: float = 0.0
    fail_body: Any = None
    delay: float = 0.0
    drop_count: int = 0
    answer: Any = None
    answer_status: int = 200
    lock: threading.Lock = field(default_factory=threading.Lock)

    def control(self, command: Mapping[str, Any]) -> dict[str, Any]:
        with self.lock:
            if command.get("reset"):
                self._reset()
            for key in ("fail_status", "fail_count", "drop_count", "answer_status"):
                if key in command:
                    setattr(self, key, int(command[key]))
            for key in ("fail_body", "answer"):
                if key in command:
                    setattr(self, key, command[key])
            if "delay" in command:
                self.delay = float(command["delay"])
            if "fail_for" in command:
                self.fail_until = time.monotonic() + float(command["fail_for"])
        return {"ok": True}

    def _reset(self) -> None:
        self.requests.clear()
        self.connections = self.counter = self.fail_count = self.drop_count = 0
        self.fail_status, self.fail_until, self.fail_body = 503, 0.0, None
        self.delay, self.answer, self.answer_status = 0.0, None, 200

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {"requests": len(self.requests), "connections": self.connections, "counter": self.counter}

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.requests)

    def handle(self, record: dict[str, Any]) -> Reply:
        """Decides the reply to one (non-control) request and records it."""
        with self.lock:
            self.counter += 1
            reply = self._decide(record)
            record["status"] = reply.status
            self.requests.append(record)
            if self.log is not None:
                self.log.write(json.dumps(record, ensure_ascii=False) + "\n")
                self.log.flush()
        return reply

    def _decide(self, record: dict[str, Any]) -> Reply:
        if self.drop_count > 0:
            self.drop_count -= 1
            return Reply(None, delay=self.delay)
        if self.fail_count > 0 or time.monotonic() < self.fail_until:
            self.fail_count = max(0, self.fail_count - 1)
            body = self.fail_body if self.fail_body is not None else {"status": "ERROR", "error": "injected failure"}
            return Reply(self.fail_status, _json_bytes(body), self.delay)
        if self.answer is None:
            return Reply(200, b'{"status":"OK","id":"%d"}' % self.counter, self.delay)
        filled = _fill(self.answer, str(self.counter), params_of(record))
        return Reply(self.answer_status, _json_bytes(filled), self.delay)


def _fill(value: Any, counter: str, params: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        text = value.replace("{id}", counter)
        if "{param:" in text:
            for name, param in params.items():
                text = text.replace("{param:%s}" % name, str(param))
        return text
    if isinstance(value, dict):
        return {_fill(key, counter, params): _fill(item, counter, params) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, counter, params) for item in value]
    return value


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def _response(status: int, body: bytes, keep_alive: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"{'' if keep_alive else 'Connection: close' + chr(13) + chr(10)}\r\n"
    )
    return head.encode("ascii") + body


class HttpServer:
    """The asyncio side: parses requests off keep-alive connections and answers them."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.base_events.Server | None = None

    async def listen(self, host: str, port: int) -> str:
        self._server = await asyncio.start_server(self._connection, host, port, limit=_MAX_HEAD, backlog=1024)
        bound_host, bound_port = self._server.sockets[0].getsockname()[:2]
        return f"http://{bound_host}:{bound_port}"

    async def shutdown(self) -> None:
        """Stops listening and cuts open connections, so that clients see the gateway go away."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        with self.state.lock:
            self.state.connections += 1
            number = self.state.connections
        try:
            while await self._exchange(reader, writer, number):
                pass
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> bool:
        """One request and its answer; False when the connection is to be closed."""
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, version, headers = _parse_head(head)
        body = await _read_body(reader, headers)
        path, _, query = target.partition("?")
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if path == CONTROL_PATH or path.startswith(CONTROL_PATH + "/"):
            status, answer = self._control(method, path, body)
            writer.write(_response(status, answer, keep_alive))
            await writer.drain()
            return keep_alive
        record = {"method": method, "path": path, "query": query, "headers": headers,
                  "body": body.decode("utf-8", errors="replace"), "connection": number, "time": time.time()}
        reply = self.state.handle(record)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.status is None:
            return False
        writer.write(_response(reply.status, reply.body, keep_alive))
        await writer.drain()
        return keep_alive

    def _control(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if method == "GET" and path == CONTROL_PATH + "/requests":
            return 200, _json_bytes(self.state.snapshot())
        if method == "GET" and path == CONTROL_PATH + "/stats":
            return 200, _json_bytes(self.state.stats())
        if method == "POST" and path == CONTROL_PATH:
            try:
                command = json.loads(body or b"{}")
                return 200, _json_bytes(self.state.control(command))
            except (ValueError, TypeError, AttributeError) as error:
                return 400, _json_bytes({"error": str(error)})
        return 404, _json_bytes({"error": f"no control endpoint {method} {path}"})


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    lines = head[:-4].decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, target, version, headers


async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length = int(headers.get("content-length", "0") or 0)
    return await reader.readexactly(length) if length else b""


class FakeGateway:
    """The gateway in a background thread of the test process (its own event loop)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, log: str | Path | None = None) -> None:
        self.host, self.port = host, port
        self._log_file = open(log, "a", encoding="utf-8") if log else None  # noqa: SIM115 - closed in stop()
        self.state = GatewayState(log=self._log_file)
        self.url = ""
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> str:
        """Starts listening and returns the base URL (`http://127.0.0.1:<port>`)."""
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="fake-gateway", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"the fake gateway did not start: {self._error}")
        return self.url

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(10)
        if self._log_file is not None:
            self._log_file.close()

    def __enter__(self) -> "FakeGateway":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The requests received so far (a copy)."""
        return self.state.snapshot()

    @property
    def connections(self) -> int:
        return self.state.connections

    def control(self, **command: Any) -> None:
        self.state.control(command)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = HttpServer(self.state)
        try:
            self.url = await server.listen(self.host, self.port)
        except OSError as error:
            self._error = error
            self._ready.set()
            return
        self._ready.set()
        await self._stopping.wait()
        await server.shutdown()


class GatewayProcess(ServerProcess):
    """The gateway as a separate process, which survives when the process under test is killed."""

    what = "fake gateway"

    def __init__(self, port: int = 0, log: str | Path | None = None, host: str = "127.0.0.1") -> None:
        super().__init__()
        self.port, self.log, self.host = port, log, host
        self.url = ""

    def command(self) -> list[str]:
        return ["-m", "tests.fakes.gateway", "--host", self.host, "--port", str(self.port),
                *(["--log", str(self.log)] if self.log else [])]

    def started(self) -> str:
        self.url = self.ready
        return self.url

    @property
    def requests(self) -> list[dict[str, Any]]:
        return requests(self.url)

    def control(self, **command: Any) -> None:
        control(self.url, **command)


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def control(url: str, **command: Any) -> dict[str, Any]:
    """Sets answers or failures of a running gateway (thread or process), e.g. `fail_count=3`."""
    request = urllib.request.Request(
        url.rstrip("/") + CONTROL_PATH, data=_json_bytes(command), method="POST",
        headers={"Content-Type": "application/json"},
    )
    with _OPENER.open(request, timeout=10) as response:
        return json.loads(response.read())


def requests(url: str) -> list[dict[str, Any]]:
    """The requests a running gateway has recorded."""
    with _OPENER.open(url.rstrip("/") + CONTROL_PATH + "/requests", timeout=30) as response:
        return json.loads(response.read())


def stats(url: str) -> dict[str, Any]:
    """Counters of a running gateway: requests, connections."""
    with _OPENER.open(url.rstrip("/") + CONTROL_PATH + "/stats", timeout=10) as response:
        return json.loads(response.read())


async def _serve(host: str, port: int, log: str | None) -> None:
    log_file = open(log, "a", encoding="utf-8") if log else None  # noqa: SIM115 - closed below
    server = HttpServer(GatewayState(log=log_file))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    url = await server.listen(host, port)
    print(f"ready {url}", flush=True)
    await stopping.wait()
    await server.shutdown()
    if log_file is not None:
        log_file.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.gateway", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (see the ready line)")
    parser.add_argument("--log", help="append every request as a JSON line to this file")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.host, args.port, args.log))


if __name__ == "__main__":
    main()
