"""uvicorn's HTTP/1.1 protocols with a header deadline: a connection whose request headers
have not all arrived ``read_timeout_s`` after its first byte (or after it opened, or after
the previous response) is closed. (uvicorn's own keep-alive timeout covers only idle
connections; the body deadline is ``service.main.Guard``'s.)

``DeadlineHttpToolsProtocol`` (httptools' C parser; the server's choice when it is installed)
also bounds the request line and headers to ``MAX_HEADER_BYTES`` (431), as h11 does with
``h11_max_incomplete_event_size``; h11's pure-Python parser cost about a third of a
millisecond of CPU per request."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from service.settings import get_settings

MAX_HEADER_BYTES = 64 * 1024  # request line + headers


class _HeaderDeadline:
    """The deadline, mixed into a uvicorn protocol (which has ``cycle``, ``loop``,
    ``transport``); ``max_header_bytes`` also bounds incomplete headers when set."""

    cycle: Any
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    max_header_bytes: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timeout_s = get_settings().read_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self._read_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if self._between_requests() and not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._between_requests():
            self._arm()
        super().data_received(data)  # type: ignore[misc]
        if not self._between_requests():  # headers complete: the request is being served
            self._disarm()
            self._header_bytes = 0
        elif self.max_header_bytes is not None and not self.transport.is_closing():
            # Headers still incomplete, so every byte so far belongs to them.
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self.transport.write(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                    b"content-length: 0\r\nconnection: close\r\n\r\n"
                )
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]


class DeadlineH11Protocol(_HeaderDeadline, H11Protocol):  # type: ignore[misc]
    """H11Protocol that closes connections whose headers take too long."""


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools not installed: h11 serves
    DeadlineHttpToolsProtocol: type | None = None
else:

    class _DeadlineHttpTools(_HeaderDeadline, HttpToolsProtocol):  # type: ignore[misc]
        """HttpToolsProtocol with the header deadline and the header size bound."""

        max_header_bytes = MAX_HEADER_BYTES

    DeadlineHttpToolsProtocol = _DeadlineHttpTools


def best_protocol() -> type:
    """httptools' protocol when it is installed, else h11's."""
    return DeadlineHttpToolsProtocol or DeadlineH11Protocol
