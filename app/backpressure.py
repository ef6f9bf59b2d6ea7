"""Back-pressure: how many model requests the service takes in at once, and the 503 past that.

Two bounds, both decided before any model work:
- uploads in flight (headers in, body still arriving): `uploads` places. A body that trickles in, or never
  comes, holds one of these until the body deadline, not a place in the model's queue;
- the model's queue (body arrived: decoding, embedding, waiting for the model, answering): `size` places,
  taken when the body has arrived and held until the answer is sent.
A request is refused from its headers alone while either is full, so a refusal costs nothing and comes at
once whatever the upload's size; the latency of admitted requests stays bounded under any load.
"""

from __future__ import annotations

import threading

from app.metrics import QUEUE_DEPTH, REJECTED, UPLOADS_IN_FLIGHT


class Overloaded(Exception):
    """The model's queue or the upload places are full, or the model's turn did not come in time: 503."""

    def detail(self, retry_after_s: int) -> str:
        """The 503's message, the same whether the middleware or a route refuses."""
        return f"{self} (in {retry_after_s} s)"


class Admission:
    def __init__(self, size: int, uploads: int | None = None):
        self.size = size
        self.uploads = uploads if uploads is not None else 4 * size
        self._inside = 0
        self._uploading = 0
        self._lock = threading.Lock()

    def start_upload(self) -> None:
        """From the headers: take an upload place, or raise Overloaded when the queue or the uploads are full."""
        with self._lock:
            self._refuse_when_queue_full()
            if self._uploading >= self.uploads:
                REJECTED.labels("uploads_full").inc()
                raise Overloaded(f"{self.uploads} uploads are already arriving; retry later")
            self._uploading += 1
            UPLOADS_IN_FLIGHT.set(self._uploading)

    def end_upload(self) -> None:
        with self._lock:
            self._uploading -= 1
            UPLOADS_IN_FLIGHT.set(self._uploading)

    def enter(self) -> None:
        """The body has arrived: take a place in the model's queue, or raise Overloaded when all are taken."""
        with self._lock:
            self._refuse_when_queue_full()
            self._inside += 1
            QUEUE_DEPTH.set(self._inside)

    def _refuse_when_queue_full(self) -> None:  # called holding the lock
        if self._inside >= self.size:
            REJECTED.labels("queue_full").inc()
            raise Overloaded(f"{self.size} requests are already being served; retry later")

    def leave(self) -> None:
        with self._lock:
            self._inside -= 1
            QUEUE_DEPTH.set(self._inside)
