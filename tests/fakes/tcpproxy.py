"""A TCP proxy on loopback that the chaos run uses to cut the network to PostgreSQL and Redis.

The processes under test connect to the proxy's port instead of the server's; the test then decides
what the network does, without root, network namespaces or iptables:

* `pause()` — a partition: bytes stop flowing both ways and new connections are accepted but not
  connected onward.  TCP connections survive it, as they survive a real outage of tens of seconds
  (the kernel keeps retransmitting); clients see only silence, and their own timeouts decide;
* `reset()` — every open connection is closed at once (a NAT or firewall that forgot them);
* `refuse()` — new connections are closed as soon as they are accepted, and open ones are reset,
  until `restore()`;
* `restore()` — normal forwarding; connections held during a pause carry on.

Runs an asyncio loop in a background thread: `proxy = TcpProxy(port); listen_port = proxy.start()`.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Literal

Mode = Literal["open", "paused", "refusing"]
_CHUNK = 64 * 1024


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1", listen_port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.listen_port = listen_port
        self.mode: Mode = "open"
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tcpproxy", daemon=True)
        self._server: asyncio.Server | None = None

    # --- control (from any thread) ---------------------------------------------------------------

    def start(self) -> int:
        self._thread.start()
        self._call(self._listen())
        return self.listen_port

    def pause(self) -> None:
        self._call(self._set("paused"))

    def refuse(self) -> None:
        self._call(self._set("refusing"))

    def reset(self) -> None:
        self._call(self._close_all())

    def restore(self) -> None:
        self._call(self._set("open"))

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        if self._server is not None:
            self._call(self._shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)

    def _call(self, coroutine) -> None:  # type: ignore[no-untyped-def]
        asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=10)

    # --- the loop -------------------------------------------------------------------------------

    async def _listen(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.listen_port)
        self.listen_port = self._server.sockets[0].getsockname()[1]

    async def _set(self, mode: Mode) -> None:
        self.mode = mode
        if mode == "paused":
            self._flowing.clear()
            return
        if mode == "refusing":
            await self._close_all()
        self._flowing.set()

    async def _close_all(self) -> None:
        for writer in list(self._writers):
            _abort(writer)
        self._writers.clear()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._close_all()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "refusing":
            _abort(writer)
            return
        await self._flowing.wait()
        if self.mode == "refusing":
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(writer)
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer, writer), self._pipe(up_reader, writer, up_writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    other: asyncio.StreamWriter) -> None:
        """Copy one direction; a pause holds the bytes read so far until the network is back."""
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                await self._flowing.wait()
                if writer not in self._writers:
                    break
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for side in (writer, other):
                self._writers.discard(side)
                _abort(side)


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()
