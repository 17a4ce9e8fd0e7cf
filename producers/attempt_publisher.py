"""Publishing message attempts from asyncio code (the SIP edge) through kafka-python.

kafka-python's producer runs its own I/O thread; its future's callbacks are bridged back to
the event loop, so the edge answers 202 only once the broker acknowledged the event
(acks=all), and raises :class:`~imbill.errors.PublishError` otherwise.
"""

from __future__ import annotations

import asyncio
from typing import Any, Mapping

from imbill.bus import EventProducer
from imbill.errors import PublishError
from imbill.producers.attempt import attempt_key

__all__ = ["AttemptPublisher"]


def _settle(future: asyncio.Future, value: Any, failed: bool) -> None:
    if future.done():
        return
    if failed:
        future.set_exception(PublishError(f"message attempt not acknowledged: {value}"))
    else:
        future.set_result(value)


class AttemptPublisher:
    """``await publisher(attempt)`` returns when the attempt is on the topic."""

    def __init__(self, bootstrap_servers: str, topic: str, *, timeout: float = 5.0) -> None:
        self._producer = EventProducer(bootstrap_servers, linger_ms=1, max_in_flight_requests_per_connection=5)
        self._topic = topic
        self._timeout = timeout

    async def __call__(self, attempt: Mapping[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        acked: asyncio.Future = loop.create_future()
        try:
            sent = self._producer.send(self._topic, attempt_key(attempt).decode(), "MessageAttempt", attempt)
        except Exception as exc:  # encoding or a closed producer: the edge answers 500
            raise PublishError(f"cannot publish message attempt: {exc}") from exc
        sent.add_callback(lambda meta: loop.call_soon_threadsafe(_settle, acked, meta, False))
        sent.add_errback(lambda exc: loop.call_soon_threadsafe(_settle, acked, exc, True))
        try:
            await asyncio.wait_for(acked, self._timeout)
        except asyncio.TimeoutError:
            raise PublishError(f"message attempt not acknowledged within {self._timeout}s") from None

    def close(self) -> None:
        self._producer.close()
