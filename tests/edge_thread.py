"""A SIP edge served in a thread of its own, for tests that talk to it with blocking sockets
(SIPp, the suite's SIP client) while it runs its event loop."""

from __future__ import annotations

import asyncio
import threading
from contextlib import contextmanager
from typing import Iterator

from imbill.producers.edge import SipEdge


@contextmanager
def edge_in_thread(edge: SipEdge, stop_timeout: float = 10.0) -> Iterator[SipEdge]:
    """Start ``edge`` on a loop in a daemon thread; stop it (and the loop) on leaving."""
    loop, ready = asyncio.new_event_loop(), threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(edge.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(5), "the edge did not start within 5 s"
    try:
        yield edge
    finally:
        asyncio.run_coroutine_threadsafe(edge.stop(), loop).result(stop_timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
