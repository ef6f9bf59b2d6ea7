"""uvicorn's h11 protocol with deadlines for receiving a request.

uvicorn has none: its keep-alive timeout only covers the idle time between requests and every byte
resets it, so a client trickling a byte at a time (slow-loris) holds a connection, and its memory,
for as long as it likes. Here the headers must arrive within `header_timeout_s` of the request's
first byte (or of the connection), and the body within `body_timeout_s` of the headers; past either
the connection is closed and a warning logged. Once a request is fully received no deadline runs,
so a slow model call is never cut.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class DeadlineH11Protocol(H11Protocol):
    header_timeout_s = 10.0
    body_timeout_s = 120.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None
        super().connection_made(transport)
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._arm(None)
        super().connection_lost(exc)

    def _watch(self) -> None:
        """Arm the deadline of the part of the request still to come (none once it is all in)."""
        state = self.conn.their_state
        self._arm("headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None)

    def _arm(self, phase: str | None) -> None:
        if phase == self._phase:
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = phase
        if phase is not None:
            timeout = self.header_timeout_s if phase == "headers" else self.body_timeout_s
            self._deadline = self.loop.call_later(timeout, self._expire, phase, timeout)

    def _expire(self, phase: str, timeout: float) -> None:
        self._deadline = None
        client = "%s:%d" % self.client if self.client else "a client"
        self.logger.warning("closing the connection of %s: the request %s did not arrive within %g s",
                            client, phase, timeout)
        if not self.transport.is_closing():
            self.transport.close()


def protocol_with_deadlines(header_timeout_s: float, body_timeout_s: float) -> type[DeadlineH11Protocol]:
    """The protocol class uvicorn is given (`uvicorn.run(..., http=...)`), with these deadlines."""
    return type("ConfiguredDeadlineH11Protocol", (DeadlineH11Protocol,),
                {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s})
